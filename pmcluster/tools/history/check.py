"""Judge a recorded history: what a user of the store would call a bug, per path.

The checker assumes each version is written once per path (see `pmcluster.tools.history.record`
for how ops and times are recorded).

Definitions (linearizability-style, specialised to this store):

- A *happens before* B iff ``A.end < B.start``; otherwise overlapping ops are *concurrent*.
- A write is *acknowledged* iff its outcome is ``ok``; a delete (``delete`` of the exact key,
  ``delete_path`` of a subtree root) iff its outcome is ``ok`` or ``absent``. Any other outcome
  (``error``/``timeout``) is *indeterminate*: the op may take effect at any time after its
  start, as if its end were +inf. Reads and listings that did not end ``ok``/``absent`` are
  ignored.
- A delete *covers* path p iff it is a ``delete`` of p or a ``delete_path`` of p or of an
  ancestor of p.
- An acknowledged write w is *erased* for read R iff some covering delete D (acknowledged or
  indeterminate) is concurrent with or after w and concurrent with or before R:
  ``D.end >= w.start and D.start <= R.end``.

Rules, for each read R of path p (``value`` = version returned, None when absent):

- **miss**: R is absent although an acknowledged write w to p happened before R and w is not
  erased for R. Evidence: such a write.
- **stale**: R returned v although an acknowledged write w to p with version > v happened
  before R and w is not erased for R. Evidence: the newest such write. Not when a write of v
  is *late* (``Op.late``: an attempt of it, carrying no version, was given up on by its
  client and may land as the newest write up to ``LATE_SECS`` after the op ended, as
  Storm's protocol allows) and the newer write started before that; such a read is not judged
  for age within that time either, and a late op's effect may come until then.
- **invented**: R returned v although no write of v to p (any outcome) started before R ended.
- **resurrection**: R returned v although every write of v happened before an acknowledged
  covering delete D that happened before R (``w.end < D.start and D.end < R.start``; an
  indeterminate write of v never qualifies). Evidence: D.
  For a listing L of parent P returning child c (so some key at or below S = P/c exists):
  an acknowledged delete D covering all of S (``delete_path`` of S or an ancestor; a ``delete``
  of S when nothing was ever written below S) happened before L, and no write to a key at or
  below S (any outcome) is concurrent with or after D and started before L ended. A child with
  no write at or below it started before L ended is *invented*. (Keys deleted one by one under
  S are not tracked for listings: that can miss a resurrection, never invent one.)
- **age**: for each ok read, ``age = R.start - O.start`` where O, the *origin*, is the write of v
  to p that started last before R ended; a path's age is the max over its reads. The value was
  current until the writer's next recorded write N to p (the first write to p starting after
  O; any outcome) began, so the read is a finding when ``R.start - N.start > request_timeout``
  (N had a whole timeout to land, yet v was served). With no later write, the writer promised
  one a period after O: the finding is ``age > period + request_timeout`` (plus the caller's
  ``writer_slack``). A late writer thus moves the limit by exactly its measured lateness.

Cost: O(n log n) for n ops (per path: writes sorted by end swept into a Fenwick tree keyed by
start; deletes sorted with prefix maxima; listings use per-subtree prefix maxima).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from pmcluster.tools.history.record import History, Op

__all__ = ["Finding", "Report", "ancestors_or_self", "check"]

_INF: Final = math.inf


@dataclass(frozen=True, slots=True)
class Finding:
    """One violation: the offending op on `path` and the op that proves it wrong."""

    rule: str  # "miss" | "stale" | "invented" | "resurrection" | "age"
    path: str
    op: Op
    evidence: Op | None
    detail: str

    def __str__(self) -> str:
        proof = f"; evidence: {self.evidence.brief()}" if self.evidence is not None else ""
        return f"{self.rule} {self.path}: {self.detail}; op: {self.op.brief()}{proof}"


@dataclass(slots=True)
class Report:
    """Per-rule findings of one run, the age per path and the one-line verdict."""

    op_count: int
    age_limit: float
    misses: list[Finding] = field(default_factory=list)
    stale: list[Finding] = field(default_factory=list)
    resurrections: list[Finding] = field(default_factory=list)
    invented: list[Finding] = field(default_factory=list)
    age: list[Finding] = field(default_factory=list)
    ages: dict[str, float] = field(default_factory=dict)

    @property
    def max_age(self) -> float:
        """Largest age of any path (0.0 when no read returned a value)."""
        return max(self.ages.values(), default=0.0)

    @property
    def ok(self) -> bool:
        """True when no rule found anything."""
        return not self.findings()

    def findings(self) -> list[Finding]:
        """Every finding, rule by rule."""
        return [*self.misses, *self.stale, *self.resurrections, *self.invented, *self.age]

    def verdict_line(self) -> str:
        """`OK: N ops, 0 misses, 0 stale, 0 resurrections, max age X s` or `FAILED: ...`."""
        line = (
            f"{self.op_count} ops, {len(self.misses)} misses, {len(self.stale)} stale, "
            f"{len(self.resurrections)} resurrections"
        )
        if self.invented:
            line += f", {len(self.invented)} invented"
        line += f", max age {self.max_age:.3f} s"
        if self.age:
            line += f" (over {self.age_limit:.3f} s on {len(self.age)} paths)"
        return ("OK: " if self.ok else "FAILED: ") + line


def ancestors_or_self(path: str) -> list[str]:
    """`/a/b` → [`/a/b`, `/a`, `/`]."""
    out = [path]
    while path != "/":
        cut = path.rfind("/")
        path = path[:cut] if cut > 0 else "/"
        out.append(path)
    return out


def _child(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else f"{parent}/{name}"


class _DeleteIndex:
    """The deletes issued at one path (exact or subtree), indexed for the two queries we need."""

    def __init__(self, deletes: list[Op]) -> None:
        by_start = sorted(deletes, key=lambda d: d.start)
        self._starts = [d.start for d in by_start]
        self._max_end: list[tuple[float, Op]] = []
        for d in by_start:
            best = self._max_end[-1] if self._max_end else None
            self._max_end.append(best if best and best[0] >= d.effect_end else (d.effect_end, d))
        acked = sorted((d for d in deletes if d.acked), key=lambda d: d.end)
        self._ends = [d.end for d in acked]
        self._max_start: list[Op] = []
        for d in acked:
            if not self._max_start or self._max_start[-1].start < d.start:
                self._max_start.append(d)
            else:
                self._max_start.append(self._max_start[-1])

    def latest_effect_started_by(self, t: float) -> tuple[float, Op] | None:
        """Max effect end over deletes with start <= t (any outcome)."""
        i = bisect_right(self._starts, t)
        return self._max_end[i - 1] if i else None

    def latest_acked_before(self, t: float) -> Op | None:
        """The acknowledged delete with end < t that started last."""
        i = bisect_left(self._ends, t)
        return self._max_start[i - 1] if i else None


class _MaxFenwick:
    """Prefix maximum of (version, slot) with point updates that only raise values."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._ver = [0] * (n + 1)
        self._slot = [-1] * (n + 1)

    def raise_to(self, i: int, version: int, slot: int) -> None:
        i += 1
        while i <= self._n:
            if self._slot[i] < 0 or version > self._ver[i]:
                self._ver[i] = version
                self._slot[i] = slot
            i += i & -i

    def query(self, i: int) -> int:
        """Slot of the max version among positions 0..i, or -1."""
        best = -1
        best_ver = 0
        i += 1
        while i > 0:
            slot = self._slot[i]
            if slot >= 0 and (best < 0 or self._ver[i] > best_ver):
                best, best_ver = slot, self._ver[i]
            i -= i & -i
        return best


