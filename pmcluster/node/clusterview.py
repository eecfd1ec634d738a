"""`GET /v1/cluster`: the whole cluster as one node sees it, for the status page at `/`.

The node asks every member it knows of (its ring, members its ring listed before, members
its peers list) for `/health`, `/metrics` and `/v1/members`, with a short timeout
(`PROBE_TIMEOUT_SECS`), and answers per member: address, zone, state, epoch, heartbeats held,
bytes, write and read rates (from two successive `/metrics` samples), open connections. The
node itself answers from its own store and registry, without HTTP. States:

- `up`: answers and is in this node's ring;
- `joining`: answers, not in the ring and never was (a peer lists it first);
- `leaving`: answers but has left the ring (a drain), or is this node while it shuts down;
- `suspected`: in the ring but did not answer in time (hung, overloaded, cut off);
- `down`: refuses connections, or is out of the ring and does not answer. A member that
  dropped out of the ring stays listed as down (`events.FORGET_SECS`), never missing.

Also: the ring's exact ownership shares (`Ring.ownership`, cached per epoch), the oldest
heartbeat per topology (each member's `children_versions` of `/workerbeats/<topology>`, the
newest version per worker across replicas, so a stale replica cannot make a worker look old;
at most `MAX_TOPOLOGIES` topologies), and the node's recent events (`events.ClusterHistory`).
Under-replicated keys and anti-entropy progress are a labelled placeholder until the
replication layer reports them. Answers are cached for `CACHE_SECS` and built once however
many browsers ask, so a page refreshing every 2 s costs each member a few requests per
refresh whatever the number of viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from pmcluster import __version__
from pmcluster.auth.client import RequestAuth, make_request_auth
from pmcluster.auth.tls import client_ssl_context
from pmcluster.client.transport import NodeTransport
from pmcluster.config import Config
from pmcluster.errors import PmclusterError
from pmcluster.node.appstate import (
    CONFIG_KEY,
    HISTORY_KEY,
    METRICS_KEY,
    STATE_KEY,
    STORE_KEY,
    members_doc,
)
from pmcluster.node.events import KnownMember
from pmcluster.node.metrics import parse_metrics
from pmcluster.node.requests import json_response
from pmcluster.ring import Member, Ring, format_node_id

__all__ = [
    "CACHE_SECS",
    "CLUSTER_VIEW_KEY",
    "MAX_TOPOLOGIES",
    "PROBE_TIMEOUT_SECS",
    "WORKERBEATS",
    "ClusterView",
    "cluster_view_ctx",
    "get_cluster",
    "merge_children",
]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECS = 1.0  # per request to a member (capped by pmcluster's request timeout)
CACHE_SECS = 1.0  # an answer younger than this is served again
MAX_TOPOLOGIES = 50  # topologies whose oldest heartbeat is computed per answer
PROBE_CONCURRENCY = 16  # requests to members in flight at once
MIN_RATE_GAP_SECS = 0.5  # samples closer than this keep the previous rate
EVENTS_SHOWN = 50
WORKERBEATS = "/workerbeats"
REFRESH_SECS = 2.0  # what the page is told to refresh at

# Counters the rates are computed from, and the gauges shown (pmcluster.node.metrics names).
WRITES, READS = "pmcluster_pulses_received_total", "pmcluster_pulse_reads_total"
KEYS, BYTES, CONNECTIONS = (
    "pmcluster_stored_keys",
    "pmcluster_stored_bytes",
    "pmcluster_connections_open",
)

# Anti-entropy's families (pmcluster.node.antientropy), summed over the answering members.
AE_ROUNDS = "pmcluster_antientropy_rounds_total"
AE_UNDER = "pmcluster_antientropy_under_replicated_keys"
AE_REPAIRED = "pmcluster_antientropy_keys_repaired_total"
AE_LAST_END = "pmcluster_antientropy_last_round_end_timestamp_seconds"


def replication_health(figures: list[dict[str, float]], now: float) -> dict[str, Any]:
    """The page's replication block from the members' `/metrics`: keys their owners held at
    different versions in each member's last anti-entropy round (summed), keys repaired, and
    how long ago the least recent member finished a round. "Not available" when no answering
    member runs anti-entropy (`pmcluster.antientropy.secs: 0`)."""
    running = [f for f in figures if AE_ROUNDS in f]
    if not running:
        return {
            "available": False,
            "under_replicated_keys": None,
            "anti_entropy": None,
            "detail": "not available: no answering member runs anti-entropy (a node outside "
            "a cluster, or pmcluster.antientropy.secs: 0)",
        }
    ends = [f[AE_LAST_END] for f in running if f.get(AE_LAST_END, 0.0) > 0]
    oldest = round(now - min(ends), 1) if len(ends) == len(running) else None
    return {
        "available": True,
        "under_replicated_keys": int(sum(f.get(AE_UNDER, 0.0) for f in running)),
        "anti_entropy": {
            "members": len(running),
            "rounds": int(sum(f[AE_ROUNDS] for f in running)),
            "keys_repaired": int(sum(f.get(AE_REPAIRED, 0.0) for f in running)),
            "last_round_secs_ago": oldest,
        },
        "detail": "keys found at different versions on two owners in each member's last "
        "round; anti-entropy copies the newest to the owner behind",
    }


T = TypeVar("T")


def merge_children(answers: list[tuple[dict[str, int], dict[str, int]]]) -> dict[str, int]:
    """Members' `children_versions` answers merged: the newest version per child across
    replicas, without children whose newest covering tombstone is as new (deleted)."""
    newest: dict[str, int] = {}
    tombs: dict[str, int] = {}
    for children, tombstones in answers:
        for name, version in children.items():
            if version > newest.get(name, -1):
                newest[name] = version
        for name, version in tombstones.items():
            if version > tombs.get(name, -1):
                tombs[name] = version
    return {name: v for name, v in newest.items() if v > tombs.get(name, -1)}


@dataclass
class Probe:
    """One member's answers to one round (`answered`: `/health` said 200 in time)."""

    member: Member
    answered: bool = False
    refused: bool = False
    problem: str = ""
    health: dict[str, Any] = field(default_factory=dict)
    view: dict[str, Any] | None = None
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class _Track:
    """What the view remembers of a member between rounds: its state, since when, the last
    counter sample and the rates computed from it."""

    state: str = ""
    since: float = 0.0
    sample_at: float = 0.0
    sample: tuple[float, float] | None = None
    rates: tuple[float, float] | None = None


