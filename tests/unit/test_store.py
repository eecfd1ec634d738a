"""The in-memory store: Storm Pacemaker's semantics, versions, tombstones, TTL, accounting."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from pmcluster.config import Config
from pmcluster.errors import InvalidPath, InvalidRequest
from pmcluster.protocol.pulse import Pulse
from pmcluster.store import PulseStore

SEC = 1_000_000_000


class FakeClock:
    """A settable ns clock, so version, TTL and expiry tests never sleep."""

    def __init__(self, now: int = 1_000 * SEC) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, secs: float) -> None:
        self.now += int(secs * SEC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> PulseStore:
    return PulseStore(clock=clock, tombstone_ttl_secs=600.0)


def _trie_nodes(store: PulseStore) -> int:
    """Number of trie nodes below the root (white-box: proves pruning frees memory)."""
    count = 0
    stack = [store._root]
    while stack:
        node = stack.pop()
        if node.children:
            count += len(node.children)
            stack.extend(node.children.values())
    return count


# ------------------------------------------------------------- Storm's Pacemaker scenarios


def test_storm_create_path_has_no_effect(store: PulseStore) -> None:
    store.create_path("/some-root/some-path")
    assert not store.exists("/some-root/some-path")
    assert store.get_all_nodes_for_path("/some-root") == []
    assert store.key_count == 0
    with pytest.raises(InvalidPath):
        store.create_path("relative")


def test_storm_exists_false_then_true(store: PulseStore) -> None:
    assert not store.exists("/some-root/none")
    store.send_pulse("/some-root/exists", b"some data")
    assert store.exists("/some-root/exists")
    assert not store.exists("/some-root/none")


def test_storm_send_pulse_get_pulse(store: PulseStore, clock: FakeClock) -> None:
    assert store.send_pulse("/some-root/pulse", b"data-1")
    pulse = store.get_pulse("/some-root/pulse")
    assert pulse == Pulse("/some-root/pulse", b"data-1", clock.now)
    assert store.get_pulse("/some-root/absent") is None
    clock.advance(1)
    assert store.send_pulse("/some-root/pulse", b"data-2")
    assert store.get_pulse("/some-root/pulse") == Pulse("/some-root/pulse", b"data-2", clock.now)


def test_storm_get_all_nodes_for_path_at_several_depths(store: PulseStore) -> None:
    for path in [
        "/some-root-path/first",
        "/some-root-path/second",
        "/some-root-path/third/deep",
        "/some-root-path/third/deeper/deepest",
        "/other-root/x",
    ]:
        store.send_pulse(path, b"x")
    assert store.get_all_nodes_for_path("/") == ["other-root", "some-root-path"]
    assert store.get_all_nodes_for_path("/some-root-path") == ["first", "second", "third"]
    assert store.get_all_nodes_for_path("/some-root-path/") == ["first", "second", "third"]
    assert store.get_all_nodes_for_path("/some-root-path/third") == ["deep", "deeper"]
    assert store.get_all_nodes_for_path("/some-root-path/third/deeper") == ["deepest"]
    assert store.get_all_nodes_for_path("/some-root-path/first") == []
    assert store.get_all_nodes_for_path("/nothing/here") == []


def test_storm_delete_path_of_a_parent(store: PulseStore) -> None:
    for path in ["/some-root/a/1", "/some-root/a/2", "/some-root/a", "/some-root/b/1"]:
        store.send_pulse(path, b"x")
    assert store.delete_path("/some-root/a") == 3
    assert store.get_all_nodes_for_path("/some-root") == ["b"]
    assert not store.exists("/some-root/a")
    assert not store.exists("/some-root/a/1")
    assert store.exists("/some-root/b/1")


def test_storm_delete_path_of_an_exact_key(store: PulseStore) -> None:
    store.send_pulse("/some-root/key", b"x")
    store.send_pulse("/some-root/other", b"y")
    assert store.delete_path("/some-root/key") == 1
    assert store.get_pulse("/some-root/key") is None
    assert store.get_all_nodes_for_path("/some-root") == ["other"]


def test_storm_delete_path_of_root_deletes_everything(store: PulseStore) -> None:
    for path in ["/a", "/a/b", "/c/d/e", "/f"]:
        store.send_pulse(path, b"x")
    assert store.delete_path("/") == 4
    assert store.key_count == 0
    assert store.total_bytes == 0
    assert store.get_all_nodes_for_path("/") == []
    assert store.get_all_pulse_for_path("/") == []


def test_storm_delete_pulse_id_is_exact(store: PulseStore) -> None:
    store.send_pulse("/some-root/p", b"parent")
    store.send_pulse("/some-root/p/child", b"child")
    assert store.delete_pulse_id("/some-root/p")
    assert not store.exists("/some-root/p")
    assert store.exists("/some-root/p/child")
    assert store.get_all_nodes_for_path("/some-root") == ["p"]
    assert not store.delete_pulse_id("/some-root/p")


# ------------------------------------------------------------- keys, listing, component-awareness


def test_exists_is_exact_key_only(store: PulseStore) -> None:
    store.send_pulse("/workerbeats/topo/node-6700", b"x")
    assert not store.exists("/workerbeats")
    assert not store.exists("/workerbeats/topo")
    store.send_pulse("/workerbeats", b"root-key")
    assert store.exists("/workerbeats")
    assert store.exists("/workerbeats/")


def test_listing_is_component_aware(store: PulseStore) -> None:
    store.send_pulse("/workerbeats/t1/a", b"x")
    store.send_pulse("/workerbeats/t10/b", b"x")
    store.send_pulse("/workerbeats/t1x", b"x")
    assert store.get_all_nodes_for_path("/workerbeats/t1") == ["a"]
    assert [p.path for p in store.get_all_pulse_for_path("/workerbeats/t1")] == [
        "/workerbeats/t1/a"
    ]
    assert store.delete_path("/workerbeats/t1") == 1
    assert store.get_all_nodes_for_path("/workerbeats") == ["t10", "t1x"]


def test_listing_lists_child_with_key_at_or_below(store: PulseStore) -> None:
    store.send_pulse("/r/leaf", b"x")
    store.send_pulse("/r/dir/deep/er", b"x")
    assert store.get_all_nodes_for_path("/r") == ["dir", "leaf"]
    store.delete_pulse_id("/r/dir/deep/er")
    assert store.get_all_nodes_for_path("/r") == ["leaf"]


def test_listing_names_are_sorted_and_distinct(store: PulseStore) -> None:
    for name in ["zeta", "alpha", "Mid", "é", "alpha"]:
        store.send_pulse(f"/r/{name}", b"x")
        store.send_pulse(f"/r/{name}/sub", b"y")
    assert store.get_all_nodes_for_path("/r") == ["Mid", "alpha", "zeta", "é"]


def test_get_all_pulse_for_path(store: PulseStore, clock: FakeClock) -> None:
    store.send_pulse("/w/t/a", b"1", 5)
    store.send_pulse("/w/t", b"2", 6)
    store.send_pulse("/w/t/b/c", b"3", 7)
    store.send_pulse("/w/u", b"4", 8)
    assert store.get_all_pulse_for_path("/w/t") == [
        Pulse("/w/t", b"2", 6),
        Pulse("/w/t/a", b"1", 5),
        Pulse("/w/t/b/c", b"3", 7),
    ]
    assert [p.path for p in store.get_all_pulse_for_path("/")] == [
        "/w/t",
        "/w/t/a",
        "/w/t/b/c",
        "/w/u",
    ]
    assert store.get_all_pulse_for_path("/w/t/a") == [Pulse("/w/t/a", b"1", 5)]
    assert store.get_all_pulse_for_path("/nothing") == []


def test_awkward_paths_are_stored_verbatim(store: PulseStore) -> None:
    path = "/workerbeats/wc(1)+$[x]%?#~,/node é-6700"
    store.send_pulse(path, b"\x00\xff")
    assert store.get_all_nodes_for_path("/workerbeats") == ["wc(1)+$[x]%?#~,"]
    assert store.get_all_nodes_for_path("/workerbeats/wc(1)+$[x]%?#~,") == ["node é-6700"]
    pulse = store.get_pulse(path)
    assert pulse is not None and pulse.data == b"\x00\xff"


def test_empty_payload_is_a_value(store: PulseStore) -> None:
    store.send_pulse("/a", b"")
    assert store.exists("/a")
    assert store.get_pulse("/a") == Pulse("/a", b"", 1_000 * SEC)


def test_trailing_slash_is_the_same_key(store: PulseStore) -> None:
    store.send_pulse("/a/b/", b"x")
    assert store.exists("/a/b")
    assert store.get_pulse("/a/b//") is not None


@pytest.mark.parametrize("bad", ["", "rel/x", "//", "/a//b", "/a/./b", "/a/../b", "/a\x00"])
def test_invalid_paths_raise_everywhere(store: PulseStore, bad: str) -> None:
    for call in (
        lambda: store.send_pulse(bad, b"x"),
        lambda: store.get_pulse(bad),
        lambda: store.exists(bad),
        lambda: store.get_all_nodes_for_path(bad),
        lambda: store.get_all_pulse_for_path(bad),
        lambda: store.delete_path(bad),
        lambda: store.delete_pulse_id(bad),
        lambda: store.create_path(bad),
        lambda: store.tombstone_version(bad),
        lambda: store.children_versions(bad),
    ):
        with pytest.raises(InvalidPath):
            call()


def test_root_is_not_a_key(store: PulseStore) -> None:
    for call in (
        lambda: store.send_pulse("/", b"x"),
        lambda: store.get_pulse("/"),
        lambda: store.exists("/"),
        lambda: store.delete_pulse_id("/"),
    ):
        with pytest.raises(InvalidPath):
            call()
    store.create_path("/")
    assert store.get_all_nodes_for_path("/") == []


# ------------------------------------------------------------- versions


def test_older_version_never_replaces_newer(store: PulseStore) -> None:
    assert store.send_pulse("/k", b"new", 200)
    assert not store.send_pulse("/k", b"old", 100)
    assert store.get_pulse("/k") == Pulse("/k", b"new", 200)
    assert store.send_pulse("/k", b"newer", 300)
    assert store.get_pulse("/k") == Pulse("/k", b"newer", 300)


def test_equal_version_larger_data_wins_in_any_order(clock: FakeClock) -> None:
    one, two = PulseStore(clock=clock), PulseStore(clock=clock)
    assert one.send_pulse("/k", b"aaa", 50)
    assert one.send_pulse("/k", b"bbb", 50)
    assert two.send_pulse("/k", b"bbb", 50)
    assert not two.send_pulse("/k", b"aaa", 50)
    assert one.get_pulse("/k") == two.get_pulse("/k") == Pulse("/k", b"bbb", 50)
    assert two.send_pulse("/k", b"bbb", 50)  # identical re-send: holds this write


def test_version_none_or_zero_means_now(store: PulseStore, clock: FakeClock) -> None:
    store.send_pulse("/a", b"x")
    store.send_pulse("/b", b"x", 0)
    assert store.get_pulse("/a") == Pulse("/a", b"x", clock.now)
    assert store.get_pulse("/b") == Pulse("/b", b"x", clock.now)


def test_negative_version_is_rejected(store: PulseStore) -> None:
    with pytest.raises(InvalidRequest, match="negative"):
        store.send_pulse("/a", b"x", -1)
    with pytest.raises(InvalidRequest):
        store.delete_path("/a", -1)


def test_send_pulses_validates_all_before_storing_any(store: PulseStore, clock: FakeClock) -> None:
    with pytest.raises(InvalidPath, match="entry 1"):
        store.send_pulses([("/ok", b"x", 1), ("bad", b"x", 1)])
    with pytest.raises(InvalidRequest, match="entry 2"):
        store.send_pulses([("/ok", b"x", 1), ("/ok2", b"x", None), ("/ok3", b"x", -4)])
    assert store.key_count == 0
    store.send_pulse("/old", b"x", 100)
    assert store.send_pulses([("/a", b"1", 5), ("/old", b"x", 50), ("/b", b"2", None)]) == 2
    assert store.get_pulse("/b") == Pulse("/b", b"2", clock.now)


def test_trusted_send_pulses_stores_decoded_entries_like_checked_ones(
    store: PulseStore, clock: FakeClock
) -> None:
    # The node's batch route hands over pulsecodec.decode's output (versions 0 = now).
    store.send_pulse("/old", b"x", 100)
    entries: list[tuple[str, bytes, int | None]] = [("/a", b"1", 5), ("/old", b"x", 50)]
    entries += [("/b", b"2", 0), ("/c", b"3", None)]
    assert store.send_pulses(entries, trusted=True) == 3
    assert store.get_pulse("/a") == Pulse("/a", b"1", 5)
    assert store.get_pulse("/old") == Pulse("/old", b"x", 100)
    assert store.get_pulse("/b") == Pulse("/b", b"2", clock.now)
    assert store.get_pulse("/c") == Pulse("/c", b"3", clock.now)
    assert store.key_count == 4


# ------------------------------------------------------------- tombstones


def test_delete_path_tombstone_blocks_older_writes(store: PulseStore) -> None:
    store.send_pulse("/w/t/a", b"x", 10)
    store.send_pulse("/w/t/b", b"x", 30)
    assert store.delete_path("/w/t", 20) == 1  # b (30) is newer than the delete
    assert store.get_all_nodes_for_path("/w/t") == ["b"]
    assert not store.send_pulse("/w/t/a", b"late replica", 15)
    assert not store.send_pulse("/w/t/new/deeper", b"x", 20)
    assert not store.send_pulse("/w/t", b"x", 20)
    assert store.send_pulse("/w/t/a", b"rewritten", 21)
    assert store.send_pulse("/w/t10/a", b"sibling not covered", 5)
    assert store.tombstone_version("/w/t") == 20
    assert store.tombstone_version("/w/t/anything/below") == 20
    assert store.tombstone_version("/w/t10/a") == 0
    assert store.tombstone_version("/w") == 0


def test_delete_pulse_id_tombstone_is_exact(store: PulseStore) -> None:
    store.send_pulse("/w/k", b"x", 10)
    store.send_pulse("/w/k/child", b"x", 10)
    assert store.delete_pulse_id("/w/k", 10)
    assert not store.send_pulse("/w/k", b"stale", 9)
    assert store.send_pulse("/w/k/other", b"child write is fine", 9)
    assert store.tombstone_version("/w/k") == 10
    assert store.tombstone_version("/w/k/child") == 0
    assert store.send_pulse("/w/k", b"new", 11)


def test_delete_with_older_version_keeps_newer_value(store: PulseStore) -> None:
    store.send_pulse("/k", b"x", 100)
    assert not store.delete_pulse_id("/k", 50)
    assert store.get_pulse("/k") == Pulse("/k", b"x", 100)
    assert store.tombstone_version("/k") == 50


def test_delete_without_version_removes_future_versions(
    store: PulseStore, clock: FakeClock
) -> None:
    future = clock.now + 3600 * SEC  # a writer whose clock runs ahead
    store.send_pulse("/t/a", b"x", future)
    store.send_pulse("/k", b"x", future + 1)
    assert store.delete_path("/t") == 1
    assert store.delete_pulse_id("/k")
    assert store.tombstone_version("/t/a") == future
    assert store.tombstone_version("/k") == future + 1


def test_tombstone_version_is_the_newest_covering(store: PulseStore) -> None:
    store.delete_path("/a", 10)
    store.delete_path("/a/b", 5)
    store.delete_pulse_id("/a/b/c", 7)
    assert store.tombstone_version("/a/b/c") == 10
    store.delete_path("/", 12)
    assert store.tombstone_version("/a/b/c") == 12
    assert store.tombstone_version("/zzz") == 12
    assert store.tombstone_version("/") == 12


def test_tombstones_expire(store: PulseStore, clock: FakeClock) -> None:
    store.send_pulse("/w/t/a", b"x", 10)
    store.delete_path("/w/t", 20)
    store.delete_pulse_id("/w/k", 20)
    clock.advance(599)
    assert store.expire() == 0
    assert store.tombstone_version("/w/t/a") == 20
    clock.advance(1)
    assert store.expire() == 2
    assert store.tombstone_version("/w/t/a") == 0
    assert store.tombstone_version("/w/k") == 0
    assert store.send_pulse("/w/t/a", b"old write now accepted", 15)
    assert _trie_nodes(store) == 3


def test_tombstones_drop_lazily_without_expire(store: PulseStore, clock: FakeClock) -> None:
    store.delete_path("/w/t", 20)
    clock.advance(601)
    assert store.send_pulse("/w/t/a", b"x", 15)
    assert store.expire() == 0


def test_repeated_delete_extends_tombstone(store: PulseStore, clock: FakeClock) -> None:
    store.delete_path("/t", 20)
    clock.advance(300)
    store.delete_path("/t", 25)
    clock.advance(301)  # the first tombstone's expiry is past, the second's is not
    assert store.expire() == 0
    assert store.tombstone_version("/t") == 25
    clock.advance(300)
    assert store.expire() == 1
    assert store.tombstone_version("/t") == 0
    assert _trie_nodes(store) == 0


def test_subtree_delete_subsumes_older_tombstones_below(store: PulseStore) -> None:
    store.delete_pulse_id("/t/a", 5)
    store.delete_path("/t/b", 50)
    store.delete_path("/t", 10)
    assert store.tombstone_version("/t/a") == 10
    assert store.tombstone_version("/t/b/x") == 50


def test_children_versions(store: PulseStore) -> None:
    store.send_pulse("/w/t1/a", b"x", 10)
    store.send_pulse("/w/t1/b/c", b"x", 40)
    store.send_pulse("/w/t2", b"x", 20)
    store.delete_path("/w/t3", 30)
    store.delete_pulse_id("/w/t4", 35)
    store.delete_pulse_id("/w/t1/b/c", 40)  # only key under b goes; t1's newest becomes 10
    values, tombs = store.children_versions("/w")
    assert values == {"t1": 10, "t2": 20}
    assert tombs == {"t3": 30, "t4": 35}
    store.delete_path("/", 15)
    values, tombs = store.children_versions("/w")
    assert values == {"t2": 20}
    assert tombs == {"": 15, "t1": 15, "t2": 15, "t3": 30, "t4": 35}
    assert store.children_versions("/nothing") == ({}, {"": 15})
    # After a recursive delete of the listed path itself, the covering tombstone is all a
    # replica knows: the children it had are pruned, another replica may still hold them.
    store.send_pulse("/z/topo/n-1", b"x", 50)
    store.delete_path("/z/topo", 60)
    assert store.children_versions("/z/topo") == ({}, {"": 60})
    assert store.children_versions("/")[0] == {"w": 20}


def test_children_versions_newest_is_exact_after_deletes(store: PulseStore) -> None:
    store.send_pulse("/w/t/a", b"x", 10)
    store.send_pulse("/w/t/b", b"x", 50)
    store.send_pulse("/w/t/c/d", b"x", 40)
    assert store.children_versions("/w")[0] == {"t": 50}
    store.delete_pulse_id("/w/t/b", 50)
    assert store.children_versions("/w")[0] == {"t": 40}
    store.delete_path("/w/t/c", 40)
    assert store.children_versions("/w")[0] == {"t": 10}
    assert store.children_versions("/")[0] == {"w": 10}


# ------------------------------------------------------------- TTL


def test_ttl_keys_vanish_when_not_rewritten(clock: FakeClock) -> None:
    store = PulseStore(clock=clock, ttl_secs=30)
    store.send_pulse("/w/t/stale", b"x")
    store.send_pulse("/w/t/fresh", b"x")
    clock.advance(20)
    store.send_pulse("/w/t/fresh", b"y")
    clock.advance(10)
    # Past due: invisible to every read before any expire() call.
    assert store.get_pulse("/w/t/stale") is None
    assert not store.exists("/w/t/stale")
    assert store.get_all_nodes_for_path("/w/t") == ["fresh"]
    assert [p.path for p in store.get_all_pulse_for_path("/")] == ["/w/t/fresh"]
    assert store.key_count == 1
    clock.advance(20)
    assert store.expire() == 1
    assert store.key_count == 0 and store.total_bytes == 0
    assert _trie_nodes(store) == 0


def test_ttl_ignored_write_does_not_refresh(clock: FakeClock) -> None:
    store = PulseStore(clock=clock, ttl_secs=30)
    store.send_pulse("/k", b"x", clock.now)
    clock.advance(20)
    assert not store.send_pulse("/k", b"x", 1)
    clock.advance(10)
    assert store.expire() == 1


def test_ttl_with_deletes_keeps_bookkeeping_straight(clock: FakeClock) -> None:
    store = PulseStore(clock=clock, ttl_secs=30, tombstone_ttl_secs=1000)
    store.send_pulse("/t/a", b"x")
    store.send_pulse("/t/b", b"x")
    store.send_pulse("/u", b"x")
    store.delete_path("/t")
    store.delete_pulse_id("/u")
    assert not store._written  # deleted keys leave no TTL bookkeeping behind
    clock.advance(31)
    assert store.expire() == 0
    assert store.key_count == 0


def test_no_ttl_keeps_keys_forever(store: PulseStore, clock: FakeClock) -> None:
    store.send_pulse("/k", b"x")
    clock.advance(10**6)
    assert store.expire() == 0
    assert store.exists("/k")


# ------------------------------------------------------------- accounting and memory


def test_key_count_and_total_bytes_are_incremental(store: PulseStore) -> None:
    store.send_pulse("/a", b"12345", 1)
    store.send_pulse("/a/b", b"123", 1)
    assert (store.key_count, store.total_bytes) == (2, 8)
    store.send_pulse("/a", b"1", 2)
    assert (store.key_count, store.total_bytes) == (2, 4)
    store.delete_pulse_id("/a/b")
    assert (store.key_count, store.total_bytes) == (1, 1)
    store.clear()
    assert (store.key_count, store.total_bytes) == (0, 0)


def test_clear_wipes_keys_and_tombstones(store: PulseStore) -> None:
    store.send_pulse("/a/b", b"x", 10)
    store.delete_path("/c", 100)
    store.clear()
    assert store.get_all_nodes_for_path("/") == []
    assert store.tombstone_version("/c") == 0
    assert store.send_pulse("/c", b"x", 5)


def test_pruning_leaves_no_empty_nodes(clock: FakeClock) -> None:
    store = PulseStore(clock=clock, tombstone_ttl_secs=1)
    for i in range(50):
        store.send_pulse(f"/w/t{i % 5}/n{i}/deep", b"x")
    store.delete_path("/w/t0")
    for i in range(1, 50, 5):
        store.delete_pulse_id(f"/w/t1/n{i}/deep")
    clock.advance(2)
    store.expire()
    assert store.get_all_nodes_for_path("/w") == ["t2", "t3", "t4"]
    assert _trie_nodes(store) == 1 + 3 + 30 + 30
    store.delete_path("/")
    clock.advance(2)
    store.expire()
    assert _trie_nodes(store) == 0


# ------------------------------------------------------------- randomized model test


class Model:
    """A naive dict model of the store's rules (values and tombstones), for comparison."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[int, bytes]] = {}
        self.key_tombs: dict[str, int] = {}
        self.tree_tombs: dict[str, int] = {}

    @staticmethod
    def under(path: str, top: str) -> bool:
        return top == "/" or path == top or path.startswith(top + "/")

    def tomb(self, path: str) -> int:
        found = [v for p, v in self.tree_tombs.items() if self.under(path, p)]
        return max([self.key_tombs.get(path, 0), *found])

    def put(self, path: str, data: bytes, version: int) -> bool:
        if version <= self.tomb(path):
            return False
        old = self.values.get(path)
        if old is not None and (version, data) < old:
            return False
        self.values[path] = (version, data)
        return True

    def delete_key(self, path: str, version: int) -> bool:
        self.key_tombs[path] = max(self.key_tombs.get(path, 0), version)
        old = self.values.get(path)
        if old is not None and old[0] <= version:
            del self.values[path]
            return True
        return False

    def delete_tree(self, top: str, version: int) -> int:
        # Older tombstones at or below `top` are subsumed by this one (the store drops them).
        for tombs in (self.key_tombs, self.tree_tombs):
            for p in [p for p, v in tombs.items() if self.under(p, top) and v <= version]:
                del tombs[p]
        self.tree_tombs[top] = max(self.tree_tombs.get(top, 0), version)
        gone = [p for p, (v, _) in self.values.items() if self.under(p, top) and v <= version]
        for p in gone:
            del self.values[p]
        return len(gone)

    def children(self, top: str, paths: Iterable[str] | None = None) -> list[str]:
        depth = 0 if top == "/" else top.count("/")
        paths = self.values if paths is None else paths
        return sorted({p.split("/")[depth + 1] for p in paths if p != top and self.under(p, top)})

    def child_tombs(self, top: str) -> dict[str, int]:
        known = self.children(top, [*self.values, *self.key_tombs, *self.tree_tombs])
        prefix = "" if top == "/" else top
        tombs = {name: self.tomb(f"{prefix}/{name}") for name in known}
        # A subtree tombstone on `top` or above covers children never seen, too: name "".
        tombs[""] = max([v for p, v in self.tree_tombs.items() if self.under(top, p)], default=0)
        return {name: version for name, version in tombs.items() if version}


