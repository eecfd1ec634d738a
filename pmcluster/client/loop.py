"""The running event loop, without a system call per lookup.

CPython 3.11's `asyncio.get_running_loop()` (and `ensure_future`, `wait_for`, which call it)
compares the loop's pid with `getpid()` on every call: a system call, several per heartbeat
on a coordinating node's hot path, and costly on virtual machines (docs/benchmarks.md, issue
16). `running_loop` remembers each thread's loop and returns it while it runs; the first
call in a thread, or after its loop stopped, asks asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from threading import get_ident
from typing import Any, TypeVar

__all__ = ["create_task", "running_loop"]

T = TypeVar("T")

_loops: dict[int, asyncio.AbstractEventLoop] = {}


def running_loop() -> asyncio.AbstractEventLoop:
    """The loop running in this thread (`RuntimeError` when none is, as asyncio's)."""
    loop = _loops.get(get_ident())
    if loop is not None and loop.is_running():
        return loop
    loop = asyncio.get_running_loop()
    _loops[get_ident()] = loop
    return loop


def create_task(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """`asyncio.ensure_future(coro)` for a coroutine, on the running loop."""
    return running_loop().create_task(coro)
