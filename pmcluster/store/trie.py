"""The trie under `PulseStore`: its node types, and walks needing no store state.

A `Node` is one path component. It holds its children (a non-empty dict, or `None` for a
leaf), the key's value if the path is a key (`data`, `version`), the number of keys at or below
it (`n`), the newest value version at or below it (`maxv`, so a parent's is never below a
child's) and its tombstones (`tomb`), if any. Kept apart from the store so the store modules
(`pulsestore`, `base`, `room`, `deletes`) hold the rules (versions,
accounting, expiry) and this one the shape.
"""

from __future__ import annotations

from collections.abc import Iterator


class Tomb:
    """Tombstones on one trie node: of the exact key, and of the whole subtree (0 = none)."""

    __slots__ = ("key_expiry", "key_version", "tree_expiry", "tree_version")

    def __init__(self) -> None:
        self.key_version = 0
        self.key_expiry = 0
        self.tree_version = 0
        self.tree_expiry = 0


class Node:
    """A trie node; `data is None` means the path is not a key."""

    __slots__ = ("children", "data", "maxv", "n", "tomb", "version")

    def __init__(self) -> None:
        self.children: dict[str, Node] | None = None
        self.data: bytes | None = None
        self.version = 0
        self.n = 0  # keys at or below this node
        self.maxv = 0  # newest value version at or below this node
        self.tomb: Tomb | None = None

    def child(self, name: str) -> Node | None:
        return None if self.children is None else self.children.get(name)

    def prunable(self) -> bool:
        return self.n == 0 and self.tomb is None and not self.children


def components(path: str) -> list[str]:
    """The names along a normalised path (none for the root)."""
    return [] if path == "/" else path[1:].split("/")


def join(parent: str, name: str) -> str:
    """The path of child `name` of `parent`."""
    return "/" + name if parent == "/" else parent + "/" + name


def parent_key(names: list[str], depth: int) -> str:
    """The parents-index key of the node `depth` names down: its path, `""` for the root.

    `""` is what `key.rpartition("/")[0]` gives for a key directly under the root.
    """
    return "/" + "/".join(names[:depth]) if depth else ""


# Object sizes (CPython 3.11, 64-bit, sys.getsizeof), rounded up: an interior `Node` with its
# 6 slots, its slot in the parent's children dict and its name string (160); its children
# dict of a few entries (232); its parents-index entry: tuple header, key string header and
# dict slot (205).
INTERIOR_NODE_BYTES = 160 + 232 + 205


def index_entry_bytes(key_len: int, chain_len: int) -> int:
    """What one interior node below the root costs with its parents-index entry (key of
    `key_len` characters, chain of `chain_len` nodes); the root's own entry is free (one per
    store)."""
    if chain_len <= 1:
        return 0
    return INTERIOR_NODE_BYTES + key_len + 8 * chain_len


def iter_subtree(top: Node, top_path: str, *, sort: bool) -> Iterator[tuple[str, Node]]:
    """(path, node) for `top` and every node below it, pre-order, iteratively."""
    stack = [(top_path, top)]
    while stack:
        path, node = stack.pop()
        yield path, node
        if node.children:
            items = node.children.items()
            ordered = sorted(items, reverse=True) if sort else items
            stack.extend((join(path, name), child) for name, child in ordered)


def refresh_maxv(nodes: list[Node], removed: int | None = None) -> None:
    """Recompute `maxv` bottom-up along a root-to-node chain after removals below it.

    `removed`: the version of the one value removed, when only one was. A node whose `maxv`
    is newer than it took its `maxv` from another value, still there, so it and every node
    above it are unchanged: no scan of its children (a delete among many siblings stays
    O(depth)).
    """
    for node in reversed(nodes):
        if removed is not None and node.maxv > removed:
            break
        newest = node.version if node.data is not None else 0
        if node.children:
            for child in node.children.values():
                if child.maxv > newest:
                    newest = child.maxv
        if newest == node.maxv:
            break  # unchanged here, so unchanged above
        node.maxv = newest


def covering_tree_tomb(root: Node, path: str) -> tuple[int, Node | None]:
    """Newest subtree tombstone at or above `path`, and the node at `path` if any."""
    node: Node | None = root
    newest = 0
    for name in [None, *components(path)]:
        if name is not None:
            assert node is not None
            node = node.child(name)
            if node is None:
                return newest, None
        assert node is not None
        if node.tomb is not None and node.tomb.tree_version > newest:
            newest = node.tomb.tree_version
    return newest, node
