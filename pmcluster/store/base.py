"""The state every part of `PulseStore` shares, and the trie walks that need it.

`PulseStore` is built from this base and two parts over it, one job each:
`pmcluster.store.room` (memory-cap accounting and figures) and `deletes`
(deletes, tombstones, pruning and the expiry sweep); `pulsestore` holds the writes and
reads. The trie's node types and state-free walks are in `pmcluster.store.trie`. Import the
store from `pulsestore` only: these modules are its parts, not separate objects.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from pmcluster.errors import InvalidRequest
from pmcluster.store.trie import Node, components, index_entry_bytes, parent_key


class StoreBase:
    """The store's fields (set up here for every part) and its trie walks; see `PulseStore`."""

    def __init__(
        self,
        *,
        clock: Callable[[], int] = time.time_ns,
        tombstone_ttl_secs: float = 600.0,
        ttl_secs: float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._clock = clock
        self.max_bytes = max_bytes
        self.refused_writes = 0  # writes refused by the memory cap (a batch counts once)
        self._path_bytes = 0  # sum of the stored keys' path lengths
        self._tomb_ttl = int(tombstone_ttl_secs * 1e9)
        self._ttl = None if ttl_secs is None else int(ttl_secs * 1e9)
        self._root = Node()
        # Parents index: path of every trie node with children ("" for the root) -> the
        # chain of nodes from the root to it. Kept in step by `_link` (on a node's first
        # child), `_prune` and `_purge_subtree` (on its last).
        self._parents: dict[str, tuple[Node, ...]] = {}
        # What the trie's interior costs beyond the keys (`room.StoreRoom.footprint_bytes`):
        # each interior node (below the root) and its parents-index entry, a chain of d nodes
        # at depth d, so a deep path costs quadratically: counted, and bounded by the path
        # limits (`protocol.paths`).
        self._index_bytes = 0
        self._key_count = 0
        self._total_bytes = 0
        # (expiry, seq, path, kind): lazily checked against the node's current tombstone.
        self._tomb_heap: list[tuple[int, int, str, int]] = []
        self._seq = 0
        # key -> store-clock time of its last accepted write, oldest first (only with a TTL).
        self._written: OrderedDict[str, int] = OrderedDict()

    @staticmethod
    def _check_version(version: int | None) -> int | None:
        """A caller's version: None for "now" (None or 0), else a positive int, else raise."""
        if version is None or version == 0:
            return None
        if not isinstance(version, int) or isinstance(version, bool):
            raise InvalidRequest(f"version must be an integer, not {type(version).__name__}")
        if version < 0:
            raise InvalidRequest(f"negative version {version}")
        return version

    def _walk(self, path: str, *, create: bool) -> tuple[list[Node], list[str]]:
        """Nodes from the root along `path` (all of them if `create`, else as far as they exist)."""
        names = components(path)
        node = self._root
        nodes = [node]
        for name in names:
            nxt = node.child(name)
            if nxt is None:
                if create:
                    self._grow(nodes, names)
                break
            node = nxt
            nodes.append(node)
        return nodes, names

    def _grow(self, nodes: list[Node], names: list[str]) -> Node:
        """Create the nodes for `names` below `nodes[-1]` (the chain so far, extended in place);
        the last one."""
        node = nodes[-1]
        for name in names[len(nodes) - 1 :]:
            nxt = Node()
            if node.children is None:
                node.children = {}
                self._link(nodes, names)
            node.children[name] = nxt
            node = nxt
            nodes.append(node)
        return node

    def _find(self, path: str) -> Node | None:
        """The trie node at the normalised `path`, or None; walks from the root."""
        node: Node | None = self._root
        if path == "/":
            return node
        for name in path[1:].split("/"):
            assert node is not None
            node = node.child(name)
            if node is None:
                return None
        return node

    def _link(self, nodes: list[Node], names: list[str]) -> None:
        """Index `nodes[-1]` (reached along `names` from the root) as just given children."""
        key = parent_key(names, len(nodes) - 1)
        self._parents[key] = tuple(nodes)
        self._index_bytes += index_entry_bytes(len(key), len(nodes))
