"""The history checker's entry point: record a run, judge it, or check a file from the shell.

`pmcluster.tools.history.record` records (`History`, `Op`, `PendingOp`, JSON lines);
`pmcluster.tools.history.check` judges (`check` → `Report` of `Finding`s; the rules are in its
docstring); `pmcluster.tools.history.windows` judges availability and latency around a fault
(`judge_window`). This module re-exports both and is the command line:
``python -m pmcluster.tools.history FILE.jsonl --period P --timeout T``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pmcluster.tools.history.check import Finding, Report, check
from pmcluster.tools.history.record import OP_KINDS, OUTCOMES, History, Op, PendingOp
from pmcluster.tools.history.windows import FaultWindow, WindowVerdict, judge_window

__all__ = [
    "OP_KINDS",
    "OUTCOMES",
    "FaultWindow",
    "Finding",
    "History",
    "Op",
    "PendingOp",
    "Report",
    "WindowVerdict",
    "check",
    "judge_window",
]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pmcluster.tools.history FILE.jsonl --period P --timeout T`: 0 OK, 1 FAILED,
    2 bad."""
    parser = argparse.ArgumentParser(
        prog="python -m pmcluster.tools.history", description="Check a recorded pmcluster run."
    )
    parser.add_argument("file", type=Path, help="history written by History.dump_jsonl")
    parser.add_argument("--period", type=float, required=True, help="heartbeat period, seconds")
    parser.add_argument("--timeout", type=float, required=True, help="request timeout, seconds")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every finding")
    args = parser.parse_args(argv)
    try:
        history = History.load_jsonl(args.file)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = check(history, period=args.period, request_timeout=args.timeout)
    if args.verbose:
        for finding in report.findings():
            print(finding)
    print(report.verdict_line())
    return 0 if report.ok else 1
