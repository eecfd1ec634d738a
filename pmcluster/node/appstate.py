"""The node's shared state: `NodeState` (identity, epoch, drain) and the typed `AppKey`s
under which the app holds its config, store, backends, metrics, limiters and history.

Every module of the node (handlers, fast path, admin, cluster, Storm front end) reads these;
keeping them apart from the handlers means none of them imports `app` for a key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pmcluster.config import Config
from pmcluster.node.events import ClusterHistory
from pmcluster.node.local import LocalBackend
from pmcluster.node.metrics import Metrics
from pmcluster.protocol.backend import Backend
from pmcluster.protocol.budget import BufferBudget
from pmcluster.protocol.http import EPOCH_HEADER, NODE_HEADER
from pmcluster.store import PulseStore


@dataclass
class NodeState:
    """The node's mutable identity as answered in headers and `/v1/members`; the membership
    layer replaces `epoch` and `members` when the ring changes."""

    node_id: str
    epoch: str = "static-local"
    members: tuple[str, ...] = field(default_factory=tuple)
    # Set when the node takes part in a cluster (`pmcluster.node.cluster`): the backend that
    # coordinates plain requests, the members' JSON form, and what to do first on shutdown.
    coordinator: Backend | None = None
    member_docs: list[dict[str, object]] | None = None
    leave: Callable[[], Awaitable[None]] | None = None
    # Registration in the membership, deferred until the socket listens (the daemon calls it).
    join: Callable[[], Awaitable[None]] | None = None
    # Until then (monotonic) the node is still being filled after joining or restarting
    # empty: its "absent" on a forwarded read is marked as no answer (`FRESH_HEADER`).
    fresh_until: float = 0.0
    # Cut off from ZooKeeper while its peers moved on: no data request is answered (503).
    fenced: bool = False
    # The membership source's connection: ZooKeeper's 'CONNECTED', 'SUSPENDED' (reconnecting;
    # the session may still expire) or 'LOST'; 'static' for a seed or fixed member list.
    membership_state: Callable[[], str] = lambda: "static"
    in_flight: int = 0  # requests inside the middleware (body read + handler)
    draining: bool = False  # shutting down: answer with `Connection: close`
    _idle: asyncio.Event | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.members:
            self.members = (self.node_id,)

    def identity_headers(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """The headers every answer carries, on either HTTP path: who answered, at which epoch."""
        return ((NODE_HEADER, self.node_id), (EPOCH_HEADER, self.epoch))

    def is_fresh(self) -> bool:
        """Whether this node's "absent" says nothing yet: it joined or restarted empty less
        than two grace windows ago, and it is not alone (alone, nobody else could know)."""
        return len(self.members) > 1 and time.monotonic() < self.fresh_until

    def request_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Mark the node draining and wait until no request is in flight; False on timeout."""
        self.draining = True
        self._idle = asyncio.Event()
        if self.in_flight == 0:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


CONFIG_KEY = web.AppKey("config", Config)
STATE_KEY = web.AppKey("state", NodeState)
STORE_KEY = web.AppKey("store", PulseStore)
BACKEND_KEY: web.AppKey[Backend] = web.AppKey("backend")
LOCAL_BACKEND_KEY = web.AppKey("local_backend", LocalBackend)
METRICS_KEY = web.AppKey("metrics", Metrics)


class Slots(asyncio.Semaphore):
    """`pacemaker.max.threads`'s semaphore, which a callback can also take without awaiting
    (`try_acquire`): the fast path's coordinated writes wait in no task of their own."""

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody waits for one; False otherwise."""
        if self.locked():
            return False
        self._value -= 1
        return True


LIMITER_KEY = web.AppKey("limiter", Slots)
FORWARD_LIMITER_KEY = web.AppKey("forward_limiter", asyncio.Semaphore)
# Bytes of unfinished requests and frames, across connections (pmcluster.buffer.max.bytes).
BUDGET_KEY = web.AppKey("buffer_budget", BufferBudget)
HISTORY_KEY = web.AppKey("history", ClusterHistory)
BODY_KEY = web.RequestKey("body", bytes)


def members_doc(app: web.Application) -> dict[str, Any]:
    """This node's view of the cluster, as `GET /v1/members` answers it."""
    state, config = app[STATE_KEY], app[CONFIG_KEY]
    members: list[Any] = (
        list(state.member_docs) if state.member_docs is not None else list(state.members)
    )
    return {
        "epoch": state.epoch,
        "node": state.node_id,
        "members": members,
        "replication": config.replication,
        "points": config.ring_points,
    }
