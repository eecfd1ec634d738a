"""Removals for `PulseStore`: deletes, tombstones, hand-off discards, expiry.

A delete leaves a tombstone (the exact key's, or a whole subtree's) with its version, so a
replica that missed the delete cannot resurrect the value; tombstones expire after the
store's `tombstone_ttl_secs`, from a heap checked lazily against each node's current tombstone.
With `ttl_secs`, keys not rewritten for that long are dropped too (a write-ordered dict). Both
are dropped by `_sweep`, which every operation runs first when something is due.

Trie nodes with no key at or below them and no tombstones on them are pruned, so a deleted
or expired subtree leaves nothing behind; the parents index loses an entry with the last
child of its node. Every removal keeps the key count, byte figures, `n` and `maxv` in step.
"""

from __future__ import annotations

import heapq

from pmcluster.protocol.paths import normalize, normalize_key
from pmcluster.store.base import StoreBase
from pmcluster.store.trie import (
    Node,
    Tomb,
    components,
    index_entry_bytes,
    iter_subtree,
    parent_key,
    refresh_maxv,
)

_KEY = 0  # tombstone kinds in the expiry heap
_TREE = 1


class StoreDeletes(StoreBase):
    """`PulseStore`'s deletes and expiry; a part of the store, not used alone."""

    def delete_pulse_id(self, path: str, version: int | None = None) -> bool:
        """Delete the exact key (children untouched) and tombstone it; True if a key went.

        With a version, only a value with version <= it goes. Without one, the tombstone
        gets max(now, the stored version), so the key always goes.
        """
        key = normalize_key(path)
        version = self._check_version(version)
        now = self._clock()
        self._sweep(now)
        nodes, _ = self._walk(key, create=True)  # a new node holds no value: version 0
        node = nodes[-1]
        if version is None:
            version = max(now, node.version)
        # The tombstone goes on first, so dropping the value below prunes nothing.
        tomb = node.tomb if node.tomb is not None else Tomb()
        node.tomb = tomb
        if version > tomb.key_version:
            tomb.key_version = version
        expiry = now + self._tomb_ttl
        if expiry > tomb.key_expiry:
            tomb.key_expiry = expiry
            self._push_tomb(expiry, key, _KEY)
        if node.data is None or node.version > version:
            return False
        self._drop_key(nodes, key)
        return True

    def tombstones(self) -> list[tuple[str, int, int]]:
        """Every live tombstone as (path, subtree version, exact-key version); 0 = none.

        For hand-off: a node passes its deletes on along with its values, so a new owner
        never takes a replica's stale copy for the newest. O(trie nodes).
        """
        self._sweep(self._clock())
        return [
            (path, node.tomb.tree_version, node.tomb.key_version)
            for path, node in iter_subtree(self._root, "/", sort=False)
            if node.tomb is not None and (node.tomb.tree_version or node.tomb.key_version)
        ]

    def discard(self, path: str, version: int) -> bool:
        """Forget the exact key if it still holds `version`, leaving no tombstone.

        For hand-off after a ring change: a node drops a copy it no longer owns once the new
        owners hold it. This is not a delete: nothing stops or hides the owners' copies.
        """
        key = normalize_key(path)
        self._sweep(self._clock())
        nodes, names = self._walk(key, create=False)
        node = nodes[-1] if len(nodes) == len(names) + 1 else None
        if node is None or node.data is None or node.version != version:
            return False
        self._drop_key(nodes, key)
        return True

    def delete_path(self, path: str, version: int | None = None) -> int:
        """Delete the key `path` and every key under `path/`; returns the number removed.

        Leaves a subtree tombstone. With a version, only values with version <= it go and
        later writes at or under `path` with version <= it are ignored; without one, the
        tombstone gets max(now, newest version in the subtree), so everything goes.
        `delete_path("/")` deletes everything.
        """
        norm = normalize(path)
        version = self._check_version(version)
        now = self._clock()
        self._sweep(now)
        nodes, _ = self._walk(norm, create=True)  # a new node has nothing below: maxv 0
        top = nodes[-1]
        if version is None:
            version = max(now, top.maxv)
        before = top.n
        self._purge_subtree(top, norm, version)
        removed = before - top.n
        tomb = top.tomb if top.tomb is not None else Tomb()
        top.tomb = tomb
        if version > tomb.tree_version:
            tomb.tree_version = version
        expiry = now + self._tomb_ttl
        if expiry > tomb.tree_expiry:
            tomb.tree_expiry = expiry
            self._push_tomb(expiry, norm, _TREE)
        if removed:
            for ancestor in nodes[:-1]:
                ancestor.n -= removed
            refresh_maxv(nodes[:-1])
        return removed

    def clear(self) -> None:
        """Drop every key and tombstone (a new ZooKeeper session starts from empty)."""
        self._root = Node()
        self._parents.clear()
        self._index_bytes = 0
        self._key_count = 0
        self._total_bytes = 0
        self._path_bytes = 0
        self._tomb_heap.clear()
        self._written.clear()

    def expire(self) -> int:
        """Drop expired tombstones and keys past their TTL; returns how many were dropped."""
        return self._sweep(self._clock())

    def _drop_key(self, nodes: list[Node], key: str) -> None:
        """Remove the key held by `nodes[-1]` (the full root-to-key chain), then prune."""
        node = nodes[-1]
        assert node.data is not None
        removed = node.version
        self._key_count -= 1
        self._total_bytes -= len(node.data)
        self._path_bytes -= len(key)
        node.data = None
        node.version = 0
        for each in nodes:
            each.n -= 1
        if self._ttl is not None:
            self._written.pop(key, None)
        refresh_maxv(nodes, removed)
        self._prune(nodes, components(key))

    def _prune(self, nodes: list[Node], names: list[str]) -> None:
        """Unlink empty nodes at the end of a root-to-node chain."""
        for depth in range(len(nodes) - 1, 0, -1):
            node = nodes[depth]
            if not node.prunable():
                break
            parent = nodes[depth - 1]
            assert parent.children is not None
            del parent.children[names[depth - 1]]
            if not parent.children:
                parent.children = None
                key = parent_key(names, depth - 1)
                del self._parents[key]
                self._index_bytes -= index_entry_bytes(len(key), depth)

    def _purge_subtree(self, top: Node, top_path: str, version: int) -> None:
        """Remove keys and tombstones with version <= `version` at or under `top`.

        Recomputes `n` and `maxv` bottom-up and prunes emptied nodes below `top`.
        """
        order = list(iter_subtree(top, top_path, sort=False))
        track = self._ttl is not None
        for path, node in reversed(order):
            if node.data is not None and node.version <= version:
                self._key_count -= 1
                self._total_bytes -= len(node.data)
                self._path_bytes -= len(path)
                node.data = None
                node.version = 0
                if track:
                    self._written.pop(path, None)
            tomb = node.tomb
            if tomb is not None:
                if tomb.key_version <= version:
                    tomb.key_version = tomb.key_expiry = 0
                if tomb.tree_version <= version:
                    tomb.tree_version = tomb.tree_expiry = 0
                if not tomb.key_version and not tomb.tree_version:
                    node.tomb = None
            count = 1 if node.data is not None else 0
            newest = node.version
            if node.children:
                for name, child in list(node.children.items()):
                    if child.prunable():
                        del node.children[name]
                        continue
                    count += child.n
                    if child.maxv > newest:
                        newest = child.maxv
                if not node.children:
                    node.children = None
                    key = "" if path == "/" else path
                    del self._parents[key]
                    self._index_bytes -= index_entry_bytes(len(key), len(components(path)) + 1)
            node.n = count
            node.maxv = newest

    def _push_tomb(self, expiry: int, path: str, kind: int) -> None:
        self._seq += 1
        heapq.heappush(self._tomb_heap, (expiry, self._seq, path, kind))

    def _sweep(self, now: int) -> int:
        """Drop tombstones and TTL'd keys that are due at `now`; returns how many."""
        dropped = 0
        heap = self._tomb_heap
        while heap and heap[0][0] <= now:
            expiry, _, path, kind = heapq.heappop(heap)
            nodes, names = self._walk(path, create=False)
            if len(nodes) != len(names) + 1:
                continue
            node = nodes[-1]
            tomb = node.tomb
            if tomb is None:
                continue
            if kind == _KEY and tomb.key_expiry == expiry:
                tomb.key_version = tomb.key_expiry = 0
            elif kind == _TREE and tomb.tree_expiry == expiry:
                tomb.tree_version = tomb.tree_expiry = 0
            else:
                continue  # superseded by a later delete of the same path
            dropped += 1
            if not tomb.key_version and not tomb.tree_version:
                node.tomb = None
                self._prune(nodes, names)
        if self._ttl is not None:
            written = self._written
            deadline = now - self._ttl
            while written:
                key, at = next(iter(written.items()))
                if at > deadline:
                    break
                nodes, names = self._walk(key, create=False)
                if len(nodes) == len(names) + 1 and nodes[-1].data is not None:
                    self._drop_key(nodes, key)  # also pops `key` from `written`
                    dropped += 1
                else:
                    del written[key]
        return dropped
