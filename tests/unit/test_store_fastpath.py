"""The store's shortcut for keys already stored (parents index, no trie walk, no tombstone
check) gives exactly the answers of the full walk, and its index follows the trie."""

from __future__ import annotations

import random

import pytest

from pmcluster.errors import InsufficientStorage, InvalidPath
from pmcluster.protocol.pulse import Pulse
from pmcluster.store import KEY_OVERHEAD_BYTES, PulseStore
from pmcluster.store.trie import index_entry_bytes, iter_subtree

SEC = 1_000_000_000


class FakeClock:
    def __init__(self, now: int = 1_000 * SEC) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _check_parents_index(store: PulseStore) -> None:
    """White-box: the index holds exactly the trie nodes with children, with their chains."""
    expected = {}
    for path, node in iter_subtree(store._root, "/", sort=False):
        if node.children is not None:
            assert node.children, f"{path}: an empty children dict is kept"
            expected["" if path == "/" else path] = node
    assert set(store._parents) == set(expected)
    for key, chain in store._parents.items():
        assert chain[-1] is expected[key]
        node = store._root
        assert chain[0] is node
        for depth, name in enumerate([] if key == "" else key[1:].split("/"), start=1):
            assert node.children is not None
            node = node.children[name]
            assert chain[depth] is node


def _check_counts_and_newest(store: PulseStore) -> None:
    """White-box: every node's key count `n` and newest version `maxv` are exact, as the
    shortcuts (listings, `children_versions`, `delete_path` without a version) rely on."""
    for path, node in iter_subtree(store._root, "/", sort=False):
        children = list(node.children.values()) if node.children else []
        own = node.data is not None
        assert node.n == own + sum(child.n for child in children), path
        newest = max([node.version if own else 0, *(child.maxv for child in children)])
        assert node.maxv == newest, path


@pytest.mark.parametrize("batched", [False, True])
def test_rewrite_keeps_newer_wins_and_ties(batched: bool) -> None:
    store = PulseStore(clock=FakeClock())

    def write(data: bytes, version: int) -> bool:
        if batched:
            return store.send_pulses([("/w/t/a", data, version)], trusted=True) == 1
        return store.send_pulse("/w/t/a", data, version)

    assert write(b"m", 10)
    assert not write(b"z", 9)  # older
    assert not write(b"a", 10)  # equal version, smaller data
    assert write(b"m", 10)  # equal version, same data: held, counts as stored
    assert write(b"n", 10)  # equal version, larger data
    assert write(b"", 11)  # newer, even if smaller
    pulse = store.get_pulse("/w/t/a")
    assert pulse is not None and (pulse.data, pulse.version) == (b"", 11)
    assert store.key_count == 1 and store.total_bytes == 0


def test_rewrite_raises_every_ancestors_newest_version() -> None:
    clock = FakeClock()
    store = PulseStore(clock=clock)
    store.send_pulses([("/w/t1/a", b"x", 5), ("/w/t1/b", b"x", 6), ("/w/t2/a", b"x", 7)])
    store.send_pulses([("/w/t1/a", b"y", 9)], trusted=True)
    assert store.children_versions("/w")[0] == {"t1": 9, "t2": 7}
    assert store.children_versions("/")[0] == {"w": 9}
    store.send_pulse("/w/t2/a", b"y", 8)
    assert store.children_versions("/w")[0] == {"t1": 9, "t2": 8}
    assert store.children_versions("/")[0] == {"w": 9}
    # delete_path without a version takes the newest version below it, so all go.
    clock.now = 1
    assert store.delete_path("/w") == 3
    assert store.key_count == 0


def test_value_newer_than_a_delete_is_rewritten_and_the_delete_still_counts() -> None:
    store = PulseStore(clock=FakeClock())
    store.send_pulse("/w/t/a", b"x", 50)
    store.send_pulse("/w/t/b", b"x", 10)
    assert store.delete_path("/w/t", 20) == 1  # b goes, a (newer) stays
    assert store.delete_pulse_id("/w/t/a", 30) is False  # a is newer than this delete too
    assert not store.send_pulse("/w/t/a", b"y", 40)  # older than the value
    assert store.send_pulse("/w/t/a", b"y", 60)
    assert not store.send_pulse("/w/t/b", b"y", 20)  # the subtree tombstone still holds
    assert store.send_pulses([("/w/t/b", b"y", 21)], trusted=True) == 1
    assert store.tombstone_version("/w/t/a") == 30


