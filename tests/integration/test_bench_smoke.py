"""`pmcluster bench --smoke` runs every row end to end and prints the table, rows and targets.

The benchmark's figures are not asserted (they are measurements, not timed tests); what a user
relies on is that the command completes, prints every row in the table and as a JSON line,
prints every target, and finds that nodes wrote nothing to disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from pmcluster.tools.bench import CAPACITY_ROW_NAMES, PACEMAKER_ROW_NAMES, ROW_NAMES, SMOKE
from pmcluster.tools.localcluster import missing_zookeeper_jar

pytestmark = pytest.mark.integration

# Every row the benchmark runs by default (pacemaker rows: tests/interop/test_bench_pacemaker.py;
# capacity rows: below)
OPTIONAL = (*PACEMAKER_ROW_NAMES, *CAPACITY_ROW_NAMES)
ROWS = tuple(name for name in ROW_NAMES if name not in OPTIONAL)
TARGETS = 13
CAPACITY_TARGETS = (
    "3 -> 6 nodes, plain PUTs through every node: capacity (N / summed CPU per hb)",
    "6 nodes: busiest node's CPU vs the mean node's",
)


def rows_and_targets(stdout: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `{"bench_row": ...}` and `{"bench_target": ...}` lines, by name."""
    rows: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith('{"bench_row"'):
            row = json.loads(line)["bench_row"]
            rows[row["name"]] = row
        elif line.startswith('{"bench_target"'):
            target = json.loads(line)["bench_target"]
            targets[target["name"]] = target
    return rows, targets


@pytest.mark.timeout(90)
def test_bench_smoke_prints_every_row_and_target() -> None:
    if missing_zookeeper_jar() is not None:  # under CI, the conftest hook fails this skip
        pytest.skip("ZooKeeper is not installed (the README's setup step installs it)")
    proc = subprocess.run(
        [sys.executable, "-m", "pmcluster", "bench", "--smoke"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    table = {line.split()[0] for line in lines if line and not line.startswith("{")}
    assert set(ROWS) <= table, proc.stdout
    rows, targets = rows_and_targets(proc.stdout)
    assert sorted(rows) == sorted(ROWS)
    names = ("zk-write", "baseline", "node-put", "node-batch", "storm-put", "cluster3-put")
    for name in (*names, "cluster3-put-v", "cluster3-http-put", "cluster3-storm-put"):
        row = rows[name]
        assert row["errors"] == 0, row
        # Every heartbeat path was written in the window (the figures come from real counts).
        beats = row["heartbeats_per_sec"] * row["extra"]["seconds"]
        assert beats >= SMOKE["workers"], row
        # A server's CPU per heartbeat is measured, not zero (a broken sampler) nor absurd.
        assert 1.0 <= row["cpu_us_per_hb"] <= 100_000.0, row
    # A stored key costs at least a share of its payload and far less than 64 KiB.
    assert SMOKE["payload"] / 2 <= rows["memory"]["extra"]["rss_bytes_per_key"] <= 65536
    assert len(targets) == TARGETS
    default = {name: t for name, t in targets.items() if name not in CAPACITY_TARGETS}
    assert all(t["measured"] is not None for t in default.values()), targets
    assert all(targets[name]["measured"] is None for name in CAPACITY_TARGETS)
    disk = targets["bytes written to disk by nodes"]
    assert disk["measured"] == 0 and disk["met"] is True
    assert "[bench" in proc.stderr  # progress went to stderr


@pytest.mark.timeout(90)
def test_bench_smoke_without_zookeeper_skips_only_its_rows() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pmcluster", "bench", "--smoke", "--no-zookeeper",
         "--rows", "baseline,put,batch,read"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {
        json.loads(line)["bench_row"]["name"]
        for line in proc.stdout.splitlines()
        if line.startswith('{"bench_row"')
    }
    assert names == {"baseline", "node-put", "internal-put", "node-batch", "read-pmcluster"}
    assert "[n/a ] node CPU/hb vs ZooKeeper, one request per heartbeat" in proc.stdout
    assert "[MET ] bytes written to disk by nodes: 0" in proc.stdout


@pytest.mark.timeout(120)
def test_bench_smoke_capacity_rows_measure_every_node() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pmcluster", "bench", "--smoke", "--no-zookeeper",
         "--rows", "capacity"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, targets = rows_and_targets(proc.stdout)
    assert sorted(rows) == sorted(CAPACITY_ROW_NAMES)
    for size in (3, 6, 12):
        row = rows[f"capacity-{size}"]
        assert row["errors"] == 0 and row["extra"]["nodes"] == size, row
        shares = row["extra"]["node_cpu_shares"]
        # Every node of the cluster carried part of the load (none idle, none missing).
        assert len(shares) == size and min(shares) > 0, row
        assert abs(sum(shares) - 1.0) < 0.01, row
        # The paced pass of the same cluster: every node busy, no request failed.
        assert row["extra"]["paced_errors"] == 0, row
        assert len(row["extra"]["paced_cores_per_node"]) == size, row
        assert row["extra"]["paced_hb_per_sec"] > 0, row
    paced = rows["storm-1k-supervisors"]
    assert paced["errors"] == 0, paced
    # Paced, not closed-loop: the rate is the offered one (far below the cluster's limit).
    offered = paced["extra"]["offered_per_sec"]
    assert offered * 0.5 <= paced["heartbeats_per_sec"] <= offered * 1.2, paced
    assert all(targets[name]["measured"] is not None for name in CAPACITY_TARGETS), targets
