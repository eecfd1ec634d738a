"""`pmcluster status`: every node's view of the cluster, its figures, and a one-line verdict.

For each member it asks `GET /v1/members` (its epoch and member list) and samples `GET
/metrics` twice a second apart (keys, bytes, write/read rates, errors, and anti-entropy's
progress: keys found behind on an owner in the last round, keys repaired so far). The verdict is for
monitoring: OK (exit 0) when every member answers and all agree on the epoch, DEGRADED (exit 1)
when some member does not answer, the views disagree, or there are fewer members than the
replication factor (or than `--expect-nodes`), DOWN (exit 2) when none answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from pmcluster.client import ClusterClient
from pmcluster.config import Config, add_client_arguments, client_config
from pmcluster.errors import PmclusterError
from pmcluster.node.metrics import parse_metrics
from pmcluster.tools.opshttp import OpsHttp

OK, DEGRADED, DOWN = "OK", "DEGRADED", "DOWN"
EXIT_CODES = {OK: 0, DEGRADED: 1, DOWN: 2}
SAMPLE_GAP_SECS = 1.0


@dataclass
class NodeStatus:
    """One node's answers; `up` is False when it did not answer in time."""

    node_id: str
    up: bool = False
    epoch: str | None = None
    members: list[str] = field(default_factory=list)
    keys: int = 0
    bytes: int = 0
    writes_per_sec: float = 0.0
    reads_per_sec: float = 0.0
    errors: int = 0
    behind: int = 0  # anti-entropy: keys found behind on an owner in the node's last round
    repaired: int = 0  # anti-entropy: keys the node's store took from a peer, so far
    problem: str = ""


async def probe(http: OpsHttp, node_id: str, host: str, port: int, timeout: float) -> NodeStatus:
    """Ask one node for its view and two metric samples."""
    status = NodeStatus(node_id)
    base = http.url(host, port)
    try:
        view = json.loads(await http.get_text(f"{base}/v1/members", timeout=timeout))
        first = parse_metrics(await http.get_text(f"{base}/metrics", timeout=timeout))
        started = time.monotonic()
        await asyncio.sleep(SAMPLE_GAP_SECS)
        second = parse_metrics(await http.get_text(f"{base}/metrics", timeout=timeout))
        gap = max(time.monotonic() - started, 1e-6)
    except (aiohttp.ClientError, TimeoutError, PmclusterError, ValueError, OSError) as exc:
        status.problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return status
    status.up = True
    status.epoch = str(view.get("epoch"))
    status.members = sorted(
        m["node_id"] if isinstance(m, dict) else str(m) for m in view.get("members", [])
    )
    status.keys = int(second.get("pmcluster_stored_keys", 0))
    status.bytes = int(second.get("pmcluster_stored_bytes", 0))

    def rate(name: str) -> float:
        return (second.get(name, 0.0) - first.get(name, 0.0)) / gap

    status.writes_per_sec = rate("pmcluster_pulses_received_total")
    status.reads_per_sec = rate("pmcluster_pulse_reads_total")
    status.errors = int(second.get("pmcluster_errors_total", 0))
    status.behind = int(second.get("pmcluster_antientropy_under_replicated_keys", 0))
    status.repaired = int(second.get("pmcluster_antientropy_keys_repaired_total", 0))
    return status


def verdict(
    nodes: list[NodeStatus], *, replication: int = 1, expect: int | None = None
) -> tuple[str, str]:
    """(OK | DEGRADED | DOWN, reason). Fewer members than the replication factor (or than
    `expect`, for monitoring a cluster of known size) is DEGRADED even when all agree: a
    node that went away long enough to drop out of the membership is still a lost node."""
    up = [n for n in nodes if n.up]
    if not up:
        return DOWN, "no node answers"
    reasons = [f"{n.node_id} does not answer" for n in nodes if not n.up]
    if len(nodes) < replication:
        reasons.append(f"{len(nodes)} member(s), fewer than the replication factor {replication}")
    if expect is not None and len(nodes) < expect:
        reasons.append(f"{len(nodes)} member(s), {expect} expected")
    epochs = {n.epoch for n in up}
    if len(epochs) > 1:
        reasons.append(f"nodes disagree on the epoch: {', '.join(sorted(map(str, epochs)))}")
    views = {tuple(n.members) for n in up}
    if len(views) > 1:
        reasons.append("nodes disagree on the members")
    if reasons:
        return DEGRADED, "; ".join(reasons)
    return OK, f"{len(nodes)} nodes agree on epoch {next(iter(epochs))}"


async def collect(config: Config) -> list[NodeStatus]:
    """Find the members (ZooKeeper or seeds) and probe them all in parallel."""
    async with ClusterClient(config) as client:
        snapshot = await client.members()
    timeout = config.request_timeout_secs
    async with OpsHttp(config) as http:
        return list(
            await asyncio.gather(
                *(probe(http, m.node_id, m.host, m.port, timeout) for m in snapshot.members)
            )
        )


def render(nodes: list[NodeStatus], state: str, reason: str) -> str:
    lines = [
        f"{'node':24} {'state':5} {'epoch':22} {'keys':>8} {'bytes':>12} "
        f"{'writes/s':>9} {'reads/s':>9} {'errors':>7} {'behind':>7} {'repaired':>9}"
    ]
    for n in nodes:
        if n.up:
            lines.append(
                f"{n.node_id:24} {'up':5} {n.epoch or '-':22} {n.keys:8d} {n.bytes:12d} "
                f"{n.writes_per_sec:9.1f} {n.reads_per_sec:9.1f} {n.errors:7d} "
                f"{n.behind:7d} {n.repaired:9d}"
            )
        else:
            lines.append(f"{n.node_id:24} {'DOWN':5} {n.problem}")
    lines.append(f"{state}: {reason}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    config = client_config(
        args.config, servers=args.servers, zookeeper=args.zookeeper, timeout=args.timeout
    )
    try:
        nodes = asyncio.run(collect(config))
    except PmclusterError as exc:
        nodes, state, reason = [], DOWN, str(exc)
    else:
        expect = getattr(args, "expect_nodes", None)
        state, reason = verdict(nodes, replication=config.replication, expect=expect)
    if args.json:
        doc: dict[str, Any] = {
            "verdict": state,
            "reason": reason,
            "nodes": [asdict(n) for n in nodes],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render(nodes, state, reason))
    return EXIT_CODES[state]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `pmcluster status`."""
    add_client_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--expect-nodes", type=int, help="DEGRADED when fewer members than this")