def test_paths_still_checked_and_normalised_next_to_stored_keys() -> None:
    store = PulseStore(clock=FakeClock())
    store.send_pulse("/w/t/a", b"x", 5)
    pulse = store.get_pulse("/w/t/a/")
    assert pulse is not None and pulse.path == "/w/t/a"
    assert store.exists("/w/t/a/")
    assert store.send_pulse("/w/t/a/", b"y", 6)
    assert store.get_pulse("/w/t/a") is not None
    for bad in ("/w/t//a", "w/t/a", "/w/t/./a", "/w/t/a\x00", "/", ""):
        with pytest.raises(InvalidPath):
            store.get_pulse(bad)
        with pytest.raises(InvalidPath):
            store.send_pulse(bad, b"z", 7)
    with pytest.raises(InvalidPath):
        store.exists(b"/w/t/a")  # type: ignore[arg-type]
    assert store.get_pulse("/w/t") is None  # an interior node is not a key
    assert store.get_pulse("/w/t/a/b") is None


def test_rewrite_growing_past_the_cap_is_refused_and_changes_nothing() -> None:
    cost = len("/w/a") + 10 + KEY_OVERHEAD_BYTES + index_entry_bytes(len("/w"), 2)
    store = PulseStore(clock=FakeClock(), max_bytes=cost)
    assert store.send_pulse("/w/a", b"x" * 10, 5)
    with pytest.raises(InsufficientStorage):
        store.send_pulse("/w/a", b"x" * 11, 6)
    assert store.send_pulse("/w/a", b"y" * 10, 7)  # same size works at the cap
    with pytest.raises(InsufficientStorage):
        store.send_pulses([("/w/a", b"x" * 11, 8)], trusted=True)
    pulse = store.get_pulse("/w/a")
    assert pulse is not None and (pulse.data, pulse.version) == (b"y" * 10, 7)
    assert store.footprint_bytes == cost and store.refused_writes == 2


def test_parents_index_follows_writes_deletes_and_expiry() -> None:
    rng = random.Random(7)
    clock = FakeClock()
    store = PulseStore(clock=clock, tombstone_ttl_secs=5, ttl_secs=20)
    names = ["a", "b", "c"]
    for _ in range(2000):
        path = "/" + "/".join(rng.choice(names) for _ in range(rng.randint(1, 4)))
        op = rng.random()
        if op < 0.4:
            store.send_pulse(path, b"x", rng.choice([None, clock.now + rng.randint(-3, 3)]))
        elif op < 0.6:
            store.send_pulses([(path, b"yy", 0), (path + "/c", b"y", 0)], trusted=True)
        elif op < 0.7:
            store.delete_pulse_id(path)
        elif op < 0.75:
            store.delete_path(path, rng.choice([None, clock.now]))
        elif op < 0.8:
            pulse = store.get_pulse(path)
            if pulse is not None:
                store.discard(path, pulse.version)
        else:
            clock.now += rng.randint(0, 3) * SEC
            store.expire()
        _check_parents_index(store)
        _check_counts_and_newest(store)
    clock.now += 60 * SEC
    store.expire()
    assert store.key_count == 0
    assert store._parents == {}
    store.send_pulse("/a/b", b"x")
    store.clear()
    assert store._parents == {}


def test_stored_keys_take_the_shortcut_not_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A point operation on a stored key costs two dict lookups (the module docstring of
    `pmcluster.store.pulsestore`): no path validation, no trie walk, not the general write.
    White-box: those are made to fail, so only the shortcut can answer."""
    store = PulseStore(clock=FakeClock())
    store.send_pulses([("/w/t/a", b"1", 1), ("/w/t/b", b"1", 1)])

    def slow(*_: object, **__: object) -> None:
        raise AssertionError("a stored key took the slow path")

    monkeypatch.setattr(store, "_find", slow)
    monkeypatch.setattr(store, "_put", slow)
    monkeypatch.setattr("pmcluster.store.pulsestore.normalize_key", slow)
    assert store.exists("/w/t/a")
    assert store.get_pulse("/w/t/a") == Pulse("/w/t/a", b"1", 1)
    assert store.send_pulse("/w/t/a", b"2", 2)
    assert store.send_pulse("/w/t/a", b"3")  # "now"
    assert not store.send_pulse("/w/t/b", b"0", 1)  # the stored version, smaller data
    assert store.send_pulses([("/w/t/a", b"4", None), ("/w/t/b", b"2", 2)], trusted=True) == 2
    assert store.get_pulse("/w/t/b") == Pulse("/w/t/b", b"2", 2)