def test_randomized_against_model() -> None:
    rng = random.Random(20240611)
    names = ["a", "b", "a1", "ab", "x y", "é"]
    for _ in range(20):
        clock = FakeClock()
        store = PulseStore(clock=clock)
        model = Model()
        for _ in range(300):
            depth = rng.randint(1, 3)
            path = "/" + "/".join(rng.choice(names) for _ in range(depth))
            version = rng.randint(1, 40)
            op = rng.random()
            if op < 0.45:
                data = bytes([rng.randint(0, 2)])
                assert store.send_pulse(path, data, version) == model.put(path, data, version)
            elif op < 0.55:
                assert store.delete_pulse_id(path, version) == model.delete_key(path, version)
            elif op < 0.62:
                top = "/" if rng.random() < 0.1 else path
                assert store.delete_path(top, version) == model.delete_tree(top, version)
            else:
                top = "/" if rng.random() < 0.2 else path
                assert store.get_all_nodes_for_path(top) == model.children(top)
                expected = sorted(
                    (p, d, v) for p, (v, d) in model.values.items() if model.under(p, top)
                )
                got = [(p.path, p.data, p.version) for p in store.get_all_pulse_for_path(top)]
                assert sorted(got) == expected
                value = model.values.get(path)
                pulse = store.get_pulse(path)
                assert ((pulse.version, pulse.data) if pulse else None) == value
                assert store.exists(path) == (path in model.values)
                assert store.tombstone_version(path) == model.tomb(path)
                assert store.children_versions(top)[1] == model.child_tombs(top)
            assert store.key_count == len(model.values)
            assert store.total_bytes == sum(len(d) for _, d in model.values.values())
        # Every listed child's newest version matches the model.
        values, _ = store.children_versions("/")
        for child, newest in values.items():
            under = [v for p, (v, _) in model.values.items() if model.under(p, "/" + child)]
            assert newest == max(under)
        # Once everything is deleted and the tombstones expire, nothing is left behind.
        store.delete_path("/")
        clock.advance(601)
        store.expire()
        assert _trie_nodes(store) == 0
        assert store._tomb_heap == []


