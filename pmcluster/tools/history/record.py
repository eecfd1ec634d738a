"""Record every operation of a reliability run as an `Op`, safely from many threads.

A run records each client operation as an `Op` (who, what, which path, which version, when it
started and ended, how it ended); `pmcluster.tools.history.check` judges the result. Times are
monotonic seconds from one clock (`time.monotonic` is system-wide on Linux, so histories of
several processes on one host can be merged). Versions are the integers writers assign
(time_ns or a per-path sequence); larger is newer. Histories round-trip through JSON lines.
"""

from __future__ import annotations

import enum
import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

__all__ = ["OP_KINDS", "OUTCOMES", "History", "Op", "PendingOp"]

OP_KINDS: Final = frozenset({"write", "read", "list", "delete", "delete_path"})
OUTCOMES: Final = frozenset({"ok", "absent", "error", "timeout"})
_INF: Final = math.inf
# How long after its op ended a given-up attempt (`Op.late`) may still land: a request held
# in a stopped node's socket buffer or in TCP retransmission across a partition, in the runs
# judged here (faults of a few seconds; loopback retransmissions back off 0.2, 0.4, ... s).
LATE_SECS: Final = 10.0
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One recorded operation; `value` is the version written/read, `children` a listing's names."""

    client: str
    op: str
    path: str
    value: int | None = None
    children: tuple[str, ...] | None = None
    start: float
    end: float
    outcome: str
    # An attempt of this op was given up on while its request, which carried no version
    # (Storm's protocol), may still be in flight: it may take effect up to `LATE_SECS` after
    # the op ended, with the store version the node assigns then (the newest). Set by the
    # load, never inferred.
    late: bool = False

    def __post_init__(self) -> None:
        if self.op not in OP_KINDS:
            raise ValueError(f"unknown op {self.op!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")
        if self.end < self.start:
            raise ValueError(f"op ends before it starts: {self.start} > {self.end}")

    @property
    def acked(self) -> bool:
        """Did the store acknowledge this op (for deletes, "absent" is an acknowledgement)?"""
        if self.op in ("delete", "delete_path"):
            return self.outcome in ("ok", "absent")
        return self.outcome == "ok"

    @property
    def effect_end(self) -> float:
        """Latest time the op may take effect: `LATE_SECS` after its end if `late`; else its
        end if acknowledged, +inf if not."""
        if self.late:
            return self.end + LATE_SECS
        return self.end if self.acked else _INF

    def brief(self) -> str:
        """One-line description used in findings."""
        shown = f" {list(self.children)}" if self.children is not None else ""
        return (
            f"{self.client} {self.op} {self.path} v={self.value}{shown} "
            f"[{self.start:.6f}, {self.end:.6f}] {self.outcome}"
        )


class _Unset(enum.Enum):
    """Marker for "keep the value given at `begin`" (None already means "absent")."""

    UNSET = enum.auto()


class PendingOp:
    """An op in flight: `finish(outcome, value=...)` records it; also a context manager.

    As a context manager it records ``ok`` on a normal exit unless already finished,
    ``timeout`` on `TimeoutError`, ``error`` on any other exception (which still propagates).
    """

    def __init__(
        self, history: History, client: str, op: str, path: str, value: int | None, start: float
    ) -> None:
        self._history = history
        self._fields = (client, op, path)
        self.value = value
        self.start = start
        self.result: Op | None = None

    def finish(
        self,
        outcome: str,
        *,
        value: int | _Unset | None = _Unset.UNSET,
        children: Iterable[str] | None = None,
        late: bool = False,
    ) -> Op:
        """Record the op as ended now; `value` replaces the version given at `begin`; `late`:
        see `Op.late`."""
        if self.result is not None:
            raise RuntimeError("op already finished")
        if not isinstance(value, _Unset):
            self.value = value
        client, op, path = self._fields
        self.result = self._history.record(
            client,
            op,
            path,
            value=self.value,
            children=children,
            start=self.start,
            end=self._history.clock(),
            outcome=outcome,
            late=late,
        )
        return self.result

    def __enter__(self) -> PendingOp:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.result is not None:
            return
        if exc is None:
            self.finish("ok")
        else:
            self.finish("timeout" if isinstance(exc, TimeoutError) else "error")


class History:
    """Thread-safe recorder of ops (the lock is held only to append, so asyncio code may use it)."""

    def __init__(self, ops: Iterable[Op] = (), *, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._ops: list[Op] = list(ops)

    @property
    def ops(self) -> list[Op]:
        """A snapshot of the ops recorded so far, in recording order."""
        with self._lock:
            return list(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def record(
        self,
        client: str,
        op: str,
        path: str,
        *,
        start: float,
        end: float,
        outcome: str,
        value: int | None = None,
        children: Iterable[str] | None = None,
        late: bool = False,
    ) -> Op:
        """Append one finished op and return it."""
        names = tuple(children) if children is not None else None
        entry = Op(
            client=client,
            op=op,
            path=path,
            value=value,
            children=names,
            start=start,
            end=end,
            outcome=outcome,
            late=late,
        )
        with self._lock:
            self._ops.append(entry)
        return entry

    def extend(self, ops: Iterable[Op]) -> None:
        """Append ops recorded elsewhere (another process's history), in their order."""
        entries = list(ops)
        with self._lock:
            self._ops.extend(entries)

    def begin(self, client: str, op: str, path: str, *, value: int | None = None) -> PendingOp:
        """Start timing an op now; call `finish` on the result (or use it as a context manager)."""
        if op not in OP_KINDS:
            raise ValueError(f"unknown op {op!r}")
        return PendingOp(self, client, op, path, value, self.clock())

    def dump_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per op, in recording order."""
        with open(path, "w", encoding="utf-8") as out:
            for o in self.ops:
                row = {
                    "client": o.client,
                    "op": o.op,
                    "path": o.path,
                    "value": o.value,
                    "children": list(o.children) if o.children is not None else None,
                    "start": o.start,
                    "end": o.end,
                    "outcome": o.outcome,
                }
                if o.late:
                    row["late"] = True
                out.write(_ENCODER.encode(row) + "\n")

    @classmethod
    def load_jsonl(cls, path: str | Path) -> History:
        """Read a file written by `dump_jsonl`; ValueError names the first bad line."""
        ops: list[Op] = []
        with open(path, encoding="utf-8") as src:
            for lineno, line in enumerate(src, 1):
                if not line.strip():
                    continue
                try:
                    ops.append(_op_from_json(json.loads(line)))
                except (ValueError, TypeError, KeyError) as exc:
                    raise ValueError(f"{path}:{lineno}: {exc}") from exc
        return cls(ops)


def _op_from_json(row: object) -> Op:
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    value = row.get("value")
    children = row.get("children")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"value must be an integer or null, got {value!r}")
    if children is not None and not (
        isinstance(children, list) and all(isinstance(c, str) for c in children)
    ):
        raise ValueError("children must be a list of strings or null")
    late = row.get("late", False)
    if not isinstance(late, bool):
        raise ValueError(f"late must be a boolean, got {late!r}")
    for key in ("client", "op", "path", "outcome"):
        if not isinstance(row[key], str):
            raise ValueError(f"{key} must be a string")
    return Op(
        client=row["client"],
        op=row["op"],
        path=row["path"],
        value=value,
        children=tuple(children) if children is not None else None,
        start=float(row["start"]),
        end=float(row["end"]),
        outcome=row["outcome"],
        late=late,
    )
