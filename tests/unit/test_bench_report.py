"""The benchmark's arithmetic: percentiles, target ratios, /proc readings, request building."""

from __future__ import annotations

import os
import time

from pmcluster.protocol import pulsecodec
from pmcluster.tools.bench.load import HttpSpec, build_requests, split, spread
from pmcluster.tools.bench.procstats import sample
from pmcluster.tools.bench.report import Row, percentile, targets
from pmcluster.tools.bench.rows import storm_paths


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) is None


def _rows() -> list[Row]:
    return [
        Row("zk-write", "zk", heartbeats_per_sec=5000, cpu_us_per_hb=150.0),
        Row("baseline", "b", heartbeats_per_sec=10000, cpu_us_per_hb=90.0),
        Row("node-put", "n", heartbeats_per_sec=7000, cpu_us_per_hb=30.0, disk_bytes=0,
            extra={"pmcluster_node": True}),
        Row("node-batch", "n", heartbeats_per_sec=1e5, cpu_us_per_hb=3.0, disk_bytes=0,
            extra={"pmcluster_node": True}),
        Row("read-zookeeper", "zk", extra={"round_secs": 2.0}),
        Row("read-pmcluster", "n", extra={"round_secs": 0.3}),
        Row("memory", "n", extra={"rss_bytes_per_key": 1600.0}),
    ]  # fmt: skip


def test_targets_are_ratios_of_the_same_run() -> None:
    by_name = {t.name: t for t in targets(_rows(), payload=1024, node_lifetime_writes=0)}
    one = by_name["node CPU/hb vs ZooKeeper, one request per heartbeat"]
    assert one.measured == 30.0 / 150.0 and one.met is True
    batch = by_name["node CPU/hb vs ZooKeeper, fastest path (batch)"]
    assert batch.measured == 3.0 / 150.0 and batch.met is True
    rate = by_name["single node write rate vs bare aiohttp dict server"]
    assert rate.measured == 0.7 and rate.met is False  # at least 0.8 is required
    read = by_name["full Nimbus read round vs ZooKeeper"]
    assert read.measured is not None and abs(read.measured - 0.15) < 1e-9 and read.met
    memory = by_name["RSS per stored heartbeat vs 1.3 x payload + 200 B"]
    assert memory.met is False  # 1600 > 1.3 * 1024 + 200
    storm = by_name["Storm protocol node CPU/hb vs ZooKeeper, one SEND_PULSE per heartbeat"]
    assert storm.measured is None and storm.met is None and "[n/a ]" in storm.line()
    assert by_name["bytes written to disk by nodes"].met is True


def test_disk_target_misses_on_any_byte_written_while_storing() -> None:
    rows = _rows()
    put = next(r for r in rows if r.name == "node-put")
    put.disk_bytes = 4096
    by_name = {t.name: t for t in targets(rows, payload=1024, node_lifetime_writes=4096)}
    disk = by_name["bytes written to disk by nodes"]
    assert disk.met is False and disk.measured == 4096
    assert "whole life: 4096 B" in disk.detail


def test_proc_sample_of_this_process() -> None:
    before = sample(os.getpid())
    began, wall = time.process_time(), time.monotonic()
    while time.process_time() - began < 0.2 and time.monotonic() - wall < 10:
        sum(i * i for i in range(10_000))  # burn 0.2 s of CPU (10 s of wall time at most)
    burned = time.process_time() - began
    elapsed = time.monotonic() - wall
    after = sample(os.getpid())
    assert after.rss_bytes > 1_000_000
    # /proc counts in clock ticks (10 ms): what we burned, within a tick either side.
    assert burned - 0.011 <= (after - before).cpu_secs <= burned + 0.011 + elapsed * 0.05


def test_batch_requests_carry_exactly_batch_heartbeats() -> None:
    paths = tuple(storm_paths(250, 3))
    spec = HttpSpec("127.0.0.1", 1, "batch", paths, 64, 1, batch=100)
    requests, per_request = build_requests(spec)
    assert per_request == 100 and len(requests) == 3
    for request in requests:
        head, body = request.split(b"\r\n\r\n", 1)
        assert head.startswith(b"POST /v1/batch HTTP/1.1")
        assert f"Content-Length: {len(body)}".encode() in head
        assert len(pulsecodec.decode(body)) == 100


def test_put_requests_encode_paths_and_split_the_work() -> None:
    plain = HttpSpec("127.0.0.1", 1, "put", ("/workerbeats/t 1/a-6700",), 8, 1)
    assert b"X-Pmcluster-Forwarded" not in build_requests(plain)[0][0]  # a user's request
    spec = HttpSpec("127.0.0.1", 1, "put", ("/workerbeats/t 1/a-6700",), 8, 1, forwarded=True)
    (request,), per_request = build_requests(spec)
    assert per_request == 1
    assert request.startswith(b"PUT /v1/pulse/workerbeats/t%201/a-6700 HTTP/1.1\r\n")
    assert b"X-Pmcluster-Forwarded: 1\r\n" in request
    assert split(["a", "b", "c"], 2) == [("a", "c"), ("b",)]
    assert spread(64, 3) == [22, 21, 21] and spread(1, 2) == [1, 1]
