"""The ZooKeeper harness: a real server starts, serves, restarts with its data, and leaves no
process behind, whichever way it is stopped (including the test run itself being killed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from kazoo.client import KazooClient

from pmcluster.testing.proxy import TcpProxy
from pmcluster.tools.localcluster import (
    HarnessError,
    ManagedZooKeeper,
    NodeCluster,
    NodeProcess,
    ZooKeeperNotInstalled,
    free_port,
    process_alive,
    split_zk_hosts,
    wait_until,
    zk_yaml,
)

pytestmark = pytest.mark.integration


def _client(hosts: str) -> KazooClient:
    client = KazooClient(hosts=hosts, timeout=10.0)
    client.start(timeout=10.0)
    return client


def test_start_restart_stop_keeps_data_and_leaves_no_process(
    private_zookeeper: ManagedZooKeeper, capfd: pytest.CaptureFixture[str]
) -> None:
    zk = private_zookeeper
    first_pid, port = zk.pid, zk.port
    assert zk.serving() and process_alive(first_pid)
    assert zk.hosts == f"127.0.0.1:{port}"
    assert "tickTime=200" in zk.config_path.read_text()

    client = _client(zk.hosts)
    try:
        client.create("/kept", b"v1")
    finally:
        client.stop()
        client.close()

    zk.restart()
    assert zk.port == port
    assert zk.pid != first_pid
    assert not process_alive(first_pid)
    client = _client(zk.hosts)
    try:
        assert client.get("/kept")[0] == b"v1"
    finally:
        client.stop()
        client.close()

    second_pid = zk.pid
    zk.stop()
    assert not process_alive(second_pid)
    assert not zk.serving()
    # The server logs to a file in its data dir, not to the test's output.
    assert "binding to port" in zk.log_path.read_text()
    captured = capfd.readouterr()
    assert "org.apache.zookeeper" not in captured.out + captured.err


def test_kill_leaves_no_process(private_zookeeper: ManagedZooKeeper) -> None:
    pid = private_zookeeper.pid
    assert private_zookeeper.kill() == -signal.SIGKILL
    assert not process_alive(pid)


def test_missing_jar_is_named_and_nothing_starts(tmp_path: Path) -> None:
    missing = tmp_path / "zookeeper.jar"
    zk = ManagedZooKeeper(tmp_path / "zk", classpath=(missing,))
    with pytest.raises(ZooKeeperNotInstalled, match=str(missing)) as info:
        zk.start()
    assert "README" in str(info.value)
    assert not zk.running()


def test_server_that_dies_at_start_reports_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        zk = ManagedZooKeeper(tmp_path / "zk", port=taken.getsockname()[1])
        with pytest.raises(HarnessError, match="Address already in use"):
            zk.start()
    assert not process_alive(zk.pid)


_ORPHAN_SCRIPT = """
import sys, time
from pathlib import Path
from pmcluster.tools.localcluster import ManagedZooKeeper
zk = ManagedZooKeeper(Path(sys.argv[1])).start()
print(zk.pid, flush=True)
time.sleep(120)
"""


def test_killed_test_run_leaks_no_jvm(tmp_path: Path) -> None:
    # A stand-in for a test run that is SIGKILLed: its ZooKeeper must die with it.
    runner = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_path / "zk")],
        stdout=subprocess.PIPE,
        text=True,
    )
    jvm_pid = 0
    try:
        assert runner.stdout is not None
        jvm_pid = int(runner.stdout.readline())
        assert process_alive(jvm_pid)
        runner.kill()
        runner.wait(10)
        wait_until(lambda: not process_alive(jvm_pid), 10.0, what="orphaned JVM to die")
    finally:
        runner.kill()
        runner.wait(10)
        if jvm_pid and process_alive(jvm_pid):
            os.kill(jvm_pid, signal.SIGKILL)


def test_chroot_per_test_is_created_and_distinct(
    zookeeper: ManagedZooKeeper, zk_hosts: str
) -> None:
    other = zookeeper.new_chroot()
    assert other != zk_hosts
    servers, chroot = split_zk_hosts(zk_hosts)
    assert servers == (zookeeper.hosts,) and chroot.startswith("/t-")
    started = time.monotonic()
    client = _client(zk_hosts)  # a chrooted client works only if the chroot exists
    try:
        client.create("/inside", b"")
        assert client.exists("/inside")
    finally:
        client.stop()
        client.close()
    assert time.monotonic() - started < 5.0
    assert zk_yaml(zk_hosts) == {
        "storm.zookeeper.servers": ["127.0.0.1"],
        "storm.zookeeper.port": zookeeper.port,
        "storm.zookeeper.root": f"{chroot}/storm",
    }


# --- node processes --------------------------------------------------------------------------


def test_node_process_lifecycle_by_pid(tmp_path: Path) -> None:
    host = "127.0.0.3"
    node = NodeProcess(
        {"pacemaker.host": host, "pacemaker.port": free_port(host)}, workdir=tmp_path
    )
    with node:
        assert node.url == f"http://{node.node_id}" and node.node_id.startswith(host)
        assert node.health_status() == 200
        node.stop_signal()  # hangs: connections accepted, never answered
        assert node.health_status(timeout=0.3) is None
        node.cont()
        node.wait_ready(5.0)
        first = node.pid
        node.restart()
        assert node.pid != first and not process_alive(first)
        assert node.health_status() == 200
        assert node.terminate() == 0  # graceful SIGTERM exits cleanly
        assert not process_alive(node.pid)
        node.start().wait_ready()
        node.stop_signal()
        last = node.pid
    assert not process_alive(last)  # the context manager killed it, stopped as it was
    assert node.log_text().count("=== harness: starting") == 3


def test_node_that_dies_reports_its_log_tail(tmp_path: Path) -> None:
    bad = {"pacemaker.port": free_port(), "pacemaker.auth.method": "BOGUS"}
    node = NodeProcess(bad, workdir=tmp_path)
    with pytest.raises(HarnessError, match=r"(?s)exited with code .*pacemaker\.auth\.method"):
        node.__enter__()
    assert not process_alive(node.pid)


def test_node_cluster_shares_one_port_and_stops_by_pid(
    tmp_path: Path, zookeeper: ManagedZooKeeper, zk_hosts: str
) -> None:
    with NodeCluster(3, workdir=tmp_path, zk_hosts=zk_hosts) as cluster:
        assert cluster.node_ids == [f"127.0.0.{i}:{cluster.port}" for i in (1, 2, 3)]
        assert all(node.health_status() == 200 for node in cluster.nodes)
        written = yaml.safe_load(cluster[1].config_path.read_text())
        assert written["storm.zookeeper.port"] == zookeeper.port
        assert written["pacemaker.servers"] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        pids = [node.pid for node in cluster.nodes]
    assert not any(process_alive(pid) for pid in pids)


# --- the fault proxy -------------------------------------------------------------------------


def test_tcp_proxy_forwards_refuses_and_blackholes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as echo:
        stop = False

        def serve() -> None:
            echo.settimeout(0.1)
            while not stop:
                try:
                    conn, _ = echo.accept()
                except TimeoutError:
                    continue
                with conn:
                    while data := conn.recv(1024):
                        conn.sendall(data)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            with TcpProxy(echo.getsockname()[:2]) as proxy:
                target = (proxy.host, proxy.port)
                with socket.create_connection(target, timeout=1.0) as conn:
                    conn.sendall(b"ping")
                    assert conn.recv(16) == b"ping"
                    proxy.set_mode("refuse")  # drops the open connection too
                    assert conn.recv(16) == b""
                with socket.create_connection(target, timeout=1.0) as conn:
                    assert conn.recv(16) == b""  # accepted, closed at once
                proxy.set_mode("blackhole")
                with socket.create_connection(target, timeout=0.3) as conn:
                    conn.sendall(b"ping")
                    with pytest.raises(TimeoutError):
                        conn.recv(16)
        finally:
            stop = True
            server.join(5.0)


def test_free_ports_lie_outside_the_kernels_ephemeral_range_and_are_never_repeated() -> None:
    """A chosen port cannot be taken by an outgoing connection before the node binds it.

    The kernel gives outgoing connections local ports from its ephemeral range; a port
    chosen inside that range was once taken by a node's own link to ZooKeeper between the
    choice and the bind (EADDRINUSE, a nemesis run that never started).
    """
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port("127.0.0.1") for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(p < low or p > high for p in ports)
    for port in ports[:5]:
        with socket.create_server(("127.0.0.1", port)):
            pass
