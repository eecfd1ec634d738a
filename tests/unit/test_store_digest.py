"""Anti-entropy's pure parts: bucket digests, entries, tombstone retention, and applying a
peer's entries (`pmcluster.node.antientropy.apply_entries`) to a store."""

from __future__ import annotations

import hashlib

from pmcluster.node.antientropy import apply_entries
from pmcluster.ring import hash_key
from pmcluster.store import PulseStore
from pmcluster.store.digest import (
    BUCKET_BITS,
    Entries,
    bucket_of,
    differing,
    digests,
    entries_in,
    entry_hash,
    retain_tombstone,
    tombstone_expiries,
)

SEC = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * SEC

    def __call__(self) -> int:
        return self.now


def _all(_: str) -> bool:
    return True


def _peer(_: str) -> list[str]:
    return ["peer"]


def _pair(clock: Clock, ttl: float = 60.0) -> tuple[PulseStore, PulseStore]:
    return (
        PulseStore(clock=clock, tombstone_ttl_secs=ttl),
        PulseStore(clock=clock, tombstone_ttl_secs=ttl),
    )


def _sync(a: PulseStore, b: PulseStore) -> None:
    """What one round does between two owners: a's entries to b, b's back to a."""
    buckets = differing(digests(a, _peer).get("peer", {}), digests(b, _peer).get("peer", {}))
    apply_entries(b, entries_in(a, buckets, _all), _all)
    apply_entries(a, entries_in(b, buckets, _all), _all)


def test_same_versions_same_digest_and_order_does_not_matter() -> None:
    clock = Clock()
    a, b = _pair(clock)
    paths = [f"/workerbeats/t{i % 3}/w{i}" for i in range(50)]
    for i, p in enumerate(paths):
        a.send_pulse(p, b"x", 10 + i)
    for i, p in reversed(list(enumerate(paths))):
        b.send_pulse(p, b"other bytes", 10 + i)  # data is not hashed: versions decide
    assert digests(a, _peer) == digests(b, _peer)
    assert differing(digests(a, _peer)["peer"], digests(b, _peer)["peer"]) == []


def test_one_newer_version_differs_in_exactly_its_bucket() -> None:
    clock = Clock()
    a, b = _pair(clock)
    for i in range(40):
        a.send_pulse(f"/k/{i}", b"x", 5)
        b.send_pulse(f"/k/{i}", b"x", 5)
    b.send_pulse("/k/7", b"y", 6)
    assert differing(digests(a, _peer)["peer"], digests(b, _peer)["peer"]) == [bucket_of("/k/7")]


def test_peers_of_selects_what_goes_into_each_digest() -> None:
    store = PulseStore()
    store.send_pulse("/a", b"1", 1)
    store.send_pulse("/b", b"1", 1)
    assert bucket_of("/a") != bucket_of("/b")
    got = digests(store, lambda p: ["n1"] if p == "/a" else ["n1", "n2"])
    assert set(got["n1"]) == {bucket_of("/a"), bucket_of("/b")}
    assert set(got["n2"]) == {bucket_of("/b")}


def test_sync_brings_an_empty_replica_to_every_newest_version() -> None:
    clock = Clock()
    a, b = _pair(clock)
    for i in range(100):
        a.send_pulse(f"/w/t/{i}", bytes([i]), 100 + i)
    _sync(a, b)
    assert [(p.path, p.data, p.version) for p in b.get_all_pulse_for_path("/")] == [
        (p.path, p.data, p.version) for p in a.get_all_pulse_for_path("/")
    ]
    assert digests(a, _peer) == digests(b, _peer)


def test_a_missed_delete_is_applied_and_never_resurrects() -> None:
    clock = Clock()
    a, b = _pair(clock)
    for store in (a, b):
        store.send_pulse("/w/t/gone", b"old", 10)
        store.send_pulse("/w/t/kept", b"old", 10)
    a.delete_pulse_id("/w/t/gone", 20)  # b missed the delete
    a.send_pulse("/w/t/kept", b"new", 30)  # and a write
    _sync(b, a)  # b starts the round: its stale value must not come back on a
    assert a.get_pulse("/w/t/gone") is None
    assert b.get_pulse("/w/t/gone") is None
    kept = b.get_pulse("/w/t/kept")
    assert kept is not None and (kept.data, kept.version) == (b"new", 30)
    assert a.get_all_nodes_for_path("/w/t") == b.get_all_nodes_for_path("/w/t") == ["kept"]


def test_a_missed_delete_path_is_applied() -> None:
    clock = Clock()
    a, b = _pair(clock)
    for store in (a, b):
        for i in range(5):
            store.send_pulse(f"/w/topo/{i}", b"v", 10)
    a.delete_path("/w/topo", 20)
    a.send_pulse("/w/other/x", b"v", 30)
    _sync(a, b)
    assert b.get_all_pulse_for_path("/w/topo") == []
    assert b.get_all_nodes_for_path("/w") == ["other"]


