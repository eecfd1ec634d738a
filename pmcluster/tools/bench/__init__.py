"""`pmcluster bench`: pmcluster against ZooKeeper (and a bare aiohttp server) in one run.

Starts everything it measures on loopback, runs each system on the same workload, and prints
a table, one JSON line per row (`{"bench_row": ...}`) and the issue's targets as ratios of
figures measured in this run (`{"bench_target": ...}`). Progress goes to stderr. See
`docs/benchmarks.md` for what each figure means.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pmcluster.tools.bench.rows import Plan

__all__ = [
    "CAPACITY_ROW_NAMES",
    "PACEMAKER_ROW_NAMES",
    "ROW_NAMES",
    "SMOKE",
    "machine_description",
    "plan_from_args",
    "run_bench",
]

# The rows of `--rows pacemaker` (not run by default: they need a JDK and Storm's jars): Storm's
# own Pacemaker beside pmcluster under the same Storm loads, and what a crash costs each.
PACEMAKER_ROW_NAMES = (
    "pacemaker-put",
    "storm-read",
    "cluster3-storm-read",
    "cluster3-storm-local-read",
    "pacemaker-read",
    "cluster3-death",
    "pacemaker-death",
)

# The rows of `--rows capacity` (not run by default: they start clusters of 3, 6 and 12 nodes):
# Storm's paced load of 1,000 supervisors, and plain PUTs on growing clusters (docs/capacity.md).
CAPACITY_ROW_NAMES = ("storm-1k-supervisors", "capacity-3", "capacity-6", "capacity-12")

# Every row's name, in the order: the table's order. (Rows run in another order: each
# server is stopped once its rows are done, so later rows run on a quiet machine.)
ROW_NAMES = (
    "zk-write",
    "baseline",
    "node-put",
    "internal-put",
    "node-batch",
    "storm-put",
    "cluster3-put",
    "cluster3-put-v",
    "cluster3-http-put",
    "cluster3-storm-put",
    "read-zookeeper",
    "read-pmcluster",
    "read-storm",
    "memory",
    *PACEMAKER_ROW_NAMES,
    *CAPACITY_ROW_NAMES,
)

# --smoke: tiny sizes so CI checks that every row runs, in well under a minute. Its keys are
# the sizes the command line sets (`plan_from_args`).
SMOKE = {
    "workers": 200,
    "payload": 256,
    "read_payload": 512,
    "duration": 0.5,
    "warmup": 0.2,
    "concurrency": 4,
    "storm_connections": 2,
    "storm_depth": 4,
    "clients": 1,
    "memory_keys": 2000,
    "read_rounds": 1,
}


def plan_from_args(args: argparse.Namespace, workdir: Path) -> Plan:
    """The `Plan` the command-line knobs ask for (`--smoke` replaces the sizes)."""
    from pmcluster.tools.bench.rows import ALL_ROWS, OPTIONAL_ROWS, Plan

    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip()) if args.rows else ALL_ROWS
    unknown = sorted(set(rows) - set(ALL_ROWS) - set(OPTIONAL_ROWS))
    if unknown:
        raise SystemExit(
            f"pmcluster bench: unknown rows {unknown}; choose from {ALL_ROWS + OPTIONAL_ROWS}"
        )
    sizes = dict(SMOKE) if args.smoke else {name: getattr(args, name) for name in SMOKE}
    return Plan(
        topologies=args.topologies,
        batch=args.batch,
        zookeeper=not args.no_zookeeper,
        rows=rows,
        workdir=workdir,
        storm_classpath=args.storm_classpath,
        **sizes,
    )


def machine_description() -> str:
    """CPU model, core count, kernel, Python and aiohttp versions: the table's context."""
    import aiohttp

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}"
    )


