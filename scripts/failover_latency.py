"""Measure read latency through the ring-aware client while one of three nodes is SIGSTOPped.

Starts three real node processes on 127.0.0.1-3 (static membership), writes N heartbeats,
then reads them all continuously for a few seconds before, during and after a SIGSTOP of one
node, and prints latency percentiles per phase. Usage:

    .venv/bin/python scripts/failover_latency.py [--timeout 0.5] [--keys 300] [--secs 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from pmcluster.client import ClusterClient
from pmcluster.config import config_from_mapping
from pmcluster.tools.localcluster import NodeCluster


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def read_for(client: ClusterClient, paths: list[str], secs: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        for path in paths:
            started = time.monotonic()
            pulse = await client.get_pulse(path)
            latencies.append(time.monotonic() - started)
            assert pulse is not None, f"miss on {path}"
            if time.monotonic() >= deadline:
                break
    return latencies


async def measure(cluster: NodeCluster, args: argparse.Namespace) -> None:
    keys = {
        "pacemaker.servers": cluster.node_ids,
        "pmcluster.request.timeout.secs": args.timeout,
        "pmcluster.connect.timeout.secs": min(args.timeout, 0.5),
    }
    paths = [f"/workerbeats/topo-{i % 5}/node-{i}-6700" for i in range(args.keys)]
    async with ClusterClient(config_from_mapping(keys)) as client:
        await client.send_pulses([(p, b"x" * 512) for p in paths])
        phases = {"before": await read_for(client, paths, args.secs)}
        cluster[1].stop_signal()
        try:
            phases["during SIGSTOP"] = await read_for(client, paths, args.secs)
        finally:
            cluster[1].cont()
        phases["after SIGCONT"] = await read_for(client, paths, args.secs)
    print(f"request timeout {args.timeout:g} s, {args.keys} keys, one of 3 nodes SIGSTOPped")
    print(f"{'phase':16} {'reads':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, lat in phases.items():
        print(
            f"{name:16} {len(lat):7d} {percentile(lat, 0.5) * 1e3:8.2f} "
            f"{percentile(lat, 0.99) * 1e3:8.2f} {max(lat) * 1e3:8.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--secs", type=float, default=4.0)
    args = parser.parse_args()
    extra = {"pmcluster.request.timeout.secs": args.timeout}
    with tempfile.TemporaryDirectory() as tmp, NodeCluster(3, workdir=Path(tmp), extra=extra) as c:
        asyncio.run(measure(c, args))


if __name__ == "__main__":
    main()
