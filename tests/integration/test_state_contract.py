"""The `StateStorage` contract, run against both factories on a real ZooKeeper and real nodes.

Every test taking `state` runs twice: `zookeeper_state_factory` (a fresh ZooKeeper chroot per
test) and `pacemaker_state_factory` (three pmcluster node processes registered in ZooKeeper for
the whole module; the ZooKeeper root and the heartbeats are wiped before each test). An
independent kazoo client checks what really is in ZooKeeper.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.security import make_acl, make_digest_acl

from pmcluster.errors import NotAuthorized
from pmcluster.state import (
    PacemakerStateStorage,
    StateStorage,
    VersionedData,
    ZooKeeperStateStorage,
    make_state,
)
from pmcluster.tools.localcluster import (
    ManagedZooKeeper,
    NodeCluster,
    NodeProcess,
    free_port,
    zk_yaml,
)

pytestmark = pytest.mark.integration

FACTORIES = {
    "zookeeper": "pmcluster.state.zookeeper_state_factory",
    "pacemaker": "org.apache.storm.pacemaker.pacemaker_state_factory",  # Storm's name, mapped
}
NODE_KEYS = {
    "pmcluster.request.timeout.secs": 0.5,
    "storm.zookeeper.session.timeout": 2000,
    "pmcluster.log.level": "WARNING",
}
WAIT = 10.0  # bound on every poll for an event


def state_yaml(hosts: str, kind: str) -> dict[str, Any]:
    """Storm YAML for a state store on ZooKeeper `hosts` (its chroot prefixes the root)."""
    return {
        **zk_yaml(hosts),
        **NODE_KEYS,
        "storm.cluster.state.store": FACTORIES[kind],
        "storm.zookeeper.retry.interval": 100,  # ms; Storm's 1000 would slow the restart test
        "task.heartbeat.frequency.secs": 0.3,
    }


def kazoo(hosts: str) -> KazooClient:
    """An independent client; authenticated as the ACL test's digest user so it can wipe."""
    client = KazooClient(hosts=hosts, timeout=10.0, auth_data=[("digest", "storm:secret")])
    client.start(timeout=10.0)
    return client


def root_hosts(hosts: str) -> str:
    """kazoo hosts chrooted at the state's root (`<chroot>/storm`)."""
    return hosts + "/storm"


