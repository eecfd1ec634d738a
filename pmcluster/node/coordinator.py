"""Any node answers any request: coordination of plain requests across the ring.

A request without `X-Pmcluster-Forwarded` (curl, a load balancer, DNS round-robin) reaches a
`CoordinatingBackend`, which runs it through the node's own ring-aware `ClusterClient`: writes
go to the path's owners, reads ask the owners and merge (newest of values and tombstones),
listings and recursive deletes fan out to every member. The client's requests to other nodes
carry `X-Pmcluster-Forwarded: 1`, so they are answered from the receiver's store and never
forwarded again; its requests to this node itself go through `LocalTransport`, straight to the
local store without HTTP.

Answering at once (`NowBackend`): a Storm connection answers every request of one read in one
pass, without a task per request, when the answer needs no waiting: when this node is the
only member its client would ask for a key (a single-node cluster, or reads of keys whose
every current and grace-ring owner is this node). The `*_now` methods then do exactly what
the client's async path does in that case (same versions from the client's clock, same retry
above a held version, same merges, same stats and failure-tracker updates) and return
`NOT_NOW` otherwise, before any side effect, so the caller takes the async path.
Writes to a key another node also owns always take the async path: an unversioned write must
hear every owner before it is acknowledged (docs/reliability.md, clock skew).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any

from pmcluster.client import readmerge
from pmcluster.client.cluster import ClusterClient
from pmcluster.errors import NodeFenced, NodeNotReady, PmclusterError
from pmcluster.node.local import LocalBackend
from pmcluster.protocol.backend import NOT_NOW, NotNowType, PulseEntry
from pmcluster.protocol.paths import normalize, normalize_key
from pmcluster.protocol.pulse import Pulse
from pmcluster.ring import Member, Ring

__all__ = ["CoordinatingBackend", "LocalNow", "LocalTransport"]

log = logging.getLogger(__name__)
_path = operator.attrgetter("path")


class LocalNow:
    """`NowBackend` of a `LocalBackend`: always answers, exactly as its async calls do."""

    def __init__(self, local: LocalBackend) -> None:
        self.store = local.store

    def send_pulse_now(self, path: str, data: bytes) -> bool:
        self.store.send_pulse(normalize_key(path), data, None)
        return True

    def send_pulses_now(self, pulses: Sequence[tuple[str, bytes]]) -> int:
        return 0  # rare (a node not yet in its cluster): one by one

    def get_pulse_now(self, path: str) -> Pulse | None:
        return self.store.get_pulse(normalize_key(path))

    def exists_now(self, path: str) -> bool:
        return self.store.exists(normalize_key(path))

    def get_all_nodes_for_path_now(self, path: str) -> list[str]:
        return self.store.get_all_nodes_for_path(normalize(path))

    def get_all_pulse_for_path_now(self, path: str) -> list[Pulse]:
        return self.store.get_all_pulse_for_path(normalize(path))


class LocalTransport:
    """The `Transport` of a node to itself: the local store, no HTTP, no forwarding."""

    def __init__(
        self,
        node_id: str,
        local: LocalBackend,
        members_doc: Callable[[], dict[str, Any]],
        *,
        is_fresh: Callable[[], bool] = lambda: False,
    ) -> None:
        """`is_fresh()`: the node is still being filled, so its own absent is no answer
        either (`NodeNotReady`, as a peer's marked 404 is)."""
        self.node_id = node_id
        self._local = local
        self._members_doc = members_doc
        self._is_fresh = is_fresh

    def __repr__(self) -> str:
        return f"LocalTransport({self.node_id!r})"

    @property
    def backend(self) -> LocalBackend:
        """The local store's backend this transport writes to."""
        return self._local

    async def put_pulse(self, path: str, data: bytes, version: int) -> int:
        if await self._local.send_pulse(path, data, version):
            return 0
        return self._local.held_version(path)

    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]:
        pulse, tombstone = await self._local.get_pulse(path)
        if pulse is None and tombstone == 0 and self._is_fresh():
            raise NodeNotReady(self.node_id)
        return pulse, tombstone

    async def exists(self, path: str) -> tuple[bool, int]:
        pulse, tombstone = await self.get_pulse(path)
        return (True, pulse.version) if pulse is not None else (False, tombstone)

    async def children(self, path: str) -> list[str]:
        return await self._local.get_all_nodes_for_path(path)

    async def children_versions(self, path: str) -> tuple[dict[str, int], dict[str, int]]:
        return await self._local.children_versions(path)

    async def pulses(self, path: str) -> list[Pulse]:
        return await self._local.get_all_pulse_for_path(path)

    async def delete_pulse_id(self, path: str, version: int) -> int:
        await self._local.delete_pulse_id(path, version)
        return self._local.held_after_delete(path, version, tree=False)

    async def delete_path(self, path: str, version: int) -> int:
        await self._local.delete_path(path, version)
        return self._local.held_after_delete(path, version, tree=True)

    async def create_path(self, path: str) -> None:
        await self._local.create_path(path)

    async def batch(self, pulses: Sequence[tuple[str, bytes, int]]) -> tuple[int, int]:
        return await self._local.send_pulses(pulses)

    async def members(self) -> dict[str, Any]:
        return self._members_doc()


