"""Anti-entropy with real node processes: a replica that missed writes and deletes heals.

Three nodes on a ZooKeeper of the test's own (tickTime 500 ms, so an 8 s session is allowed).
One node is SIGSTOPped for longer than the tombstone TTL (but not its ZooKeeper session, so it
comes back as a member with its stale store: the hard case) while writes, deletes and a
recursive delete go on through the other nodes; then it is resumed. Within one anti-entropy
round (the period plus its jitter, plus the exchange timeout for a round that was waiting
on the stopped node) every owner holds every key's newest version and no node holds a
deleted key, and after the tombstone TTL has passed again nothing deleted reappears, in
reads or listings. Also: a node killed and restarted empty is filled again.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_zookeeper

from pmcluster.node.antientropy import JITTER
from pmcluster.protocol.paths import to_url
from pmcluster.ring import Member, Ring
from pmcluster.tools.localcluster import ManagedZooKeeper, NodeCluster, NodeProcess, wait_until
from pmcluster.tools.nemesis import PeerCut

pytestmark = pytest.mark.integration

PERIOD = 1.0  # pmcluster.antientropy.secs
TOMBSTONE = 2.0  # pmcluster.tombstone.secs: shorter than the pause below
REQUEST_TIMEOUT = 0.5
AE_TIMEOUT = max(REQUEST_TIMEOUT * 4, 2.0)  # as pmcluster.node.antientropy.make_antientropy
# One round: the next round starts within a jittered period, and a round already waiting on
# the stopped node ends at most one exchange timeout later.
HEAL_BOUND = PERIOD * (1 + JITTER) + AE_TIMEOUT
PAUSE = 4.0  # > TOMBSTONE, < the 8 s session
KEYS: dict[str, Any] = {
    "task.heartbeat.frequency.secs": 0.5,
    "pmcluster.request.timeout.secs": REQUEST_TIMEOUT,
    "pmcluster.connect.timeout.secs": 0.2,
    "storm.zookeeper.session.timeout": 8000,
    "pmcluster.antientropy.secs": PERIOD,
    "pmcluster.tombstone.secs": TOMBSTONE,
    "pmcluster.log.level": "INFO",
}
FORWARDED = {"X-Pmcluster-Forwarded": "1"}


@pytest.fixture
def zk(tmp_path: Path) -> Iterator[ManagedZooKeeper]:
    require_zookeeper()
    with ManagedZooKeeper(tmp_path / "zk", tick_ms=500) as server:
        yield server


def _call(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _local_version(node: NodeProcess, path: str) -> int | None:
    """The version of `path` in the node's own store (a forwarded read), None when absent."""
    status, headers, _ = _call(f"{node.url}/v1/pulse/{to_url(path)}", headers=FORWARDED)
    if status == 404:
        return None
    assert status == 200, status
    return int(headers["X-Pulse-Version"])


def _local_children(node: NodeProcess, path: str) -> list[str]:
    status, _, body = _call(f"{node.url}/v1/children/{to_url(path)}", headers=FORWARDED)
    assert status == 200
    names: list[str] = json.loads(body)
    return names


def _ring(node: NodeProcess) -> Ring:
    status, _, body = _call(f"{node.url}/v1/members")
    assert status == 200
    doc = json.loads(body)
    members = [Member(m["node_id"], m["host"], m["port"], m.get("zone")) for m in doc["members"]]
    return Ring(members, doc["epoch"], points=doc["points"], replication=doc["replication"])


class Writer:
    """Versioned writes and deletes through one node's plain HTTP API; the expected outcome
    (newest acknowledged version per key, deleted keys) and keys left in doubt by a failure."""

    def __init__(self, via: NodeProcess) -> None:
        self.via = via
        self.newest: dict[str, int] = {}
        self.deleted: set[str] = set()
        self.doubt: set[str] = set()
        self.acked = self.failed = 0

    def _done(self, path: str, ok: bool) -> bool:
        if ok:
            self.acked += 1
        else:
            self.failed += 1
            self.doubt.add(path)
        return ok

    def put(self, path: str) -> None:
        version = time.time_ns()
        status, _, _ = _call(
            f"{self.via.url}/v1/pulse/{to_url(path)}",
            "PUT",
            data=b"beat-%d" % version,
            headers={"X-Pulse-Version": str(version)},
        )
        if self._done(path, status == 204):
            self.newest[path] = version
            self.deleted.discard(path)

    def delete(self, path: str) -> None:
        version = time.time_ns()
        url = f"{self.via.url}/v1/pulse/{to_url(path)}"
        status, _, _ = _call(url, "DELETE", headers={"X-Pulse-Version": str(version)})
        if self._done(path, status == 204):
            self.newest.pop(path, None)
            self.deleted.add(path)

    def delete_path(self, path: str) -> None:
        version = time.time_ns()
        url = f"{self.via.url}/v1/path/{to_url(path)}"
        status, _, _ = _call(url, "DELETE", headers={"X-Pulse-Version": str(version)})
        under = [p for p in self.newest if p.startswith(path + "/")]
        for key in under:
            if self._done(key, status == 204):
                self.newest.pop(key)
                self.deleted.add(key)