def test_a_newer_value_than_the_tombstone_wins_everywhere() -> None:
    clock = Clock()
    a, b = _pair(clock)
    a.delete_pulse_id("/k", 10)
    b.send_pulse("/k", b"after the delete", 11)
    _sync(a, b)
    got = a.get_pulse("/k")
    assert got is not None and got.version == 11


def test_a_tombstone_that_deletes_nothing_is_not_copied() -> None:
    # Or two owners' copies of an expired tombstone would renew each other for ever.
    clock = Clock()
    a, b = _pair(clock)
    a.delete_pulse_id("/k", 10)
    apply_entries(b, entries_in(a, [bucket_of("/k")], _all), _all)
    assert b.tombstone_version("/k") == 0
    assert b.tombstones() == []


def test_apply_skips_paths_the_receiver_does_not_own() -> None:
    store = PulseStore()
    entries = Entries(values=[("/mine", b"1", 5), ("/theirs", b"1", 5)])
    counts = apply_entries(store, entries, lambda p: p == "/mine")
    assert counts == {"value": 1, "delete": 0}
    assert store.get_pulse("/theirs") is None


def test_retain_keeps_a_tombstone_past_its_ttl() -> None:
    clock = Clock()
    store = PulseStore(clock=clock, tombstone_ttl_secs=2.0)
    store.send_pulse("/k", b"v", 5)
    store.delete_pulse_id("/k", 6)
    store.delete_path("/t", 7)
    [(path, sub, expiry), (path2, sub2, _)] = sorted(tombstone_expiries(store))
    assert (path, sub, expiry) == ("/k", False, clock.now + 2 * SEC)
    assert (path2, sub2) == ("/t", True)
    assert retain_tombstone(store, "/k", False, clock.now + 5 * SEC)
    assert not retain_tombstone(store, "/k", False, clock.now + 1 * SEC)  # never shortens
    clock.now += 3 * SEC
    assert store.tombstone_version("/k") == 6  # kept
    assert store.tombstone_version("/t/x") == 0  # not retained: gone
    assert store.send_pulse("/k", b"stale", 5) is False
    clock.now += 3 * SEC
    assert store.tombstone_version("/k") == 0
    assert store.tombstones() == []


def test_digests_bounded_by_version_ignore_writes_still_in_flight() -> None:
    """Two owners digesting under steady writes: one has the newest write of a key, the other
    not yet. Bounded below both of its last writes, their digests agree (replication delivers
    it); a replica that really missed a write older than the bound still shows."""
    clock = Clock()
    a, b = _pair(clock)
    for i in range(50):
        for store in (a, b):
            store.send_pulse(f"/w/t/{i}", b"v1", 100 + i)
    for store in (a, b):
        store.send_pulse("/w/t/7", b"v2", 850)  # a worker rewriting its heartbeat
    a.send_pulse("/w/t/7", b"v3", 900)  # its next one, on its way to b
    assert digests(a, _peer) != digests(b, _peer)
    assert digests(a, _peer, before=800) == digests(b, _peer, before=800)
    a.send_pulse("/w/t/9", b"v2", 700)  # b missed this one, and it is older than the bound
    ahead, behind = digests(a, _peer, before=800)["peer"], digests(b, _peer, before=800)["peer"]
    assert differing(ahead, behind) == [bucket_of("/w/t/9")]


# ------------------------------------------------------------- found by mutation testing


def test_a_bucket_is_the_top_bits_of_the_ring_hash() -> None:
    # Buckets are arcs of the ring: the top BUCKET_BITS bits of the position the ring hashes
    # the key to, so they lie in 0 .. 2**BUCKET_BITS - 1.
    for i in range(200):
        path = f"/workerbeats/t/{i}"
        assert bucket_of(path) == hash_key(path) >> (128 - BUCKET_BITS)
        assert 0 <= bucket_of(path) < 1 << BUCKET_BITS


def test_an_entry_hash_is_64_bit_blake2b_of_path_and_version() -> None:
    # Owners of two releases compare digests during an upgrade: the hash is part of the
    # protocol, so it is pinned (blake2b, 8 bytes, of "path NUL version", big-endian).
    raw = hashlib.blake2b(b"/w/t/a\x0012345", digest_size=8).digest()
    assert entry_hash("/w/t/a", 12345) == int.from_bytes(raw, "big")
    assert all(0 <= entry_hash(f"/k/{i}", i) < 1 << 64 for i in range(100))


