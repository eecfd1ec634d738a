"""`WriteCoalescer`'s gathering delay: batches wait `delay_secs` only under load.

The fan-out and the owners are stand-ins (this is the coalescer's own rule); the cluster
paths through it run against real nodes in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pmcluster.client.coalesce import WriteCoalescer
from pmcluster.ring import Member

OWNER = Member("n1", "127.0.0.1", 1)


class Owner:
    node_id = "n1"

    def __init__(self) -> None:
        self.batches: list[tuple[float, int]] = []  # (loop time, entries)

    async def batch(self, pulses: Sequence[tuple[str, bytes, int]]) -> tuple[int, int]:
        self.batches.append((asyncio.get_running_loop().time(), len(pulses)))
        return len(pulses), 0


class FanOut:
    def __init__(self, owner: Owner) -> None:
        self.owner = owner

    async def all_acks(
        self, members: Sequence[Member], call: Callable[[Any], Awaitable[None]], *_: Any, **__: Any
    ) -> None:
        await call(self.owner)


async def test_batches_gather_for_the_delay_only_under_load() -> None:
    owner = Owner()
    coalescer = WriteCoalescer(lambda _: (OWNER,), FanOut(owner), delay_secs=0.05)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    # Idle: a lone write leaves on the next iteration (it resolves False: it travels alone).
    began = loop.time()
    assert await coalescer.write("/a", b"1", 1, versioned=True) is False
    assert loop.time() - began < 0.04 and owner.batches == []
    # Two at once: merged, still without waiting (the previous flush merged nothing).
    assert await asyncio.gather(
        coalescer.write("/a", b"1", 2, versioned=True),
        coalescer.write("/b", b"1", 2, versioned=True),
    ) == [True, True]
    assert [n for _, n in owner.batches] == [2]
    # Now under load: the next batch gathers for the delay, and takes what came meanwhile.
    began = loop.time()
    first = coalescer.write("/a", b"2", 3, versioned=True)
    await asyncio.sleep(0.01)
    second = coalescer.write("/b", b"2", 3, versioned=True)
    assert await asyncio.gather(first, second) == [True, True]
    sent_at, entries = owner.batches[-1]
    assert entries == 2 and sent_at - began >= 0.045
    await coalescer.close()
