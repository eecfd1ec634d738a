"""What the fault suites share: scaled-down node keys, the recorded load and its judge, polls.

Used by test_cluster_faults.py, test_faults_more.py and test_ops.py (imported as `faultkit`:
pytest puts this folder on `sys.path`). Periods are scaled down from Storm's (3 s heartbeats,
30 s timeout) to 0.5 s heartbeats, 0.5 s request timeout and a 1.5 s ZooKeeper session, so each
scenario takes seconds.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pmcluster.config import PEER_TIMEOUT_SHARE, Config, config_from_mapping
from pmcluster.tools.history import FaultWindow, History, Report, judge_window
from pmcluster.tools.loadgen import BackgroundLoad, LoadSpec, StormLoad, heartbeat_paths
from pmcluster.tools.localcluster import NodeCluster, NodeProcess, wait_until, zk_yaml

PERIOD = 0.5
TIMEOUT = 0.5
SESSION_MS = 1500
NODE_KEYS: dict[str, Any] = {
    "task.heartbeat.frequency.secs": PERIOD,
    "pmcluster.request.timeout.secs": TIMEOUT,
    "pmcluster.connect.timeout.secs": 0.2,
    "storm.zookeeper.session.timeout": SESSION_MS,
    "pmcluster.log.level": "INFO",
}


def client_config(zk_hosts: str | None = None, servers: list[str] | None = None) -> Config:
    """A client with the nodes' scaled-down timeouts, finding them via ZooKeeper or `servers`."""
    keys: dict[str, Any] = dict(NODE_KEYS)
    if zk_hosts is not None:
        keys.update(zk_yaml(zk_hosts))
    if servers is not None:
        keys["pacemaker.servers"] = servers
    return config_from_mapping(keys)


def run_load(urls: list[str], config: Config, workers: int = 24) -> BackgroundLoad:
    """A recorded Storm-like load (one writer per heartbeat path) over the client and `urls`."""
    spec = LoadSpec(paths=tuple(heartbeat_paths(workers)), period=PERIOD, payload=200)
    return BackgroundLoad(StormLoad(config, spec, node_urls=urls))


# The ring-aware client waits at most one request timeout per read (`client/fanout.py`), then
# answers from the owners that did; READ_OVERHEAD is the rest of one read on the loopback (its
# merge, the second owner's answer): a read past TIMEOUT + READ_OVERHEAD waited twice.
READ_OVERHEAD = 0.1
READ_BOUND = TIMEOUT + READ_OVERHEAD
# The load's plain-HTTP reads rotate like curl behind DNS (`loadgen.StormLoad._rotate`): one
# attempt may time out on the stopped node, the next node coordinates the read and itself waits
# for the stopped owner up to its peer timeout (`Config.peer_request_timeout_secs`).
HTTP_READ_BOUND = TIMEOUT + PEER_TIMEOUT_SHARE * TIMEOUT + READ_OVERHEAD
RUN_FAILED_SHARE = 0.0


def judge_run(history: History, report: Report, windows: Iterable[FaultWindow] = ()) -> list[str]:
    """Every reason a fault run failed: the checker's findings, too few reads, failed reads
    over the whole run, and each fault window's bounds (reads overlapping it, failed share,
    slowest read). Empty when the run passed."""
    problems = [str(f) for f in report.findings()[:10]]
    if not report.ok:
        problems.insert(0, report.verdict_line())
    ok_reads = sum(1 for op in history.ops if op.op == "read" and op.outcome in ("ok", "absent"))
    if ok_reads <= 100:
        problems.append(f"only {ok_reads} reads answered: too few to judge anything")
    whole = FaultWindow("whole run", -math.inf, math.inf, math.inf, RUN_FAILED_SHARE)
    for window in (whole, *windows):
        verdict = judge_window(history, window)
        print(verdict.line())
        problems.extend(verdict.problems())
    return problems


def assert_clean(
    load: BackgroundLoad, history: History, windows: Iterable[FaultWindow] = ()
) -> None:
    """The run passed `judge_run`; with PMCLUSTER_DUMP=FILE set, a failing history is written
    there as JSON lines."""
    report = load.check()
    problems = judge_run(history, report, windows)
    if problems and os.environ.get("PMCLUSTER_DUMP"):
        history.dump_jsonl(os.environ["PMCLUSTER_DUMP"])
    assert not problems, "\n".join(problems)
    print(report.verdict_line())


def fault_window(
    name: str, since: float, until: float, *, max_failed_share: float = 0.0
) -> list[FaultWindow]:
    """The bounds of one fault: reads of the ring-aware client within `READ_BOUND`, plain-HTTP
    reads within `HTTP_READ_BOUND`, at least one read of each overlapping the fault."""
    return [
        FaultWindow(
            f"{name} (client)", since, until, READ_BOUND, max_failed_share, client_suffix="-client"
        ),
        FaultWindow(
            f"{name} (http)", since, until, HTTP_READ_BOUND, max_failed_share, client_suffix="-http"
        ),
    ]


def http_json(url: str, timeout: float = 2.0) -> Any:
    """GET `url` and parse its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


def members_of(node: NodeProcess) -> dict[str, Any]:
    """The node's `/v1/members` document (epoch and members)."""
    doc: dict[str, Any] = http_json(f"{node.url}/v1/members")
    return doc


def view(url: str) -> dict[str, Any] | None:
    """`/v1/members` of the node at `url`, or None when it does not answer."""
    try:
        doc: dict[str, Any] = http_json(f"{url}/v1/members")
    except (OSError, urllib.error.URLError):
        return None
    return doc


def converged(nodes: Iterable[NodeProcess | str], size: int) -> bool:
    """Every node (a process or a base URL) answers with one epoch and `size` members."""
    views: list[dict[str, Any]] = []
    for node in nodes:
        doc = view(node if isinstance(node, str) else node.url)
        if doc is None:
            return False
        views.append(doc)
    return len({v["epoch"] for v in views}) == 1 and all(len(v["members"]) == size for v in views)


def health_says_connected(node: NodeProcess) -> bool:
    """The node's `/health` reports its ZooKeeper connection up and the node not fenced."""
    doc = http_json(f"{node.url}/health")
    return bool(doc["membership"] == "CONNECTED" and not doc["fenced"])


def node_keys(node: NodeProcess) -> int:
    """How many keys the node holds (`/health`)."""
    return int(http_json(f"{node.url}/health")["keys"])


@contextmanager
def running_cluster(
    size: int, workdir: Path, zk_hosts: str, extra: dict[str, Any] | None = None
) -> Iterator[NodeCluster]:
    """`size` nodes on `zk_hosts`, yielded once all of them agree on the ring (10 s at most)."""
    keys = NODE_KEYS if extra is None else extra
    with NodeCluster(size, workdir=workdir, zk_hosts=zk_hosts, extra=keys) as cluster:
        wait_until(lambda: converged(cluster.nodes, size), timeout=10)
        yield cluster