def test_a_bucket_hash_is_the_xor_of_its_values_entry_hashes() -> None:
    store = PulseStore()
    values = {f"/w/t/{i}": 100 + i for i in range(300)}  # several keys share a bucket
    for path, version in values.items():
        store.send_pulse(path, b"x", version)
    expected: dict[int, int] = {}
    for path, version in values.items():
        bucket = bucket_of(path)
        expected[bucket] = expected.get(bucket, 0) ^ entry_hash(path, version)
    assert len(expected) < len(values)
    assert digests(store, _peer) == {"peer": expected}


def test_a_value_digests_only_below_a_bound_above_its_version() -> None:
    store = PulseStore()
    store.send_pulse("/k", b"x", 800)
    assert digests(store, _peer, before=801) == {"peer": {bucket_of("/k"): entry_hash("/k", 800)}}
    assert digests(store, _peer, before=800) == {}  # "older than the bound": not equal to it


def test_differing_counts_an_absent_bucket_as_zero() -> None:
    assert differing({}, {5: 1}) == [5]
    assert differing({5: 1}, {}) == [5]
    assert differing({5: 0}, {}) == []  # a peer listing an empty bucket as 0 agrees
    assert differing({}, {5: 0}) == []
    assert differing({1: 7, 2: 8, 3: 9}, {3: 9, 2: 1, 4: 2}) == [1, 2, 4]


def test_entries_are_those_in_the_buckets_and_owned_and_every_subtree_tombstone() -> None:
    clock = Clock()
    store = PulseStore(clock=clock)
    paths = [f"/w/t/{i}" for i in range(40)]
    for path in paths:
        store.send_pulse(path, b"v", 10)
    store.delete_pulse_id("/w/gone", 11)
    store.delete_path("/w/old", 12)
    buckets = {bucket_of(p) for p in paths[::2]} | {bucket_of("/w/gone")}
    unwanted = [p for p in paths[1::2] if bucket_of(p) not in buckets]
    owned = set(paths[::4]) | set(unwanted) | {"/w/gone"}

    got = entries_in(store, buckets, lambda p: p in owned)

    wanted = sorted(p for p in paths if bucket_of(p) in buckets and p in owned)
    assert sorted(p for p, _, _ in got.values) == wanted
    assert unwanted and any(p not in owned for p in paths[::2])  # both filters hold some back
    assert got.key_tombs == [("/w/gone", 11)]
    assert got.tree_tombs == [("/w/old", 12)]


def test_retaining_a_subtree_tombstone_keeps_it_until_then_and_then_it_expires() -> None:
    clock = Clock()
    store = PulseStore(clock=clock, tombstone_ttl_secs=2.0)
    store.delete_path("/w/t", 7)
    until = clock.now + 5 * SEC
    assert retain_tombstone(store, "/w/t", True, until)
    assert list(tombstone_expiries(store)) == [("/w/t", True, until)]
    clock.now = until - 1
    assert store.tombstone_version("/w/t/x") == 7
    assert store.send_pulse("/w/t/x", b"stale", 6) is False
    clock.now = until
    assert store.tombstone_version("/w/t/x") == 0
    assert store.tombstones() == []
    assert store._root.children is None  # the emptied path is pruned


def test_retain_moves_only_a_live_tombstone_of_that_kind_and_only_later() -> None:
    clock = Clock()
    store = PulseStore(clock=clock, tombstone_ttl_secs=2.0)
    store.send_pulse("/w/t/k", b"v", 5)
    store.send_pulse("/w/t/kept", b"v", 5)
    store.delete_pulse_id("/w/t/k", 6)
    store.delete_path("/w/u", 7)
    expiry = clock.now + 2 * SEC
    footprint = store.footprint_bytes
    assert not retain_tombstone(store, "/w/t/k", False, expiry)  # not later: nothing moves
    assert not retain_tombstone(store, "/w/u", True, expiry)
    assert not retain_tombstone(store, "/w/t/k", True, expiry + SEC)  # no subtree tombstone
    assert not retain_tombstone(store, "/w/u", False, expiry + SEC)  # no exact-key tombstone
    assert not retain_tombstone(store, "/w/t/kept", False, expiry + SEC)  # a value, no tombstone
    assert not retain_tombstone(store, "/w/t", True, expiry + SEC)  # an interior node
    assert not retain_tombstone(store, "/w/never/seen", False, expiry + SEC)
    assert sorted(tombstone_expiries(store)) == [("/w/t/k", False, expiry), ("/w/u", True, expiry)]
    assert store.footprint_bytes == footprint  # a path never seen is not created
    assert store.get_all_nodes_for_path("/w") == ["t"]
    assert retain_tombstone(store, "/w/t/k", False, expiry + 1)
    clock.now = expiry
    assert store.tombstone_version("/w/t/k") == 6
    assert store.tombstone_version("/w/u/x") == 0