def _paths(topology: str, count: int) -> list[str]:
    return [f"/workerbeats/{topology}/node-{i:03d}-6700" for i in range(count)]


def _wait_healed(cluster: NodeCluster, ring: Ring, writer: Writer, since: float) -> list[str]:
    """`_healed`, polled until it finds nothing or `HEAL_BOUND` after `since` has passed."""
    deadline = since + HEAL_BOUND
    wrong = _healed(cluster, ring, writer)
    while wrong and time.monotonic() < deadline:
        time.sleep(0.05)
        wrong = _healed(cluster, ring, writer)
    return wrong


def _healed(cluster: NodeCluster, ring: Ring, writer: Writer) -> list[str]:
    """What is still wrong: an owner without a key's newest version, a node with a deleted key."""
    by_id = {node.node_id: node for node in cluster.nodes}
    wrong: list[str] = []
    for path, version in writer.newest.items():
        if path in writer.doubt:
            continue
        for owner in ring.owners(path):
            held = _local_version(by_id[owner.node_id], path)
            if held != version:
                wrong.append(f"{owner.node_id} holds {path} v{held}, newest v{version}")
    for path in writer.deleted - writer.doubt:
        for node in cluster.nodes:
            if _local_version(node, path) is not None:
                wrong.append(f"{node.node_id} still holds deleted {path}")
    return wrong


def _no_deleted_key_visible(cluster: NodeCluster, writer: Writer) -> list[str]:
    """Deleted keys seen in any node's own listing, or in coordinated reads and listings."""
    found: list[str] = []
    deleted = writer.deleted - writer.doubt
    for node in cluster.nodes:
        for topology in ("topo-a", "topo-b", "topo-c"):
            parent = f"/workerbeats/{topology}"
            local = {f"{parent}/{n}" for n in _local_children(node, parent)}
            status, _, body = _call(f"{node.url}/v1/children/{to_url(parent)}")
            assert status == 200
            merged = {f"{parent}/{n}" for n in json.loads(body)}
            found += [f"{node.node_id} lists {p} locally" for p in sorted(local & deleted)]
            found += [f"{node.node_id} lists {p} (coordinated)" for p in sorted(merged & deleted)]
        for path in sorted(deleted):
            status, _, _ = _call(f"{node.url}/v1/pulse/{to_url(path)}")
            if status != 404:
                found.append(f"{node.node_id} answers {status} for deleted {path}")
    return found


def _metric(node: NodeProcess, name: str) -> float:
    status, _, body = _call(f"{node.url}/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_paused_replica_heals_within_one_round_and_nothing_deleted_returns(
    zk: ManagedZooKeeper, tmp_path: Path
) -> None:
    with NodeCluster(3, workdir=tmp_path, zk_hosts=zk.new_chroot("ae-"), extra=KEYS) as cluster:
        wait_until(lambda: len(_ring(cluster[0]).members) == 3, timeout=15)
        ring = _ring(cluster[0])
        a, b, c = cluster.nodes
        writer = Writer(a)
        keep, gone, tree = _paths("topo-a", 30), _paths("topo-b", 20), _paths("topo-c", 10)
        for path in keep + gone + tree:
            writer.put(path)
        wait_until(lambda: not _healed(cluster, ring, writer), timeout=10)

        c.stop_signal()
        stopped = time.monotonic()
        try:
            for path in keep[:15]:
                writer.put(path)  # newer versions c misses
            for path in gone:
                writer.delete(path)
            writer.delete_path("/workerbeats/topo-c")
            for path in _paths("topo-a", 40)[30:]:
                writer.put(path)  # new keys
            # Past the tombstone TTL: the deletes' tombstones are due while c is away.
            time.sleep(max(0.0, PAUSE - (time.monotonic() - stopped)))
        finally:
            c.cont()
        resumed = time.monotonic()
        assert writer.acked >= 0.9 * (writer.acked + writer.failed), (writer.acked, writer.failed)
        wrong = _wait_healed(cluster, ring, writer, resumed)
        healed_in = time.monotonic() - resumed
        print(f"healed in {healed_in:.2f} s after SIGCONT (bound {HEAL_BOUND:.2f} s)")
        assert not wrong, f"not healed {HEAL_BOUND:.2f} s after resume:\n" + "\n".join(wrong[:20])
        assert not _no_deleted_key_visible(cluster, writer)
        assert _metric(c, "pmcluster_antientropy_keys_repaired_total") > 0
        assert sum(_metric(n, "pmcluster_antientropy_tombstones_retained_total") for n in (a, b))

        # Every tombstone has had its TTL (and the retention rounds) again: nothing comes back.
        time.sleep(TOMBSTONE + 2 * HEAL_BOUND)
        assert not _healed(cluster, ring, writer)
        assert not _no_deleted_key_visible(cluster, writer)
        for node in cluster.nodes:
            assert _call(f"{node.url}/health")[0] == 200


