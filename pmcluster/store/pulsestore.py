"""The in-memory heartbeat store: Storm Pacemaker's eight operations, plus versions and tombstones.

Layout: a trie of path components (`pmcluster.store.trie.Node`: children, the key's value, the
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

Versions are ns since the epoch by the writer's clock: an older version never replaces a newer
one, equal versions keep the larger data (so every replica converges), and a delete leaves a
tombstone so a replica that missed it cannot resurrect the value. Measured overhead
(scripts/bench_store.py): about 215 bytes of RSS per key beyond the payload with Storm-shaped
paths (~300 with 5 KB payloads, counting malloc rounding of the payload itself).

`PulseStore` is this module's writes and reads over three parts, one job each:
`pmcluster.store.base` (the shared state, the trie walks needing it, the constructor),
`pmcluster.store.room` (the memory cap: footprint figures, room checks) and
`deletes` (deletes, tombstones, pruning, TTL and tombstone expiry). The trie's
node types are in `pmcluster.store.trie`. Import the store from the package face,
`pmcluster.store`; the value type `Pulse` is `pmcluster.protocol.pulse.Pulse`.

Not thread-safe, by design: the node calls it from its event loop only.
"""

from __future__ import annotations

from collections.abc import Sequence

from pmcluster.errors import InvalidPath, InvalidRequest
from pmcluster.protocol.paths import normalize, normalize_key
from pmcluster.protocol.pulse import Pulse, make_pulse
from pmcluster.store.deletes import StoreDeletes
from pmcluster.store.room import KEY_OVERHEAD_BYTES, StoreRoom
from pmcluster.store.trie import Node, covering_tree_tomb, iter_subtree

# How a write meets the value a key holds (`_meets`): it replaces it, it is that value
# already (stored, nothing to do), or it loses (older version; same version, smaller data).
_WINS, _SAME, _LOSES = "wins", "same", "loses"


def _meets(node: Node, old: bytes, data: bytes, version: int) -> str:
    """`_WINS`, `_SAME` or `_LOSES` for a write of (`data`, `version`) to a key holding `old`
    at `node.version`: the newer version wins; at equal versions the larger data does, so
    every replica keeps the same value whatever order the writes came in."""
    held = node.version
    if version > held:
        return _WINS
    if version < held or data < old:
        return _LOSES
    return _SAME if data == old else _WINS


def _replace(chain: tuple[Node, ...] | list[Node], node: Node, data: bytes, version: int) -> None:
    """Store the winning (`data`, `version`) at `node` and raise `maxv` up its parents'
    `chain` (a parent's maxv is never below its child's)."""
    node.data = data
    node.version = version
    if version > node.maxv:
        node.maxv = version
        for each in reversed(chain):
            if version <= each.maxv:
                break
            each.maxv = version


__all__ = ["KEY_OVERHEAD_BYTES", "PulseStore"]


class PulseStore(StoreDeletes, StoreRoom):
    """Heartbeats in memory, keyed by path; see the module docstring for costs and rules.

    The constructor and shared state come from `StoreBase`, the figures (`key_count`,
    `total_bytes`, `footprint_bytes`) and memory cap from `StoreRoom`, the deletes, hand-off
    helpers (`tombstones`, `discard`), `clear` and `expire` from `StoreDeletes`.
    """

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
        # Keys already stored (the steady state: workers rewrite their heartbeats) take
        # `_rewrite`'s two steps here, with the memory check done once for the batch; new
        # keys take `_put`.
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
            verdict = _meets(node, old, data, version)
            if verdict is not _WINS:
                stored += verdict is _SAME
                continue
            grown += len(data) - len(old)
            _replace(chain, node, data, version)
            if written is not None:
                written[key] = now
                written.move_to_end(key)
            stored += 1
        self._total_bytes += grown
        return stored

    def create_path(self, path: str) -> None:
        """Validate `path`; no stored effect (Storm's create_path is a no-op)."""
        normalize(path)

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
        return make_pulse(path, node.data, node.version)

    def subtree_version(self, path: str) -> int:
        """The newest version of a value at or under `path` (0 when none): what a delete
        at an older version left standing."""
        self._tidy()
        node = self._find(normalize(path))
        return 0 if node is None else node.maxv

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
                out.append(make_pulse(full, each.data, each.version))
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
                grown = len(data) + len(key) + KEY_OVERHEAD_BYTES
                self._check_room(grown + (self._interior_growth(key) if missing >= 0 else 0))
            elif version > node.version or (version == node.version and data > old_data):
                self._check_room(len(data) - len(old_data))
        if missing >= 0:
            node = self._grow(nodes, names)
        old = node.data
        if old is not None:
            verdict = _meets(node, old, data, version)
            if verdict is not _WINS:
                return verdict is _SAME
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

    def _rewrite(
        self, chain: tuple[Node, ...], node: Node, key: str, data: bytes, version: int, now: int
    ) -> bool:
        """`_put` (with the memory check) for a key already stored, its parent's `chain` known.

        No tombstone can beat a write that beats the stored value (module docstring), so
        only the value's version and data decide (`_meets`, `_replace`, which `send_pulses`
        uses too)."""
        old = node.data
        assert old is not None
        verdict = _meets(node, old, data, version)
        if verdict is not _WINS:
            return verdict is _SAME
        grown = len(data) - len(old)
        if grown > 0 and self.max_bytes is not None:
            self._check_room(grown)
        self._total_bytes += grown
        _replace(chain, node, data, version)
        if self._ttl is not None:
            self._written[key] = now
            self._written.move_to_end(key)
        return True
