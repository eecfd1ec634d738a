"""Read merge: newest of values and tombstones wins; a stale replica never resurrects."""

from __future__ import annotations

import itertools

from pmcluster.client.readmerge import (
    covering_tombstone,
    merge_children,
    merge_pulse,
    merge_pulses,
    newer,
)
from pmcluster.protocol.pulse import Pulse
from pmcluster.store import PulseStore

P = "/workerbeats/topo-1/node-6700"


def test_newest_value_wins_in_any_order() -> None:
    old, new = Pulse(P, b"old", 100), Pulse(P, b"new", 200)
    for answers in itertools.permutations([(old, 0), (new, 0), (None, 0)]):
        assert merge_pulse(answers) == new


def test_one_owner_missing_is_not_a_miss() -> None:
    value = Pulse(P, b"x", 5)
    assert merge_pulse([(None, 0), (value, 0)]) == value


def test_absent_when_every_answer_is_absent_or_no_answers() -> None:
    assert merge_pulse([(None, 0), (None, 0)]) is None
    assert merge_pulse([(None, 7)]) is None
    assert merge_pulse([]) is None


def test_stale_replica_after_delete_does_not_resurrect() -> None:
    # Replica B missed the delete at version 300 and still holds the value written at 200.
    stale = Pulse(P, b"before-delete", 200)
    assert merge_pulse([(None, 300), (stale, 0)]) is None
    assert merge_pulse([(stale, 0), (None, 300)]) is None


def test_tombstone_equal_to_value_version_deletes_it() -> None:
    assert merge_pulse([(Pulse(P, b"x", 300), 0), (None, 300)]) is None


def test_write_after_delete_is_visible() -> None:
    rewritten = Pulse(P, b"after", 400)
    assert merge_pulse([(None, 300), (rewritten, 0)]) == rewritten
    # A replica holding a newer value and an older tombstone of its own.
    assert merge_pulse([(rewritten, 300)]) == rewritten


def test_ties_broken_like_the_store() -> None:
    a, b = Pulse(P, b"aaa", 100), Pulse(P, b"zzz", 100)
    assert merge_pulse([(a, 0), (b, 0)]) == b
    assert merge_pulse([(b, 0), (a, 0)]) == b
    store = PulseStore()
    store.send_pulse(P, b"zzz", 100)
    store.send_pulse(P, b"aaa", 100)
    assert store.get_pulse(P) == merge_pulse([(a, 0), (b, 0)])


Listing = tuple[dict[str, int], dict[str, int]]


def test_merge_children_unions_and_respects_tombstones() -> None:
    node_a: Listing = ({"t1": 100, "t2": 100}, {})
    node_b: Listing = ({"t2": 150, "t3": 90}, {"t1": 120})  # b deleted t1 after a's write
    stale: Listing = ({"t3": 50}, {})
    assert merge_children([node_a, node_b, stale]) == ["t2", "t3"]


def test_merge_children_stale_copy_after_delete_is_not_listed() -> None:
    deleted_here: Listing = ({}, {"topo": 500})
    stale_copy: Listing = ({"topo": 400}, {})
    assert merge_children([deleted_here, stale_copy]) == []
    rewritten: Listing = ({"topo": 600}, {})
    assert merge_children([deleted_here, stale_copy, rewritten]) == ["topo"]


def test_merge_children_is_component_aware_and_sorted() -> None:
    answers: list[Listing] = [({"t10": 1, "t1": 1}, {}), ({"b": 1, "a": 1}, {})]
    assert merge_children(answers) == ["a", "b", "t1", "t10"]


def test_merge_pulses_newest_per_path_sorted() -> None:
    a1, a2 = Pulse("/w/a", b"1", 1), Pulse("/w/a", b"2", 2)
    b1 = Pulse("/w/b", b"1", 1)
    assert merge_pulses([[a2, b1], [a1]]) == [a2, b1]
    assert merge_pulses([[b1], [a1, a2]]) == [a2, b1]
    assert merge_pulses([[], []]) == []


