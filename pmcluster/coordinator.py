"""Any node answers any request: coordination of plain requests across the ring.

A request without `X-Pmcluster-Forwarded` (curl, a load balancer, DNS round-robin) reaches a
`CoordinatingBackend`, which runs it through the node's own ring-aware `ClusterClient`: writes
go to the path's owners, reads ask the owners and merge (newest of values and tombstones),
listings and recursive deletes fan out to every member. The client's requests to other nodes
carry `X-Pmcluster-Forwarded: 1`, so they are answered from the receiver's store and never
forwarded again; its requests to this node itself go through `LocalTransport`, straight to the
local store without HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pmcluster.backend import LocalBackend, PulseEntry
from pmcluster.client import ClusterClient
from pmcluster.store import Pulse

__all__ = ["CoordinatingBackend", "LocalTransport"]


class LocalTransport:
    """The `Transport` of a node to itself: the local store, no HTTP, no forwarding."""

    def __init__(
        self, node_id: str, local: LocalBackend, members_doc: Callable[[], dict[str, Any]]
    ) -> None:
        self.node_id = node_id
        self._local = local
        self._members_doc = members_doc

    def __repr__(self) -> str:
        return f"LocalTransport({self.node_id!r})"

    async def put_pulse(self, path: str, data: bytes, version: int) -> int:
        if await self._local.send_pulse(path, data, version):
            return 0
        return self._local.held_version(path)

    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]:
        return await self._local.get_pulse(path)

    async def exists(self, path: str) -> tuple[bool, int]:
        pulse, tombstone = await self._local.get_pulse(path)
        return (True, pulse.version) if pulse is not None else (False, tombstone)

    async def children(self, path: str) -> list[str]:
        return await self._local.get_all_nodes_for_path(path)

    async def children_versions(self, path: str) -> tuple[dict[str, int], dict[str, int]]:
        return await self._local.children_versions(path)

    async def pulses(self, path: str) -> list[Pulse]:
        return await self._local.get_all_pulse_for_path(path)

    async def delete_pulse_id(self, path: str, version: int) -> None:
        await self._local.delete_pulse_id(path, version)

    async def delete_path(self, path: str, version: int) -> None:
        await self._local.delete_path(path, version)

    async def create_path(self, path: str) -> None:
        await self._local.create_path(path)

    async def batch(self, pulses: Sequence[tuple[str, bytes, int]]) -> tuple[int, int]:
        return await self._local.send_pulses(pulses)

    async def members(self) -> dict[str, Any]:
        return self._members_doc()


class CoordinatingBackend:
    """`Backend` that answers for the whole cluster through the node's ring-aware client."""

    def __init__(self, local: LocalBackend, client: ClusterClient) -> None:
        self.local = local
        self.client = client

    async def send_pulse(self, path: str, data: bytes, version: int | None = None) -> bool:
        await self.client.send_pulse(path, data, version)
        return True

    async def send_pulses(self, pulses: Sequence[PulseEntry]) -> tuple[int, int]:
        await self.client.send_pulses(pulses)
        return len(pulses), 0

    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]:
        return await self.client.get_pulse(path), 0

    async def exists(self, path: str) -> tuple[bool, int]:
        return await self.client.exists(path), 0

    async def get_all_nodes_for_path(self, path: str) -> list[str]:
        return await self.client.get_all_nodes_for_path(path)

    async def children_versions(self, path: str) -> tuple[dict[str, int], dict[str, int]]:
        # Only coordinators ask for versions, and they ask each member themselves.
        return await self.local.children_versions(path)

    async def get_all_pulse_for_path(self, path: str) -> list[Pulse]:
        return await self.client.get_all_pulse_for_path(path)

    async def delete_path(self, path: str, version: int | None = None) -> int:
        await self.client.delete_path(path, version)
        return 0

    async def delete_pulse_id(self, path: str, version: int | None = None) -> bool:
        await self.client.delete_pulse_id(path, version)
        return True

    async def create_path(self, path: str) -> None:
        await self.client.create_path(path)
