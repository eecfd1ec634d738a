"""Admin routes of a node: `POST /v1/admin/drain` retires it without losing a heartbeat.

A drain runs in the node, so an operator's machine only needs HTTP (`pmcluster remove-node`):

1. **leave** the membership (ZooKeeper: delete the node's znode, keep watching), and wait
   until the node's own ring no longer lists it: from then on new writes go to the new owners;
2. **keep serving** reads (and forwarded writes from clients still on the old ring) through
   the grace window (`pmcluster.grace.secs`), as clients read the previous owners that long;
3. **verify**: for every key it holds, ask each of the key's new owners (the node's own
   `ClusterClient`) whether they hold a version at least as new (or a newer tombstone), and
   re-send the ones they miss, with their original versions, in batches;
4. **stop** the daemon (the daemon's stop hook): it drains in-flight requests and exits 0.

`GET /v1/admin/drain` answers the progress as JSON; `?wait=SECS` holds the answer until the
drain reaches a final state (or SECS pass), so a remote caller sees "done" before the node
exits (shutdown waits for in-flight requests). A drain that cannot leave (static or DNS
membership: the member list lives outside the node) or would leave fewer members than the
replication factor is refused with 409, unless `{"force": true}` for the latter.

Who may drain (`admin_refusal`): a caller presenting the admin secret
(`pmcluster.admin.secret.file`, header `X-Pmcluster-Admin-Secret`); under DIGEST or KERBEROS an
authenticated user or principal listed in `pmcluster.admin.users`; and, with no secret
configured, a caller on the node's own host (127.0.0.1, ::1 or the node's own address) that
passed the node's authentication. Anyone else gets 403: under NONE a drain is not open to the
network, and under authentication reading heartbeats does not make one an administrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from pmcluster.auth.middleware import PRINCIPAL_KEY
from pmcluster.client import ClusterClient
from pmcluster.config import Config
from pmcluster.errors import InvalidRequest, PmclusterError
from pmcluster.node.appstate import CONFIG_KEY, STATE_KEY, STORE_KEY
from pmcluster.node.coordinator import CoordinatingBackend
from pmcluster.node.requests import json_response
from pmcluster.protocol.http import ADMIN_SECRET_HEADER
from pmcluster.protocol.pulse import Pulse
from pmcluster.ring import Member
from pmcluster.store import PulseStore

__all__ = ["DRAIN_ROUTE", "DrainProgress", "install_admin", "verify_and_resend"]

log = logging.getLogger(__name__)

DRAIN_ROUTE = "/v1/admin/drain"
FINAL_STATES = ("done", "failed")
VERIFY_CONCURRENCY = 32  # owner checks in flight at once
RESEND_BATCH = 500  # pulses per re-send batch
MAX_WAIT_SECS = 60.0  # longest ?wait= a GET may hold


@dataclass
class DrainProgress:
    """What `GET /v1/admin/drain` answers; `state` moves idle → leaving → grace → verifying →
    stopping → done, or to failed (with `error`)."""

    node: str
    state: str = "idle"
    forced: bool = False
    started_at: float | None = None  # wall clock, s
    left_epoch: str | None = None  # the node's epoch once it no longer lists itself
    grace_secs: float = 0.0
    keys: int = 0  # keys held when verification started
    verified: int = 0  # keys every reachable new owner already held
    resent: int = 0  # keys re-sent to their new owners
    under_replicated: int = 0  # keys some new owner could not confirm (it did not answer)
    unconfirmed: int = 0  # keys no new owner confirmed, even after re-sending
    elapsed_secs: float = 0.0
    error: str | None = None
    _began: float = field(default=0.0, repr=False)

    def doc(self) -> dict[str, Any]:
        if self._began and self.state not in FINAL_STATES:
            self.elapsed_secs = round(time.monotonic() - self._began, 3)
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


@dataclass
class _Admin:
    """Per-app admin state: the stop hook, the drain's progress and task."""

    stop: Callable[[], None]
    progress: DrainProgress
    task: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


ADMIN_KEY = web.AppKey("admin", _Admin)


