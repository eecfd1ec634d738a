"""The benchmark's rows: each starts (or reuses) what it measures, drives it, returns a `Row`.

Every server is a real process on loopback (nodes through `localcluster.NodeProcess` on
127.0.0.x, ZooKeeper from its jars, the baseline dict server), stopped by PID when the run
ends. Node processes run with `PYTHONDONTWRITEBYTECODE=1` and log level WARNING, so any byte
they write to disk is the node's own doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from pmcluster.protocol import pulsecodec
from pmcluster.tools.bench import storm, zk
from pmcluster.tools.bench.baseline import BaselineProcess
from pmcluster.tools.bench.load import (
    HttpSpec,
    Measured,
    RingSpec,
    drive,
    http_load,
    ring_load,
    split,
    spread,
)
from pmcluster.tools.bench.procstats import ProcSample, dir_disk_bytes, sample, sample_sum
from pmcluster.tools.bench.report import Progress, Row, percentile
from pmcluster.tools.localcluster import ManagedZooKeeper, NodeCluster, NodeProcess, free_port
from pmcluster.tools.stormpacemaker import StormPacemaker, java_command, storm_classpath

__all__ = ["ALL_ROWS", "OPTIONAL_ROWS", "Bench", "Plan", "storm_paths"]

ALL_ROWS = ("zk", "baseline", "put", "batch", "storm", "cluster", "read", "memory")
# Rows run only when named in --rows: `pacemaker` needs a JDK and Storm's jars (Maven);
# `capacity` starts clusters of 3, 6 and 12 nodes in turn (a minute or more).
OPTIONAL_ROWS = ("pacemaker", "capacity")
CAPACITY_SIZES = (3, 6, 12)
PACED_PER_NODE = 400  # the capacity rows' paced load: SEND_PULSEs per second per node
_MiB = 1024 * 1024
_POPULATE_BATCH = 1000  # heartbeats per POST /v1/batch while filling a store
_NIMBUS_ROOT = "/nimbusbeats"  # the Storm-way Nimbus rounds' heartbeats (read rows, death rows)


@dataclass(frozen=True)
class Plan:
    """The workload: sizes, durations and which rows run."""

    workers: int
    payload: int
    read_payload: int
    duration: float
    warmup: float
    concurrency: int
    topologies: int
    batch: int
    clients: int
    memory_keys: int
    read_rounds: int
    zookeeper: bool
    rows: tuple[str, ...]
    workdir: Path
    storm_connections: int = 8
    storm_depth: int = 100  # SEND_PULSEs in flight per Storm connection (Storm's client: 100)
    storm_classpath: str | None = None  # Storm's jars for the pacemaker rows (None: Maven)


def storm_paths(count: int, topologies: int, root: str = "/workerbeats") -> list[str]:
    """Storm-shaped worker heartbeat paths: `<root>/<storm-id>/<supervisor-uuid>-<port>`."""
    return [
        f"{root}/topology-{i % topologies:03d}-1-1700000000/"
        f"{uuid.UUID(int=0x5EED << 64 | i // 4)}-{6700 + i % 4}"
        for i in range(count)
    ]


def _node_env() -> dict[str, str]:
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def _node_yaml(host: str, port: int, servers: Sequence[str]) -> dict[str, Any]:
    return {
        "pacemaker.host": host,
        "pacemaker.port": port,
        "pacemaker.servers": list(servers),
        "pmcluster.log.level": "WARNING",
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def _write_row(name: str, system: str, measured: Measured, **extra: Any) -> Row:
    beats = measured.heartbeats
    return Row(
        name=name,
        system=system,
        heartbeats_per_sec=beats / measured.seconds,
        p50_ms=_ms(percentile(measured.latencies, 0.50)),
        p99_ms=_ms(percentile(measured.latencies, 0.99)),
        cpu_us_per_hb=measured.server.cpu_secs * 1e6 / beats if beats else None,
        cpu_cores=measured.server.cpu_secs / measured.seconds,
        rss_mb=measured.server.rss_bytes / _MiB,
        disk_bytes=measured.server.write_bytes,
        errors=measured.errors,
        extra={
            "seconds": measured.seconds,
            "requests": measured.requests,
            "client_cores": measured.client_cpu_secs / measured.seconds,
            "load_average_1m": os.getloadavg()[0],
            **extra,
        },
    )


class Bench:
    """Runs the rows of a `Plan`, owning every process it starts (closed by `close`)."""

    def __init__(self, plan: Plan, progress: Progress) -> None:
        self.plan = plan
        self.progress = progress
        self._stack = contextlib.ExitStack()
        self._zk: ManagedZooKeeper | None = None
        self._node: NodeProcess | None = None
        self._cluster: NodeCluster | None = None
        self._pacemaker: StormPacemaker | None = None
        self.write_paths = storm_paths(plan.workers, plan.topologies)
        self.node_lifetime_writes = 0  # write_bytes of every node process, start to stop

    def close(self) -> None:
        self.stop_pacemaker()
        self.stop_node()
        self.stop_cluster()
        self._stack.close()

    def _retire_nodes(self, nodes: Sequence[NodeProcess]) -> None:
        """Note the nodes' lifetime disk writes, then SIGKILL them by PID."""
        for node in nodes:
            if node.running():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    self.node_lifetime_writes += sample(node.pid).write_bytes
            node.kill()

    def stop_zookeeper(self) -> None:
        if self._zk is not None:
            self._zk.stop()
            self._zk = None

    def stop_pacemaker(self) -> None:
        if self._pacemaker is not None:
            self._pacemaker.kill()
            self._pacemaker = None

    def stop_node(self) -> None:
        if self._node is not None:
            self._retire_nodes([self._node])
            self._node = None

    def stop_cluster(self) -> None:
        if self._cluster is not None:
            self._retire_nodes(self._cluster.nodes)
            self._cluster = None

    # --- shared servers ----------------------------------------------------------------------

    def zookeeper(self) -> ManagedZooKeeper:
        if self._zk is None:
            self.progress.step("starting ZooKeeper 3.8 (tickTime 2000, data dir on disk)")
            server = zk.start_zookeeper(self.plan.workdir)
            self._stack.callback(server.stop)
            self._zk = server
        return self._zk

    def node(self) -> NodeProcess:
        if self._node is None:
            port = free_port("127.0.0.1")
            node = NodeProcess(
                _node_yaml("127.0.0.1", port, ["127.0.0.1"]),
                workdir=self.plan.workdir,
                env=_node_env(),
            )
            self.progress.step(f"starting a pmcluster node on 127.0.0.1:{port}")
            self._stack.enter_context(node)
            self._node = node
        return self._node

    def cluster(self) -> NodeCluster:
        if self._cluster is None:
            cluster = NodeCluster(
                3,
                workdir=self.plan.workdir,
                extra={"pmcluster.replication": 2, "pmcluster.log.level": "WARNING"},
                env=_node_env(),
            )
            self.progress.step(f"starting 3 nodes on 127.0.0.1-3:{cluster.port} (replication 2)")
            self._stack.enter_context(cluster)
            self._cluster = cluster
        return self._cluster

    def pacemaker(self) -> StormPacemaker:
        """Storm's own Pacemaker (one JVM, Storm's default heap `-Xmx1024m`)."""
        if self._pacemaker is None:
            plan = self.plan
            classpath = plan.storm_classpath
            if classpath is None:
                self.progress.step("resolving Storm's jars with Maven (~165 MB the first time)")
                classpath = storm_classpath(plan.workdir / "storm")
            server = StormPacemaker(
                java_command(classpath), plan.workdir / "pacemaker", heap="1024m"
            )
            self.progress.step(f"starting Storm's own Pacemaker on 127.0.0.1:{server.port}")
            self._stack.callback(server.kill)
            self._pacemaker = server.start()
        return self._pacemaker

    def _drive(
        self, label: str, target: Any, specs: Sequence[Any], pids: Sequence[int], per: str = "hb"
    ) -> Measured:
        plan = self.plan
        tick = self.progress.ticker(label, plan.duration, per)
        return drive(
            target,
            specs,
            warmup=plan.warmup,
            duration=plan.duration,
            server_pids=pids,
            progress=tick,
        )

    def _deal(self, paths: Sequence[str], total: int) -> list[tuple[tuple[str, ...], int]]:
        """(paths, share of `total`) for each client process: its own keys, its connections."""
        clients = self.plan.clients
        return list(zip(split(paths, clients), spread(total, clients), strict=True))

    def _http_specs(self, host: str, port: int, kind: str, forwarded: bool) -> list[HttpSpec]:
        plan = self.plan
        return [
            HttpSpec(host, port, kind, paths, plan.payload, n, plan.batch, forwarded)
            for paths, n in self._deal(self.write_paths, plan.concurrency)
        ]

    # --- rows ----------------------------------------------------------------------------------

    def row_zk(self) -> Row:
        plan = self.plan
        server = self.zookeeper()
        self.progress.step(f"zk-write: creating {plan.workers:,} znodes of {plan.payload} B")
        paths = storm_paths(plan.workers, plan.topologies, "/storm/workerbeats")
        zk.populate_zookeeper(server.hosts, paths, plan.payload)
        specs = [
            zk.ZkSpec(server.hosts, part, plan.payload, n)
            for part, n in self._deal(paths, plan.concurrency)
        ]
        disk_before = dir_disk_bytes(server.data_dir)
        measured = self._drive("zk-write", zk.zk_load, specs, [server.pid])
        return _write_row(
            "zk-write",
            f"ZooKeeper 3.8 (1 server, fsync on), kazoo set_async, {plan.concurrency} in flight "
            f"over {plan.clients} sessions, {plan.payload} B",
            measured,
            data_dir_growth_bytes=dir_disk_bytes(server.data_dir) - disk_before,
        )

    def row_baseline(self) -> Row:
        plan = self.plan
        port = free_port("127.0.0.1")
        server = BaselineProcess("127.0.0.1", port, plan.workdir / "baseline.log").start()
        self._stack.callback(server.stop)
        self.progress.step(f"baseline: bare aiohttp dict server on 127.0.0.1:{port}")
        specs = self._http_specs("127.0.0.1", port, "put", forwarded=False)
        measured = self._drive("baseline", http_load, specs, [server.pid])
        server.stop()
        return _write_row(
            "baseline",
            f"bare aiohttp dict server (web.Application, one route), one PUT per heartbeat, "
            f"{plan.concurrency} connections from {plan.clients} processes",
            measured,
        )

    def _node_http_row(self, name: str, kind: str, forwarded: bool, system: str) -> Row:
        """One HTTP row against the single node: `kind` put or batch, with or without the
        internal forwarded header."""
        node = self.node()
        specs = self._http_specs(node.host, node.port, kind, forwarded=forwarded)
        measured = self._drive(name, http_load, specs, [node.pid])
        batch = {"batch": self.plan.batch} if kind == "batch" else {}
        return _write_row(name, system, measured, pmcluster_node=True, **batch)

    def row_put(self) -> Row:
        plan = self.plan
        return self._node_http_row(
            "node-put",
            "put",
            False,
            f"one-node cluster, one plain PUT /v1/pulse per heartbeat as curl sends it (no "
            f"internal header), {plan.concurrency} keep-alive connections from "
            f"{plan.clients} processes",
        )

    def row_internal_put(self) -> Row:
        return self._node_http_row(
            "internal-put",
            "put",
            True,
            f"INTERNAL HOP, not a user path: the same PUTs with X-Pmcluster-Forwarded (what "
            f"nodes send each other), {self.plan.concurrency} connections",
        )

    def row_batch(self) -> Row:
        plan = self.plan
        return self._node_http_row(
            "node-batch",
            "batch",
            True,
            f"INTERNAL HOP as the ring-aware client sends it (POST /v1/batch of {plan.batch} "
            f"heartbeats with X-Pmcluster-Forwarded, replayed raw to the owner), "
            f"{plan.concurrency} connections; the client itself is measured in cluster3-put",
        )

    def row_storm(self) -> Row:
        plan = self.plan
        node = self.node()
        measured = self._storm_put_row("storm-put", node.host, node.port, [node.pid])
        return _write_row(
            "storm-put",
            f"pmcluster node, Storm protocol: one SEND_PULSE per heartbeat, "
            f"{plan.storm_depth} in flight pipelined on each of "
            f"{max(plan.storm_connections, plan.clients)} connections",
            measured,
            pmcluster_node=True,
        )

    def _storm_put_row(self, name: str, host: str, port: int, pids: Sequence[int]) -> Measured:
        plan = self.plan
        connections = max(plan.storm_connections, plan.clients)
        specs = [
            storm.StormSpec(host, port, part, plan.payload, n * plan.storm_depth, n)
            for part, n in self._deal(self.write_paths, connections)
        ]
        return self._drive(name, storm.storm_load, specs, pids)

    def row_pacemaker_put(self) -> Row:
        plan = self.plan
        server = self.pacemaker()
        measured = self._storm_put_row("pacemaker-put", "127.0.0.1", server.port, [server.pid])
        return _write_row(
            "pacemaker-put",
            f"Storm's own Pacemaker (storm-server, one JVM, -Xmx1024m): the storm-put load, one "
            f"SEND_PULSE per heartbeat, {plan.storm_depth} in flight on each of "
            f"{max(plan.storm_connections, plan.clients)} connections",
            measured,
        )

    def _nimbus_rows(
        self, prefix: str, hosts: Sequence[str], port: int, pids: Sequence[int], system: str
    ) -> Row:
        """Store the read round's heartbeats over the Storm protocol (RSS growth per
        heartbeat noted), then time Nimbus rounds as Storm's own client makes them."""
        plan = self.plan
        paths = storm_paths(plan.workers, plan.topologies, _NIMBUS_ROOT)
        self.progress.step(
            f"{prefix}-read: storing {plan.workers:,} heartbeats of {plan.read_payload} B "
            f"through {hosts[0]}"
        )
        before = sample_sum(pids)
        asyncio.run(storm.storm_populate(hosts[0], port, paths, plan.read_payload))
        time.sleep(0.5)  # let the allocator settle before reading RSS
        grown = sample_sum(pids).rss_bytes - before.rss_bytes
        return self._read_rounds(
            f"{prefix}-read",
            f"{system}: Nimbus round as Storm's PaceMakerStateStorage makes it (workers listed "
            f"per topology, one GET_PULSE per worker to every server; {plan.workers:,} "
            f"workers, {plan.read_payload} B)",
            pids,
            lambda: asyncio.run(storm.storm_nimbus_round(hosts, port, _NIMBUS_ROOT)),
            rss_bytes_per_hb=grown / plan.workers,
        )

    def _death_row(
        self,
        name: str,
        system: str,
        kill: Callable[[], None],
        hosts: Sequence[str],
        port: int,
    ) -> Row:
        """After `kill` (a real SIGKILL), one Nimbus round over `hosts`: how many of the
        stored heartbeats Nimbus still sees ("errors" counts the lost ones)."""
        plan = self.plan
        kill()
        seconds, count, _ = asyncio.run(storm.storm_nimbus_round(hosts, port, _NIMBUS_ROOT))
        self.progress.step(f"  {name}: {count:,} of {plan.workers:,} heartbeats after the kill")
        return Row(
            name=name,
            system=system,
            heartbeats_per_sec=count / seconds if seconds else None,
            errors=plan.workers - count,
            extra={"seconds": seconds, "readable": count, "stored": plan.workers},
        )

    def row_pacemaker_read(self) -> Row:
        server = self.pacemaker()
        return self._nimbus_rows(
            "pacemaker", ["127.0.0.1"], server.port, [server.pid], "Storm's own Pacemaker"
        )

    def row_pacemaker_death(self) -> Row:
        server = self.pacemaker()

        def restart() -> None:
            server.kill()
            server.start()

        return self._death_row(
            "pacemaker-death",
            "Storm's own Pacemaker killed (SIGKILL) and restarted, then a Nimbus round: errors "
            "= heartbeats Nimbus no longer sees (until every worker writes again)",
            restart,
            ["127.0.0.1"],
            server.port,
        )

    def row_storm_nimbus_read(self) -> Row:
        node = self.node()
        return self._nimbus_rows(
            "storm", [node.host], node.port, [node.pid], "one pmcluster node, Storm protocol"
        )

    def row_cluster_storm_nimbus_read(self) -> Row:
        cluster = self.cluster()
        return self._nimbus_rows(
            "cluster3-storm",
            list(cluster.hosts),
            cluster.port,
            [n.pid for n in cluster.nodes],
            "3 pmcluster nodes (replication 2) all in pacemaker.servers, Storm protocol",
        )

    def row_cluster_storm_local_read(self) -> Row:
        """The same Nimbus round on a fresh 3-node cluster with `pmcluster.storm.read.mode:
        local` (every node listed: each answers from its own store, Nimbus takes the newest)."""
        cluster = NodeCluster(
            3,
            workdir=self.plan.workdir / "local-read",
            extra={
                "pmcluster.replication": 2,
                "pmcluster.log.level": "WARNING",
                "pmcluster.storm.read.mode": "local",
            },
            env=_node_env(),
        )
        self.progress.step(f"starting 3 nodes on 127.0.0.1-3:{cluster.port} (storm read local)")
        with cluster:
            try:
                return self._nimbus_rows(
                    "cluster3-storm-local",
                    list(cluster.hosts),
                    cluster.port,
                    [n.pid for n in cluster.nodes],
                    "3 pmcluster nodes (replication 2, pmcluster.storm.read.mode: local) all in "
                    "pacemaker.servers, Storm protocol",
                )
            finally:
                self._retire_nodes(cluster.nodes)

    def row_cluster_death(self) -> Row:
        cluster = self.cluster()
        victim = cluster.nodes[-1]
        return self._death_row(
            "cluster3-death",
            f"one of the 3 pmcluster nodes killed (SIGKILL, {victim.host}), then a Nimbus "
            "round over the other two: errors = heartbeats Nimbus no longer sees",
            lambda: self._retire_nodes([victim]),
            list(cluster.hosts[:-1]),
            cluster.port,
        )

    def row_read_storm(self) -> Row:
        plan = self.plan
        node = self.node()
        root = "/stormbeats"
        paths = storm_paths(plan.workers, plan.topologies, root)
        self.progress.step(
            f"read-storm: storing {plan.workers:,} heartbeats of {plan.read_payload} B over the "
            "Storm protocol"
        )
        asyncio.run(storm.storm_populate(node.host, node.port, paths, plan.read_payload))
        return self._read_rounds(
            "read-storm",
            f"Nimbus round on one node over the Storm protocol: GET_ALL_NODES_FOR_PATH + "
            f"GET_ALL_PULSE_FOR_PATH per topology ({plan.workers:,} workers, "
            f"{plan.read_payload} B)",
            [node.pid],
            lambda: asyncio.run(storm.storm_read_round(node.host, node.port, root)),
            pmcluster_node=True,
        )

    def row_cluster(self, *, versioned: bool = False) -> Row:
        plan = self.plan
        cluster = self.cluster()
        specs = [
            RingSpec(
                tuple(cluster.hosts), cluster.port, 2, part, plan.payload, n, versioned=versioned
            )
            for part, n in self._deal(self.write_paths, plan.concurrency)
        ]
        pids = [node.pid for node in cluster.nodes]
        name = "cluster3-put-v" if versioned else "cluster3-put"
        measured = self._drive(name, ring_load, specs, pids)
        how = "with the writer's version" if versioned else "without a version"
        return _write_row(
            name,
            f"3 nodes, replication 2, ring-aware ClusterClient.send_pulse {how}, "
            f"{plan.concurrency} in flight from {plan.clients} processes (CPU is the sum of "
            "the 3 nodes)",
            measured,
            pmcluster_node=True,
        )

    def row_cluster_http(self) -> Row:
        """Plain PUTs (no internal header) spread over every node of the 3-node cluster, as
        clients behind one DNS name send them: a node coordinates each write to the path's
        owners. CPU is the sum of the 3 nodes."""
        plan = self.plan
        cluster = self.cluster()
        hosts = tuple(cluster.hosts)
        specs = [
            HttpSpec(hosts[0], cluster.port, "put", paths, plan.payload, n, plan.batch, hosts=hosts)
            for paths, n in self._deal(self.write_paths, plan.concurrency)
        ]
        measured = self._drive(
            "cluster3-http-put", http_load, specs, [n.pid for n in cluster.nodes]
        )
        return _write_row(
            "cluster3-http-put",
            f"3 nodes, replication 2, one plain PUT /v1/pulse per heartbeat through every "
            f"node (as curl behind DNS), {plan.concurrency} connections from {plan.clients} "
            "processes (CPU is the sum of the 3 nodes)",
            measured,
            pmcluster_node=True,
        )

    def row_capacity(self, size: int) -> Row:
        """Plain PUTs spread over every node of a `size`-node cluster (R=2), as clients behind
        one DNS name send them: the summed node CPU per heartbeat, and each node's share of
        it (horizontal capacity: docs/capacity.md)."""
        plan = self.plan
        cluster = NodeCluster(
            size,
            workdir=self.plan.workdir / f"capacity-{size}",
            extra={"pmcluster.replication": 2, "pmcluster.log.level": "WARNING"},
            env=_node_env(),
        )
        (self.plan.workdir / f"capacity-{size}").mkdir(parents=True, exist_ok=True)
        self.progress.step(f"capacity-{size}: starting {size} nodes (replication 2)")
        # The same load per node at every size (the 3-node row's in-flight requests per node):
        # a node's batches, and so its cost per heartbeat, depend on what it has in flight.
        in_flight = plan.concurrency * size // 3
        with cluster:
            hosts = tuple(cluster.hosts)
            specs = [
                HttpSpec(hosts[0], cluster.port, "put", paths, plan.payload, n, hosts=hosts)
                for paths, n in self._deal(self.write_paths, in_flight)
            ]
            pids = [n.pid for n in cluster.nodes]
            measured = self._drive(f"capacity-{size}", http_load, specs, pids)
            # The same cluster at the same offered load per node whatever its size (Storm's
            # SEND_PULSEs of --read-payload bytes on a clock, spread over the nodes): what a
            # node costs per heartbeat when only the number of its peers changes.
            rate = PACED_PER_NODE * size
            connections = 16 * size
            paced_paths = storm_paths(plan.workers, plan.topologies, "/pacedbeats")
            paced_specs = [
                storm.StormSpec(
                    hosts[0], cluster.port, part, plan.read_payload, n * 100, n,
                    rate * n / connections, hosts,
                )
                for part, n in self._deal(paced_paths, connections)
            ]  # fmt: skip
            paced = self._drive(f"capacity-{size} paced", storm.storm_load, paced_specs, pids)
            self._retire_nodes(cluster.nodes)
        shares = measured.per_server_cpu_secs
        total = sum(shares) or 1.0
        mean = total / len(shares)
        cpu_per_hb = measured.server.cpu_secs / measured.heartbeats if measured.heartbeats else 0
        return _write_row(
            f"capacity-{size}",
            f"{size} nodes, replication 2, one plain PUT /v1/pulse per heartbeat spread over "
            f"every node, {in_flight} connections ({plan.concurrency} per 3 nodes; CPU is the "
            f"sum of the {size} nodes)",
            measured,
            pmcluster_node=True,
            nodes=size,
            node_cpu_shares=[round(s / total, 4) for s in shares],
            busiest_over_mean=round(max(shares) / mean, 4) if mean else None,
            # Heartbeats per second the nodes carry with a core each, at this CPU cost.
            capacity_hb_per_sec=round(size / cpu_per_hb) if cpu_per_hb else None,
            paced_offered_per_sec=rate,
            paced_hb_per_sec=round(paced.heartbeats / paced.seconds, 1),
            paced_errors=paced.errors,
            paced_cpu_us_per_hb=(
                round(paced.server.cpu_secs * 1e6 / paced.heartbeats, 1)
                if paced.heartbeats
                else None
            ),
            paced_cores_per_node=[round(s / paced.seconds, 4) for s in paced.per_server_cpu_secs],
        )

    def row_storm_supervisors(self, supervisors: int = 1000) -> Row:
        """Storm's heartbeat load of `supervisors` supervisors on the 3-node cluster, paced as
        Storm paces it: 4 workers each (Storm's default slots), one SEND_PULSE of
        `--read-payload` bytes per worker every 3 s (`task.heartbeat.frequency.secs`), over
        64 connections spread over the nodes. The capacity model's check (docs/capacity.md)."""
        plan = self.plan
        cluster = self.cluster()
        workers = supervisors * 4
        rate = workers / 3.0
        paths = storm_paths(workers, plan.topologies, "/supervisorbeats")
        hosts = tuple(cluster.hosts)
        specs = [
            storm.StormSpec(
                hosts[0], cluster.port, part, plan.read_payload, n * 100, n, rate * n / 64, hosts
            )
            for part, n in self._deal(paths, 64)
        ]
        name = f"storm-{supervisors // 1000}k-supervisors"
        measured = self._drive(name, storm.storm_load, specs, [n.pid for n in cluster.nodes])
        return _write_row(
            name,
            f"3 nodes, replication 2, Storm protocol: {supervisors:,} supervisors x 4 workers, "
            f"a {plan.read_payload} B SEND_PULSE per worker every 3 s ({rate:,.0f}/s paced), "
            "64 connections over the nodes (CPU is the sum of the 3 nodes)",
            measured,
            pmcluster_node=True,
            offered_per_sec=round(rate, 1),
        )

    def row_cluster_storm(self) -> Row:
        """Storm's SEND_PULSE pipelined into one node of the 3-node cluster (Storm's client
        writes to one server of `pacemaker.servers`): that node coordinates every write."""
        plan = self.plan
        cluster = self.cluster()
        pids = [n.pid for n in cluster.nodes]
        measured = self._storm_put_row("cluster3-storm-put", cluster.hosts[0], cluster.port, pids)
        return _write_row(
            "cluster3-storm-put",
            f"3 nodes, replication 2, Storm protocol into one node: one SEND_PULSE per "
            f"heartbeat, {plan.storm_depth} in flight pipelined on each of "
            f"{max(plan.storm_connections, plan.clients)} connections (CPU is the sum of the "
            "3 nodes)",
            measured,
            pmcluster_node=True,
        )

    def row_read_zookeeper(self) -> Row:
        plan = self.plan
        server = self.zookeeper()
        root = "/storm/readbeats"
        paths = storm_paths(plan.workers, plan.topologies, root)
        self.progress.step(
            f"read-zookeeper: creating {plan.workers:,} znodes of {plan.read_payload} B"
        )
        zk.populate_zookeeper(server.hosts, paths, plan.read_payload)
        return self._read_rounds(
            "read-zookeeper",
            f"Nimbus round on ZooKeeper: get_children per topology + get_async of all "
            f"{plan.workers:,} workers ({plan.read_payload} B)",
            [server.pid],
            lambda: zk.zk_read_round(server.hosts, root),
        )

    def row_read_pmcluster(self) -> Row:
        plan = self.plan
        cluster = self.cluster()
        root = "/readbeats"
        paths = storm_paths(plan.workers, plan.topologies, root)
        self.progress.step(
            f"read-pmcluster: storing {plan.workers:,} heartbeats of "
            f"{plan.read_payload} B through the ring-aware client"
        )
        servers, port = tuple(cluster.hosts), cluster.port
        asyncio.run(_ring_populate(servers, port, paths, plan.read_payload))
        return self._read_rounds(
            "read-pmcluster",
            f"Nimbus round on the 3-node cluster: ClusterClient get_all_nodes_for_path + "
            f"get_all_pulse_for_path per topology ({plan.workers:,} workers, "
            f"{plan.read_payload} B)",
            [node.pid for node in cluster.nodes],
            lambda: asyncio.run(_ring_read_round(servers, port, root)),
            pmcluster_node=True,
        )

    def _read_rounds(
        self,
        name: str,
        system: str,
        pids: Sequence[int],
        one_round: Callable[[], tuple[float, int, int]],
        **extra: Any,
    ) -> Row:
        plan = self.plan
        one_round()  # warm-up round (connections, JIT), not counted
        before = sample_sum(pids)
        times: list[float] = []
        for n in range(plan.read_rounds):
            seconds, count, size = one_round()
            if count != plan.workers or size != plan.workers * plan.read_payload:
                raise RuntimeError(
                    f"{name}: read {count} heartbeats / {size} B, expected "
                    f"{plan.workers} / {plan.workers * plan.read_payload}"
                )
            times.append(seconds)
            self.progress.step(f"  {name}: round {n + 1}/{plan.read_rounds} {seconds:.3f}s")
        used: ProcSample = sample_sum(pids) - before
        beats = plan.workers * plan.read_rounds
        median = statistics.median(times)
        return Row(
            name=name,
            system=system,
            heartbeats_per_sec=plan.workers / median,
            p50_ms=_ms(percentile(times, 0.5)),
            p99_ms=_ms(percentile(times, 0.99)),
            cpu_us_per_hb=used.cpu_secs * 1e6 / beats,
            cpu_cores=used.cpu_secs / sum(times),
            rss_mb=used.rss_bytes / _MiB,
            disk_bytes=used.write_bytes,
            extra={"seconds": sum(times), "round_secs": median, "rounds": times, **extra},
        )

    def row_memory(self) -> Row:
        plan = self.plan
        port = free_port("127.0.0.1")
        node = NodeProcess(
            _node_yaml("127.0.0.1", port, ["127.0.0.1"]),
            workdir=plan.workdir / "memory",
            env=_node_env(),
        )
        self.progress.step(
            f"memory: a fresh node on 127.0.0.1:{port}, {plan.memory_keys:,} keys "
            f"of {plan.payload} B"
        )
        with node:
            warm = storm_paths(1000, plan.topologies, "/warmup")
            asyncio.run(_http_populate(node.url, warm, plan.payload))
            before = sample(node.pid)
            paths = storm_paths(plan.memory_keys, max(plan.topologies, plan.memory_keys // 10_000))
            started = time.monotonic()
            asyncio.run(_http_populate(node.url, paths, plan.payload))
            seconds = time.monotonic() - started
            time.sleep(0.5)  # let the allocator settle before reading RSS
            after = sample(node.pid)
            self._retire_nodes([node])
        per_key = (after.rss_bytes - before.rss_bytes) / plan.memory_keys
        return Row(
            name="memory",
            system=f"pmcluster node RSS growth for {plan.memory_keys:,} Storm-shaped keys of "
            f"{plan.payload} B (stored by POST /v1/batch)",
            heartbeats_per_sec=plan.memory_keys / seconds,
            cpu_us_per_hb=(after.cpu_secs - before.cpu_secs) * 1e6 / plan.memory_keys,
            rss_mb=after.rss_bytes / _MiB,
            disk_bytes=after.write_bytes - before.write_bytes,
            extra={
                "seconds": seconds,
                "rss_bytes_per_key": per_key,
                "keys": plan.memory_keys,
                "rss_before_mb": before.rss_bytes / _MiB,
                "pmcluster_node": True,
            },
        )


async def _http_populate(url: str, paths: Sequence[str], payload: int) -> None:
    """Fill one node's store before a row, unmeasured (INTERNAL HOP: batches with the
    forwarded header, stored as-is); only what the row does next (reads, RSS) is measured."""
    data = b"m" * payload
    async with aiohttp.ClientSession() as session:
        for start in range(0, len(paths), _POPULATE_BATCH):
            group = paths[start : start + _POPULATE_BATCH]
            body = pulsecodec.encode([(path, data, None) for path in group])
            headers = {"Content-Type": pulsecodec.MEDIA_TYPE, "X-Pmcluster-Forwarded": "1"}
            async with session.post(f"{url}/v1/batch", data=body, headers=headers) as response:
                response.raise_for_status()


def _ring_config(servers: tuple[str, ...], port: int) -> Any:
    from pmcluster.config import Config

    return Config(servers=servers, port=port, replication=2, request_timeout_secs=30.0)


async def _ring_populate(
    servers: tuple[str, ...], port: int, paths: Sequence[str], payload: int
) -> None:
    from pmcluster.client import ClusterClient

    data = b"r" * payload
    async with ClusterClient(_ring_config(servers, port)) as client:
        for start in range(0, len(paths), _POPULATE_BATCH):
            group = paths[start : start + _POPULATE_BATCH]
            await client.send_pulses([(path, data) for path in group])


async def _ring_read_round(
    servers: tuple[str, ...], port: int, root: str
) -> tuple[float, int, int]:
    from pmcluster.client import ClusterClient

    async with ClusterClient(_ring_config(servers, port)) as client:
        started = time.monotonic()
        topologies = await client.get_all_nodes_for_path(root)
        results = await asyncio.gather(
            *(client.get_all_pulse_for_path(f"{root}/{t}") for t in topologies)
        )
        seconds = time.monotonic() - started
    pulses = [p for result in results for p in result]
    return seconds, len(pulses), sum(len(p.data) for p in pulses)
