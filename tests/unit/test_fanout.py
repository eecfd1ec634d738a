"""FanOut: probes, quorums and cancellation (fake transports, no network)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from pmcluster.client.failures import FailureTracker
from pmcluster.client.fanout import FanOut
from pmcluster.errors import ClusterUnavailable, NodeUnavailable
from pmcluster.ring import Member

TIMEOUT = 0.3
A, B, C = (Member(f"127.0.0.{i}:1", f"127.0.0.{i}", 1) for i in (1, 2, 3))


class Node:
    """A fake transport: answers after `delay`, or fails at once, or never answers."""

    def __init__(self, node_id: str, *, delay: float = 0.0, fail: bool = False) -> None:
        self.node_id = node_id
        self.delay = delay
        self.fail = fail
        self.calls = 0

    async def get_pulse(self, path: str) -> Any:
        self.calls += 1
        if self.fail:
            raise NodeUnavailable(self.node_id, "connection refused")
        await asyncio.sleep(self.delay)
        return self.node_id


def make(nodes: dict[str, Node]) -> tuple[FanOut, FailureTracker]:
    failures = FailureTracker(base_delay=0.001, max_delay=0.001, jitter=0.0)
    out = FanOut(lambda m: nodes[m.node_id], failures, Counter(), TIMEOUT)  # type: ignore[arg-type,return-value]
    return out, failures


async def test_a_probe_that_answers_saves_a_read_whose_healthy_nodes_fail() -> None:
    nodes = {A.node_id: Node(A.node_id, fail=True), B.node_id: Node(B.node_id, delay=0.01)}
    out, failures = make(nodes)
    failures.record_failure(B.node_id)  # B failed a moment ago: its next request is a probe
    await asyncio.sleep(0.01)
    assert failures.looks_down(B.node_id)
    assert await out.gather([A, B], lambda t: t.get_pulse("/p"), "read") == [B.node_id]
    await out.close()


async def test_a_quorum_is_required_when_asked_for() -> None:
    nodes = {
        A.node_id: Node(A.node_id),
        B.node_id: Node(B.node_id, fail=True),
        C.node_id: Node(C.node_id, fail=True),
    }
    out, _ = make(nodes)
    # The error says how many answered and why one that did not failed.
    with pytest.raises(ClusterUnavailable, match=r"1 of .* 2 needed; 127\.0\.0\.[23]:1: .*refused"):
        await out.gather([A, B, C], lambda t: t.get_pulse("/p"), "delete", required=2)
    assert len(await out.gather([A, B, C], lambda t: t.get_pulse("/p"), "list")) == 1
    await out.close()


async def test_deletes_reach_nodes_in_back_off() -> None:
    nodes = {A.node_id: Node(A.node_id), B.node_id: Node(B.node_id)}
    out, _ = make(nodes)
    slow = FailureTracker(base_delay=60.0, max_delay=60.0, jitter=0.0)
    out.failures = slow
    slow.record_failure(B.node_id)
    await out.gather([A, B], lambda t: t.get_pulse("/p"), "read")
    assert nodes[B.node_id].calls == 0  # skipped while backing off
    await out.gather([A, B], lambda t: t.get_pulse("/p"), "delete", skip_failing=False)
    assert nodes[B.node_id].calls == 1
    await out.close()


async def test_a_cancelled_caller_leaves_no_request_behind() -> None:
    nodes = {A.node_id: Node(A.node_id, delay=10), B.node_id: Node(B.node_id, delay=10)}
    out, failures = make(nodes)
    caller = asyncio.create_task(out.gather([A, B], lambda t: t.get_pulse("/p"), "read"))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert failures.failures(A.node_id) == 0  # the caller left; the nodes did nothing wrong
    await out.close()