class _Checker:
    """One pass over a history; fills a `Report`."""

    def __init__(self, ops: Sequence[Op], report: Report, request_timeout: float) -> None:
        self.report = report
        self.request_timeout = request_timeout
        self.writes: dict[str, list[Op]] = defaultdict(list)
        self.reads: dict[str, list[Op]] = defaultdict(list)
        self.lists: list[Op] = []
        exact: dict[str, list[Op]] = defaultdict(list)
        subtree: dict[str, list[Op]] = defaultdict(list)
        for o in ops:
            if o.op == "write":
                self.writes[o.path].append(o)
            elif o.op == "read":
                if o.outcome in ("ok", "absent"):
                    self.reads[o.path].append(o)
            elif o.op == "list":
                if o.outcome in ("ok", "absent") and o.children:
                    self.lists.append(o)
            else:
                (exact if o.op == "delete" else subtree)[o.path].append(o)
        self.exact = {p: _DeleteIndex(ds) for p, ds in exact.items()}
        self.subtree = {p: _DeleteIndex(ds) for p, ds in subtree.items()}

    def _sources(self, path: str, *, exact: bool) -> list[_DeleteIndex]:
        found = [self.subtree[a] for a in ancestors_or_self(path) if a in self.subtree]
        if exact and path in self.exact:
            found.append(self.exact[path])
        return found

    def run(self) -> None:
        for path, reads in self.reads.items():
            self._check_reads(path, reads)
        self._check_lists()

    def _check_reads(self, path: str, reads: list[Op]) -> None:
        report = self.report
        sources = self._sources(path, exact=True)
        writes = self.writes.get(path, [])
        by_version: dict[int, list[Op]] = defaultdict(list)
        for w in writes:
            if w.value is not None:
                by_version[w.value].append(w)
        acked = [w for w in writes if w.acked and w.value is not None]
        by_end = sorted(range(len(acked)), key=lambda i: acked[i].end)
        by_start = sorted(range(len(acked)), key=lambda i: acked[i].start)
        starts = [acked[i].start for i in by_start]
        rank = [0] * len(acked)
        for r, i in enumerate(by_start):
            rank[i] = r
        n = len(acked)
        tree = _MaxFenwick(n)
        newest, newest_ver = -1, 0  # newest acked write inserted so far (no delete involved)
        inserted = 0
        limit = report.age_limit
        all_starts = sorted(w.start for w in writes)
        oldest = -_INF
        worst: tuple[float, float, Op, Op] | None = None
        for read in sorted(reads, key=lambda o: o.start):
            while inserted < n and acked[by_end[inserted]].end < read.start:
                slot = by_end[inserted]
                version = acked[slot].value
                assert version is not None
                tree.raise_to(n - 1 - rank[slot], version, slot)
                if newest < 0 or version > newest_ver:
                    newest, newest_ver = slot, version
                inserted += 1
            # Writes that started at or before `erased_by` may be erased by a covering delete.
            erased_by = -_INF
            for src in sources:
                hit = src.latest_effect_started_by(read.end)
                if hit is not None and hit[0] > erased_by:
                    erased_by = hit[0]
            if erased_by == -_INF:
                best = newest
            else:
                first = bisect_right(starts, erased_by)
                best = tree.query(n - 1 - first) if first < n else -1
            witness = acked[best] if best >= 0 else None
            got = read.value if read.outcome == "ok" else None
            if got is None:
                if witness is not None:
                    report.misses.append(
                        Finding("miss", path, read, witness, "absent after an acked write")
                    )
                continue
            origins = [w for w in by_version.get(got, ()) if w.start <= read.end]
            # A late write of v may have landed after a newer write that started before the
            # late attempt's last chance to land (`Op.late`, `LATE_SECS`): v is then newest.
            late_until = max((w.effect_end for w in origins if w.late), default=-_INF)
            newer = witness is not None and witness.value is not None and witness.value > got
            if newer and witness is not None and not witness.start < late_until:
                detail = f"read v{got} after v{witness.value} acked"
                report.stale.append(Finding("stale", path, read, witness, detail))
            if not origins:
                report.invented.append(
                    Finding("invented", path, read, None, f"no write of v{got} started")
                )
                continue
            gone = self._latest_acked_delete(sources, read.start)
            if gone is not None and gone.start > max(w.effect_end for w in origins):
                report.resurrections.append(
                    Finding("resurrection", path, read, gone, f"v{got} read after its delete")
                )
            if read.start < late_until:
                continue  # its age says when the writer began, not when the value landed
            origin = max(origins, key=lambda w: w.start)
            age = read.start - origin.start
            nxt = bisect_right(all_starts, origin.start)
            allowed = (
                all_starts[nxt] - origin.start + self.request_timeout
                if nxt < len(all_starts)
                else limit
            )
            oldest = max(oldest, age)
            if worst is None or age - allowed > worst[0] - worst[1]:
                worst = (age, allowed, read, origin)
        if worst is not None:
            report.ages[path] = oldest
            age, allowed, read, origin = worst
            if age > allowed:
                detail = f"value {age:.3f} s old > {allowed:.3f} s (next write + timeout)"
                report.age.append(Finding("age", path, read, origin, detail))

    @staticmethod
    def _latest_acked_delete(sources: list[_DeleteIndex], before: float) -> Op | None:
        best: Op | None = None
        for src in sources:
            hit = src.latest_acked_before(before)
            if hit is not None and (best is None or hit.start > best.start):
                best = hit
        return best

    def _check_lists(self) -> None:
        needed = {_child(lst.path, c) for lst in self.lists for c in lst.children or ()}
        if not needed:
            return
        under: dict[str, list[Op]] = defaultdict(list)
        below: set[str] = set()  # subtrees with a write strictly below their root
        for path, writes in self.writes.items():
            for a in ancestors_or_self(path):
                if a in needed:
                    under[a].extend(writes)
                    if a != path:
                        below.add(a)
        # Per listed child: starts of writes at or below it, prefix max of their effect ends,
        # and the deletes that remove the whole subtree.
        index: dict[str, tuple[list[float], list[float], list[_DeleteIndex]]] = {}
        for root in needed:
            writes = sorted(under.get(root, ()), key=lambda w: w.start)
            prefix_end: list[float] = []
            latest = -_INF
            for w in writes:
                latest = max(latest, w.effect_end)
                prefix_end.append(latest)
            sources = self._sources(root, exact=root not in below)
            index[root] = ([w.start for w in writes], prefix_end, sources)
        for lst in self.lists:
            for name in lst.children or ():
                root = _child(lst.path, name)
                starts, prefix_end, sources = index[root]
                i = bisect_right(starts, lst.end)
                if i == 0:
                    self.report.invented.append(
                        Finding("invented", root, lst, None, f"child {name!r} never written")
                    )
                    continue
                if not sources:
                    continue
                gone = self._latest_acked_delete(sources, lst.start)
                if gone is not None and gone.start > prefix_end[i - 1]:
                    self.report.resurrections.append(
                        Finding("resurrection", root, lst, gone, f"child {name!r} listed")
                    )


def check(
    history: History | Iterable[Op],
    *,
    period: float,
    request_timeout: float,
    writer_slack: float = 0.0,
) -> Report:
    """Judge a recorded run; see the module docstring for the exact rules.

    `writer_slack`: grows the limit for a path's last value (no later write recorded); a
    value with a later write is judged against that write's measured start instead."""
    ops = history.ops if isinstance(history, History) else list(history)
    report = Report(op_count=len(ops), age_limit=period + request_timeout + writer_slack)
    _Checker(ops, report, request_timeout).run()
    return report