def _member_of(doc: Any) -> Member | None:
    """A `Member` from one entry of a `/v1/members` answer (a describe() dict, or host:port)."""
    if isinstance(doc, dict):
        try:
            zone = doc.get("zone")
            return Member(
                str(doc["node_id"]),
                str(doc["host"]),
                int(doc["port"]),
                None if zone is None else str(zone),
            )
        except (KeyError, TypeError, ValueError):
            return None
    if isinstance(doc, str):
        host, sep, port = doc.rpartition(":")
        if sep and port.isdigit():
            return Member(doc, host.strip("[]"), int(port))
    return None


def _problem(exc: BaseException) -> tuple[str, bool]:
    """(what went wrong, whether the connection was refused: nothing listens there)."""
    if isinstance(exc, TimeoutError):
        return "no answer in time", False
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused", True
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}", True
    text = str(exc) or type(exc).__name__
    return text[:200], False


class ClusterView:
    """Builds (and caches) the `/v1/cluster` answer of one node's app."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        config: Config = app[CONFIG_KEY]
        self._config = config
        self._timeout = min(PROBE_TIMEOUT_SECS, config.request_timeout_secs)
        self._ssl: ssl.SSLContext | None = client_ssl_context(config)
        self._auth: RequestAuth | None = None  # made on first use (KERBEROS needs a keytab)
        self._session: aiohttp.ClientSession | None = None
        self._transports: dict[str, NodeTransport] = {}
        self._tracks: dict[str, _Track] = {}
        self._ring: Ring | None = None
        self._ownership: dict[str, tuple[float, float]] = {}
        self._doc: dict[str, Any] | None = None
        self._doc_at = -CACHE_SECS
        self._building: asyncio.Task[dict[str, Any]] | None = None
        self._limit = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def close(self) -> None:
        if self._building is not None:
            self._building.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._building
        if self._session is not None:
            await self._session.close()

    async def doc(self) -> dict[str, Any]:
        """The cluster view: a fresh one at most every `CACHE_SECS`, one build at a time."""
        if self._doc is not None and time.monotonic() - self._doc_at < CACHE_SECS:
            return self._doc
        if self._building is None or self._building.done():
            self._building = asyncio.create_task(self._build(), name="pmcluster-cluster-view")
        # shield: a browser that goes away must not cancel the build others wait for.
        doc = await asyncio.shield(self._building)
        return doc

    # --- one round ---------------------------------------------------------------------------

    def _ring_now(self) -> Ring:
        """This node's ring (rebuilt when the epoch or the members change)."""
        state = self._app[STATE_KEY]
        docs = state.member_docs if state.member_docs is not None else list(state.members)
        members = [m for m in (_member_of(d) for d in docs) if m is not None]
        if not members:  # a node outside any cluster: itself
            config = self._config
            members = [Member(state.node_id, config.host, config.port, config.zone)]
        ids = tuple(sorted(m.node_id for m in members))
        ring = self._ring
        if (
            ring is None
            or ring.epoch != state.epoch
            or tuple(m.node_id for m in ring.members) != ids
        ):
            ring = Ring(
                members,
                state.epoch,
                points=self._config.ring_points,
                replication=self._config.replication,
            )
            self._ring, self._ownership = ring, ring.ownership()
        return ring

    async def _build(self) -> dict[str, Any]:
        app, state = self._app, self._app[STATE_KEY]
        history = app[HISTORY_KEY]
        ring = self._ring_now()
        history.ring_changed(ring.epoch, ring.members)  # no-op unless cluster_ctx missed it
        known = {k.member.node_id: k for k in history.known()}
        probes = await asyncio.gather(*(self._probe(k.member) for k in known.values()))
        peers_list: list[Member] = []
        for probe in probes:
            if probe.answered:
                history.answered(probe.member.node_id)
            if probe.view is not None:
                listed = probe.view.get("members", [])
                peers_list.extend(m for m in map(_member_of, listed) if m is not None)
        history.heard_of(m for m in peers_list if m.node_id not in known)
        now = time.time()
        members = [self._describe(probe, known[probe.member.node_id], now) for probe in probes]
        topologies = await self._topologies([p for p in probes if p.answered])
        up = sum(1 for m in members if m["state"] == "up")
        self._doc = {
            "node": state.node_id,
            "epoch": state.epoch,
            "version": __version__,
            "time": now,
            "refresh_secs": REFRESH_SECS,
            "replication": self._config.replication,
            "points": self._config.ring_points,
            "auth": self._config.auth_method,
            "summary": {
                "members": len(members),
                "up": up,
                "in_ring": len(ring.members),
                "heartbeats": topologies["heartbeats"],
            },
            "members": members,
            "ring": {
                "epoch": ring.epoch,
                "members": len(ring.members),
                "replication": ring.replication,
                "shares": [
                    {"node_id": node_id, "primary": primary, "owner": owner}
                    for node_id, (primary, owner) in sorted(self._ownership.items())
                ],
            },
            "topologies": topologies,
            "replication_health": replication_health(
                [p.figures for p in probes if p.answered], now
            ),
            "events": [e.describe() for e in history.events(EVENTS_SHOWN)],
        }
        self._doc_at = time.monotonic()
        return self._doc

    def _describe(self, probe: Probe, known: KnownMember, now: float) -> dict[str, Any]:
        """One member's row; records a fault or recovery event when its state changed."""
        member, state_ = probe.member, self._app[STATE_KEY]
        is_self = member.node_id == state_.node_id
        if probe.answered:
            if is_self and state_.draining:
                state = "leaving"
            elif known.in_ring:
                state = "up"
            else:
                state = "leaving" if known.was_in_ring else "joining"
        elif known.in_ring and not probe.refused:
            state = "suspected"
        else:
            state = "down"
        track = self._tracks.setdefault(member.node_id, _Track())
        if state != track.state:
            self._note_change(member.node_id, track.state, state, probe.problem)
            track.state, track.since = state, now
        writes = reads = None
        figures = probe.figures
        if probe.answered and WRITES in figures:
            rates = self._rates(track, figures.get(WRITES, 0.0), figures.get(READS, 0.0))
            if rates is not None:
                writes, reads = rates
        view = probe.view or {}
        listed = view.get("members")
        health = probe.health
        return {
            "node_id": member.node_id,
            "host": member.host,
            "port": member.port,
            "zone": member.zone,
            "state": state,
            "since": track.since,
            "self": is_self,
            "in_ring": known.in_ring,
            "epoch": view.get("epoch"),
            "ring_size": len(listed) if isinstance(listed, list) else None,
            "keys": int(figures[KEYS]) if KEYS in figures else health.get("keys"),
            "bytes": int(figures[BYTES]) if BYTES in figures else None,
            "writes_per_sec": writes,
            "reads_per_sec": reads,
            "connections": int(figures[CONNECTIONS]) if CONNECTIONS in figures else None,
            "version": health.get("version"),
            "problem": probe.problem,
        }

    def _note_change(self, node_id: str, before: str, after: str, problem: str) -> None:
        history = self._app[HISTORY_KEY]
        if after in ("suspected", "down"):
            reason = f": {problem}" if problem else ""
            history.record("fault", f"{node_id} {after}{reason}")
        elif before in ("suspected", "down"):
            history.record("recovery", f"{node_id} {after} again")
        elif before and after in ("joining", "leaving"):
            history.record("ring", f"{node_id} {after}")

    def _rates(self, track: _Track, writes: float, reads: float) -> tuple[float, float] | None:
        """Per-second rates of the two counters since the member's previous sample."""
        now = time.monotonic()
        previous, gap = track.sample, now - track.sample_at
        if previous is not None and gap < MIN_RATE_GAP_SECS:
            return track.rates
        track.sample, track.sample_at = (writes, reads), now
        if previous is None or writes < previous[0] or reads < previous[1]:
            track.rates = None  # first sample, or the member restarted (counters reset)
        else:
            track.rates = ((writes - previous[0]) / gap, (reads - previous[1]) / gap)
        return track.rates

    # --- asking members ----------------------------------------------------------------------

    def _is_self(self, member: Member) -> bool:
        return member.node_id == self._app[STATE_KEY].node_id

    def _base(self, member: Member) -> str:
        scheme = "http" if self._ssl is None else "https"
        return f"{scheme}://{format_node_id(member.host, member.port)}"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _request_auth(self) -> RequestAuth | None:
        if self._auth is None and self._config.auth_method != "NONE":
            self._auth = make_request_auth(self._config)
        return self._auth

    def _transport(self, member: Member) -> NodeTransport:
        transport = self._transports.get(member.node_id)
        if transport is None:
            transport = NodeTransport(
                member.node_id,
                member.host,
                member.port,
                self._http(),
                connect_timeout_secs=self._timeout,
                request_timeout_secs=self._timeout,
                forwarded=True,  # each member answers from its own store
                auth=self._request_auth(),
                ssl_context=self._ssl,
            )
            if len(self._transports) > 4 * PROBE_CONCURRENCY:
                self._transports.clear()
            self._transports[member.node_id] = transport
        return transport

    async def _limited(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._limit:
            return await call()

    async def _get_text(self, member: Member, route: str) -> str:
        """GET an open route (`/health`, `/metrics`) of a member; raises unless 200."""
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        ssl_arg: ssl.SSLContext | bool = self._ssl if self._ssl is not None else True
        url = self._base(member) + route
        async with self._http().get(url, timeout=timeout, ssl=ssl_arg) as resp:
            text = await resp.text(errors="replace")
            if resp.status != 200:
                raise PmclusterError(f"{route}: HTTP {resp.status}")
            return text

    async def _probe(self, member: Member) -> Probe:
        probe = Probe(member)
        if self._is_self(member):
            app = self._app
            probe.answered = True
            probe.health = {"keys": app[STORE_KEY].key_count, "version": __version__}
            probe.view = members_doc(app)
            probe.figures = parse_metrics(app[METRICS_KEY].render())
            return probe
        health, metrics, view = await asyncio.gather(
            self._limited(lambda: self._get_text(member, "/health")),
            self._limited(lambda: self._get_text(member, "/metrics")),
            self._limited(lambda: self._transport(member).members()),
            return_exceptions=True,
        )
        if isinstance(health, BaseException):
            probe.problem, probe.refused = _problem(health)
            return probe
        probe.answered = True
        try:
            doc = json.loads(health)
            probe.health = doc if isinstance(doc, dict) else {}
        except ValueError:
            probe.health = {}
        if isinstance(metrics, BaseException):
            probe.problem = f"/metrics: {_problem(metrics)[0]}"
        else:
            probe.figures = parse_metrics(metrics)
        if isinstance(view, BaseException):
            probe.problem = f"/v1/members: {_problem(view)[0]}"
        else:
            probe.view = view
        return probe

    async def _children(
        self, probes: list[Probe], path: str
    ) -> list[tuple[dict[str, int], dict[str, int]]]:
        """Every answering member's `children_versions(path)` (those that fail are left out)."""

        async def one(probe: Probe) -> tuple[dict[str, int], dict[str, int]]:
            if self._is_self(probe.member):
                return self._app[STORE_KEY].children_versions(path)
            return await self._limited(
                lambda: self._transport(probe.member).children_versions(path)
            )

        answers = await asyncio.gather(*(one(p) for p in probes), return_exceptions=True)
        return [a for a in answers if not isinstance(a, BaseException)]

    async def _topologies(self, probes: list[Probe]) -> dict[str, Any]:
        """The oldest heartbeat of each topology under /workerbeats (newest version per key)."""
        names = sorted(merge_children(await self._children(probes, WORKERBEATS)))
        checked = names[:MAX_TOPOLOGIES]
        merged = await asyncio.gather(
            *(self._children(probes, f"{WORKERBEATS}/{name}") for name in checked)
        )
        now_ns = time.time_ns()
        items: list[dict[str, Any]] = []
        heartbeats = 0
        for name, answers in zip(checked, merged, strict=True):
            workers = merge_children(answers)
            if not workers:
                continue
            heartbeats += len(workers)
            oldest_worker = min(workers, key=lambda w: (workers[w], w))
            newest = max(workers.values())
            items.append(
                {
                    "topology": name,
                    "workers": len(workers),
                    "oldest_worker": oldest_worker,
                    "oldest_age_secs": max(now_ns - workers[oldest_worker], 0) / 1e9,
                    "newest_age_secs": max(now_ns - newest, 0) / 1e9,
                }
            )
        items.sort(key=lambda item: (-item["oldest_age_secs"], item["topology"]))
        return {
            "path": WORKERBEATS,
            "items": items,
            "total": len(names),
            "checked": len(checked),
            "limit": MAX_TOPOLOGIES,
            "heartbeats": heartbeats if len(checked) == len(names) else None,
        }


CLUSTER_VIEW_KEY = web.AppKey("cluster_view", ClusterView)


async def get_cluster(request: web.Request) -> web.StreamResponse:
    """GET /v1/cluster: the cluster view (see the module docstring)."""
    return json_response(await request.app[CLUSTER_VIEW_KEY].doc())


async def cluster_view_ctx(app: web.Application) -> AsyncIterator[None]:
    """Close the view's HTTP session with the app."""
    yield
    await app[CLUSTER_VIEW_KEY].close()
