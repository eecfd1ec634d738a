"""Judge availability and failover latency of the reads around a fault (a SIGSTOP, a kill).

The history checker (`check`) judges *what* reads returned; this judges *whether* they
returned, and how fast, while a fault was on. A read belongs to a window when it overlaps it
(``start < until and end > since``): a read that began before a SIGSTOP and stalled across it
counts, as does one that ended in an error or a timeout. A window with no such read proves
nothing, so it is a failure too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pmcluster.tools.history.record import History, Op

__all__ = ["FaultWindow", "WindowVerdict", "judge_window"]

_FAILED = ("error", "timeout")


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """[since, until) on the history's clock, and what the reads overlapping it may do."""

    name: str
    since: float
    until: float
    max_latency: float  # longest read allowed, seconds
    max_failed_share: float = 0.0  # of the overlapping reads that may end in error/timeout
    min_reads: int = 1
    client_suffix: str = ""  # judge only the reads of clients whose name ends with this


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    """The reads overlapping one window: how many, how many failed, the slowest."""

    window: FaultWindow
    reads: int
    failed: int
    slowest: Op | None

    @property
    def longest(self) -> float:
        """Duration of the slowest overlapping read (0.0 when there was none)."""
        return 0.0 if self.slowest is None else self.slowest.end - self.slowest.start

    @property
    def failed_share(self) -> float:
        """Failed reads / overlapping reads (1.0 when there were none: nothing was served)."""
        return self.failed / self.reads if self.reads else 1.0

    def problems(self) -> list[str]:
        """Why the window fails, one line per broken bound; empty when it passes."""
        w = self.window
        out: list[str] = []
        if self.reads < w.min_reads:
            out.append(f"{w.name}: {self.reads} reads overlap the window, need {w.min_reads}")
        if self.reads and self.failed_share > w.max_failed_share:
            out.append(
                f"{w.name}: {self.failed}/{self.reads} reads failed "
                f"({self.failed_share:.1%} > {w.max_failed_share:.1%})"
            )
        if self.longest > w.max_latency and self.slowest is not None:
            out.append(
                f"{w.name}: slowest read {self.longest:.3f} s > {w.max_latency:.3f} s: "
                f"{self.slowest.brief()}"
            )
        return out

    @property
    def ok(self) -> bool:
        """True when every bound of the window holds."""
        return not self.problems()

    def line(self) -> str:
        """`window NAME: N reads, F failed, slowest X s` (the figure fault tests print)."""
        return (
            f"window {self.window.name}: {self.reads} reads, {self.failed} failed, "
            f"slowest {self.longest:.3f} s"
        )


def judge_window(history: History | Iterable[Op], window: FaultWindow) -> WindowVerdict:
    """Count the reads (of the window's clients) overlapping `window`, the failed, the slowest."""
    ops = history.ops if isinstance(history, History) else list(history)
    reads = 0
    failed = 0
    slowest: Op | None = None
    for op in ops:
        if op.op != "read" or not op.client.endswith(window.client_suffix):
            continue
        if not (op.start < window.until and op.end > window.since):
            continue
        reads += 1
        if op.outcome in _FAILED:
            failed += 1
        if slowest is None or op.end - op.start > slowest.end - slowest.start:
            slowest = op
    return WindowVerdict(window, reads, failed, slowest)
