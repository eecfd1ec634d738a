"""`pmcluster bench --rows pacemaker`: Storm's own Pacemaker (storm-server's JVM, jars from the
project's pom) beside pmcluster under the same Storm loads, end to end at smoke sizes.

The figures are measurements, not asserted; what a user of the comparison relies on is that
every row runs against the real servers, that each Nimbus round read every stored heartbeat
(the benchmark checks counts and bytes), and the crash rows' outcome: Storm's single server
forgets every heartbeat when it is killed, a 3-node pmcluster cluster that loses a node
forgets none."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pmcluster.tools.bench import PACEMAKER_ROW_NAMES, SMOKE

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_bench_against_storms_pacemaker(storm_java: list[str]) -> None:
    classpath = storm_java[storm_java.index("-cp") + 1]
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pmcluster", "bench", "--smoke", "--no-zookeeper"),
            *("--rows", "pacemaker", "--storm-classpath", classpath),
        ],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        row["name"]: row
        for row in (
            json.loads(line)["bench_row"]
            for line in proc.stdout.splitlines()
            if line.startswith('{"bench_row"')
        )
    }
    assert sorted(rows) == sorted(PACEMAKER_ROW_NAMES), proc.stdout
    put = rows["pacemaker-put"]
    assert put["errors"] == 0, put
    assert put["heartbeats_per_sec"] * put["extra"]["seconds"] >= SMOKE["workers"], put
    # The JVM's own CPU, sampled from /proc over the write window: measured, neither 0 nor
    # absurd. (A smoke read round takes milliseconds, under /proc's 10 ms tick: its CPU figure
    # is only meaningful at full size, so it is not bounded here.)
    assert 1.0 <= put["cpu_us_per_hb"] <= 100_000.0, put
    for name in (
        "storm-read",
        "cluster3-storm-read",
        "cluster3-storm-local-read",
        "pacemaker-read",
    ):
        assert rows[name]["errors"] == 0, rows[name]
        # RSS growth per stored heartbeat is reported (a measurement: at smoke sizes an
        # allocator may reuse freed memory, so its sign is not asserted).
        assert isinstance(rows[name]["extra"]["rss_bytes_per_hb"], float), rows[name]
    stored = SMOKE["workers"]
    assert rows["pacemaker-death"]["extra"] == {
        **rows["pacemaker-death"]["extra"],
        "stored": stored,
    }
    assert rows["pacemaker-death"]["extra"]["readable"] == 0, rows["pacemaker-death"]
    assert rows["cluster3-death"]["extra"]["readable"] == stored, rows["cluster3-death"]
    assert rows["cluster3-death"]["errors"] == 0