def test_merge_pulses_drops_stale_copies_under_tombstones() -> None:
    stale = [Pulse("/w/t1/n1", b"x", 100), Pulse("/w/t10/n1", b"y", 100)]
    merged = merge_pulses([stale, []], tombstones={"/w/t1": 200})
    assert merged == [Pulse("/w/t10/n1", b"y", 100)]  # /w/t10 is not under /w/t1
    rewritten = Pulse("/w/t1/n1", b"z", 300)
    assert merge_pulses([stale, [rewritten]], tombstones={"/w/t1": 200})[0] == rewritten


def test_covering_tombstone_walks_ancestors_component_wise() -> None:
    tombs = {"/": 5, "/w": 10, "/w/t1": 20, "/w/t1/n": 30}
    assert covering_tombstone("/w/t1/n", tombs) == 30
    assert covering_tombstone("/w/t1/m", tombs) == 20
    assert covering_tombstone("/w/t10/m", tombs) == 10
    assert covering_tombstone("/x", {"/x/y": 9}) == 0
    assert covering_tombstone("/x", tombs) == 5


def test_a_recursive_delete_seen_by_one_replica_hides_the_others_children() -> None:
    # Y saw delete_path(/wb/topo) at 30 (its children are pruned); X missed it.
    fresh: tuple[dict[str, int], dict[str, int]] = ({}, {"": 30})
    stale = ({"n-1": 10, "n-2": 10}, {})
    assert merge_children([fresh, stale]) == []
    rewritten = ({"n-1": 40}, {})
    assert merge_children([fresh, stale, rewritten]) == ["n-1"]


# --- boundaries found by mutation testing (docs/testing.md) ----------------------------------


def test_equal_version_and_data_is_not_newer() -> None:
    a, b = Pulse("/k", b"same", 5), Pulse("/k", b"same", 5)
    assert not newer(a, b) and not newer(b, a)
    assert newer(Pulse("/k", b"b", 5), Pulse("/k", b"a", 5))


def test_a_tombstone_at_the_values_version_removes_it_everywhere() -> None:
    """A delete at version v removes writes with version <= v: lists, listings, one key."""
    assert merge_pulse([(Pulse("/k", b"x", 1), 0)]) == Pulse("/k", b"x", 1)
    assert merge_pulse([(Pulse("/k", b"x", 7), 7)]) is None
    assert merge_pulses([[Pulse("/a/b", b"x", 7)]], {"/a": 7}) == []
    assert merge_pulses([[Pulse("/a/b", b"x", 8)]], {"/a": 7}) == [Pulse("/a/b", b"x", 8)]
    assert merge_children([({"c": 7}, {"c": 7})]) == []
    assert merge_children([({"c": 7}, {"": 7})]) == []
    assert merge_children([({"c": 1}, {})]) == ["c"]


def test_merge_children_takes_the_max_across_answers_in_any_order() -> None:
    for answers in itertools.permutations([({"c": 9}, {}), ({"c": 3}, {"c": 5}), ({}, {"c": 1})]):
        assert merge_children(list(answers)) == ["c"]
    for answers in itertools.permutations([({"c": 4}, {"c": 9}), ({}, {"c": 2}), ({"d": 1}, {})]):
        assert merge_children(list(answers)) == ["d"]


def test_covering_tombstone_walks_every_ancestor_and_the_root() -> None:
    tombs = {"/a": 3, "/a/b": 1, "/": 2, "/x": 9}
    assert covering_tombstone("/a/b/c", tombs) == 3
    assert covering_tombstone("/a/b/c", {"/a/b/c": 4, "/a": 3}) == 4
    assert covering_tombstone("/a/b/c", {"/a/b": 5}) == 5
    assert covering_tombstone("/q/r", {"/": 2}) == 2
    assert covering_tombstone("/q/r", {}) == 0
    assert covering_tombstone("/ab/c", {"/a": 9}) == 0  # component-wise, not a string prefix
