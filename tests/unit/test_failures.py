"""FailureTracker: skip while backing off, one probe after the window, stop skipping en masse."""

from __future__ import annotations

import random

import pytest

from pmcluster.client.failures import FailureTracker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, secs: float) -> None:
        self.now += secs


def tracker(clock: FakeClock, *, jitter: float = 0.0, max_delay: float = 10.0) -> FailureTracker:
    return FailureTracker(
        base_delay=0.2, max_delay=max_delay, jitter=jitter, clock=clock, rng=random.Random(7)
    )


def test_unknown_and_healthy_nodes_are_not_skipped() -> None:
    t = tracker(FakeClock())
    assert not t.is_skipped("a:1")
    t.record_success("a:1")
    assert not t.is_skipped("a:1")
    assert t.plan(["a:1", "b:1"]) == ["a:1", "b:1"]


def test_failed_node_is_skipped_inside_window_then_probed_once() -> None:
    clock = FakeClock()
    t = tracker(clock)
    t.record_failure("a:1")
    assert t.is_skipped("a:1")
    clock.advance(0.19)
    assert t.is_skipped("a:1")
    clock.advance(0.02)
    assert not t.is_skipped("a:1")  # the probe goes through
    assert t.is_skipped("a:1")  # ... and only one probe while it is in flight
    assert t.is_skipped("a:1")


def test_probe_failure_doubles_window_up_to_max() -> None:
    clock = FakeClock()
    t = tracker(clock, max_delay=1.0)
    expected = [0.2, 0.4, 0.8, 1.0, 1.0]
    for delay in expected:
        t.record_failure("a:1")
        clock.advance(delay - 0.001)
        assert t.is_skipped("a:1"), delay
        clock.advance(0.002)
        assert not t.is_skipped("a:1"), delay
    assert t.failures("a:1") == len(expected)


def test_probe_success_forgets_failures() -> None:
    clock = FakeClock()
    t = tracker(clock)
    for _ in range(4):
        t.record_failure("a:1")
    t.record_success("a:1")
    assert t.failures("a:1") == 0
    assert not t.is_skipped("a:1")
    t.record_failure("a:1")
    clock.advance(0.21)  # back to the base delay, not 3.2 s
    assert not t.is_skipped("a:1")


def test_unrecorded_probe_rearms_so_node_is_probed_again_later() -> None:
    clock = FakeClock()
    t = tracker(clock)
    t.record_failure("a:1")
    clock.advance(0.21)
    assert not t.is_skipped("a:1")  # probe handed out, its outcome never recorded
    clock.advance(0.21)
    assert not t.is_skipped("a:1")  # not stuck forever


def test_jitter_shortens_delay_within_bounds() -> None:
    clock = FakeClock()
    t = FailureTracker(base_delay=1.0, max_delay=1.0, jitter=0.5, clock=clock, rng=random.Random(1))
    for _ in range(50):
        t.record_failure("a:1")
        clock.advance(0.499)
        assert t.is_skipped("a:1")  # at least (1 - jitter) * delay
        clock.advance(0.502)
        assert not t.is_skipped("a:1")  # never longer than max_delay
        t.record_success("a:1")


def test_plan_drops_skipped_nodes_keeping_order() -> None:
    clock = FakeClock()
    t = tracker(clock)
    t.record_failure("b:1")
    assert t.plan(["a:1", "b:1", "c:1"]) == ["a:1", "c:1"]
    assert t.plan(["a:1", "b:1"]) == ["a:1"]


def test_plan_returns_everything_when_more_than_half_look_down() -> None:
    t = tracker(FakeClock())
    t.record_failure("a:1")
    t.record_failure("b:1")
    assert t.plan(["a:1", "b:1", "c:1"]) == ["c:1", "a:1", "b:1"]
    assert t.plan(["a:1", "b:1"]) == ["a:1", "b:1"]
    assert t.plan(["b:1"]) == ["b:1"]
    assert t.plan([]) == []


def test_plan_never_forgets_nodes_it_was_not_given() -> None:
    t = tracker(FakeClock())
    t.record_failure("a:1")
    t.plan(["c:1"])
    assert t.failures("a:1") == 1


@pytest.mark.parametrize(("base", "top", "jitter"), [(0, 1, 0.5), (2, 1, 0.5), (1, 2, 1.0)])
def test_rejects_bad_parameters(base: float, top: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        FailureTracker(base_delay=base, max_delay=top, jitter=jitter)


def test_failed_within_remembers_a_failure_after_the_node_answers_again() -> None:
    now = [100.0]
    tracker = FailureTracker(clock=lambda: now[0])
    assert not tracker.failed_within("n1", 5.0)
    tracker.record_failure("n1")
    tracker.record_success("n1")  # answering again clears the back-off, not the memory
    assert not tracker.looks_down("n1")
    now[0] += 5.0
    assert tracker.failed_within("n1", 5.0)
    now[0] += 0.001
    assert not tracker.failed_within("n1", 5.0)
    assert not tracker.failed_within("n2", 1e9)
