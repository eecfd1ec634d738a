"""Digests of a `PulseStore` for anti-entropy: hash buckets of keys by ring position.

Pure (no I/O): `pmcluster.node.antientropy` compares these between the owners of each ring arc
and repairs the buckets that differ. A key's bucket is the top bits of its md5, the same hash
the ring places it by, so the buckets are arcs of the ring. A bucket's hash is the XOR of one
64-bit hash per (path, version) of the values in it: order-free, and equal on two owners
exactly when (but for a 2^-64 chance) they hold the same versions of the same keys.

Only values go into a digest. A tombstone matters to a replica only where it still holds an
older value of the key, and then the value buckets differ; tombstones travel with the
entries of the buckets being repaired (`entries_in`). Hashing tombstones as well would keep
two owners' buckets apart while their expiry times differ, and the repair would renew them
for ever.

Also here: `retain_tombstone`, which keeps a tombstone past its TTL while an owner that may
still hold an older value has not confirmed it (the anti-entropy loop decides when).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b, md5

from pmcluster.store.pulsestore import PulseStore
from pmcluster.store.trie import iter_subtree

__all__ = [
    "BUCKET_BITS",
    "Entries",
    "bucket_of",
    "differing",
    "digests",
    "entries_in",
    "entry_hash",
    "retain_tombstone",
    "tombstone_expiries",
]

BUCKET_BITS = 10  # 1,024 arcs: a restarted replica's repair goes in chunks of a few arcs
_SHIFT = 128 - BUCKET_BITS
_KEY = 0  # tombstone kinds in the store's expiry heap (as in pmcluster.store.deletes)
_TREE = 1

Owned = Callable[[str], bool]


def bucket_of(path: str) -> int:
    """The ring arc of `path`: the top `BUCKET_BITS` bits of md5(path), as the ring hashes."""
    return int.from_bytes(md5(path.encode()).digest(), "big") >> _SHIFT


def entry_hash(path: str, version: int) -> int:
    """A 64-bit hash of one (path, version)."""
    raw = blake2b(f"{path}\0{version}".encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big")


def digests(
    store: PulseStore, peers_of: Callable[[str], Iterable[str]], *, before: int | None = None
) -> dict[str, dict[int, int]]:
    """{peer: {bucket: XOR of `entry_hash`}} over the store's values, each value counted for
    every peer `peers_of(path)` names (the other owners of its arc), in one pass. Empty
    buckets are left out (an empty bucket hashes to 0 anyway). O(keys).

    `before`: only values whose version is older (both owners pass the same bound). A value
    written more recently may still be on its way to the other owner, and replication, not
    repair, delivers it: without the bound, two owners digesting a few milliseconds apart
    under steady writes differ in most buckets every round, and each round resends them."""
    store.expire()
    out: dict[str, dict[int, int]] = {}
    newest = before if before is not None else 1 << 64
    for path, node in iter_subtree(store._root, "/", sort=False):
        if node.data is None or node.version >= newest:
            continue
        bucket = h = -1
        for peer in peers_of(path):
            if bucket < 0:
                bucket, h = bucket_of(path), entry_hash(path, node.version)
            buckets = out.setdefault(peer, {})
            buckets[bucket] = buckets.get(bucket, 0) ^ h
    return out


def differing(mine: Mapping[int, int], theirs: Mapping[int, int]) -> list[int]:
    """The buckets whose hashes differ (a bucket absent on one side counts as 0), sorted."""
    return sorted(b for b in set(mine) | set(theirs) if mine.get(b, 0) != theirs.get(b, 0))


@dataclass
class Entries:
    """What one owner holds in some buckets: values, exact-key tombstones, and every subtree
    tombstone (a `delete_path` covers keys of any bucket, so those always go along)."""

    values: list[tuple[str, bytes, int]] = field(default_factory=list)
    key_tombs: list[tuple[str, int]] = field(default_factory=list)
    tree_tombs: list[tuple[str, int]] = field(default_factory=list)

    def versions(self) -> dict[str, int]:
        """{path: version} of the values."""
        return {path: version for path, _, version in self.values}


def entries_in(store: PulseStore, buckets: Collection[int], owned: Owned) -> Entries:
    """The store's values and exact-key tombstones in `buckets` (paths `owned` accepts), and
    all of its subtree tombstones. O(trie nodes)."""
    store.expire()
    wanted = set(buckets)
    out = Entries()
    for path, node in iter_subtree(store._root, "/", sort=False):
        tomb = node.tomb
        if tomb is not None and tomb.tree_version:
            out.tree_tombs.append((path, tomb.tree_version))
        if node.data is None and (tomb is None or not tomb.key_version):
            continue
        if bucket_of(path) not in wanted or not owned(path):
            continue
        if node.data is not None:
            out.values.append((path, node.data, node.version))
        if tomb is not None and tomb.key_version:
            out.key_tombs.append((path, tomb.key_version))
    return out


def tombstone_expiries(store: PulseStore) -> Iterator[tuple[str, bool, int]]:
    """(path, is_subtree, expiry on the store clock in ns) of every live tombstone."""
    for path, node in iter_subtree(store._root, "/", sort=False):
        tomb = node.tomb
        if tomb is None:
            continue
        if tomb.key_version:
            yield path, False, tomb.key_expiry
        if tomb.tree_version:
            yield path, True, tomb.tree_expiry


def retain_tombstone(store: PulseStore, path: str, subtree: bool, until: int) -> bool:
    """Keep the tombstone at `path` (the subtree one if `subtree`) until at least `until` (ns,
    store clock); True if its expiry moved. The store's own expiry heap then drops it."""
    nodes, names = store._walk(path, create=False)
    if len(nodes) != len(names) + 1:
        return False
    tomb = nodes[-1].tomb
    if tomb is None:
        return False
    if subtree:
        if not tomb.tree_version or tomb.tree_expiry >= until:
            return False
        tomb.tree_expiry = until
    else:
        if not tomb.key_version or tomb.key_expiry >= until:
            return False
        tomb.key_expiry = until
    store._seq += 1
    heapq.heappush(store._tomb_heap, (until, store._seq, path, _TREE if subtree else _KEY))
    return True