def test_discard_forgets_only_the_same_version_and_leaves_no_tombstone() -> None:
    store = PulseStore()
    store.send_pulse("/w/t/a", b"1", 10)
    assert not store.discard("/w/t/a", 9)  # rewritten since: keep it
    assert store.discard("/w/t/a", 10)
    assert store.get_pulse("/w/t/a") is None
    assert store.tombstone_version("/w/t/a") == 0
    assert store.get_all_nodes_for_path("/w") == []
    assert store.key_count == 0 and store.total_bytes == 0
    assert store.send_pulse("/w/t/a", b"0", 5)  # an older write is welcome again
    assert not store.discard("/w/t/missing", 1)


def test_tombstones_lists_every_live_delete(clock: FakeClock) -> None:
    store = PulseStore(clock=clock, tombstone_ttl_secs=60)
    store.send_pulse("/w/t/a", b"x", 10)
    store.delete_pulse_id("/w/t/a", 20)
    store.delete_path("/w/u", 30)
    assert sorted(store.tombstones()) == [("/w/t/a", 0, 20), ("/w/u", 30, 0)]
    clock.advance(61)
    assert store.tombstones() == []


# ------------------------------------------------------------- found by mutation testing


def test_exists_is_false_for_a_key_whose_ttl_passed_since_its_last_read(
    clock: FakeClock,
) -> None:
    # The first call after the TTL passes: the key is found, then swept by that same call.
    store = PulseStore(clock=clock, ttl_secs=30)
    store.send_pulse("/w/t/k", b"x")
    assert store.exists("/w/t/k")
    clock.advance(30)
    assert not store.exists("/w/t/k")
    assert store.key_count == 0


