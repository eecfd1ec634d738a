"""The cluster under real faults: real ZooKeeper, three real node processes, real signals.

Writers rewrite every heartbeat path every period through the ring-aware client and as plain
HTTP against a random node; readers read every path continuously; the history checker judges
the whole run (no miss, no stale read, no resurrection, no value older than one period plus the
request timeout). Periods are scaled down from Storm's (3 s heartbeats, 30 s timeout) to 0.5 s
heartbeats, 0.5 s request timeout and a 1.5 s ZooKeeper session, so each scenario takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import (
    NODE_KEYS,
    PERIOD,
    TIMEOUT,
    assert_clean,
    client_config,
    converged,
    fault_window,
    health_says_connected,
    node_keys,
    run_load,
    running_cluster,
)

from pmcluster.client import SyncClusterClient
from pmcluster.config import config_from_mapping
from pmcluster.membership import FixedMembership
from pmcluster.protocol.paths import to_url
from pmcluster.ring import Member
from pmcluster.testing.dns import DnsServer
from pmcluster.tools.loadgen import BackgroundLoad, LoadSpec, StormLoad, heartbeat_paths
from pmcluster.tools.localcluster import ManagedZooKeeper, NodeCluster, NodeProcess, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def zk_cluster(zk_hosts: str, tmp_path: Path) -> Iterator[NodeCluster]:
    with running_cluster(3, tmp_path, zk_hosts) as cluster:
        yield cluster


def test_kill9_one_node_loses_no_heartbeat(zk_cluster: NodeCluster, zk_hosts: str) -> None:
    load = run_load(zk_cluster.urls, client_config(zk_hosts))
    with load:
        time.sleep(2.0)
        zk_cluster[1].kill()
        time.sleep(4.0)  # past the session timeout: the ring drops the dead node
        history = load.stop()
    assert_clean(load, history)
    assert load.check().max_age <= PERIOD + TIMEOUT


def test_sigstop_fails_over_and_node_returns_empty(zk_cluster: NodeCluster, zk_hosts: str) -> None:
    load = run_load(zk_cluster.urls, client_config(zk_hosts))
    victim = zk_cluster[2]
    with load:
        time.sleep(2.0)
        stopped_at = time.monotonic()
        victim.stop_signal()
        time.sleep(3.5)  # longer than the 1.5 s session: its registration expires
        resumed_at = time.monotonic()
        victim.cont()
        wait_until(lambda: "wiping" in victim.log_text(), timeout=10)
        wait_until(lambda: converged(zk_cluster.nodes, 3), timeout=10)
        time.sleep(2.0)
        history = load.stop()
    # Failover: reads go on during the stop, none waits past one request timeout.
    assert_clean(load, history, fault_window("3.5 s SIGSTOP", stopped_at, resumed_at))


def test_restart_empty_at_same_address(zk_cluster: NodeCluster, zk_hosts: str) -> None:
    load = run_load(zk_cluster.urls, client_config(zk_hosts))
    with load:
        time.sleep(2.0)
        zk_cluster[0].kill()
        zk_cluster[0].restart()
        wait_until(lambda: converged(zk_cluster.nodes, 3), timeout=10)
        time.sleep(3.0)
        history = load.stop()
    assert_clean(load, history)
    assert node_keys(zk_cluster[0]) > 0  # it is an owner again and receives writes


def test_add_a_node_then_drain_one(zk_cluster: NodeCluster, zk_hosts: str, tmp_path: Path) -> None:
    load = run_load(zk_cluster.urls, client_config(zk_hosts), workers=40)
    fourth = NodeProcess(
        {**zk_cluster[0].config_yaml, "pacemaker.host": "127.0.0.4"}, workdir=tmp_path
    )
    try:
        with load:
            time.sleep(2.0)
            before = sum(node_keys(n) for n in zk_cluster.nodes)
            fourth.start().wait_ready()
            nodes = [*zk_cluster.nodes, fourth]
            wait_until(lambda: converged(nodes, 4), timeout=10)
            # After the grace window the old owners hand off what they no longer own: the
            # copies the new node took leave them (each old node may or may not lose some).
            wait_until(lambda: sum(node_keys(n) for n in zk_cluster.nodes) < before, timeout=10)
            assert node_keys(fourth) > 0
            assert zk_cluster[1].terminate() == 0  # graceful: leaves first, then drains
            remaining = [zk_cluster[0], zk_cluster[2], fourth]
            wait_until(lambda: converged(remaining, 3), timeout=10)
            time.sleep(2.0)
            history = load.stop()
        assert_clean(load, history)
        counts = [node_keys(n) for n in remaining]
        assert all(c > 0 for c in counts)
        assert before > 0
    finally:
        fourth.kill()


def test_kill9_then_a_fourth_node_joins_under_plain_http_load(
    zk_cluster: NodeCluster, zk_hosts: str, tmp_path: Path
) -> None:
    """The issue's scenario: Storm-like writers and readers as plain HTTP through any live
    node; kill -9 one node, let its session expire (the ring drops it), then start a fourth.
    Adding capacity must not lose a heartbeat: 0 misses, 0 stale reads."""
    spec = LoadSpec(
        paths=tuple(heartbeat_paths(40)),
        period=PERIOD,
        payload=200,
        readers=3,
        plain_http_share=1.0,
    )
    load = BackgroundLoad(StormLoad(client_config(zk_hosts), spec, node_urls=zk_cluster.urls))
    fourth = NodeProcess(
        {**zk_cluster[0].config_yaml, "pacemaker.host": "127.0.0.4"}, workdir=tmp_path
    )
    try:
        with load:
            time.sleep(2.0)
            zk_cluster[1].kill()
            alive = [zk_cluster[0], zk_cluster[2]]
            wait_until(lambda: converged(alive, 2), timeout=10)  # its session expired
            # At once: the dead node's paths have new owners that may not hold them yet.
            fourth.start()
            load.load.node_urls.append(fourth.url)  # readers and writers use it once it answers
            fourth.wait_ready()
            wait_until(lambda: converged([*alive, fourth], 3), timeout=10)
            time.sleep(3.0)  # past the grace window: hand-off moved the keys the fourth owns
            history = load.stop()
        assert_clean(load, history)
        assert node_keys(fourth) > 0
    finally:
        fourth.kill()


def test_zookeeper_restart_keeps_members(
    private_zookeeper: ManagedZooKeeper, tmp_path: Path
) -> None:
    hosts = private_zookeeper.new_chroot("z-")
    with running_cluster(3, tmp_path, hosts) as cluster:
        load = run_load(cluster.urls, client_config(hosts))
        with load:
            time.sleep(1.5)
            private_zookeeper.restart()
            time.sleep(3.0)
            history = load.stop()
        assert_clean(load, history)
        wait_until(lambda: converged(cluster.nodes, 3), timeout=10)
        # Every node reconnected to the restarted server (`/health` says so, as operators see).
        wait_until(lambda: all(health_says_connected(n) for n in cluster.nodes), timeout=10)


def test_delete_while_a_replica_is_stopped_stays_deleted(tmp_path: Path) -> None:
    """SIGSTOP one replica, delete a topology, SIGCONT: nothing comes back anywhere."""
    with NodeCluster(3, workdir=tmp_path, extra=NODE_KEYS) as cluster:
        topo = "/workerbeats/paused-1"
        paths = [f"{topo}/node-{i}-6700" for i in range(30)]
        with SyncClusterClient(client_config(servers=cluster.node_ids)) as client:
            for path in paths:
                client.send_pulse(path, b"old")
            cluster[2].stop_signal()
            try:
                client.delete_path(topo)
            finally:
                cluster[2].cont()
            time.sleep(TIMEOUT)  # let the resumed node serve again
            for path in paths:
                assert client.get_pulse(path) is None
            assert "paused-1" not in client.get_all_nodes_for_path("/workerbeats")
        for node in cluster.nodes:
            assert "paused-1" not in http_json(f"{node.url}/v1/children/workerbeats")
            assert http_status(f"{node.url}/v1/pulse/{to_url(paths[0])}") == 404


def test_delete_missed_by_a_replica_stays_deleted(tmp_path: Path) -> None:
    """A replica that never saw a recursive delete keeps its old copies; nobody sees them."""
    with NodeCluster(3, workdir=tmp_path, extra=NODE_KEYS) as cluster:
        config = client_config(servers=cluster.node_ids)
        topo = "/workerbeats/doomed-1"
        paths = [f"{topo}/node-{i}-6700" for i in range(30)]
        victim = cluster[1]
        with SyncClusterClient(config) as client:
            for path in paths:
                client.send_pulse(path, b"old")
            wait_until(lambda: all(node_keys(n) > 0 for n in cluster.nodes), timeout=5)
            held = node_keys(victim)
            # The delete reaches every member but the victim (as if it were partitioned away).
            others = [Member(n.node_id, n.host, n.port) for n in cluster.nodes if n is not victim]
            fixed = FixedMembership(others)
            asyncio.run(fixed.start())  # an injected source is started by its owner
            with SyncClusterClient(config, membership=fixed) as partial:
                partial.delete_path(topo)
            assert node_keys(victim) == held  # it still holds the old copies
            for path in paths:
                assert client.get_pulse(path) is None
                assert not client.exists(path)
            assert "doomed-1" not in client.get_all_nodes_for_path("/workerbeats")
            assert client.get_all_nodes_for_path(topo) == []  # Storm lists exactly this
            assert client.get_all_pulse_for_path(topo) == []
        for node in cluster.nodes:  # any node, as a plain HTTP client sees it
            for path in paths[:5]:
                assert http_status(f"{node.url}/v1/pulse/{to_url(path)}") == 404
            assert "doomed-1" not in http_json(f"{node.url}/v1/children/workerbeats")
            assert http_json(f"{node.url}/v1/children/{to_url(topo)}") == []


def test_client_with_only_a_dns_name_finds_every_node(tmp_path: Path) -> None:
    with DnsServer() as dns, NodeCluster(3, workdir=tmp_path, extra=NODE_KEYS) as cluster:
        dns.set_records("pmcluster.test", list(cluster.hosts))
        keys = {
            "pacemaker.servers": ["pmcluster.test"],
            "pacemaker.port": cluster.port,
            "pmcluster.dns.nameservers": [dns.nameserver],
            "pmcluster.request.timeout.secs": TIMEOUT,
        }
        with SyncClusterClient(config_from_mapping(keys)) as client:
            assert sorted(m.node_id for m in client.members().members) == sorted(cluster.node_ids)
            client.send_pulse("/workerbeats/dns-1/n-6700", b"via dns")
            assert client.get_pulse("/workerbeats/dns-1/n-6700").data == b"via dns"  # type: ignore[union-attr]


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return json.load(resp)


def http_get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def test_plain_http_on_any_node_answers_like_the_client(tmp_path: Path) -> None:
    with NodeCluster(3, workdir=tmp_path, extra=NODE_KEYS) as cluster:
        paths = [
            "/workerbeats/wc(1)+$[x]-17/node é-6700",
            "/workerbeats/t1/a-6700",
            "/workerbeats/t10/b-6701",
            "/workerbeats/t1/c,~%?#-6702",
        ]
        with SyncClusterClient(client_config(servers=cluster.node_ids)) as client:
            for i, path in enumerate(paths):
                client.send_pulse(path, f"value-{i}".encode())
            client.delete_pulse_id(paths[2])
            expected = {
                p: (None if (pulse := client.get_pulse(p)) is None else pulse.data) for p in paths
            }
            listing = {
                d: client.get_all_nodes_for_path(d)
                for d in ("/workerbeats", "/workerbeats/t1", "/workerbeats/t10")
            }
        assert expected[paths[0]] == b"value-0" and expected[paths[2]] is None
        for node in cluster.nodes:
            for path, value in expected.items():
                assert http_get(f"{node.url}/v1/pulse/{to_url(path)}") == value, (node, path)
            for directory, names in listing.items():
                assert http_json(f"{node.url}/v1/children/{to_url(directory)}") == names
