"""A process that was paused (SIGSTOP) must not blame its peers for the timeouts it overslept:
else, on SIGCONT, it would skip every peer as failing and answer reads from its own stale
store alone (seen in the short-SIGSTOP fault test)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from pmcluster.client.failures import FailureTracker
from pmcluster.client.fanout import FanOut
from pmcluster.errors import ClusterUnavailable
from pmcluster.ring import Member

TIMEOUT = 0.1
PEERS = [Member("127.0.0.1:1", "127.0.0.1", 1), Member("127.0.0.2:1", "127.0.0.2", 1)]


class Hung:
    """A transport whose node never answers."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    async def get_pulse(self, path: str) -> Any:
        await asyncio.sleep(3600)


def fanout() -> tuple[FanOut, FailureTracker]:
    failures = FailureTracker()
    transports = {m.node_id: Hung(m.node_id) for m in PEERS}
    out = FanOut(lambda m: transports[m.node_id], failures, Counter(), TIMEOUT)  # type: ignore[arg-type,return-value]
    return out, failures


async def ask(out: FanOut) -> None:
    with pytest.raises(ClusterUnavailable):  # nobody answered
        await out.gather(PEERS, lambda t: t.get_pulse("/p"), "read")


async def test_a_real_timeout_is_recorded() -> None:
    out, failures = fanout()
    await ask(out)
    assert all(failures.failures(m.node_id) == 1 for m in PEERS)
    await out.close()


async def test_timeouts_overslept_while_paused_are_not_blamed_on_the_peers() -> None:
    out, failures = fanout()
    asking = asyncio.create_task(ask(out))
    await asyncio.sleep(0.01)  # the requests are out
    time.sleep(TIMEOUT * 4)  # the whole process freezes (like SIGSTOP), then resumes
    await asking
    assert all(failures.failures(m.node_id) == 0 for m in PEERS)
    assert not any(failures.is_skipped(m.node_id) for m in PEERS)
    await out.close()