def test_subtree_version_is_the_newest_value_at_or_under_a_path(store: PulseStore) -> None:
    assert store.subtree_version("/never/written") == 0
    assert store.subtree_version("/") == 0
    store.send_pulse("/w/t/a", b"x", 10)
    store.send_pulse("/w/t/b", b"x", 30)
    store.send_pulse("/w/u", b"x", 20)
    assert store.subtree_version("/") == 30
    assert store.subtree_version("/w/t") == 30
    assert store.subtree_version("/w/u") == 20
    assert store.subtree_version("/w/t/c") == 0
    store.delete_pulse_id("/w/t/b", 30)
    assert store.subtree_version("/w") == 20
    assert store.subtree_version("/w/t") == 10


def test_discard_of_a_path_that_holds_no_key_changes_nothing(store: PulseStore) -> None:
    store.send_pulse("/w/t", b"x", 10)
    footprint = store.footprint_bytes
    assert not store.discard("/w/t/below", 10)  # the walk ends at /w/t, which holds 10
    assert not store.discard("/w/other/deep/key", 10)
    held = store.get_pulse("/w/t")
    assert held is not None and held.version == 10
    assert store.footprint_bytes == footprint
    assert _trie_nodes(store) == 2  # /w and /w/t: no node made for the paths discarded


