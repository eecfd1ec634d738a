"""The in-memory heartbeat store: Storm Pacemaker's eight operations, plus versions and tombstones.

Layout: a trie of path components (`pmcluster.storetrie.Node`: children, the key's value, the
number of keys at or below it, the newest value version at or below it, tombstones), plus a
*parents index*: the path of every trie node that has children -> its root-to-node chain. A
key `/a/b/c` is then found without walking the trie: `rpartition("/")` gives `/a/b` and `c`,
one lookup gives the chain, a second the leaf among its children. The index has one entry
per interior node (about one per topology for Storm's paths), so it costs next to no memory,
unlike a full-path index (measured: ~136 B per key more RSS). Costs:

- point operations (`send_pulse`, `get_pulse`, `exists`) on an existing key: two dict
  lookups, plus O(depth) only for the ancestors whose newest version a write raises; new
  keys, `delete_pulse_id`, `tombstone_version`: O(depth);
- `get_all_nodes_for_path`, `children_versions`: O(children of the path) (plus sorting);
- `get_all_pulse_for_path`, `delete_path`: O(size of the subtree), never a scan of all keys;
- housekeeping: every operation first drops what is due (expired tombstones from a heap,
  keys past their TTL from a write-ordered dict), amortised O(depth) per dropped item.

A rewrite of an existing key checks no tombstones, because no live tombstone covering a
stored value is as new as it: a delete removes every value it covers, and a write is only
taken when newer than every tombstone covering it. So "newer than the stored value" implies
"newer than its tombstones".

Trie nodes with no key at or below them and no tombstones on them are pruned, so a deleted
or expired subtree leaves nothing behind. Measured overhead (scripts/bench_store.py): about
215 bytes of RSS per key beyond the payload with Storm-shaped paths (~300 with 5 KB payloads,
counting malloc rounding of the payload itself). Versions are ns since the epoch by the writer's
clock: an older version never replaces a newer one, equal versions keep the larger data (so
every replica converges), and a delete leaves a tombstone so a replica that missed it cannot
resurrect the value.

Memory cap (`max_bytes`): the store keeps a *footprint* estimate of what its keys cost, payload
plus path plus `KEY_OVERHEAD_BYTES` per key (the measured trie and object overhead, rounded
up). A write that would grow the footprint past the cap raises `InsufficientStorage` and
changes nothing; a batch is refused whole, judged before anything is stored. Rewriting a key
with a value no larger than the stored one never grows the footprint, so steady heartbeat
traffic keeps working at the cap. Tombstones are not counted (deletes free memory).

Not thread-safe, by design: the node calls it from its event loop only.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pmcluster.errors import InsufficientStorage, InvalidPath, InvalidRequest
from pmcluster.paths import normalize, normalize_key
from pmcluster.storetrie import (
    Node,
    Tomb,
    components,
    covering_tree_tomb,
    iter_subtree,
    parent_key,
    refresh_maxv,
)

__all__ = ["KEY_OVERHEAD_BYTES", "Pulse", "PulseStore"]

# Bytes a key costs beyond its payload and path (trie node, dict slot, bytes object header),
# from scripts/bench_store.py (about 215-300 B measured), rounded up.
KEY_OVERHEAD_BYTES = 320

_KEY = 0  # tombstone kinds in the expiry heap
_TREE = 1


@dataclass(frozen=True, slots=True)
class Pulse:
    """One stored heartbeat: its path, opaque bytes, and version (ns, writer clock)."""

    path: str
    data: bytes
    version: int


_new_object = object.__new__
_set_path: Any = vars(Pulse)["path"].__set__
_set_data: Any = vars(Pulse)["data"].__set__
_set_version: Any = vars(Pulse)["version"].__set__


def _pulse(path: str, data: bytes, version: int) -> Pulse:
    """`Pulse(path, data, version)` at half the cost: fills the slots directly, skipping the
    frozen dataclass's `__init__` (`object.__setattr__` per field); reads build one per key."""
    pulse = _new_object(Pulse)
    _set_path(pulse, path)
    _set_data(pulse, data)
    _set_version(pulse, version)
    return pulse


