"""A Storm-like run on the Pacemaker state store: no live worker is ever declared dead while a
pmcluster node is SIGKILLed and another one joins.

Worker threads heartbeat `/workerbeats/<topology>/<node>-<port>` through one shared state (as a
supervisor's workers would, concurrently); a Nimbus-like thread with its own state lists
`/workerbeats`, then each topology, then reads every heartbeat, each round, and declares a
worker dead when its heartbeat has not changed for the timeout. One worker is stopped on
purpose near the end: it must be declared dead (the detector works) and it must be the only one.

Periods are Storm's scaled down about 3-15x so a run takes ~12 s:

| Storm setting | Storm default | here |
|---|---|---|
| worker.heartbeat.frequency.secs | 1 s | 0.3 s |
| nimbus.monitor.freq.secs | 10 s | 0.2 s |
| nimbus.task.timeout.secs | 30 s | 2 s |
| storm.zookeeper.session.timeout | 20 s | 2 s (ZooKeeper tickTime 200 ms) |
| pmcluster.request.timeout.secs | 2 s | 0.5 s |

What keeps the scaled run honest: the timeout (2 s) still exceeds a heartbeat period plus a
request timeout plus a monitor period (1 s) with margin, and the node's death is noticed by
ZooKeeper (2 s) no sooner than by the dead-worker timeout, so the run covers the window where
the ring still lists the dead node and reads must fall back to the surviving replica.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from pmcluster.state import PacemakerStateStorage, StateStorage, make_state
from pmcluster.tools.localcluster import (
    ManagedZooKeeper,
    NodeCluster,
    NodeProcess,
    free_port_on_all,
    wait_until,
    zk_yaml,
)

pytestmark = pytest.mark.integration

HEARTBEAT_SECS = 0.3
MONITOR_SECS = 0.2
TIMEOUT_SECS = 2.0
REQUEST_TIMEOUT_SECS = 0.5
TOPOLOGIES = ("topo-a-1", "topo-b-2")
WORKERS = [f"/workerbeats/{t}/node{n}-{6700 + n}" for t in TOPOLOGIES for n in range(3)]
VICTIM = WORKERS[-1]  # the worker stopped on purpose
NODE_KEYS: dict[str, Any] = {
    "pmcluster.request.timeout.secs": REQUEST_TIMEOUT_SECS,
    "storm.zookeeper.session.timeout": 2000,
    "task.heartbeat.frequency.secs": HEARTBEAT_SECS,  # also sets the client's grace window
    "pmcluster.log.level": "WARNING",
}


class Worker(threading.Thread):
    """Heartbeats one path every period with a changing payload, as a Storm worker does."""

    def __init__(self, state: StateStorage, path: str) -> None:
        super().__init__(name=f"worker {path}", daemon=True)
        self.state, self.path = state, path
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.slowest = 0.0
        self.stopped_at: float | None = None

    def run(self) -> None:
        seq = 0
        while not self.stop_event.is_set():
            seq += 1
            start = time.monotonic()
            try:
                self.state.set_worker_hb(self.path, f"{self.path}:{seq}".encode(), None)
            except Exception as exc:
                self.errors.append(f"{time.monotonic():.2f} {exc!r}")
            self.slowest = max(self.slowest, time.monotonic() - start)
            self.stop_event.wait(HEARTBEAT_SECS)
        self.stopped_at = time.monotonic()


class Nimbus(threading.Thread):
    """Each round: list topologies, list their workers, read every heartbeat; declare dead."""

    def __init__(self, state: StateStorage, assigned: list[str]) -> None:
        super().__init__(name="nimbus", daemon=True)
        self.state = state
        self.stop_event = threading.Event()
        self.last_data: dict[str, bytes] = {}
        now = time.monotonic()
        self.last_change = dict.fromkeys(assigned, now)
        self.dead: dict[str, float] = {}
        self.errors: list[str] = []
        self.rounds = 0
        self.slowest_call = 0.0
        self.longest_gap = 0.0  # longest time any heartbeat stayed unchanged, as Nimbus saw it

    def timed(self, fn: Any, *args: Any) -> Any:
        start = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.slowest_call = max(self.slowest_call, time.monotonic() - start)

    def run(self) -> None:
        while not self.stop_event.wait(MONITOR_SECS):
            try:
                self.one_round()
            except Exception as exc:
                self.errors.append(f"{time.monotonic():.2f} {exc!r}")

    def one_round(self) -> None:
        for topology in self.timed(self.state.get_worker_hb_children, "/workerbeats", False):
            base = f"/workerbeats/{topology}"
            for worker in self.timed(self.state.get_worker_hb_children, base, False):
                path = f"{base}/{worker}"
                data = self.timed(self.state.get_worker_hb, path, False)
                if data is not None and data != self.last_data.get(path):
                    now = time.monotonic()
                    if path in self.last_data:
                        self.longest_gap = max(self.longest_gap, now - self.last_change[path])
                    self.last_data[path] = data
                    self.last_change[path] = now
        now = time.monotonic()
        for path, changed in self.last_change.items():
            if path not in self.dead and now - changed > TIMEOUT_SECS:
                self.dead[path] = now
        self.rounds += 1

    def seen_all(self) -> bool:
        return set(self.last_data) == set(self.last_change)


def member_ids(state: StateStorage) -> set[str]:
    assert isinstance(state, PacemakerStateStorage)
    return {m.node_id for m in state.cluster_client.members().members}


def local_keys(node: NodeProcess, path: str) -> list[str]:
    """Keys the node itself stores under `path` (no forwarding: the local store only)."""
    request = urllib.request.Request(
        f"{node.url}/v1/pulses/{path.lstrip('/')}",
        headers={"Accept": "application/json", "X-Pmcluster-Forwarded": "1"},
    )
    with urllib.request.urlopen(request, timeout=2.0) as response:
        return [p["path"] for p in json.load(response)["pulses"]]


@pytest.fixture
def cluster_and_spare(
    zookeeper: ManagedZooKeeper, tmp_path: Path
) -> Iterator[tuple[NodeCluster, NodeProcess, str]]:
    """Three running nodes on 127.0.0.1-3 and a fourth (127.0.0.4), not started, same port."""
    hosts = zookeeper.new_chroot("sim-")
    port = free_port_on_all([f"127.0.0.{i}" for i in range(1, 5)])
    cluster = NodeCluster(3, workdir=tmp_path, zk_hosts=hosts, port=port, extra=NODE_KEYS)
    spare_yaml = {**cluster[0].config_yaml, "pacemaker.host": "127.0.0.4"}
    spare = NodeProcess(spare_yaml, workdir=tmp_path)
    with cluster:
        try:
            yield cluster, spare, hosts
        finally:
            spare.kill()


def test_no_live_worker_is_declared_dead_across_a_node_kill_and_join(
    cluster_and_spare: tuple[NodeCluster, NodeProcess, str],
) -> None:
    cluster, spare, hosts = cluster_and_spare
    conf = {
        **zk_yaml(hosts),
        **NODE_KEYS,
        "storm.cluster.state.store": "org.apache.storm.pacemaker.pacemaker_state_factory",
    }
    victim_node = cluster[1]
    with closing(make_state(conf)) as worker_state, closing(make_state(conf)) as nimbus_state:
        workers = {path: Worker(worker_state, path) for path in WORKERS}
        nimbus = Nimbus(nimbus_state, WORKERS)
        for worker in workers.values():
            worker.start()
        nimbus.start()
        try:
            wait_until(nimbus.seen_all, 10.0, what="Nimbus to see every worker")
            time.sleep(2 * HEARTBEAT_SECS)  # a steady state before the fault (scenario timing)

            victim_node.kill()  # SIGKILL: its ZooKeeper session lives on for 2 s
            time.sleep(TIMEOUT_SECS)  # run through the window where the ring lists a dead node

            spare.start().wait_ready()
            expected = {cluster[0].node_id, cluster[2].node_id, spare.node_id}
            for state in (worker_state, nimbus_state):
                wait_until(lambda s=state: member_ids(s) == expected, 10.0, what="ring change")
            time.sleep(TIMEOUT_SECS)  # the new ring, with writes moving to the new node

            workers[VICTIM].stop_event.set()
            wait_until(lambda: VICTIM in nimbus.dead, 3 * TIMEOUT_SECS, what="victim declared")
        finally:
            nimbus.stop_event.set()
            for worker in workers.values():
                worker.stop_event.set()
            nimbus.join(10)
            for worker in workers.values():
                worker.join(10)

    stopped_at = workers[VICTIM].stopped_at
    assert stopped_at is not None
    detection = nimbus.dead[VICTIM] - stopped_at
    slowest_write = max(w.slowest for w in workers.values())
    print(
        f"\nsimulation: {nimbus.rounds} Nimbus rounds, dead={sorted(nimbus.dead)}, "
        f"victim detected {detection:.2f}s after its last heartbeat, slowest write "
        f"{slowest_write:.3f}s, slowest Nimbus call {nimbus.slowest_call:.3f}s, longest "
        f"unchanged heartbeat of a live worker {nimbus.longest_gap:.2f}s"
    )
    assert list(nimbus.dead) == [VICTIM], "a live worker was declared dead"
    assert nimbus.longest_gap < TIMEOUT_SECS
    assert TIMEOUT_SECS - HEARTBEAT_SECS <= detection <= TIMEOUT_SECS + 2 * MONITOR_SECS + 0.5
    assert [e for w in workers.values() for e in w.errors] == []
    assert nimbus.errors == []
    # Never stalled for more than about one request timeout, though a node was dead.
    assert slowest_write < REQUEST_TIMEOUT_SECS + 0.25
    assert nimbus.slowest_call < REQUEST_TIMEOUT_SECS + 0.25
    # The joined node took its share of the heartbeats without anyone restarting.
    assert local_keys(spare, "/workerbeats")