@pytest.mark.parametrize(("version", "kind"), [(True, "bool"), (1.5, "float"), ("7", "str")])
def test_a_version_that_is_not_an_integer_is_refused_naming_its_type(
    store: PulseStore, version: object, kind: str
) -> None:
    message = f"version must be an integer, not {kind}"
    with pytest.raises(InvalidRequest, match=message):
        store.send_pulse("/a", b"x", version)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=message):
        store.send_pulses([("/a", b"x", version)])  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match=message):
        store.delete_pulse_id("/a", version)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=message):
        store.delete_path("/a", version)  # type: ignore[arg-type]
    assert store.key_count == 0 and store.tombstones() == []


@pytest.mark.parametrize("batched", [False, True])
def test_a_payload_buffer_is_copied_when_stored(store: PulseStore, batched: bool) -> None:
    buffer = bytearray(b"beat")
    if batched:
        assert store.send_pulses([("/w/t/a", buffer, 5)]) == 1  # type: ignore[list-item]
    else:
        assert store.send_pulse("/w/t/a", buffer, 5)  # type: ignore[arg-type]
    buffer[:] = b"BEAT"  # the caller reuses its buffer
    assert store.get_pulse("/w/t/a") == Pulse("/w/t/a", b"beat", 5)
    held = store.get_pulse("/w/t/a")
    assert held is not None and type(held.data) is bytes


