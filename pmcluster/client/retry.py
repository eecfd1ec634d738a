"""The one retry rule of writes whose version the client chose (no version from the writer).

An owner that ignores such a write because it holds a newer version or tombstone says so
(`X-Pulse-Held`); the write is then repeated above what it held, at most
`MAX_VERSION_RETRIES` times in all, and a write still behind after that fails
(`ClusterUnavailable`) instead of returning as if it had been stored. docs/reliability.md
(clock skew) says why this keeps "a later acknowledged write wins". The client's async
`send_pulse` and a node answering a write at once from its own store (`node.coordinator`)
both drive their tries with `VersionRetry.tries`, so the rule exists once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator

from pmcluster.client.versionclock import MAX_VERSION, VersionClock
from pmcluster.errors import ClusterUnavailable

__all__ = ["MAX_VERSION_RETRIES", "VersionRetry"]

MAX_VERSION_RETRIES = 3  # tries of one unversioned write, the first one included


class VersionRetry:
    """Decides the version of each try of an unversioned write (one job, as the Cassandra
    driver's `RetryPolicy`)."""

    def __init__(self, clock: VersionClock, stats: Counter[str]) -> None:
        self.clock = clock
        self.stats = stats

    def next_version(self, v: int, held: int) -> int | None:
        """After a try at `v` whose owners answered `held` (the newest version one kept
        instead, 0: none): None when the write stands, else the version to try next, above
        `held` (counted in `version_retries`)."""
        if held < v or v >= MAX_VERSION:
            return None
        self.stats["version_retries"] += 1
        return self.clock.above(held)

    def tries(self, path: str, v: int) -> Generator[int, int, None]:
        """Yields the version of each try, starting with `v`; send it what the owners held
        after that try. Ends when the write stands; raises `ClusterUnavailable` when it is
        still behind its owners after `MAX_VERSION_RETRIES` tries."""
        for _ in range(MAX_VERSION_RETRIES):
            held = yield v
            retry = self.next_version(v, held)
            if retry is None:
                return
            v = retry
        self.stats["write_behind"] += 1
        raise ClusterUnavailable(
            f"write to {path} still behind its owners after {MAX_VERSION_RETRIES} tries"
        )
