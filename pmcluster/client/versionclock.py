"""Versions for writes whose writer gave none: a hybrid logical clock fed by the owners.

A version is ns since the epoch, and larger wins. When the coordinating node's own clock
assigned it (`time.time_ns()`), a node whose clock ran 5 s ahead wrote versions that beat
every write of the next 5 s coordinated elsewhere: a later acknowledged write was hidden by
an earlier one. `VersionClock.now()` is instead `max(wall clock, last issued + 1, newest
observed + 1)` (a hybrid logical clock), and the client observes the versions the path's
owners hold: an owner that ignores a write because it holds a newer version (or tombstone)
says so (`X-Pulse-Held`), and the coordinator retries above it. docs/reliability.md explains
why that keeps "later acknowledged write wins" under skew, and where it stops holding.

Versions far ahead of this node's wall clock (a client-supplied 2^63-1, a badly wrong clock)
are not observed into the clock, so one absurd version cannot push every later write of
this node to the end of the version space; a write that meets one is still retried above it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pmcluster.protocol.http import MAX_VERSION

__all__ = ["MAX_OBSERVED_AHEAD_NS", "MAX_VERSION", "VersionClock"]

MAX_OBSERVED_AHEAD_NS = 3600 * 10**9  # observe versions at most an hour ahead of our clock


class VersionClock:
    """Hybrid logical clock issuing strictly increasing versions (thread-safe)."""

    def __init__(self, wall: Callable[[], int] = time.time_ns) -> None:
        self._wall = wall
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        """A version newer than every version issued or observed so far, and not older than
        the wall clock."""
        with self._lock:
            self._last = min(max(self._wall(), self._last + 1), MAX_VERSION)
            return self._last

    def observe(self, version: int) -> None:
        """Remember `version` (seen on an owner): later versions will be newer than it."""
        if version <= self._last:
            return
        if version > self._wall() + MAX_OBSERVED_AHEAD_NS:
            return
        with self._lock:
            self._last = max(self._last, version)

    def above(self, version: int) -> int:
        """A version newer than `version` (observing it when plausible); MAX_VERSION at most."""
        self.observe(version)
        return min(max(self.now(), version + 1), MAX_VERSION)