def test_a_batch_rewrite_renews_the_ttl_and_counts_every_grown_byte(clock: FakeClock) -> None:
    store = PulseStore(clock=clock, ttl_secs=30)
    store.send_pulses([("/w/t/a", b"1", None), ("/w/t/b", b"1", None)])
    clock.advance(20)
    assert store.send_pulses([("/w/t/a", b"22", None), ("/w/t/b", b"333", None)]) == 2
    assert store.total_bytes == len(b"22") + len(b"333")
    clock.advance(20)  # 40 s after the first write, 20 s after the rewrite
    assert store.get_all_nodes_for_path("/w/t") == ["a", "b"]
    clock.advance(10)
    assert store.get_all_nodes_for_path("/w/t") == []
    assert store.total_bytes == 0


def test_without_a_ttl_no_write_times_are_kept(store: PulseStore) -> None:
    # The write-ordered dict exists for the TTL sweep only: without a TTL nothing would ever
    # empty it, so it must stay empty (white-box: one entry per key would be a leak).
    store.send_pulse("/w/t/a", b"1", 1)
    store.send_pulses([("/w/t/a", b"2", 2), ("/w/t/b", b"1", 1)])
    store.send_pulse("/w/t/b", b"2", 2)
    assert store.key_count == 2
    assert not store._written