class PulseStore:
    """Heartbeats in memory, keyed by path; see the module docstring for costs and rules."""

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
        # chain of nodes from the root to it. Kept in step by `_link` and `_unlink_children`.
        self._parents: dict[str, tuple[Node, ...]] = {}
        self._key_count = 0
        self._total_bytes = 0
        # (expiry, seq, path, kind): lazily checked against the node's current tombstone.
        self._tomb_heap: list[tuple[int, int, str, int]] = []
        self._seq = 0
        # key -> store-clock time of its last accepted write, oldest first (only with a TTL).
        self._written: OrderedDict[str, int] = OrderedDict()

    # ---------------------------------------------------------------- figures

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
        return self._total_bytes + self._path_bytes + self._key_count * KEY_OVERHEAD_BYTES

    # ---------------------------------------------------------------- writes

    def send_pulse(self, path: str, data: bytes, version: int | None = None) -> bool:
        """Store `data` at key `path`; True if the store now holds this write.

        `version` None (or 0, as on the wire) means "now" by the store's clock. Ignored
        (False) when a tombstone covering the key has a version >= `version`, when the
        stored value is newer, or on an equal version when the stored data is larger.
        """
        if version is not None and (type(version) is not int or version <= 0):
            normalize_key(path)  # errors come in the usual order: the path's first
            version = self._check_version(version)  # 0 -> None; raises for the invalid
        if not isinstance(data, bytes):
            normalize_key(path)
            data = bytes(data)
        found = self._lookup(path)  # a stored key is valid and normalised: no need to check
        if found is None:
            path = normalize_key(path)
        now = self._tidy()
        if version is None:
            version = now
        if found is not None and found[1].data is not None:
            return self._rewrite(found[0], found[1], path, data, version, now)
        return self._put(path, data, version, now, check=True)

    def send_pulses(
        self, pulses: Sequence[tuple[str, bytes, int | None]], *, trusted: bool = False
    ) -> int:
        """Store many pulses, validating every entry before storing any; returns stored count.

        `trusted`: the entries come straight from `pulsecodec.decode` (normalised key paths,
        `bytes` payloads, versions >= 0 with 0 or None meaning "now"), so they are not
        validated again. Only for callers that hand over the decoder's output unchanged.
        """
        checked: Sequence[tuple[str, bytes, int | None]]
        if trusted:
            checked = pulses
        else:
            checked = []
            for index, (path, data, version) in enumerate(pulses):
                try:
                    key = normalize_key(path)
                    checked_version = self._check_version(version)
                except InvalidPath as exc:
                    raise InvalidPath(f"entry {index}: {exc}") from None
                except InvalidRequest as exc:
                    raise InvalidRequest(f"entry {index}: {exc}") from None
                checked.append(
                    (key, data if isinstance(data, bytes) else bytes(data), checked_version)
                )
        now = self._tidy()
        if self.max_bytes is not None:
            self._check_batch_room(checked)
        # The loop is `_rewrite` inlined for keys already stored (the steady state: workers
        # rewrite their heartbeats); new keys take `_put`. Keep the two in step.
        put = self._put
        parents = self._parents.get
        written = self._written if self._ttl is not None else None
        stored = 0
        grown = 0
        for key, data, version in checked:
            if not version:
                version = now
            head, _, name = key.rpartition("/")
            chain = parents(head)
            node = None if chain is None else chain[-1].children.get(name)  # type: ignore[union-attr]
            old = None if node is None else node.data
            if old is None:
                stored += put(key, data, version, now)
                continue
            assert node is not None and chain is not None
            held = node.version
            if version <= held:
                if version < held or data < old:
                    continue
                if data == old:
                    stored += 1
                    continue
            grown += len(data) - len(old)
            node.data = data
            node.version = version
            if version > node.maxv:
                node.maxv = version
                for each in reversed(chain):
                    if version <= each.maxv:
                        break  # a parent's maxv is never below its child's
                    each.maxv = version
            if written is not None:
                written[key] = now
                written.move_to_end(key)
            stored += 1
        self._total_bytes += grown
        return stored

    def delete_pulse_id(self, path: str, version: int | None = None) -> bool:
        """Delete the exact key (children untouched) and tombstone it; True if a key went.

        With a version, only a value with version <= it goes. Without one, the tombstone
        gets max(now, the stored version), so the key always goes.
        """
        key = normalize_key(path)
        version = self._check_version(version)
        now = self._clock()
        self._sweep(now)
        nodes, names = self._walk(key, create=False)
        node = nodes[-1] if len(nodes) == len(names) + 1 else None
        if version is None:
            version = now if node is None else max(now, node.version)
        removed = False
        if node is not None and node.data is not None and node.version <= version:
            self._drop_key(nodes, key)
            removed = True
        nodes, names = self._walk(key, create=True)
        node = nodes[-1]
        tomb = node.tomb if node.tomb is not None else Tomb()
        node.tomb = tomb
        if version > tomb.key_version:
            tomb.key_version = version
        expiry = now + self._tomb_ttl
        if expiry > tomb.key_expiry:
            tomb.key_expiry = expiry
            self._push_tomb(expiry, key, _KEY)
        return removed

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
        if version is None:
            probe, names = self._walk(norm, create=False)
            found = len(probe) == len(names) + 1
            version = max(now, probe[-1].maxv) if found else now
        nodes, _ = self._walk(norm, create=True)
        top = nodes[-1]
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

    def create_path(self, path: str) -> None:
        """Validate `path`; no stored effect (Storm's create_path is a no-op)."""
        normalize(path)

    def clear(self) -> None:
        """Drop every key and tombstone (a new ZooKeeper session starts from empty)."""
        self._root = Node()
        self._parents.clear()
        self._key_count = 0
        self._total_bytes = 0
        self._path_bytes = 0
        self._tomb_heap.clear()
        self._written.clear()

    # ---------------------------------------------------------------- reads

    def get_pulse(self, path: str) -> Pulse | None:
        """The pulse stored at key `path`, or None when absent."""
        found = self._lookup(path)
        if found is None:
            path = normalize_key(path)
        self._tidy()
        node = self._find(path) if found is None or found[1].data is None else found[1]
        if node is None or node.data is None:
            return None
        return _pulse(path, node.data, node.version)

    def exists(self, path: str) -> bool:
        """True if exactly `path` is a key (a path with only children below it is not)."""
        found = self._lookup(path)
        if found is None:
            path = normalize_key(path)
        self._tidy()
        if found is not None and found[1].data is not None:
            return True
        node = self._find(path)
        return node is not None and node.data is not None

    def get_all_nodes_for_path(self, path: str) -> list[str]:
        """Sorted names of the direct children of `path` that have a key at or below them."""
        norm = normalize(path)
        self._sweep(self._clock())
        node = self._find(norm)
        if node is None or not node.children:
            return []
        return sorted(name for name, child in node.children.items() if child.n)

    def get_all_pulse_for_path(self, path: str) -> list[Pulse]:
        """Every pulse at or under `path`, in path order (component by component)."""
        norm = normalize(path)
        self._sweep(self._clock())
        node = self._find(norm)
        if node is None or not node.n:
            return []
        out: list[Pulse] = []
        for full, each in iter_subtree(node, norm, sort=True):
            if each.data is not None:
                out.append(_pulse(full, each.data, each.version))
        return out

    def tombstone_version(self, path: str) -> int:
        """Newest tombstone covering `path`: its exact-key one or any subtree one at or above it.

        0 when none.
        """
        norm = normalize(path)
        self._sweep(self._clock())
        newest, node = covering_tree_tomb(self._root, norm)
        if node is not None and node.tomb is not None:
            newest = max(newest, node.tomb.key_version)
        return newest

    def children_versions(self, path: str) -> tuple[dict[str, int], dict[str, int]]:
        """({child: newest value version under it}, {child: newest tombstone covering it}).

        A child is in the first map if it has a key at or below it. The second map covers
        every child the store knows of (with keys or tombstones) and counts subtree
        tombstones on `path` and its ancestors, on the child, and the child's exact-key
        tombstone, like `tombstone_version(child)`. A subtree tombstone on `path` or an
        ancestor also covers children this store has never seen (another replica may hold
        them): it is given under the name `""`, which no child can have.
        """
        norm = normalize(path)
        self._sweep(self._clock())
        inherited, node = covering_tree_tomb(self._root, norm)
        values: dict[str, int] = {}
        tombs: dict[str, int] = {"": inherited} if inherited else {}
        if node is None or not node.children:
            return values, tombs
        for name, child in node.children.items():
            if child.n:
                values[name] = child.maxv
            newest = inherited
            if child.tomb is not None:
                newest = max(newest, child.tomb.tree_version, child.tomb.key_version)
            if newest:
                tombs[name] = newest
        return values, tombs

    # ---------------------------------------------------------------- housekeeping

    def expire(self) -> int:
        """Drop expired tombstones and keys past their TTL; returns how many were dropped."""
        return self._sweep(self._clock())

    # ---------------------------------------------------------------- internals

    def _lookup(self, path: object) -> tuple[tuple[Node, ...], Node] | None:
        """(parent chain, node) of the stored key `path` if `path` is exactly one, else None.

        Found by the parents index alone, so `path` needs no validation: a hit is a stored
        key's own (normalised) path. None means "look the slow way" (absent, or a path that
        normalises to another, or not a path at all). Call before `_tidy` (so a bad path is
        still refused before anything is swept, as ever) and check `node.data` after it.
        """
        if type(path) is not str:
            return None
        head, _, name = path.rpartition("/")
        chain = self._parents.get(head)
        if chain is None:
            return None
        node = chain[-1].children.get(name)  # type: ignore[union-attr]
        return None if node is None or node.data is None else (chain, node)

    def _tidy(self) -> int:
        """The store clock's time, after sweeping what is due (skipping the call when nothing
        can be: the common case)."""
        now = self._clock()
        heap = self._tomb_heap
        if (heap and heap[0][0] <= now) or self._ttl is not None:
            self._sweep(now)
        return now

    @staticmethod
    def _check_version(version: int | None) -> int | None:
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
                if not create:
                    break
                nxt = Node()
                if node.children is None:
                    node.children = {}
                    self._link(nodes, names)
                node.children[name] = nxt
            node = nxt
            nodes.append(node)
        return nodes, names

    def _find(self, path: str) -> Node | None:
        node: Node | None = self._root
        if path == "/":
            return node
        for name in path[1:].split("/"):
            assert node is not None
            node = node.child(name)
            if node is None:
                return None
        return node

    def _growth(self, key: str, data: bytes) -> int:
        """How much storing `data` at `key` would change the footprint (ignoring versions)."""
        node = self._find(key)
        if node is not None and node.data is not None:
            return len(data) - len(node.data)
        return len(data) + len(key) + KEY_OVERHEAD_BYTES

    def _check_batch_room(self, entries: Sequence[tuple[str, bytes, int | None]]) -> None:
        """`_check_room` for a whole batch, judged before anything is stored.

        First from sizes alone: every entry stored as a new key is the most a batch can grow
        the footprint, so when even that fits no trie walk is needed (the usual case, far
        below the cap). Only near the cap is each entry's exact growth looked up.
        """
        assert self.max_bytes is not None
        bound = len(entries) * KEY_OVERHEAD_BYTES
        for key, data, _ in entries:
            bound += len(key) + len(data)
        if self.footprint_bytes + bound <= self.max_bytes:
            return
        self._check_room(sum(max(0, self._growth(key, data)) for key, data, _ in entries))

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

    def _put(self, key: str, data: bytes, version: int, now: int, *, check: bool = False) -> bool:
        names = key[1:].split("/")
        node = self._root
        nodes = [node]
        tomb = 0
        missing = -1
        append = nodes.append
        for depth, name in enumerate(names):
            if node.tomb is not None and node.tomb.tree_version > tomb:
                tomb = node.tomb.tree_version
            children = node.children
            nxt = None if children is None else children.get(name)
            if nxt is None:
                missing = depth
                break
            node = nxt
            append(node)
        if missing < 0 and node.tomb is not None:
            tomb = max(tomb, node.tomb.tree_version, node.tomb.key_version)
        if version <= tomb:
            return False
        if check and self.max_bytes is not None:
            old_data = node.data if missing < 0 else None
            if old_data is None:
                self._check_room(len(data) + len(key) + KEY_OVERHEAD_BYTES)
            elif version > node.version or (version == node.version and data > old_data):
                self._check_room(len(data) - len(old_data))
        if missing >= 0:
            for name in names[missing:]:
                nxt = Node()
                if node.children is None:
                    node.children = {}
                    self._link(nodes, names)
                node.children[name] = nxt
                node = nxt
                nodes.append(node)
        old = node.data
        if old is not None:
            if version < node.version:
                return False
            if version == node.version:
                if data == old:
                    return True
                if data < old:
                    return False
            self._total_bytes += len(data) - len(old)
        else:
            self._key_count += 1
            self._total_bytes += len(data)
            self._path_bytes += len(key)
            for each in nodes:
                each.n += 1
        node.data = data
        node.version = version
        for each in nodes:
            if version > each.maxv:
                each.maxv = version
        if self._ttl is not None:
            self._written[key] = now
            self._written.move_to_end(key)
        return True

    def _link(self, nodes: list[Node], names: list[str]) -> None:
        """Index `nodes[-1]` (reached along `names` from the root) as just given children."""
        self._parents[parent_key(names, len(nodes) - 1)] = tuple(nodes)

    def _rewrite(
        self, chain: tuple[Node, ...], node: Node, key: str, data: bytes, version: int, now: int
    ) -> bool:
        """`_put` (with the memory check) for a key already stored, its parent's `chain` known.

        No tombstone can beat a write that beats the stored value (module docstring), so
        only the value's version and data decide. `send_pulses` inlines this: keep in step.
        """
        old = node.data
        assert old is not None
        held = node.version
        if version <= held:
            if version < held or data < old:
                return False
            if data == old:
                return True
        grown = len(data) - len(old)
        if grown > 0 and self.max_bytes is not None:
            self._check_room(grown)
        self._total_bytes += grown
        node.data = data
        node.version = version
        if version > node.maxv:
            node.maxv = version
            for each in reversed(chain):
                if version <= each.maxv:
                    break  # a parent's maxv is never below its child's
                each.maxv = version
        if self._ttl is not None:
            self._written[key] = now
            self._written.move_to_end(key)
        return True

    def _drop_key(self, nodes: list[Node], key: str) -> None:
        """Remove the key held by `nodes[-1]` (the full root-to-key chain), then prune."""
        node = nodes[-1]
        assert node.data is not None
        self._key_count -= 1
        self._total_bytes -= len(node.data)
        self._path_bytes -= len(key)
        node.data = None
        node.version = 0
        for each in nodes:
            each.n -= 1
        if self._ttl is not None:
            self._written.pop(key, None)
        refresh_maxv(nodes)
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
                del self._parents[parent_key(names, depth - 1)]

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
                    del self._parents["" if path == "/" else path]
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