class CoordinatingBackend:
    """`Backend` that answers for the whole cluster through the node's ring-aware client."""

    def __init__(
        self,
        local: LocalBackend,
        client: ClusterClient,
        *,
        fenced: Callable[[], bool] = lambda: False,
    ) -> None:
        """`fenced()`: the node lost its ZooKeeper session while its peers moved on; until it
        is registered again it answers nothing from its own ring: requests wait for the
        peers' ring (`NodeFenced`, 503, when that does not come within a request timeout)."""
        self.local = local
        self.client = client
        self._fenced = fenced
        # A ring of one member: whether that member is served locally, decided once per ring.
        self._solo_ring: Ring | None = None
        self._solo_local: LocalTransport | None = None

    # --- answers without waiting (see the module docstring) ---------------------------------

    def _alone(self, members: list[Member] | None) -> LocalTransport | None:
        """The local transport when `members` is exactly this node, served locally."""
        if members is None or len(members) != 1 or self._fenced():
            return None
        transport = self.client.transport(members[0])
        return transport if isinstance(transport, LocalTransport) else None

    def send_pulse_now(self, path: str, data: bytes) -> bool:
        """`ClusterClient.send_pulse(path, data)` when this node is the key's only owner."""
        if self._fenced():
            return False
        client = self.client
        ring = client.ring
        if ring is not None and ring.replication > 1 and len(ring.members) > 1:
            return False  # every key has two owners or more: none is this node's alone
        key = normalize_key(path)
        if ring is not None and ring is self._solo_ring:
            local = self._solo_local
        else:
            owners = client.owners_now(key)
            local = self._alone(owners)
            if owners is not None and ring is not None and len(ring.members) == 1:
                self._solo_ring, self._solo_local = ring, local
        if local is None:
            return False
        v = client.clock.now()
        stored = local.backend.store.send_pulse(key, data, v)
        client.failures.record_success(local.node_id)
        if not stored:  # an owner holding a newer version: the client's retry above it
            self._retry_above(local, key, data, v, local.backend.held_version(key))
        return True

    def send_pulses_now(self, pulses: Sequence[tuple[str, bytes]]) -> int:
        """`send_pulse_now` of each, in one pass, when the ring is this node alone (the
        membership and failure-tracker bookkeeping then happens once, not per entry)."""
        client = self.client
        ring = client.ring
        local = self._solo_local
        if ring is None or ring is not self._solo_ring or local is None or self._fenced():
            return 0  # `send_pulse_now` decides (and caches) whether this ring is ours alone
        store = local.backend.store
        clock = client.clock
        done = 0
        try:
            for path, data in pulses:
                key = normalize_key(path)
                v = clock.now()
                if not store.send_pulse(key, data, v):
                    # An owner holding a newer version: the client's retry, for this one.
                    self._retry_above(local, key, data, v, local.backend.held_version(key))
                done += 1
        except PmclusterError as exc:  # an invalid path, a full store: the rest goes one by one
            log.debug("answering a batch at once stopped after %d entries: %s", done, exc)
        if done:
            client.failures.record_success(local.node_id)
        return done

    def _retry_above(self, local: LocalTransport, key: str, data: bytes, v: int, held: int) -> None:
        """The rest of `ClusterClient.send_pulse`'s tries (one owner: this node, one rule:
        `VersionRetry.tries`) after a first try at `v` lost to `held`; raises
        `ClusterUnavailable` when the write is still behind after the last try."""
        store = local.backend.store
        tries = self.client.retry.tries(key, v)
        next(tries)
        while True:
            try:
                v = tries.send(held)
            except StopIteration:
                return
            held = 0 if store.send_pulse(key, data, v) else local.backend.held_version(key)

    def get_pulse_now(self, path: str) -> Pulse | NotNowType | None:
        """`ClusterClient.get_pulse` when this node is the key's only owner (grace ring too)."""
        key = normalize_key(path)
        client = self.client
        local = self._alone(client.owners_now(key, read=True))
        if local is None:
            return NOT_NOW
        store = local.backend.store
        value = store.get_pulse(key)
        tomb = 0 if value is not None else store.tombstone_version(key)
        pulse = readmerge.merge_pulse([(value, tomb)])
        if pulse is None and value is not None:
            return NOT_NOW  # a read repair to start: the async path does that
        client.failures.record_success(local.node_id)
        if pulse is not None:
            client.clock.observe(pulse.version)
        return pulse

    def exists_now(self, path: str) -> bool | NotNowType:
        """`ClusterClient.exists` when this node is the key's only owner (grace ring too)."""
        key = normalize_key(path)
        local = self._alone(self.client.owners_now(key, read=True))
        if local is None:
            return NOT_NOW
        found = local.backend.store.get_pulse(key) is not None
        self.client.failures.record_success(local.node_id)
        return found

    def get_all_nodes_for_path_now(self, path: str) -> list[str] | NotNowType:
        """`ClusterClient.get_all_nodes_for_path` when this node is the only member."""
        norm = normalize(path)
        local = self._alone(self.client.members_now())
        if local is None:
            return NOT_NOW
        answer = local.backend.store.children_versions(norm)
        self.client.failures.record_success(local.node_id)
        return readmerge.merge_children([answer])

    def get_all_pulse_for_path_now(self, path: str) -> list[Pulse] | NotNowType:
        """`ClusterClient.get_all_pulse_for_path` when this node is the only member."""
        norm = normalize(path)
        local = self._alone(self.client.members_now())
        if local is None:
            return NOT_NOW
        store = local.backend.store
        pulses = store.get_all_pulse_for_path(norm)
        _, child_tombs = store.children_versions(norm)
        present = norm == "/" or store.get_pulse(norm) is not None
        tombs = readmerge.subtree_tombstones(
            norm, child_tombs, 0 if present else store.tombstone_version(norm)
        )
        self.client.failures.record_success(local.node_id)
        # `readmerge.merge_pulses([pulses], tombs)`: one store's keys are unique, so merging
        # is sorting by path (and the tombstone filter, when there are tombstones).
        merged = sorted(pulses, key=_path)
        if tombs:
            merged = [p for p in merged if readmerge.covering_tombstone(p.path, tombs) < p.version]
        return merged

    async def _check(self) -> None:
        """Fenced, coordinate only on the peers' ring (`ClusterClient.follow_peers`): 503
        while the client has not caught up with it within one request timeout."""
        if self._fenced() and not await self.client.catch_up():
            raise NodeFenced("this node lost its ZooKeeper session; ask another node")

    def send_pulse_then(
        self, key: str, data: bytes, then: Callable[[BaseException | None], None]
    ) -> bool:
        """`send_pulse(key, data)` of a normalised key, its outcome passed to `then`, without
        a task of its own (`ClusterClient.send_pulse_then`); False, nothing done, when it
        must go the awaited way (fenced, or the client cannot coalesce it now)."""
        if self._fenced():
            return False
        return self.client.send_pulse_then(key, data, then)

    async def send_pulse(self, path: str, data: bytes, version: int | None = None) -> bool:
        await self._check()
        await self.client.send_pulse(path, data, version)
        return True

    async def send_pulses(
        self, pulses: Sequence[PulseEntry], *, trusted: bool = False
    ) -> tuple[int, int]:
        await self._check()
        await self.client.send_pulses(pulses)
        return len(pulses), 0

    def held_version(self, path: str) -> int:
        return 0  # the client already retried above what the owners held

    def held_after_delete(self, path: str, version: int, *, tree: bool) -> int:
        return 0  # the client already deleted again above what the owners held

    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]:
        await self._check()
        return await self.client.get_pulse(path), 0

    async def exists(self, path: str) -> tuple[bool, int]:
        await self._check()
        return await self.client.exists(path), 0

    async def get_all_nodes_for_path(self, path: str) -> list[str]:
        await self._check()
        return await self.client.get_all_nodes_for_path(path)

    async def children_versions(self, path: str) -> tuple[dict[str, int], dict[str, int]]:
        # Only coordinators ask for versions, and they ask each member themselves.
        return await self.local.children_versions(path)

    async def get_all_pulse_for_path(self, path: str) -> list[Pulse]:
        await self._check()
        return await self.client.get_all_pulse_for_path(path)

    async def delete_path(self, path: str, version: int | None = None) -> int:
        await self._check()
        await self.client.delete_path(path, version)
        return 0

    async def delete_pulse_id(self, path: str, version: int | None = None) -> bool:
        await self._check()
        await self.client.delete_pulse_id(path, version)
        return True

    async def create_path(self, path: str) -> None:
        await self._check()
        await self.client.create_path(path)
