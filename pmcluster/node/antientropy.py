"""Anti-entropy: the owners of each ring arc compare digests and repair what differs.

Every `pmcluster.antientropy.secs` (± 10 % jitter) a node takes the current ring and, for each
peer it shares arcs with, hashes the values both own into buckets by ring position
(`pmcluster.store.digest`) and sends the digest (`POST /v1/internal/digest`). The peer hashes
its own copy the same way and answers the buckets that differ; the node then sends its
entries of those buckets, a few buckets at a time (`POST /v1/internal/sync`). The peer applies
them and answers with its entries the node lacks or holds older, which the node applies.

Repairs are versioned writes and deletes, never a new version: the store keeps the newest
version as everywhere else, so a repair can only bring an owner forward. A tombstone is
applied where it deletes an older value (that is when the value buckets differ); a value the
receiver holds a newer tombstone for is refused by the store, so a replica that missed a
delete never resurrects the key on the other owner. Subtree tombstones go along with every
sync (there are few: one per `delete_path`).

Tombstones outlive their TTL while an owner may still hold the value: at the end of a round,
a tombstone that would expire before the next round is kept one more round (`retain`) if its
key is shared with a peer this round did not reach or that answered from another ring
epoch. A peer that is reached and matches (or was synced) holds no older value of a key it
has no tombstone for, so the tombstone may go.

Only peers (requests marked `X-Pmcluster-Forwarded: 1`) may call the internal routes; the auth
gate checks their credentials like any other reader's (`pmcluster.auth.middleware`).

A fenced node (`NodeState.fenced`: cut off from ZooKeeper while its peers moved on) takes no
part: it starts no round and answers the internal routes 503, like every other peer request,
so a store that may have missed deletes neither sends nor takes repairs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

from aiohttp import web

from pmcluster.client import ClusterClient
from pmcluster.client.transport import NodeTransport
from pmcluster.errors import PmclusterError
from pmcluster.node.appstate import CONFIG_KEY, METRICS_KEY, STORE_KEY
from pmcluster.node.metrics import Metrics
from pmcluster.node.requests import error_response, json_response
from pmcluster.protocol.http import FORWARDED_HEADER
from pmcluster.ring import Ring
from pmcluster.store import PulseStore
from pmcluster.store.digest import (
    Entries,
    bucket_of,
    differing,
    digests,
    entries_in,
    retain_tombstone,
    tombstone_expiries,
)

__all__ = [
    "AE_KEY",
    "AntiEntropy",
    "AntiEntropyMetrics",
    "apply_entries",
    "install_antientropy",
    "make_antientropy",
]

log = logging.getLogger(__name__)

DIGEST_ROUTE = "/v1/internal/digest"
SYNC_ROUTE = "/v1/internal/sync"
SYNC_BUCKETS = 16  # buckets per sync request: a restarted owner's repair in 1/64 slices
JITTER = 0.1  # of the period, so the nodes' rounds drift apart
_NS = 1_000_000_000


class AntiEntropyMetrics:
    """The loop's Prometheus families, on the node's registry (`/metrics`)."""

    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.rounds = registry.counter(
            "pmcluster_antientropy_rounds_total", "Anti-entropy rounds run by this node."
        ).labels()
        digests = registry.counter(
            "pmcluster_antientropy_digests_total",
            "Digest exchanges this node started, by result (match, differ, failed).",
            ["result"],
        )
        self.digests = {r: digests.labels(r) for r in ("match", "differ", "failed")}
        repaired = registry.counter(
            "pmcluster_antientropy_keys_repaired_total",
            "Keys this node's store took from a peer's copy, by kind (value, delete).",
            ["kind"],
        )
        self.repaired = {k: repaired.labels(k) for k in ("value", "delete")}
        self.seen = registry.counter(
            "pmcluster_antientropy_under_replicated_keys_seen_total",
            "Keys found at different versions on two owners (counted by the round's starter).",
        ).labels()
        self.last_seen = registry.gauge(
            "pmcluster_antientropy_under_replicated_keys",
            "Keys found at different versions on two owners in the last round.",
        ).labels()
        self.retained = registry.counter(
            "pmcluster_antientropy_tombstones_retained_total",
            "Tombstones kept past their TTL because an owner had not confirmed the delete.",
        ).labels()
        self.last_round = registry.gauge(
            "pmcluster_antientropy_last_round_seconds", "How long the last round took."
        ).labels()
        self.last_end = registry.gauge(
            "pmcluster_antientropy_last_round_end_timestamp_seconds",
            "When the last round ended (Unix time).",
        ).labels()


# --- wire form ------------------------------------------------------------------------------


def _entries_doc(entries: Entries) -> dict[str, Any]:
    return {
        "values": [[p, base64.b64encode(d).decode("ascii"), v] for p, d, v in entries.values],
        "key_tombs": [[p, v] for p, v in entries.key_tombs],
        "tree_tombs": [[p, v] for p, v in entries.tree_tombs],
    }


def _entries_from(doc: Any) -> Entries:
    """Parse an entries document; `ValueError` naming what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    try:
        values = [(str(p), base64.b64decode(d, validate=True), int(v)) for p, d, v in doc["values"]]
        key_tombs = [(str(p), int(v)) for p, v in doc["key_tombs"]]
        tree_tombs = [(str(p), int(v)) for p, v in doc["tree_tombs"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad entries: {exc!r}") from None
    for path, _, version in values:
        if not path.startswith("/") or version <= 0:
            raise ValueError(f"bad value entry {path!r} v{version}")
    for path, version in key_tombs + tree_tombs:
        if not path.startswith("/") or version <= 0:
            raise ValueError(f"bad tombstone entry {path!r} v{version}")
    return Entries(values, key_tombs, tree_tombs)


def apply_entries(
    store: PulseStore, entries: Entries, owned: Callable[[str], bool]
) -> dict[str, int]:
    """Bring `store` forward with a peer's entries (owned paths only); counts by kind.

    Subtree tombstones first, then exact-key ones, each only where it deletes an older value
    (so a tombstone this store let expire is not renewed by a peer's later copy, and back);
    then values, which the store takes only when newer than its value and tombstones.
    """
    counts = {"value": 0, "delete": 0}
    for path, version in entries.tree_tombs:
        if store.tombstone_version(path) >= version:
            continue
        if any(p.version <= version for p in store.get_all_pulse_for_path(path)):
            counts["delete"] += store.delete_path(path, version)
    for path, version in entries.key_tombs:
        if not owned(path):
            continue
        held = store.get_pulse(path)
        if held is not None and held.version <= version:
            counts["delete"] += int(store.delete_pulse_id(path, version))
    for path, data, version in entries.values:
        if not owned(path):
            continue
        held = store.get_pulse(path)
        if held is not None and held.version >= version:
            continue
        try:
            counts["value"] += int(store.send_pulse(path, data, version))
        except PmclusterError as exc:  # the memory cap: the next round tries again
            log.warning("anti-entropy repair of %s refused: %s", path, exc)
    return counts


def _co_owned(ring: Ring, me: str, peer: str) -> Callable[[str], bool]:
    def owned(path: str) -> bool:
        ids = [m.node_id for m in ring.owners(path)]
        return me in ids and peer in ids

    return owned


def digests_by_peer(
    store: PulseStore, ring: Ring, me: str, before: int | None = None
) -> dict[str, dict[int, int]]:
    """{peer: {bucket: hash}} of the values this node shares with each peer (versions older
    than `before` only, when given: `digests`)."""

    def peers_of(path: str) -> list[str]:
        ids = [m.node_id for m in ring.owners(path)]
        return [i for i in ids if i != me] if me in ids else []

    return digests(store, peers_of, before=before)


# --- the loop ---------------------------------------------------------------------------------


class AntiEntropy:
    """The periodic digest exchange of one node; `start()`, `close()`, `run_round()`."""

    def __init__(
        self,
        store: PulseStore,
        client: ClusterClient,
        node_id: str,
        *,
        period: float,
        timeout: float,
        metrics: AntiEntropyMetrics,
        fenced: Callable[[], bool] = lambda: False,
        settle: float = 0.0,
    ) -> None:
        """`settle`: values written within this many seconds are left out of the digests
        (still being replicated: `digests`' `before`)."""
        self.settle = settle
        self.store = store
        self.client = client
        self.node_id = node_id
        self.period = period
        self.timeout = timeout
        self.metrics = metrics
        self.fenced = fenced
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.period > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="pmcluster-antientropy")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        rng = random.Random()
        await asyncio.sleep(rng.uniform(0, self.period))
        while True:
            try:
                await self.run_round()
            except Exception:
                log.exception("anti-entropy round failed")
            await asyncio.sleep(self.period * rng.uniform(1 - JITTER, 1 + JITTER))

    async def run_round(self) -> dict[str, str]:
        """One round with every peer sharing arcs with this node; {peer: result}."""
        began = time.perf_counter()
        ring = self.client.ring
        results: dict[str, str] = {}
        if ring is None or len(ring.members) < 2 or ring.member(self.node_id) is None:
            return results
        if self.fenced():
            return results
        before = time.time_ns() - int(self.settle * _NS) if self.settle > 0 else None
        peers = [m for m in ring.members if m.node_id != self.node_id]
        # A peer that failed lately may have missed writes newer than the bound: compare all
        # of what this node shares with it, so it heals within this round.
        horizon = self.settle + 2 * self.period * (1 + JITTER)
        failed = {
            m.node_id for m in peers if self.client.failures.failed_within(m.node_id, horizon)
        }
        settled = digests_by_peer(self.store, ring, self.node_id, before)
        everything = (
            digests_by_peer(self.store, ring, self.node_id)
            if failed and before is not None
            else settled
        )

        def exchange(peer: str) -> Awaitable[tuple[str, int]]:
            if peer in failed or before is None:
                return self._exchange(ring, peer, everything.get(peer, {}), None)
            return self._exchange(ring, peer, settled.get(peer, {}), before)

        answers = await asyncio.gather(*(exchange(m.node_id) for m in peers))
        seen = 0
        for member, (result, differ) in zip(peers, answers, strict=True):
            results[member.node_id] = result
            self.metrics.digests[result].inc()
            seen += differ
        self._retain(ring, {peer for peer, r in results.items() if r == "failed"})
        self.metrics.seen.inc(seen)
        self.metrics.last_seen.set(seen)
        self.metrics.rounds.inc()
        self.metrics.last_round.set(time.perf_counter() - began)
        self.metrics.last_end.set(time.time())
        return results

    async def _exchange(
        self, ring: Ring, peer: str, mine: dict[int, int], before: int | None
    ) -> tuple[str, int]:
        """Digest, then sync the differing buckets with `peer`: (result, keys that differed)."""
        member = ring.member(peer)
        transport = None if member is None else self.client.transport(member)
        if not isinstance(transport, NodeTransport):
            return "failed", 0
        owned = _co_owned(ring, self.node_id, peer)
        request: dict[str, Any] = {
            "epoch": ring.epoch,
            "from": self.node_id,
            "buckets": _hex_buckets(mine),
        }
        if before is not None:
            request["before"] = before
        try:
            answer = await transport.internal("digest", request, self.timeout)
            buckets = [int(b) for b in answer["differ"]]
            if not buckets:
                return "match", 0
            # One pass over the store for every differing bucket, sent a chunk at a time (a
            # write landing meanwhile is sent next round: repairs are versioned).
            mine_all = entries_in(self.store, buckets, owned)
            differ = 0
            for start in range(0, len(buckets), SYNC_BUCKETS):
                chunk = buckets[start : start + SYNC_BUCKETS]
                part = _part(mine_all, set(chunk), first=start == 0)
                differ += await self._sync(transport, ring, chunk, part, owned)
        except (PmclusterError, KeyError, TypeError, ValueError) as exc:
            log.debug("anti-entropy with %s: %s", peer, exc)
            return "failed", 0
        return "differ", differ

    async def _sync(
        self,
        transport: NodeTransport,
        ring: Ring,
        buckets: list[int],
        mine: Entries,
        owned: Callable[[str], bool],
    ) -> int:
        doc = {"epoch": ring.epoch, "from": self.node_id, "buckets": buckets, **_entries_doc(mine)}
        answer = await transport.internal("sync", doc, self.timeout)
        theirs = _entries_from(answer)
        counts = apply_entries(self.store, theirs, owned)
        for kind, n in counts.items():
            self.metrics.repaired[kind].inc(n)
        return int(answer.get("differ_keys", 0))

    def _retain(self, ring: Ring, unconfirmed: Collection[str]) -> None:
        """Keep one more round the tombstones due before then whose key `unconfirmed` share."""
        if not unconfirmed:
            return
        now = time.time_ns()
        horizon = now + int((self.period * (1 + JITTER) * 2 + self.timeout) * _NS)
        due = [(p, sub) for p, sub, expiry in tombstone_expiries(self.store) if expiry < horizon]
        for path, subtree in due:
            if not subtree and not any(m.node_id in unconfirmed for m in ring.owners(path)):
                continue
            if retain_tombstone(self.store, path, subtree, horizon):
                self.metrics.retained.inc()


def _part(entries: Entries, buckets: set[int], *, first: bool) -> Entries:
    """The entries of `buckets`; the subtree tombstones (any bucket) go with the first part."""
    return Entries(
        [v for v in entries.values if bucket_of(v[0]) in buckets],
        [t for t in entries.key_tombs if bucket_of(t[0]) in buckets],
        entries.tree_tombs if first else [],
    )


def _hex_buckets(buckets: dict[int, int]) -> dict[str, str]:
    return {str(b): f"{h:016x}" for b, h in buckets.items()}


def _parse_buckets(raw: Any) -> dict[int, int]:
    if not isinstance(raw, dict):
        raise ValueError("buckets: not an object")
    return {int(b): int(h, 16) for b, h in raw.items()}


# --- the peers' routes -------------------------------------------------------------------------


class AntiEntropySlot:
    """Where the app finds its loop: made before the app starts, filled by `cluster_ctx`."""

    def __init__(self) -> None:
        self.loop: AntiEntropy | None = None


AE_KEY = web.AppKey("antientropy", AntiEntropySlot)


def _ring_for(request: web.Request, doc: Any) -> tuple[Ring, str] | web.Response:
    """The ring and peer a request is about, or the error answer (409 on another epoch)."""
    if request.headers.get(FORWARDED_HEADER) != "1":
        return error_response(403, "forbidden", "internal route: for peer nodes only")
    ae = request.app[AE_KEY].loop
    ring = None if ae is None else ae.client.ring
    if ae is None or ring is None:
        return error_response(503, "unavailable", "this node takes no part in a cluster yet")
    if ae.fenced():
        return error_response(503, "fenced", "this node lost its ZooKeeper session")
    if not isinstance(doc, dict) or not isinstance(doc.get("from"), str):
        return error_response(400, "invalid_request", "expected a JSON object with 'from'")
    if doc.get("epoch") != ring.epoch:
        return error_response(409, "epoch_mismatch", f"this node is on ring {ring.epoch}")
    return ring, doc["from"]


async def _peer_request(request: web.Request) -> tuple[Any, Ring, str] | web.Response:
    """A peer's JSON request with the ring and peer it is about, or the error answer."""
    try:
        doc = await request.json()
    except ValueError:
        doc = None
    found = _ring_for(request, doc)
    if isinstance(found, web.Response):
        return found
    return doc, *found


async def post_digest(request: web.Request) -> web.StreamResponse:
    """`POST /v1/internal/digest`: the buckets where this node's copy differs."""
    found = await _peer_request(request)
    if isinstance(found, web.Response):
        return found
    doc, ring, peer = found
    try:
        theirs = _parse_buckets(doc.get("buckets"))
    except (TypeError, ValueError, AttributeError) as exc:
        return error_response(400, "invalid_request", f"buckets: {exc}")
    before = doc.get("before")
    if before is not None and (type(before) is not int or before < 0):
        return error_response(400, "invalid_request", "before: not a non-negative integer")
    owned = _co_owned(ring, request.app[CONFIG_KEY].node_id, peer)
    store = request.app[STORE_KEY]
    mine = digests(store, lambda p: (peer,) if owned(p) else (), before=before).get(peer, {})
    return json_response({"differ": differing(mine, theirs)})


async def post_sync(request: web.Request) -> web.StreamResponse:
    """`POST /v1/internal/sync`: apply the peer's entries; answer ours that it lacks."""
    found = await _peer_request(request)
    if isinstance(found, web.Response):
        return found
    doc, ring, peer = found
    try:
        theirs = _entries_from(doc)
        buckets = [int(b) for b in doc["buckets"]]
    except (KeyError, TypeError, ValueError) as exc:
        return error_response(400, "invalid_request", str(exc))
    store = request.app[STORE_KEY]
    me = request.app[CONFIG_KEY].node_id
    owned = _co_owned(ring, me, peer)
    before = entries_in(store, buckets, owned).versions()
    counts = apply_entries(store, theirs, owned)
    ae = request.app[AE_KEY].loop
    if ae is not None:
        for kind, n in counts.items():
            ae.metrics.repaired[kind].inc(n)
    mine = entries_in(store, buckets, owned)
    sent = theirs.versions()
    answer = Entries(
        [(p, d, v) for p, d, v in mine.values if sent.get(p, 0) < v],
        mine.key_tombs,
        mine.tree_tombs,
    )
    paths: Iterable[str] = set(before) | set(sent)
    differ = sum(1 for p in paths if before.get(p, 0) != sent.get(p, 0))
    return json_response({**_entries_doc(answer), "differ_keys": differ})


def install_antientropy(app: web.Application) -> None:
    """Register the peers' routes; the loop itself is made and started by `cluster_ctx`."""
    app[AE_KEY] = AntiEntropySlot()
    app.router.add_post(DIGEST_ROUTE, post_digest)
    app.router.add_post(SYNC_ROUTE, post_sync)


def make_antientropy(
    app: web.Application, client: ClusterClient, *, fenced: Callable[[], bool] = lambda: False
) -> AntiEntropy:
    """The node's loop over `client`'s ring, its metrics on the node's registry; none while
    `fenced()`."""
    config = app[CONFIG_KEY]
    ae = AntiEntropy(
        app[STORE_KEY],
        client,
        config.node_id,
        period=config.antientropy_secs,
        timeout=max(config.request_timeout_secs * 4, 2.0),
        metrics=AntiEntropyMetrics(app[METRICS_KEY]),
        fenced=fenced,
        settle=config.grace_window_secs,
    )
    app[AE_KEY].loop = ae
    return ae
