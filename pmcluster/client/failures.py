"""Failure tracking policy: skip a failing node, back off with jitter, then probe it.

Like the Cassandra driver's `ReconnectionPolicy`, this is a small object with one job. It only
orders and filters the nodes a client is about to ask; it never removes anything from a ring
(only a membership epoch changes the ring), so two clients can never disagree about where a key
lives because of their own failure opinions.

A node that fails is skipped for a back-off window (`base_delay`, doubling per consecutive
failure up to `max_delay`, shortened by up to `jitter` of itself so clients do not probe in
lockstep). When the window has passed, exactly one request is let through as a probe (the
window is re-armed meanwhile, so concurrent requests keep skipping it); a success forgets the
node's failures, a failure doubles the window.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["FailureTracker"]


@dataclass(slots=True)
class _NodeState:
    failures: int
    delay: float
    skip_until: float


class FailureTracker:
    """Per-node consecutive failures, back-off windows and probes (not thread-safe: one loop)."""

    def __init__(
        self,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        jitter: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._nodes: dict[str, _NodeState] = {}
        self._last_failed: dict[str, float] = {}  # kept across successes (`failed_within`)

    def record_failure(self, node_id: str) -> None:
        """A request to `node_id` failed: (re)start its back-off window, doubled each time."""
        self._last_failed[node_id] = self._clock()
        state = self._nodes.get(node_id)
        failures = 1 if state is None else state.failures + 1
        delay = min(self.max_delay, self.base_delay * 2 ** min(failures - 1, 62))
        delay *= 1.0 - self.jitter * self._rng.random()
        self._nodes[node_id] = _NodeState(failures, delay, self._clock() + delay)

    def record_success(self, node_id: str) -> None:
        """A request to `node_id` succeeded: forget its failures."""
        self._nodes.pop(node_id, None)

    def failed_within(self, node_id: str, secs: float) -> bool:
        """Whether a request to `node_id` failed in the last `secs` seconds, even if it has
        answered since (it may have missed writes meanwhile: anti-entropy compares all)."""
        last = self._last_failed.get(node_id)
        return last is not None and self._clock() - last <= secs

    def failures(self, node_id: str) -> int:
        """Consecutive failures recorded for `node_id` (0 when healthy)."""
        state = self._nodes.get(node_id)
        return 0 if state is None else state.failures

    def looks_down(self, node_id: str) -> bool:
        """True when the node's last request failed (inside its window or awaiting a probe)."""
        return node_id in self._nodes

    def is_skipped(self, node_id: str) -> bool:
        """Should the next request skip `node_id`?

        Inside the back-off window: yes. Once the window has passed, the first caller gets
        False (its request is the probe) and the window is re-armed with the same delay, so
        only one probe is in flight until its outcome is recorded.
        """
        state = self._nodes.get(node_id)
        if state is None:
            return False
        now = self._clock()
        if now < state.skip_until:
            return True
        state.skip_until = now + state.delay
        return False

    def plan(self, nodes: Sequence[str]) -> list[str]:
        """The nodes to ask, in the given order, without the skipped ones.

        When more than half of `nodes` look down, the failures are more likely ours (our
        network, a partition) than theirs: skip nothing and return all of them, healthy first.
        """
        down = [n for n in nodes if self.looks_down(n)]
        if 2 * len(down) > len(nodes):
            return [n for n in nodes if not self.looks_down(n)] + down
        return [n for n in nodes if not self.is_skipped(n)]