def run_bench(args: argparse.Namespace) -> int:
    """Run the rows the arguments ask for; print the table, JSON lines and targets."""
    from pmcluster.tools.bench.report import Progress, format_table, targets
    from pmcluster.tools.bench.rows import CAPACITY_SIZES, Bench
    from pmcluster.tools.localcluster import missing_zookeeper_jar

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pmcluster-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    plan = plan_from_args(args, workdir)
    if plan.zookeeper and ("zk" in plan.rows or "read" in plan.rows):
        missing = missing_zookeeper_jar()
        if missing is not None:
            print(
                f"pmcluster bench: ZooKeeper is not installed ({missing} is missing); install "
                "it (apt-get install -y zookeeper) or pass --no-zookeeper",
                file=sys.stderr,
            )
            return 2
    progress = Progress()
    progress.step(f"machine: {machine_description()}")
    progress.step(
        f"workload: {plan.workers:,} workers, {plan.payload} B heartbeats, {plan.duration:g}s "
        f"windows after {plan.warmup:g}s warm-up, {plan.concurrency} in flight, "
        f"{plan.clients} client processes; rows {','.join(plan.rows)}; work dir {workdir}"
    )
    bench = Bench(plan, progress)
    rows = []
    try:
        if plan.zookeeper and "zk" in plan.rows:
            rows.append(bench.row_zk())
        if plan.zookeeper and "read" in plan.rows:
            rows.append(bench.row_read_zookeeper())
        bench.stop_zookeeper()
        if "pacemaker" in plan.rows:  # Storm's own server: the same Storm loads, then a crash
            rows.append(bench.row_pacemaker_put())
            rows.append(bench.row_pacemaker_read())
            rows.append(bench.row_pacemaker_death())
            bench.stop_pacemaker()
            rows.append(bench.row_storm_nimbus_read())
        if "baseline" in plan.rows:
            rows.append(bench.row_baseline())
        if "put" in plan.rows:
            rows.append(bench.row_put())
            rows.append(bench.row_internal_put())
        if "batch" in plan.rows:
            rows.append(bench.row_batch())
        if "storm" in plan.rows:
            rows.append(bench.row_storm())
            if "read" in plan.rows:
                rows.append(bench.row_read_storm())
        bench.stop_node()
        if "cluster" in plan.rows:
            rows.append(bench.row_cluster())
            rows.append(bench.row_cluster(versioned=True))
            rows.append(bench.row_cluster_http())
            if "storm" in plan.rows:
                rows.append(bench.row_cluster_storm())
        if "read" in plan.rows:
            rows.append(bench.row_read_pmcluster())
        if "capacity" in plan.rows:
            rows.append(bench.row_storm_supervisors())
        if "pacemaker" in plan.rows:
            rows.append(bench.row_cluster_storm_nimbus_read())
            rows.append(bench.row_cluster_death())  # last: it kills a node of the cluster
        bench.stop_cluster()
        if "pacemaker" in plan.rows:
            rows.append(bench.row_cluster_storm_local_read())
        if "capacity" in plan.rows:
            for size in CAPACITY_SIZES:
                rows.append(bench.row_capacity(size))
        if "memory" in plan.rows:
            rows.append(bench.row_memory())
    finally:
        bench.close()
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    rows.sort(key=lambda row: ROW_NAMES.index(row.name))
    out = sys.stdout
    out.write(f"pmcluster bench — {machine_description()}\n")
    out.write(
        f"workload: {plan.workers:,} workers over {plan.topologies} topologies, "
        f"{plan.payload} B heartbeats ({plan.read_payload} B for reads), "
        f"{plan.duration:g}s windows, {plan.concurrency} in flight, batch {plan.batch}, "
        f"{plan.clients} client processes, memory at {plan.memory_keys:,} keys\n\n"
    )
    out.write(format_table(rows) + "\n\n")
    for row in rows:
        out.write(row.json_line() + "\n")
    out.write("\ntargets (ratios of figures measured in this run):\n")
    measured_targets = targets(rows, plan.payload, bench.node_lifetime_writes)
    for target in measured_targets:
        out.write(target.line() + "\n")
    for target in measured_targets:
        out.write(target.json_line() + "\n")
    out.flush()
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `pmcluster bench`."""
    p.add_argument("--workers", type=int, default=10_000, help="heartbeat keys (10000)")
    p.add_argument("--payload", type=int, default=1024, help="write heartbeat bytes (1024)")
    p.add_argument("--read-payload", type=int, default=5120, help="read round bytes (5120)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per row (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (2)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (64)")
    p.add_argument("--storm-connections", type=int, default=8, help="Storm row: connections (8)")
    p.add_argument(
        "--storm-depth",
        type=int,
        default=100,
        help="Storm row: SEND_PULSEs in flight per connection (100, Storm's client limit)",
    )
    p.add_argument("--clients", type=int, default=2, help="load generator processes (2)")
    p.add_argument("--topologies", type=int, default=10, help="topologies (10)")
    p.add_argument("--batch", type=int, default=100, help="heartbeats per batch request (100)")
    p.add_argument("--memory-keys", type=int, default=100_000, help="keys for memory (100000)")
    p.add_argument("--read-rounds", type=int, default=3, help="measured read rounds (3)")
    p.add_argument(
        "--rows",
        help="comma list of zk,baseline,put,batch,storm,cluster,read,memory (the default) and "
        "pacemaker (Storm's own Pacemaker as the peer: needs a JDK and Storm's jars), capacity "
        "(plain PUTs on clusters of 3, 6 and 12 nodes: docs/capacity.md)",
    )
    p.add_argument(
        "--storm-classpath",
        help="pacemaker rows: Storm's jars (e.g. '/opt/storm/lib/*'); default: Maven fetches "
        "storm-server with the project's tests/interop/storm/pom.xml",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks every row runs")
    p.add_argument("--no-zookeeper", action="store_true", help="skip the ZooKeeper rows")
    p.add_argument("--workdir", help="keep configs and logs here (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp work dir")