def install_admin(app: web.Application, stop: Callable[[], None]) -> None:
    """Register the admin routes on `app`; `stop()` ends the daemon after a drain."""
    app[ADMIN_KEY] = _Admin(stop, DrainProgress(app[CONFIG_KEY].node_id))
    app.router.add_post(DRAIN_ROUTE, post_drain)
    app.router.add_get(DRAIN_ROUTE, get_drain)
    app.on_shutdown.append(_cancel_drain)  # before cleanup closes the cluster client


async def _cancel_drain(app: web.Application) -> None:
    task = app[ADMIN_KEY].task
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _refuse(detail: str) -> web.Response:
    return json_response({"error": "conflict", "detail": detail}, 409)


async def _options(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"drain options must be a JSON object: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("drain options must be a JSON object")
    return doc


def admin_refusal(request: web.Request) -> web.Response | None:
    """None when the caller may use the admin routes, else the 403 (see the module doc)."""
    config = request.app[CONFIG_KEY]
    given = request.headers.get(ADMIN_SECRET_HEADER)
    secret = _admin_secret(request.app)
    if (
        secret is not None
        and given is not None
        and hmac.compare_digest(given.encode("utf-8", "replace"), secret)
    ):
        return None
    principal = request.get(PRINCIPAL_KEY)
    if principal is not None and principal in config.admin_users:
        return None
    if secret is None and request.remote in {"127.0.0.1", "::1", config.host}:
        return None
    who = "an unauthenticated caller" if principal is None else "this user"
    return json_response(
        {
            "error": "forbidden",
            "detail": f"{who} may not use the admin routes: send {ADMIN_SECRET_HEADER} "
            "(pmcluster.admin.secret.file), authenticate as one of pmcluster.admin.users, "
            "or call from the node's own host",
        },
        403,
    )


def _admin_secret(app: web.Application) -> bytes | None:
    path = app[CONFIG_KEY].admin_secret_file
    if path is None:
        return None
    return Path(path).read_bytes().strip()


async def post_drain(request: web.Request) -> web.StreamResponse:
    """Start the drain (idempotent: a second POST answers the running drain's progress)."""
    refusal = admin_refusal(request)
    if refusal is not None:
        return refusal
    app = request.app
    admin, state, config = app[ADMIN_KEY], app[STATE_KEY], app[CONFIG_KEY]
    options = await _options(request)
    force = options.get("force", False) is True or request.query.get("force") in ("1", "true")
    if admin.task is not None:
        return json_response(admin.progress.doc(), 202)
    if state.leave is None or not isinstance(state.coordinator, CoordinatingBackend):
        return _refuse(
            "this node's membership is a static or DNS list, which it cannot leave by itself: "
            "remove its address from pacemaker.servers (or the DNS records) of every node and "
            "client, wait pmcluster.dns.refresh.secs, then stop it (SIGTERM)"
        )
    remaining = len([m for m in state.members if m != state.node_id])
    if remaining < config.replication and not force:
        return _refuse(
            f"removing {state.node_id} would leave {remaining} node(s), fewer than the "
            f"replication factor {config.replication} (pmcluster.replication); add a node "
            "first, or force it"
        )
    if remaining == 0:
        return _refuse(f"{state.node_id} is the only member: nobody could take its heartbeats")
    progress = admin.progress
    progress.state, progress.forced = "leaving", force
    progress.started_at, progress._began = time.time(), time.monotonic()
    progress.grace_secs = config.grace_window_secs
    admin.finished = asyncio.Event()
    admin.task = asyncio.create_task(_drain(app), name="pmcluster-drain")
    return json_response(progress.doc(), 202)


async def get_drain(request: web.Request) -> web.StreamResponse:
    """The drain's progress; `?wait=SECS` waits (bounded) for a final state first."""
    refusal = admin_refusal(request)
    if refusal is not None:
        return refusal
    admin = request.app[ADMIN_KEY]
    try:
        wait = min(float(request.query.get("wait", "0")), MAX_WAIT_SECS)
    except ValueError:
        raise InvalidRequest("wait must be a number of seconds") from None
    if wait > 0 and admin.task is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(admin.finished.wait(), wait)
    return json_response(admin.progress.doc())


async def _drain(app: web.Application) -> None:
    admin, state, config = app[ADMIN_KEY], app[STATE_KEY], app[CONFIG_KEY]
    progress = admin.progress
    try:
        coordinator = state.coordinator
        assert state.leave is not None and isinstance(coordinator, CoordinatingBackend)
        client = coordinator.client
        log.info("drain: leaving the membership")
        await state.leave()
        ring = await _wait_ring_without(client, state.node_id, timeout=_leave_timeout(config))
        progress.left_epoch = ring
        progress.state = "grace"
        log.info(
            "drain: left (epoch %s); serving through the %gs grace window",
            ring,
            progress.grace_secs,
        )
        await asyncio.sleep(progress.grace_secs)
        progress.state = "verifying"
        await verify_and_resend(client, app[STORE_KEY], progress)
        if progress.unconfirmed:
            raise PmclusterError(
                f"{progress.unconfirmed} key(s) not confirmed on any new owner; "
                "the node keeps running (out of the ring): retry the drain, or stop it"
            )
        progress.state = "stopping"
        log.info(
            "drain: %d keys, %d verified, %d re-sent; stopping",
            progress.keys,
            progress.verified,
            progress.resent,
        )
        progress.state = "done"
        progress.elapsed_secs = round(time.monotonic() - progress._began, 3)
        admin.finished.set()
        admin.stop()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("drain failed")
        progress.state = "failed"
        progress.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        progress.elapsed_secs = round(time.monotonic() - progress._began, 3)
        admin.task = None  # a later POST may retry
        admin.finished.set()


def _leave_timeout(config: Config) -> float:
    """How long the node's own view may take to drop it: a few ZooKeeper round trips."""
    return max(10.0, config.request_timeout_secs * 10)


async def _wait_ring_without(client: ClusterClient, node_id: str, timeout: float) -> str:
    """Wait until `client`'s ring no longer lists `node_id`; its epoch."""
    deadline = time.monotonic() + timeout
    while True:
        ring = client.ring
        if ring is not None and ring.member(node_id) is None and ring.members:
            return ring.epoch
        if time.monotonic() > deadline:
            raise PmclusterError(f"the ring still lists {node_id} {timeout:g}s after leaving")
        await asyncio.sleep(0.05)


async def verify_and_resend(
    client: ClusterClient, store: PulseStore, progress: DrainProgress
) -> None:
    """Make sure each key in `store` is held, at least as new, by its owners on `client`'s ring.

    A key an owner does not hold (or holds older) is re-sent with its original version, so a
    newer value written meanwhile is never replaced. Counts go to `progress`."""
    ring = client.ring
    if ring is None:
        raise PmclusterError("no ring to verify against")
    pulses = store.get_all_pulse_for_path("/")
    progress.keys = len(pulses)
    limit = asyncio.Semaphore(VERIFY_CONCURRENCY)

    async def fresh_on(member: Member, pulse: Pulse) -> bool | None:
        """True/False: the owner holds a fresh copy or not; None: it did not answer."""
        async with limit:
            try:
                _, version = await client.transport(member).exists(pulse.path)
            except PmclusterError:
                return None
        return version >= pulse.version  # a value, or a tombstone newer than ours

    async def check(pulse: Pulse) -> tuple[int, int, int]:
        """(owners confirming, owners not answering, owners) for one key."""
        owners = ring.owners(pulse.path)
        answers = await asyncio.gather(*(fresh_on(m, pulse) for m in owners))
        return sum(a is True for a in answers), sum(a is None for a in answers), len(owners)

    results = await asyncio.gather(*(check(p) for p in pulses))
    missing: list[Pulse] = []
    for pulse, (confirmed, silent, owners) in zip(pulses, results, strict=True):
        if confirmed == owners:
            progress.verified += 1
        elif confirmed + silent == owners and confirmed > 0:
            progress.under_replicated += 1
        else:
            missing.append(pulse)
    for i in range(0, len(missing), RESEND_BATCH):
        chunk = missing[i : i + RESEND_BATCH]
        try:
            await client.send_pulses([(p.path, p.data, p.version) for p in chunk])
        except PmclusterError as exc:
            log.warning("drain: re-sending %d pulses failed: %s", len(chunk), exc)
    progress.resent = len(missing)
    recheck = await asyncio.gather(*(check(p) for p in missing))
    for confirmed, silent, _ in recheck:
        if confirmed == 0:
            progress.unconfirmed += 1
        elif silent:
            progress.under_replicated += 1
