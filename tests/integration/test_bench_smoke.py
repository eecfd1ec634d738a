"""`pmcluster bench --smoke` runs every row end to end and prints the table, rows and targets.

The benchmark's figures are not asserted (they are measurements, not timed tests); what a user
relies on is that the command completes, prints every row in the table and as a JSON line,
prints every target, and finds that nodes wrote nothing to disk.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pmcluster.tools.bench import PACEMAKER_ROW_NAMES, ROW_NAMES, SMOKE
from pmcluster.tools.localcluster import missing_zookeeper_jar

pytestmark = pytest.mark.integration

# Every row the benchmark runs by default (pacemaker rows: tests/interop/test_bench_pacemaker.py)
ROWS = tuple(name for name in ROW_NAMES if name not in PACEMAKER_ROW_NAMES)
TARGETS = 11


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
    rows = {}
    targets = {}
    for line in lines:
        if line.startswith('{"bench_row"'):
            row = json.loads(line)["bench_row"]
            rows[row["name"]] = row
        elif line.startswith('{"bench_target"'):
            target = json.loads(line)["bench_target"]
            targets[target["name"]] = target
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
    assert all(t["measured"] is not None for t in targets.values()), targets
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