@pytest.mark.parametrize("batched", [False, True])
def test_a_repeated_identical_write_is_stored_but_does_not_renew_the_ttl(
    clock: FakeClock, batched: bool
) -> None:
    # A retried delivery of the same write (same version, same data) is "stored already":
    # it must not keep the heartbeat of a worker that stopped writing alive.
    store = PulseStore(clock=clock, ttl_secs=30)
    version = clock.now
    store.send_pulse("/w/t/a", b"x", version)
    clock.advance(20)
    if batched:
        assert store.send_pulses([("/w/t/a", b"x", version)]) == 1
    else:
        assert store.send_pulse("/w/t/a", b"x", version)
    clock.advance(10)
    assert store.get_pulse("/w/t/a") is None


def test_a_key_tombstone_expires_on_its_own_under_a_live_subtree_tombstone(
    clock: FakeClock,
) -> None:
    store = PulseStore(clock=clock, tombstone_ttl_secs=60)
    store.delete_pulse_id("/w/t", 7)
    clock.advance(30)
    store.delete_path("/w/t", 6)  # older than the exact-key tombstone: both stay
    assert store.tombstones() == [("/w/t", 6, 7)]
    clock.advance(30)  # the exact-key tombstone is due, the subtree one not for 30 s more
    assert store.expire() == 1
    assert store.tombstones() == [("/w/t", 6, 0)]
    assert store.tombstone_version("/w/t") == 6
    assert not store.send_pulse("/w/t/x", b"stale", 6)
    store.delete_pulse_id("/w/t", 8)  # the path can be deleted again
    assert store.tombstones() == [("/w/t", 6, 8)]


