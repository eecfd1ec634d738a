"""Talking to a test driver process (the Java drivers of tests/interop): one JSON reply per
line on its stdout, read with a bounded wait so a hung driver fails the test, never hangs it."""

from __future__ import annotations

import json
import select
import subprocess
from collections.abc import Callable
from typing import Any

__all__ = ["json_reply"]


def json_reply(
    proc: subprocess.Popen[str], timeout: float, context: Callable[[], str] = lambda: ""
) -> dict[str, Any]:
    """The driver's next JSON line within `timeout` seconds; an AssertionError (with
    `context()`, e.g. its log's tail) when none comes or the driver exited."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no reply within {timeout} s{context()}"
    line = proc.stdout.readline()
    assert line, f"driver exited (rc={proc.poll()}){context()}"
    reply: dict[str, Any] = json.loads(line)
    return reply
