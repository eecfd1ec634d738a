"""`BufferBudget`: the bytes a node holds for requests not complete yet, across connections.

A partial Storm frame or HTTP body is memory the store's cap (`pmcluster.memory.max.bytes`)
does not see; many half-sent 10 MiB frames would otherwise exhaust a node without storing a
byte. Each connection reports what it buffers (`hold`); a connection that would take the total
past `pmcluster.buffer.max.bytes` is closed instead (the honest peer retries). Pure, no I/O.
"""

from __future__ import annotations

__all__ = ["BudgetShare", "BufferBudget"]


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


class BudgetShare:
    """One connection's share of a `BufferBudget` (None: no budget, nothing counted)."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: BufferBudget | None) -> None:
        self.budget = budget
        self.held = 0

    def hold(self, held: int) -> bool:
        """The connection now buffers `held` bytes; False (its share back to 0) when that
        would pass the budget's limit: the caller drops the connection."""
        budget = self.budget
        if budget is None or held == self.held:
            return True
        if budget.hold(self.held, held):
            self.held = held
            return True
        self.held = 0
        return False

    def release(self) -> None:
        """The connection buffers nothing any more (closed, or handed to another owner)."""
        if self.budget is not None and self.held:
            self.budget.hold(self.held, 0)
        self.held = 0