def test_one_expire_drops_every_due_tombstone_past_a_superseded_one(clock: FakeClock) -> None:
    store = PulseStore(clock=clock, tombstone_ttl_secs=60)
    store.delete_pulse_id("/a", 1)  # due at 60 s, until the second delete below
    clock.advance(1)
    store.delete_pulse_id("/b", 1)
    store.delete_pulse_id("/a", 2)  # now due at 61 s: the first expiry is superseded
    assert sorted(store.tombstones()) == [("/a", 0, 2), ("/b", 0, 1)]
    clock.advance(60)  # 61 s: the superseded expiry comes first, then both live ones
    assert store.expire() == 2
    assert store.tombstones() == []


def test_a_write_to_a_key_whose_ttl_just_passed_stores_it_anew(clock: FakeClock) -> None:
    store = PulseStore(clock=clock, ttl_secs=30)
    store.send_pulse("/w/t/a", b"old", 1)
    clock.advance(30)  # the write below finds the key, then its own sweep drops it
    assert store.send_pulse("/w/t/a", b"new", 2)
    assert store.get_pulse("/w/t/a") == Pulse("/w/t/a", b"new", 2)
    assert store.key_count == 1 and store.total_bytes == len(b"new")


def test_expire_counts_every_key_and_tombstone_it_drops(clock: FakeClock) -> None:
    store = PulseStore(clock=clock, ttl_secs=30, tombstone_ttl_secs=30)
    store.send_pulse("/w/t/a", b"x")
    store.send_pulse("/w/t/b", b"x")
    store.send_pulse("/w/u/c", b"x")
    store.delete_pulse_id("/w/u/c")
    clock.advance(30)
    assert store.expire() == 3  # two keys past their TTL, one tombstone
    assert store.key_count == 0 and store.tombstones() == []


def test_a_key_written_under_another_spelling_follows_the_same_rules(store: PulseStore) -> None:
    # "/w/t/a/" is the key "/w/t/a", but not its stored spelling, so it takes the full walk
    # rather than the shortcut for stored keys: versions and ties must come out the same.
    assert store.send_pulse("/w/t/a", b"m", 10)
    assert not store.send_pulse("/w/t/a/", b"z", 9)  # older, even with larger data
    assert not store.send_pulse("/w/t/a/", b"a", 10)  # same version, smaller data
    assert store.send_pulse("/w/t/a/", b"m", 10)  # the stored write itself: stored already
    assert store.get_pulse("/w/t/a") == Pulse("/w/t/a", b"m", 10)
    assert store.send_pulse("/w/t/a/", b"mm", 10)  # same version, larger data wins
    assert store.get_pulse("/w/t/a") == Pulse("/w/t/a", b"mm", 10)
    assert store.key_count == 1 and store.total_bytes == 2
    assert store.send_pulse("/w/t/a/", b"n", 11)
    assert store.get_pulse("/w/t/a") == Pulse("/w/t/a", b"n", 11)
    assert store.key_count == 1 and store.total_bytes == 1


def test_a_tombstone_stops_blocking_writes_from_the_instant_it_expires(clock: FakeClock) -> None:
    store = PulseStore(clock=clock, tombstone_ttl_secs=60)
    store.delete_pulse_id("/w/t/a", 10)
    clock.advance(60)  # exactly the tombstone's expiry; a write is the first call since
    assert store.send_pulse("/w/t/a", b"x", 5)


def test_the_default_tombstone_lifetime_is_the_configured_default(clock: FakeClock) -> None:
    # Code building a store without a lifetime gets what a node gets by default.
    store = PulseStore(clock=clock)
    store.delete_pulse_id("/w/t/a", 10)
    clock.now += int(Config().tombstone_secs * SEC) - 1
    assert store.tombstone_version("/w/t/a") == 10
    clock.now += 1
    assert store.tombstone_version("/w/t/a") == 0
