"""Memory-cap accounting for `PulseStore`: its size figures and room checks.

Memory cap (`max_bytes`): the store keeps a *footprint* estimate of what its keys cost, payload
plus path plus `KEY_OVERHEAD_BYTES` per key (the measured trie and object overhead, rounded
up), plus its interior: each interior node and its parents-index entry (a chain of d nodes at
depth d, so quadratic in a path's depth; `pmcluster.path.max.depth` bounds it). A write that
would grow the footprint past the cap raises `InsufficientStorage` and changes nothing; a batch
is refused whole, judged before anything is stored. Rewriting a key with a value no larger than
the stored one never grows the footprint, so steady heartbeat traffic keeps working at the cap.
Tombstones are not counted (deletes free memory).

The counters themselves (`_key_count`, `_total_bytes`, `_path_bytes`, `_index_bytes`) are kept
in step by the writes (`pulsestore`, `base`) and removals (`deletes`); this module reads them.
"""

from __future__ import annotations

from collections.abc import Sequence

from pmcluster.errors import InsufficientStorage
from pmcluster.store.base import StoreBase
from pmcluster.store.trie import Node, index_entry_bytes

# Bytes a key costs beyond its payload and path (trie node, dict slot, bytes object header),
# from scripts/bench_store.py (about 215-300 B measured), rounded up.
KEY_OVERHEAD_BYTES = 320


def shape_bound(key: str) -> int:
    """The most a new key of depth d can add to the trie's interior: d - 1 interior nodes,
    each costing at most as much as one with the key's length and depth."""
    depth = key.count("/")
    return (depth - 1) * index_entry_bytes(len(key), depth)


class StoreRoom(StoreBase):
    """`PulseStore`'s figures and memory-cap checks; a part of the store, not used alone."""

    @property
    def key_count(self) -> int:
        """Number of stored keys."""
        return self._key_count

    @property
    def total_bytes(self) -> int:
        """Sum of the payload sizes of all stored keys."""
        return self._total_bytes

    @property
    def footprint_bytes(self) -> int:
        """Estimated memory held by stored keys: payloads, paths and per-key overhead."""
        keys = self._total_bytes + self._path_bytes + self._key_count * KEY_OVERHEAD_BYTES
        return keys + self._index_bytes

    def _growth(self, key: str, data: bytes, counted: set[str] | None = None) -> int:
        """How much storing `data` at `key` would change the footprint (ignoring versions)."""
        node = self._find(key)
        if node is not None and node.data is not None:
            return len(data) - len(node.data)
        return len(data) + len(key) + KEY_OVERHEAD_BYTES + self._interior_growth(key, counted)

    def _interior_growth(self, key: str, counted: set[str] | None = None) -> int:
        """What a new key adds to the trie's interior: every node along it that gets its
        first child (below the root) with its parents-index entry; `counted`: the interior
        nodes already counted for earlier entries of the same batch."""
        node: Node | None = self._root
        growth = 0
        prefix_len = 0
        for depth, name in enumerate(key[1:].split("/")):
            if depth and (node is None or not node.children):
                if counted is not None:
                    prefix = key[:prefix_len]
                    if prefix in counted:
                        node = None
                        prefix_len += 1 + len(name)
                        continue
                    counted.add(prefix)
                growth += index_entry_bytes(prefix_len, depth + 1)
            node = node.child(name) if node is not None else None
            prefix_len += 1 + len(name)
        return growth

    def _check_batch_room(self, entries: Sequence[tuple[str, bytes, int | None]]) -> None:
        """`_check_room` for a whole batch, judged before anything is stored.

        First from sizes alone: every entry stored as a new key is the most a batch can grow
        the footprint, so when even that fits no trie walk is needed (the usual case, far
        below the cap). Only near the cap is each entry's exact growth looked up.
        """
        assert self.max_bytes is not None
        bound = len(entries) * KEY_OVERHEAD_BYTES
        for key, data, _ in entries:
            bound += len(key) + len(data) + shape_bound(key)
        if self.footprint_bytes + bound <= self.max_bytes:
            return
        counted: set[str] = set()
        self._check_room(sum(max(0, self._growth(key, data, counted)) for key, data, _ in entries))

    def _check_room(self, growth: int) -> None:
        """Raise `InsufficientStorage` when growing the footprint by `growth` passes the cap."""
        if self.max_bytes is None or growth <= 0:
            return
        if self.footprint_bytes + growth > self.max_bytes:
            self.refused_writes += 1
            raise InsufficientStorage(
                f"write of {growth} more bytes refused: the store holds "
                f"{self.footprint_bytes} of its {self.max_bytes}-byte limit "
                "(pmcluster.memory.max.bytes)"
            )
