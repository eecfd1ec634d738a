"""The ops scripts against real node processes, a real ZooKeeper and a real DNS server.

`ops/add-node`, `ops/remove-node` and `ops/status` run as an operator runs them (subprocesses,
talking HTTP and ZooKeeper) while a Storm-like load rewrites every heartbeat and reads them
all; the history checker judges the load (no miss, no stale read). Periods are scaled down as
in the fault suite: 0.5 s heartbeats, 0.5 s request timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.resolver
import pytest
import yaml
from faultkit import (
    NODE_KEYS,
    assert_clean,
    client_config,
    converged,
    run_load,
    running_cluster,
    view,
)

from pmcluster.client import SyncClusterClient
from pmcluster.config import config_from_mapping
from pmcluster.tools.loadgen import BackgroundLoad
from pmcluster.tools.localcluster import NodeCluster, process_alive, wait_until, zk_yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OPS = REPO / "ops"


def cluster_yaml(tmp_path: Path, zk_hosts: str, **extra: Any) -> Path:
    """The cluster's YAML as an operator keeps it: ZooKeeper and timeouts, no node address."""
    keys = {**NODE_KEYS, **zk_yaml(zk_hosts), **extra}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(keys))
    return path


def ops(*argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run an ops script (`ops/add-node ...`) to completion."""
    return subprocess.run(
        [str(OPS / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout
    )


def assert_no_miss(load: BackgroundLoad) -> None:
    """Stop the load and judge its history."""
    assert_clean(load, load.stop())


@pytest.fixture
def zk_cluster(zk_hosts: str, tmp_path: Path) -> Iterator[NodeCluster]:
    with running_cluster(3, tmp_path, zk_hosts) as cluster:
        yield cluster


def kill_pid(pid: int) -> None:
    """SIGKILL a process this test caused to start (not our child) and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(pid), timeout=10, what=f"pid {pid} to exit")


def test_add_node_under_load(zk_cluster: NodeCluster, zk_hosts: str, tmp_path: Path) -> None:
    fourth_yaml = tmp_path / "node4.yaml"
    fourth_yaml.write_text(
        yaml.safe_dump({**zk_cluster[0].config_yaml, "pacemaker.host": "127.0.0.4"})
    )
    pidfile = tmp_path / "node4.pid"
    load = run_load(zk_cluster.urls, client_config(zk_hosts))
    try:
        with load:
            time.sleep(1.5)
            result = ops(
                "add-node",
                "--config",
                str(fourth_yaml),
                "--log",
                str(tmp_path / "node4.log"),
                "--pidfile",
                str(pidfile),
                "--json",
            )
            assert result.returncode == 0, result.stdout + result.stderr
            out = json.loads(result.stdout)
            urls = [*zk_cluster.urls, f"http://127.0.0.4:{zk_cluster.port}"]
            assert converged(urls, 4)  # every node reports the same epoch, 4 members
            assert out["epoch"] == view(zk_cluster.urls[0])["epoch"]  # type: ignore[index]
            assert out["keys"] > 0  # it owns part of the load's heartbeats
            time.sleep(1.0)
            assert_no_miss(load)
    finally:
        if pidfile.exists():
            kill_pid(int(pidfile.read_text()))