def test_a_replica_restarted_empty_is_filled_again(zk: ManagedZooKeeper, tmp_path: Path) -> None:
    keys = {**KEYS, "storm.zookeeper.session.timeout": 2000}
    with NodeCluster(3, workdir=tmp_path, zk_hosts=zk.new_chroot("ae-"), extra=keys) as cluster:
        wait_until(lambda: len(_ring(cluster[0]).members) == 3, timeout=15)
        a, _, c = cluster.nodes
        writer = Writer(a)
        for path in _paths("topo-a", 40):
            writer.put(path)
        c.kill()
        wait_until(lambda: len(_ring(a).members) == 2, timeout=15)  # its session expired
        for path in _paths("topo-a", 40)[:20]:
            writer.put(path)
        for path in _paths("topo-a", 40)[30:]:
            writer.delete(path)
        c.start().wait_ready(15)
        wait_until(lambda: all(len(_ring(n).members) == 3 for n in cluster.nodes), timeout=15)
        wait_until(lambda: len({_ring(n).epoch for n in cluster.nodes}) == 1, timeout=15)
        joined = time.monotonic()
        ring = _ring(a)
        # One round after every node is on the new ring.
        wrong = _wait_healed(cluster, ring, writer, time.monotonic())
        print(f"restarted node filled {time.monotonic() - joined:.2f} s after the ring converged")
        assert not wrong, "\n".join(wrong[:20])
        assert not _no_deleted_key_visible(cluster, writer)


def test_tombstones_outlive_their_ttl_until_the_unreached_owner_has_them(
    zk: ManagedZooKeeper, tmp_path: Path
) -> None:
    """The stopped owner is also cut off (TCP reset, so no request sent to it is delivered
    after it resumes): only anti-entropy can tell it about the deletes, after their tombstones'
    TTL. Without the retention rule its old copies come back on the other owners."""
    with NodeCluster(3, workdir=tmp_path, zk_hosts=zk.new_chroot("ae-"), extra=KEYS) as cluster:
        wait_until(lambda: len(_ring(cluster[0]).members) == 3, timeout=15)
        ring = _ring(cluster[0])
        a, _, c = cluster.nodes
        writer = Writer(a)
        paths = _paths("topo-b", 30)
        for path in paths:
            writer.put(path)
        wait_until(lambda: not _healed(cluster, ring, writer), timeout=10)
        with PeerCut(c.host, c.port, reject=True):
            c.stop_signal()
            try:
                for path in paths[:20]:
                    writer.delete(path)
                time.sleep(PAUSE)  # > TOMBSTONE: every tombstone is past its TTL
            finally:
                c.cont()
        resumed = time.monotonic()
        assert writer.acked >= 0.9 * (writer.acked + writer.failed), (writer.acked, writer.failed)
        wrong = _wait_healed(cluster, ring, writer, resumed)
        print(f"deletes reached the cut-off owner {time.monotonic() - resumed:.2f} s after resume")
        assert not wrong, "\n".join(wrong[:20])
        assert not _no_deleted_key_visible(cluster, writer)
        time.sleep(TOMBSTONE + 2 * HEAL_BOUND)
        assert not _healed(cluster, ring, writer)
        assert not _no_deleted_key_visible(cluster, writer)
