"""`pmcluster.client.loop`: the running loop without asyncio's per-call pid check."""

from __future__ import annotations

import asyncio
import threading

import pytest
import uvloop

from pmcluster.client.loop import create_task, running_loop


async def _lookups() -> tuple[bool, bool]:
    loop = asyncio.get_running_loop()
    first, second = running_loop(), running_loop()
    task = create_task(asyncio.sleep(0, result=loop))
    return first is loop and second is loop, await task is loop


def test_the_running_loop_of_each_run_and_thread() -> None:
    # One loop after another in the same thread (a loop that stopped is never returned), an
    # asyncio loop and a uvloop one, and a loop of another thread at the same time.
    assert asyncio.run(_lookups()) == (True, True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(_lookups()) == (True, True)
    assert asyncio.run(_lookups()) == (True, True)
    results: list[tuple[bool, bool]] = []
    started, finish = threading.Event(), threading.Event()

    async def other() -> None:
        running_loop()
        started.set()
        await asyncio.to_thread(finish.wait, 5)
        results.append(await _lookups())

    thread = threading.Thread(target=lambda: asyncio.run(other()))
    thread.start()
    assert started.wait(5)
    assert asyncio.run(_lookups()) == (True, True)  # while the other thread's loop runs
    finish.set()
    thread.join(5)
    assert results == [(True, True)]


def test_no_running_loop_is_an_error_as_in_asyncio() -> None:
    asyncio.run(_lookups())  # a loop was remembered for this thread; it has stopped
    with pytest.raises(RuntimeError):
        running_loop()