def test_remove_node_under_load(zk_cluster: NodeCluster, zk_hosts: str, tmp_path: Path) -> None:
    config = cluster_yaml(tmp_path, zk_hosts)
    victim = zk_cluster[1]
    load = run_load(zk_cluster.urls, client_config(zk_hosts))
    with load:
        time.sleep(1.5)
        held = victim.health_status()
        assert held == 200
        result = ops("remove-node", "--config", str(config), "--node", victim.node_id, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        out = json.loads(result.stdout)
        assert out["drain"]["state"] == "done" and out["drain"]["keys"] > 0
        assert out["drain"]["unconfirmed"] == 0
        assert victim.wait_exit(timeout=10) == 0  # it stopped itself, gracefully
        remaining = [zk_cluster.urls[0], zk_cluster.urls[2]]
        assert converged(remaining, 2)
        time.sleep(1.0)
        assert_no_miss(load)


def test_remove_refused_below_replication_unless_forced(zk_hosts: str, tmp_path: Path) -> None:
    config = cluster_yaml(tmp_path, zk_hosts)
    with running_cluster(2, tmp_path, zk_hosts) as cluster:
        refused = ops("remove-node", "--config", str(config), "--node", cluster[1].node_id)
        assert refused.returncode == 1
        assert "fewer than the replication factor 2" in refused.stderr
        assert "--force" in refused.stderr
        assert cluster[1].running() and converged(cluster.urls, 2)  # nothing changed
        forced = ops(
            "remove-node", "--config", str(config), "--node", cluster[1].node_id, "--force"
        )
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "removed" in forced.stdout
        assert cluster[1].wait_exit(timeout=10) == 0
        assert converged([cluster.urls[0]], 1)


def status(config: Path) -> tuple[int, dict[str, Any]]:
    result = ops("status", "--config", str(config), "--json", timeout=30)
    return result.returncode, json.loads(result.stdout)


def test_status_degraded_while_a_node_is_stopped(zk_hosts: str, tmp_path: Path) -> None:
    # A session timeout well past the test's pause: the stopped node stays a member.
    keys = {**NODE_KEYS, "storm.zookeeper.session.timeout": 15000}
    config = cluster_yaml(tmp_path, zk_hosts, **keys)
    with running_cluster(3, tmp_path, zk_hosts, keys) as cluster:
        code, doc = status(config)
        assert (code, doc["verdict"]) == (0, "OK"), doc
        cluster[2].stop_signal()
        try:
            code, doc = status(config)
            assert (code, doc["verdict"]) == (1, "DEGRADED"), doc
            assert f"{cluster[2].node_id} does not answer" in doc["reason"]
            down = [n for n in doc["nodes"] if not n["up"]]
            assert [n["node_id"] for n in down] == [cluster[2].node_id]
        finally:
            cluster[2].cont()
        deadline = time.monotonic() + 20
        while (code := status(config)[0]) != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert code == 0


def test_up_runs_a_local_cluster_with_a_load() -> None:
    argv = [sys.executable, "-m", "pmcluster", "up", "--duration", "8", "--workers", "20"]
    argv += ["--period", "0.5", "--read-period", "1", "--payload", "1024", "--port", "auto"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pmcluster up: 3 nodes (127.0.0.1:")
    assert any("writes/s=" in line and "127.0.0.3" in line for line in lines[1:-1])
    assert lines[-1].startswith("pmcluster up: OK:") and "missing=0 stale=0" in lines[-1]
    port = int(lines[0].split("127.0.0.1:", 1)[1].split(",", 1)[0])
    for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):  # every node it started is gone
        with socket.socket() as sock:
            assert sock.connect_ex((host, port)) != 0


# --- three nodes behind one DNS name (dnsmasq) ------------------------------------------------


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq serves DNS on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for UDP and TCP")


def resolve(name: str, port: int) -> list[str]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 1.0
    try:
        return sorted(r.to_text() for r in resolver.resolve(name, "A"))
    except dns.exception.DNSException:
        return []


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    """dnsmasq on a loopback port answering from an addn-hosts file: (port, file, process)."""
    hosts = tmp_path / "pmcluster.hosts"
    hosts.write_text("".join(f"127.0.0.{i} pmcluster.test\n" for i in (1, 2, 3)))
    port = free_udp_tcp_port()
    argv = ["dnsmasq", "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1"]
    argv += ["--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}"]
    # --local: answer the zone from the file only; without it an AAAA query for a name with
    # only A records gets REFUSED (no upstream), which resolvers treat as a failure.
    argv += ["--local=/test/", "--conf-file=/dev/null", "--log-facility=-"]
    with (tmp_path / "dnsmasq.log").open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(resolve("pmcluster.test", port)) == 3, timeout=10, what="dnsmasq")
        yield port, hosts, proc
    finally:
        proc.terminate()
        proc.wait(10)


def test_three_nodes_behind_one_dns_name(
    dnsmasq: tuple[int, Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, hosts, proc = dnsmasq
    dns_keys = {
        "pacemaker.servers": ["pmcluster.test"],
        "pmcluster.dns.nameservers": [f"127.0.0.1:{port}"],
        "pmcluster.dns.refresh.secs": 0.5,
    }
    extra = {**NODE_KEYS, **dns_keys}
    with NodeCluster(3, workdir=tmp_path, extra=extra) as cluster:
        wait_until(lambda: converged(cluster.urls, 3), timeout=10)
        # The client knows only the name (and the name server), like a Storm daemon would.
        keys = {**extra, "pacemaker.port": cluster.port}
        with SyncClusterClient(config_from_mapping(keys)) as client:
            assert sorted(m.node_id for m in client.members().members) == cluster.node_ids
            client.send_pulse("/workerbeats/dns-1/n-6700", b"via the name")
            pulse = client.get_pulse("/workerbeats/dns-1/n-6700")
            assert pulse is not None and pulse.data == b"via the name"
        config = tmp_path / "dns-cluster.yaml"
        config.write_text(yaml.safe_dump(keys))
        code, doc = status(config)
        assert (code, doc["verdict"]) == (0, "OK"), doc
        assert sorted(n["node_id"] for n in doc["nodes"]) == cluster.node_ids
        # DNS-only membership is changed by changing the records; every node re-resolves.
        hosts.write_text("".join(f"127.0.0.{i} pmcluster.test\n" for i in (1, 2)))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: converged(cluster.urls[:2], 2), timeout=10, what="re-resolution")