def poll(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Events:
    """A registered callback that records `(event_type, path)` in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, event_type: str, path: str) -> None:
        with self._lock:
            self.seen.append((event_type, path))

    def wait_for(self, event: tuple[str, str]) -> list[tuple[str, str]]:
        """Wait for `event`; return (and consume) everything seen up to and including it."""
        poll(lambda: event in self.seen, f"event {event}")
        with self._lock:
            upto = self.seen.index(event) + 1
            got, self.seen = self.seen[:upto], self.seen[upto:]
        return got


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pm_cluster(
    zookeeper: ManagedZooKeeper, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[NodeCluster, str]]:
    """Three node processes on 127.0.0.1-3 registered in one ZooKeeper chroot."""
    hosts = zookeeper.new_chroot("state-")
    cluster = NodeCluster(
        3, workdir=tmp_path_factory.mktemp("nodes"), zk_hosts=hosts, extra=NODE_KEYS
    )
    with cluster:
        yield cluster, hosts


@pytest.fixture(params=sorted(FACTORIES))
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def hosts(kind: str, request: pytest.FixtureRequest) -> str:
    """The ZooKeeper hosts+chroot the state under test uses (its root is `<chroot>/storm`)."""
    if kind == "zookeeper":
        fresh: str = request.getfixturevalue("zk_hosts")
        return fresh
    _, shared = request.getfixturevalue("pm_cluster")
    client = kazoo(shared)
    try:
        client.ensure_path("/storm")
        for child in client.get_children("/storm"):
            if child != "pmcluster":  # the members registry: the nodes' own
                client.delete(f"/storm/{child}", recursive=True)
    finally:
        client.stop()
        client.close()
    return str(shared)


@pytest.fixture
def state(kind: str, hosts: str) -> Iterator[StateStorage]:
    with_state = make_state(state_yaml(hosts, kind))
    try:
        if kind == "pacemaker":
            with_state.delete_worker_hb("/")  # heartbeats left by earlier tests
        yield with_state
    finally:
        with_state.close()


@pytest.fixture
def zk(hosts: str) -> Iterator[KazooClient]:
    """An independent kazoo client chrooted at the state's root."""
    client = kazoo(hosts)
    client.ensure_path("/storm")
    client.stop()
    client.close()
    client = kazoo(root_hosts(hosts))
    try:
        yield client
    finally:
        client.stop()
        client.close()


# --- the contract -------------------------------------------------------------------------------


def test_factory_builds_the_named_implementation(kind: str, state: StateStorage) -> None:
    expected = ZooKeeperStateStorage if kind == "zookeeper" else PacemakerStateStorage
    assert type(state) is expected
    assert isinstance(state, StateStorage)


def test_missing_paths_read_as_nothing(state: StateStorage) -> None:
    assert state.get_data("/nope/x", False) is None
    assert state.get_data_with_version("/nope/x", False) is None
    assert state.get_version("/nope/x", False) is None
    assert state.node_exists("/nope/x", False) is False
    assert state.get_children("/nope", False) == []
    assert state.get_worker_hb("/workerbeats/nope/n-1", False) is None
    assert state.get_worker_hb_children("/workerbeats/nope", False) == []
    state.delete_node("/nope")  # no error
    state.delete_worker_hb("/workerbeats/nope")
    state.delete_node_blobstore("/nope", "host:6627")


def test_set_data_creates_parents_then_overwrites(state: StateStorage, zk: KazooClient) -> None:
    state.set_data("/assignments/topo-1", b"v1", None)
    assert state.get_data("/assignments/topo-1", False) == b"v1"
    assert state.get_data_with_version("/assignments/topo-1", False) == VersionedData(0, b"v1")
    assert state.get_version("/assignments/topo-1", False) == 0
    state.set_data("/assignments/topo-1", b"v2", None)
    assert state.get_data_with_version("/assignments/topo-1", False) == VersionedData(1, b"v2")
    assert state.get_version("/assignments/topo-1", False) == 1
    data, stat = zk.get("/assignments/topo-1")
    assert (data, stat.version, stat.ephemeralOwner) == (b"v2", 1, 0)  # persistent
    assert state.node_exists("/assignments", False)
    assert state.get_children("/assignments", False) == ["topo-1"]


def test_mkdirs_and_sorted_children(state: StateStorage, zk: KazooClient) -> None:
    state.mkdirs("/a/b/c", None)
    state.mkdirs("/a/b/c", None)  # idempotent
    state.mkdirs("/", None)  # the root itself: nothing to do
    assert zk.get("/a/b/c")[0] == b""
    for name in ("zeta", "alpha", "mid"):
        state.mkdirs(f"/a/b/{name}", None)
    assert state.get_children("/a/b", False) == ["alpha", "c", "mid", "zeta"]
    assert state.get_children("/a/b/c", False) == []


def test_delete_node_is_recursive(state: StateStorage, zk: KazooClient) -> None:
    state.set_data("/tree/x/y/z", b"1", None)
    state.set_data("/tree/x/w", b"2", None)
    state.set_data("/tree/keep", b"3", None)
    state.delete_node("/tree/x")
    assert zk.exists("/tree/x") is None
    assert not state.node_exists("/tree/x/y/z", False)
    assert state.get_children("/tree", False) == ["keep"]
    state.delete_node("/tree/x")  # already gone: fine


def test_ephemeral_node_creates_parents_overwrites_and_dies_with_session(
    kind: str, hosts: str, state: StateStorage, zk: KazooClient
) -> None:
    state.set_ephemeral_node("/nimbuses/host-1:6627", b"a", None)
    state.set_ephemeral_node("/nimbuses/host-1:6627", b"b", None)  # overwrite, not an error
    data, stat = zk.get("/nimbuses/host-1:6627")
    assert data == b"b" and stat.ephemeralOwner != 0 and stat.version == 1
    other = make_state(state_yaml(hosts, kind))
    other.set_ephemeral_node("/nimbuses/host-2:6627", b"c", None)
    assert state.get_children("/nimbuses", False) == ["host-1:6627", "host-2:6627"]
    other.close()  # session closed: its ephemeral node goes at once
    assert state.get_children("/nimbuses", False) == ["host-1:6627"]


def test_create_sequential_is_ephemeral_and_increasing(
    state: StateStorage, zk: KazooClient
) -> None:
    first = state.create_sequential("/leader-lock/lock-", b"me", None)
    second = state.create_sequential("/leader-lock/lock-", b"me", None)
    assert re.fullmatch(r"/leader-lock/lock-\d{10}", first)
    assert second > first
    assert zk.get(first)[1].ephemeralOwner != 0
    assert state.get_data(second, False) == b"me"


def test_delete_node_blobstore_deletes_only_prefixed_children(
    state: StateStorage, zk: KazooClient
) -> None:
    for child in ("host-1:6627-1", "host-1:6627-2", "host-2:6627-1"):
        state.set_data(f"/blobstore/key1/{child}", b"", None)
    state.set_data("/blobstore/key1/host-1:6627-1/deeper", b"", None)
    state.delete_node_blobstore("/blobstore/key1", "host-1:6627")
    assert sorted(zk.get_children("/blobstore/key1")) == ["host-2:6627-1"]


def acl_summary(acls: list[Any]) -> set[tuple[int, str, str]]:
    """(perms, scheme, user) of each ACL: ZooKeeper masks digest hashes for other clients."""
    return {(a.perms, a.id.scheme, a.id.id.split(":")[0]) for a in acls}


def test_acls_are_applied_to_created_nodes(kind: str, hosts: str, zk: KazooClient) -> None:
    acl = [
        make_digest_acl("storm", "secret", all=True),
        make_acl("world", "anyone", read=True),
    ]
    auth = {"storm.zookeeper.auth.scheme": "digest", "storm.zookeeper.auth.payload": "storm:secret"}
    with closing(make_state({**state_yaml(hosts, kind), **auth})) as state:
        state.set_data("/secure/data", b"x", acl)
        state.set_data("/secure/data", b"y", acl)  # the creator may write again
        state.mkdirs("/secure-dir/sub", acl)
        state.set_ephemeral_node("/secure-eph/node", b"x", acl)
        created = state.create_sequential("/secure-seq/s-", b"x", acl)
        for path in ("/secure/data", "/secure", "/secure-dir/sub", "/secure-eph/node", created):
            got, _ = zk.get_acls(path)
            assert acl_summary(got) == acl_summary(acl), path
    assert zk.get("/secure/data")[0] == b"y"  # world may read
    with closing(make_state(state_yaml(hosts, kind))) as anonymous:
        assert anonymous.get_data("/secure/data", False) == b"y"
        with pytest.raises(NotAuthorized):
            anonymous.set_data("/secure/data", b"z", None)


def test_sync_path_then_read_sees_another_clients_write(
    state: StateStorage, zk: KazooClient
) -> None:
    zk.create("/synced", b"fresh", makepath=True)
    state.sync_path("/synced")
    assert state.get_data("/synced", False) == b"fresh"


def test_watches_fire_once_per_arming_with_root_relative_paths(
    state: StateStorage, zk: KazooClient
) -> None:
    events = Events()
    state.register(events)
    # exists-watch on a missing node, then creation
    assert state.node_exists("/w/node", True) is False
    zk.create("/w/node", b"1", makepath=True)
    assert events.wait_for(("NODE_CREATED", "/w/node")) == [("NODE_CREATED", "/w/node")]
    # data watch
    assert state.get_data("/w/node", True) == b"1"
    zk.set("/w/node", b"2")
    assert events.wait_for(("NODE_DATA_CHANGED", "/w/node")) == [("NODE_DATA_CHANGED", "/w/node")]
    # one-shot: this change is not reported (proved by the next armed event arriving alone)
    zk.set("/w/node", b"3")
    assert state.get_children("/w", True) == ["node"]
    zk.create("/w/other", b"")
    assert events.wait_for(("NODE_CHILDREN_CHANGED", "/w")) == [("NODE_CHILDREN_CHANGED", "/w")]
    # get_version watch; a delete that fires a data and a child watch is one event
    assert state.get_version("/w/other", True) == 0
    assert state.get_children("/w/other", True) == []
    zk.delete("/w/other")
    assert events.wait_for(("NODE_DELETED", "/w/other")) == [("NODE_DELETED", "/w/other")]
    # get_data on a missing node arms an exists watch (Storm's getData)
    assert state.get_data_with_version("/w/later", True) is None
    zk.create("/w/later", b"")
    assert events.wait_for(("NODE_CREATED", "/w/later")) == [("NODE_CREATED", "/w/later")]
    assert events.seen == []


def test_every_callback_gets_every_event_until_unregistered(
    state: StateStorage, zk: KazooClient
) -> None:
    first, second = Events(), Events()

    def broken(event_type: str, path: str) -> None:
        raise RuntimeError("a failing callback must not stop the others")

    state.register(broken)
    first_id = state.register(first)
    state.register(second)
    state.node_exists("/cb", True)
    zk.create("/cb", b"")
    first.wait_for(("NODE_CREATED", "/cb"))
    second.wait_for(("NODE_CREATED", "/cb"))
    state.unregister(first_id)
    state.unregister("no-such-id")
    state.get_data("/cb", True)
    zk.set("/cb", b"x")
    second.wait_for(("NODE_DATA_CHANGED", "/cb"))
    assert first.seen == []


def test_heartbeat_methods(state: StateStorage) -> None:
    state.set_worker_hb("/workerbeats/topo-1/node1-6700", b"hb1", None)
    state.set_worker_hb("/workerbeats/topo-1/node2-6701", b"hb2", None)
    state.set_worker_hb("/workerbeats/topo-2/node1-6702", b"hb3", None)
    assert state.get_worker_hb("/workerbeats/topo-1/node1-6700", False) == b"hb1"
    state.set_worker_hb("/workerbeats/topo-1/node1-6700", b"hb1-again", None)
    assert state.get_worker_hb("/workerbeats/topo-1/node1-6700", False) == b"hb1-again"
    assert state.get_worker_hb_children("/workerbeats", False) == ["topo-1", "topo-2"]
    assert state.get_worker_hb_children("/workerbeats/topo-1", False) == [
        "node1-6700",
        "node2-6701",
    ]
    state.delete_worker_hb("/workerbeats/topo-1/node2-6701")
    assert state.get_worker_hb("/workerbeats/topo-1/node2-6701", False) is None
    assert state.get_worker_hb_children("/workerbeats/topo-1", False) == ["node1-6700"]
    state.delete_worker_hb("/workerbeats/topo-1")
    assert state.get_worker_hb("/workerbeats/topo-1/node1-6700", False) is None
    assert state.get_worker_hb_children("/workerbeats", False) == ["topo-2"]


def test_concurrent_callers(state: StateStorage) -> None:
    """Eight threads share one store; every write is read back by its writer."""
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                state.set_worker_hb(f"/workerbeats/conc/w{n}", f"{n}:{i}".encode(), None)
                assert state.get_worker_hb(f"/workerbeats/conc/w{n}", False) == f"{n}:{i}".encode()
                state.set_data(f"/conc/w{n}", f"{n}:{i}".encode(), None)
                assert state.get_data(f"/conc/w{n}", False) == f"{n}:{i}".encode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert state.get_worker_hb_children("/workerbeats/conc", False) == [f"w{n}" for n in range(8)]


def test_close_is_idempotent(state: StateStorage) -> None:
    state.close()
    state.close()


# --- differential: the heartbeat methods answer the same from both factories ---------------------

HEARTBEAT_SCRIPT: list[tuple[str, str, bytes | None]] = [
    ("get", "/workerbeats/t1/n1-6700", None),
    ("children", "/workerbeats", None),
    ("set", "/workerbeats/t1/n1-6700", b"\x00hb-1"),
    ("set", "/workerbeats/t1/n2-6700", b"hb-2"),
    ("set", "/workerbeats/t2/n1-6701", b"hb-3" * 100),
    ("get", "/workerbeats/t1/n1-6700", None),
    ("children", "/workerbeats", None),
    ("children", "/workerbeats/t1", None),
    ("set", "/workerbeats/t1/n1-6700", b"hb-1b"),
    ("get", "/workerbeats/t1/n1-6700", None),
    ("delete", "/workerbeats/t1/n2-6700", None),
    ("get", "/workerbeats/t1/n2-6700", None),
    ("children", "/workerbeats/t1", None),
    ("delete", "/workerbeats/t2", None),
    ("children", "/workerbeats", None),
    ("get", "/workerbeats/t2/n1-6701", None),
    ("children", "/workerbeats/t2", None),
    ("set", "/workerbeats/t2/n1-6701", b"back"),
    ("get", "/workerbeats/t2/n1-6701", None),
    ("children", "/workerbeats", None),
    ("delete", "/workerbeats/missing", None),
    ("children", "/workerbeats/missing", None),
]


def run_script(state: StateStorage) -> list[object]:
    answers: list[object] = []
    for op, path, data in HEARTBEAT_SCRIPT:
        if op == "set":
            assert data is not None
            answers.append(state.set_worker_hb(path, data, None))
        elif op == "get":
            answers.append(state.get_worker_hb(path, False))
        elif op == "children":
            answers.append(state.get_worker_hb_children(path, False))
        else:
            answers.append(state.delete_worker_hb(path))
    return answers


def all_znodes(client: KazooClient, path: str = "/") -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for child in client.get_children(path):
        full = f"{path.rstrip('/')}/{child}"
        found[full] = client.get(full)[0]
        found.update(all_znodes(client, full))
    return found


def test_heartbeats_answer_the_same_and_pacemaker_writes_none_to_zookeeper(
    zk_hosts: str, pm_cluster: tuple[NodeCluster, str]
) -> None:
    _, shared = pm_cluster
    with closing(make_state(state_yaml(zk_hosts, "zookeeper"))) as zk_state:
        zk_answers = run_script(zk_state)
    watcher = kazoo(root_hosts(shared))
    try:
        before = all_znodes(watcher)
        with closing(make_state(state_yaml(shared, "pacemaker"))) as pm_state:
            pm_state.delete_worker_hb("/workerbeats")
            pm_answers = run_script(pm_state)
        after = all_znodes(watcher)
    finally:
        watcher.stop()
        watcher.close()
    assert pm_answers == zk_answers
    assert zk_answers[5] == b"\x00hb-1" and zk_answers[14] == ["t1"]
    # Only the nodes' membership registry may change; no heartbeat path, no heartbeat bytes.
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert all(p.startswith("/pmcluster/") for p in changed), changed
    assert not any("workerbeats" in p for p in after)
    payloads = {d for _, _, d in HEARTBEAT_SCRIPT if d}
    assert not any(data in payloads for data in after.values())


# --- connection state across a ZooKeeper restart -----------------------------------------------


def test_listener_sees_a_zookeeper_restart_and_state_keeps_working(
    kind: str, private_zookeeper: ManagedZooKeeper, tmp_path: Path
) -> None:
    hosts = private_zookeeper.new_chroot("t-")
    node: NodeProcess | None = None
    if kind == "pacemaker":
        node = NodeProcess(
            {**zk_yaml(hosts), **NODE_KEYS, "pacemaker.port": free_port()}, workdir=tmp_path
        )
        node.start().wait_ready()
    try:
        with closing(make_state(state_yaml(hosts, kind))) as state:
            states: list[str] = []
            events = Events()
            state.add_listener(states.append)
            state.register(events)
            state.set_worker_hb("/workerbeats/t/n-1", b"before", None)
            assert state.get_data("/watched", True) is None  # armed before the restart
            private_zookeeper.restart()
            poll(lambda: "RECONNECTED" in states, "RECONNECTED after the restart")
            assert states[0] == "SUSPENDED"
            assert set(states) <= {"SUSPENDED", "LOST", "RECONNECTED"}
            # The watch armed before the restart still fires (kazoo dropped it; it was re-armed).
            writer = kazoo(root_hosts(hosts))
            try:
                writer.create("/watched", b"")
            finally:
                writer.stop()
                writer.close()
            events.wait_for(("NODE_CREATED", "/watched"))
            state.set_data("/after", b"ok", None)
            assert state.get_data("/after", False) == b"ok"
            state.set_worker_hb("/workerbeats/t/n-1", b"after", None)
            assert state.get_worker_hb("/workerbeats/t/n-1", False) == b"after"
    finally:
        if node is not None:
            node.kill()
