"""The benchmark's output: one `Row` per measurement, a table, one JSON line per row, and the
targets as ratios of figures measured in the same run."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

__all__ = ["Progress", "Row", "Target", "format_table", "percentile", "targets"]


@dataclass
class Row:
    """One measured system/workload. Figures that do not apply are None."""

    name: str
    system: str
    heartbeats_per_sec: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us_per_hb: float | None = None  # server processes' CPU time / heartbeats
    cpu_cores: float | None = None  # server CPU seconds per wall second
    rss_mb: float | None = None  # server RSS at the end (sum over a cluster's nodes)
    disk_bytes: int | None = None  # /proc/PID/io write_bytes during the measurement
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def disk_bytes_per_hb(self) -> float | None:
        if self.disk_bytes is None or not self.heartbeats_per_sec:
            return None
        seconds = float(self.extra.get("seconds", 0.0))
        beats = self.heartbeats_per_sec * seconds
        return self.disk_bytes / beats if beats else None

    def json_line(self) -> str:
        doc = asdict(self)
        doc["disk_bytes_per_hb"] = self.disk_bytes_per_hb
        return json.dumps({"bench_row": doc}, sort_keys=True)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The `fraction` quantile (nearest rank) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


_COLUMNS = (
    ("row", 16),
    ("heartbeats/s", 13),
    ("p50 ms", 8),
    ("p99 ms", 8),
    ("CPU µs/hb", 10),
    ("cores", 6),
    ("RSS MB", 8),
    ("disk B/hb", 10),
    ("errors", 6),
)


def format_table(rows: Sequence[Row]) -> str:
    """The results table (what `docs/benchmarks.md` shows), one line per row + a legend."""
    header = " ".join(
        f"{name:>{width}}" if i else f"{name:<{width}}" for i, (name, width) in enumerate(_COLUMNS)
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = (
            row.name,
            _fmt(row.heartbeats_per_sec),
            _fmt(row.p50_ms, 2),
            _fmt(row.p99_ms, 2),
            _fmt(row.cpu_us_per_hb, 1),
            _fmt(row.cpu_cores, 2),
            _fmt(row.rss_mb, 1),
            _fmt(row.disk_bytes_per_hb, 1),
            str(row.errors),
        )
        lines.append(
            " ".join(
                f"{c:>{w}}" if i else f"{c:<{w}}"
                for i, (c, (_, w)) in enumerate(zip(cells, _COLUMNS, strict=True))
            )
        )
    lines.append("")
    lines.extend(f"{row.name:<16} {row.system}" for row in rows)
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """One target: the measured ratio, the limit, and whether it is met (None: not measured)."""

    name: str
    measured: float | None
    limit: float
    at_most: bool  # True: measured <= limit passes; False: measured >= limit passes
    detail: str

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit

    def line(self) -> str:
        verdict = {True: "MET ", False: "MISS", None: "n/a "}[self.met]
        sign = "<=" if self.at_most else ">="
        measured = "-" if self.measured is None else f"{self.measured:.4g}"
        return f"[{verdict}] {self.name}: {measured} (target {sign} {self.limit:.4g}) {self.detail}"

    def json_line(self) -> str:
        doc = {
            "name": self.name,
            "measured": self.measured,
            "limit": self.limit,
            "at_most": self.at_most,
            "met": self.met,
            "detail": self.detail,
        }
        return json.dumps({"bench_target": doc}, sort_keys=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _round_secs(row: Row | None) -> float | None:
    value = row.extra.get("round_secs") if row is not None else None
    return float(value) if value is not None else None


def _extra(row: Row | None, key: str) -> float | None:
    value = row.extra.get(key) if row is not None else None
    return float(value) if value is not None else None


def _capacity(row: Row | None) -> float | None:
    return _extra(row, "capacity_hb_per_sec")


def targets(rows: Sequence[Row], payload: int, node_lifetime_writes: int | None) -> list[Target]:
    """The issue's targets from the rows of one run; disk writes are counted over every node
    process's whole life (start to stop), which contains every row's window."""
    by = {row.name: row for row in rows}

    def get(name: str, attr: str) -> float | None:
        row = by.get(name)
        value = getattr(row, attr) if row is not None else None
        return float(value) if value is not None else None

    zk_cpu = get("zk-write", "cpu_us_per_hb")
    memory = by.get("memory")
    per_key = float(memory.extra["rss_bytes_per_key"]) if memory is not None else None
    limit_bytes = 1.3 * payload + 200
    node_rows = [r for r in rows if r.extra.get("pmcluster_node") and r.disk_bytes is not None]
    window = sum(r.disk_bytes or 0 for r in node_rows)
    # The target counts what nodes write while they store heartbeats (the measured windows);
    # the whole-life figure is shown beside it: a first start in a fresh checkout may write a
    # page outside the windows (seen once: 4,096 B), which is not heartbeat data.
    disk = float(window) if node_rows else None
    read_zk, read_pm = _round_secs(by.get("read-zookeeper")), _round_secs(by.get("read-pmcluster"))
    return [
        Target(
            "node CPU/hb vs ZooKeeper, one request per heartbeat",
            _ratio(get("node-put", "cpu_us_per_hb"), zk_cpu),
            1 / 5,
            True,
            "node-put / zk-write server CPU µs per heartbeat",
        ),
        Target(
            "node CPU/hb vs ZooKeeper, fastest path (batch)",
            _ratio(get("node-batch", "cpu_us_per_hb"), zk_cpu),
            1 / 50,
            True,
            "node-batch (INTERNAL HOP, the ring-aware client's batch replayed raw) / zk-write "
            "server CPU µs per heartbeat",
        ),
        Target(
            "Storm protocol node CPU/hb vs ZooKeeper, one SEND_PULSE per heartbeat",
            _ratio(get("storm-put", "cpu_us_per_hb"), zk_cpu),
            1 / 20,  # issue 10: a pipelined Storm node at 1/20 of ZooKeeper
            True,
            "storm-put / zk-write server CPU µs per heartbeat (issue 10)",
        ),
        Target(
            "3 nodes R=2, plain PUTs through every node: summed node CPU/hb vs ZooKeeper",
            _ratio(get("cluster3-http-put", "cpu_us_per_hb"), zk_cpu),
            1 / 5,
            True,
            "cluster3-http-put (sum of 3 nodes) / zk-write server CPU µs per heartbeat",
        ),
        Target(
            "3 nodes R=2, Storm SEND_PULSE into one node: summed node CPU/hb vs ZooKeeper",
            _ratio(get("cluster3-storm-put", "cpu_us_per_hb"), zk_cpu),
            1 / 10,
            True,
            "cluster3-storm-put (sum of 3 nodes) / zk-write server CPU µs per heartbeat",
        ),
        Target(
            "3 nodes R=2, ring-aware client: summed node CPU/hb vs ZooKeeper",
            _ratio(get("cluster3-put", "cpu_us_per_hb"), zk_cpu),
            1 / 10,
            True,
            "cluster3-put (sum of 3 nodes) / zk-write server CPU µs per heartbeat",
        ),
        Target(
            "3 -> 6 nodes, plain PUTs through every node: capacity (N / summed CPU per hb)",
            _ratio(
                _capacity(by.get("capacity-6")),
                _capacity(by.get("capacity-3")),
            ),
            1.8,
            False,
            "capacity-6 / capacity-3 heartbeats per second with a core per node (issue 16)",
        ),
        Target(
            "6 nodes: busiest node's CPU vs the mean node's",
            _extra(by.get("capacity-6"), "busiest_over_mean"),
            1.25,
            True,
            "capacity-6, node CPU in the measured window (issue 16)",
        ),
        Target(
            "single node write rate vs bare aiohttp dict server",
            _ratio(get("node-put", "heartbeats_per_sec"), get("baseline", "heartbeats_per_sec")),
            0.8,
            False,
            "node-put / baseline heartbeats/s, same load generator",
        ),
        Target(
            "full Nimbus read round vs ZooKeeper",
            _ratio(read_pm, read_zk),
            1 / 5,
            True,
            "read-pmcluster / read-zookeeper median round time",
        ),
        Target(
            "Storm protocol Nimbus read round vs ZooKeeper",
            _ratio(_round_secs(by.get("read-storm")), read_zk),
            1 / 5,
            True,
            "read-storm / read-zookeeper median round time (issue 10)",
        ),
        Target(
            "RSS per stored heartbeat vs 1.3 x payload + 200 B",
            _ratio(per_key, limit_bytes),
            1.0,
            True,
            f"{_fmt(per_key)} B per key / {limit_bytes:,.0f} B allowed",
        ),
        Target(
            "bytes written to disk by nodes",
            disk,
            0.0,
            True,
            f"write_bytes of the node processes inside the {len(node_rows)} measured node "
            f"rows (whole life: {node_lifetime_writes} B)",
        ),
    ]


class Progress:
    """Progress lines on stderr: steps with elapsed time, and a live rate while a row runs."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._start = time.monotonic()
        self._tty = stream.isatty()

    def step(self, message: str) -> None:
        self._stream.write(f"[bench {time.monotonic() - self._start:6.1f}s] {message}\n")
        self._stream.flush()

    def ticker(self, label: str, duration: float, per: str = "hb") -> Any:
        """A `drive` progress callback: elapsed window seconds and heartbeats so far."""
        last = [-1e9, 0]

        def tick(elapsed: float, count: int) -> None:
            dt = elapsed - last[0]
            rate = (count - last[1]) / dt if dt > 0.05 else 0.0
            last[0], last[1] = elapsed, count
            phase = "warm-up" if elapsed < 0 else f"{min(elapsed, duration):4.1f}/{duration:g}s"
            text = f"  {label}: {phase} {count:>10,} {per} ({rate:,.0f}/s)"
            if self._tty:
                self._stream.write("\r" + text + "   ")
                if elapsed >= duration:
                    self._stream.write("\n")
            else:
                self._stream.write(text + "\n")
            self._stream.flush()

        return tick
