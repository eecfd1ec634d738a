"""`BufferBudget`: the bytes a node holds for requests not complete yet, across connections.

A partial Storm frame or HTTP body is memory the store's cap (`pmcluster.memory.max.bytes`)
does not see; many half-sent 10 MiB frames would otherwise exhaust a node without storing a
byte. Each connection reports what it buffers (`hold`); a connection that would take the total
past `pmcluster.buffer.max.bytes` is closed instead (the honest peer retries). Pure, no I/O.
"""

from __future__ import annotations

__all__ = ["BufferBudget"]


class BufferBudget:
    """A shared tally of buffered bytes with a limit (one per node, single event loop)."""

    __slots__ = ("limit", "refused", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0

    def hold(self, before: int, after: int) -> bool:
        """A connection's buffer went from `before` to `after` bytes; False (and nothing
        counted) when growing it would pass the limit: the caller drops the connection."""
        grown = after - before
        if grown > 0 and self.used + grown > self.limit:
            self.used -= before
            self.refused += 1
            return False
        self.used += grown
        return True
