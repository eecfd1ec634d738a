"""`LocalBackend`: the `pmcluster.protocol.backend.Backend` over this node's own store.

`LocalBackend` answers from this node's own `PulseStore`; a coordinating backend (forwarding
to a path's ring owners and merging their answers) implements the same `Backend` protocol, so
the HTTP layer never knows which one it talks to. Paths arrive already normalised by the
caller (`paths.normalize` / `normalize_key`). Reads return the covering tombstone version next
to "absent" so a coordinator can tell "never written" from "deleted at version v" and never
resurrect a deleted value from a replica that missed the delete.
"""

from __future__ import annotations

from collections.abc import Sequence

from pmcluster.protocol.backend import PulseEntry
from pmcluster.protocol.pulse import Pulse
from pmcluster.store import PulseStore


class LocalBackend:
    """`Backend` over this node's own store. Store calls are synchronous and take
    microseconds, so they run directly on the event loop (no executor hop)."""

    def __init__(self, store: PulseStore) -> None:
        self.store = store

    async def send_pulse(self, path: str, data: bytes, version: int | None = None) -> bool:
        return self.store.send_pulse(path, data, version)

    async def send_pulses(
        self, pulses: Sequence[PulseEntry], *, trusted: bool = False
    ) -> tuple[int, int]:
        """`trusted`: entries are `pulsecodec.decode`'s output, not validated again."""
        stored = self.store.send_pulses(pulses, trusted=trusted)
        return stored, len(pulses) - stored

    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]:
        pulse = self.store.get_pulse(path)
        if pulse is not None:
            return pulse, 0
        return None, self.store.tombstone_version(path)

    async def exists(self, path: str) -> tuple[bool, int]:
        if self.store.exists(path):
            return True, 0
        return False, self.store.tombstone_version(path)

    async def get_all_nodes_for_path(self, path: str) -> list[str]:
        return self.store.get_all_nodes_for_path(path)

    async def children_versions(self, path: str) -> tuple[dict[str, int], dict[str, int]]:
        return self.store.children_versions(path)

    async def get_all_pulse_for_path(self, path: str) -> list[Pulse]:
        return self.store.get_all_pulse_for_path(path)

    async def delete_path(self, path: str, version: int | None = None) -> int:
        return self.store.delete_path(path, version)

    async def delete_pulse_id(self, path: str, version: int | None = None) -> bool:
        return self.store.delete_pulse_id(path, version)

    async def create_path(self, path: str) -> None:
        self.store.create_path(path)

    def held_after_delete(self, path: str, version: int, *, tree: bool) -> int:
        if tree:
            newest = self.store.subtree_version(path)
        else:
            pulse = self.store.get_pulse(path)
            newest = 0 if pulse is None else pulse.version
        return newest if newest > version else 0

    def held_version(self, path: str) -> int:
        """The newest version this store holds for key `path`: its value's or the covering
        tombstone's, 0 when none (what an ignored write lost to)."""
        pulse = self.store.get_pulse(path)
        return max(0 if pulse is None else pulse.version, self.store.tombstone_version(path))
