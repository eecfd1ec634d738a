"""A real Storm topology (Storm 2.8.3's `LocalCluster`: Nimbus, a supervisor, a spout and a bolt
on two workers, all in one JVM run by `java/TopologyDriver.java`) whose executor heartbeats go
through Pacemaker (`storm.cluster.state.store:
org.apache.storm.cluster.PaceMakerStateStorageFactory`).

Against pmcluster (3 nodes listed in `pacemaker.servers`): kill -9 one node, wait past Nimbus's
task timeout, add a fourth node, drain it: no executor is reassigned and Nimbus's view of every
executor stays fresh. Against Storm's own Pacemaker (one server): kill -9 and restart it.

Timings: executors heartbeat every second and Nimbus checks every second, but the task timeout
stays at Storm's default of 30 s. Storm's own client spends ~11 s on every call to a dead server
(10 tries of 1 s, `PacemakerClient.send`), and its Nimbus reads one worker at a time: with a dead
server listed, a Nimbus round over two workers takes ~22 s, and a worker whose write server died
is silent for ~11 s before it rotates. A shorter timeout gets executors reassigned by Storm's
client alone, whatever the servers do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from pmcluster.testing.drivers import json_reply
from pmcluster.tools.localcluster import (
    ManagedZooKeeper,
    NodeCluster,
    NodeProcess,
    log_tail,
    wait_until,
    zk_yaml,
)
from pmcluster.tools.stormpacemaker import StormPacemaker

pytestmark = pytest.mark.integration

TASK_TIMEOUT = 30  # nimbus.task.timeout.secs (Storm's default; see the module docstring)
PAST_TIMEOUT = TASK_TIMEOUT + 8  # long enough for Nimbus to act on a timeout: a round is ~22 s
NODE_KEYS: dict[str, Any] = {
    "pmcluster.request.timeout.secs": 1.0,
    "pmcluster.connect.timeout.secs": 0.3,
    "task.heartbeat.frequency.secs": 1,
    "storm.zookeeper.session.timeout": 2000,
}


class Topology:
    """One TopologyDriver JVM: LocalCluster with the topology running on `hosts`."""

    def __init__(
        self, storm: Sequence[str], port: int, hosts: Sequence[str], zk_port: int, log: Path
    ) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [
                *storm[:1],
                "-Xmx512m",
                "-XX:+UseSerialGC",
                "-Dlog4j2.level=WARN",
                *storm[1:],
                "TopologyDriver",
                str(port),
                ",".join(hosts),
                str(zk_port),
                f"/storm-{os.getpid()}-{time.monotonic_ns()}",
                str(TASK_TIMEOUT),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            bufsize=1,
        )
        self.ready = self._receive(90.0)
        assert self.ready.get("ready"), self.ready

    def _receive(self, timeout: float) -> dict[str, Any]:
        return json_reply(self.proc, timeout, lambda: f"; log tail:\n{log_tail(self.log, 40)}")

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return self._receive(10.0)

    def watch(self, seconds: float) -> dict[str, Any]:
        """Let the topology run `seconds`; the report after it."""
        time.sleep(seconds)
        return self.report()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID; LocalCluster's shutdown would wait out dead servers
            self.proc.wait(10)
        self._log_file.close()


@pytest.fixture
def topology_factory(storm_java: list[str], tmp_path: Path) -> Iterator[Any]:
    started: list[Topology] = []

    def start(port: int, hosts: Sequence[str], zk_port: int) -> Topology:
        topo = Topology(storm_java, port, hosts, zk_port, tmp_path / f"topology-{len(started)}.log")
        started.append(topo)
        return topo

    yield start
    for topo in started:
        topo.close()


def members(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/v1/members", timeout=2) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except OSError:
        return None


def converged(urls: Sequence[str], size: int) -> bool:
    """Every node at `urls` answers with one epoch and `size` members."""
    views = [members(url) for url in urls]
    if any(v is None for v in views):
        return False
    return len({v["epoch"] for v in views if v}) == 1 and all(
        len(v["members"]) == size for v in views if v
    )


def assert_not_reassigned(report: dict[str, Any], when: str) -> None:
    """What a Storm user relies on: every executor on its node and port since it started, no
    executor restarted, Nimbus never timed one out, the topology still processing."""
    assert report["error"] is None, report
    assert report["assignment"] == report["baseline"], f"{when}: reassigned: {report}"
    assert report["changes"] == [], f"{when}: the assignment changed: {report}"
    assert (report["spout_opens"], report["bolt_prepares"]) == (1, 1), f"{when}: {report}"
    assert not report["timed_out"], f"{when}: Nimbus timed an executor out: {report}"
    assert report["nimbus_cached"] == len(report["baseline"]), report
    assert report["nimbus_max_age_secs"] < TASK_TIMEOUT, report


def test_topology_survives_node_death_join_and_drain(
    topology_factory: Any, zookeeper: ManagedZooKeeper, zk_hosts: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    with NodeCluster(3, workdir=tmp_path, zk_hosts=zk_hosts, extra=NODE_KEYS) as cluster:
        wait_until(lambda: converged(cluster.urls, 3), timeout=10)
        topo = topology_factory(cluster.port, cluster.hosts, zookeeper.port)
        baseline = topo.watch(3.0)
        assert_not_reassigned(baseline, "before any fault")
        assert baseline["acked"] > 0

        victim = cluster[0]
        os.kill(victim.pid, signal.SIGKILL)  # kill -9 by PID
        victim.wait_exit()
        wait_until(lambda: converged(cluster.urls[1:], 2), timeout=10)
        after_kill = topo.watch(PAST_TIMEOUT)
        assert_not_reassigned(after_kill, f"{PAST_TIMEOUT} s after kill -9 of {victim.node_id}")
        assert after_kill["acked"] > baseline["acked"]

        fourth = NodeProcess(
            {**cluster[1].config_yaml, "pacemaker.host": "127.0.0.4"}, workdir=tmp_path
        )
        with fourth:
            live = [*cluster.urls[1:], fourth.url]
            wait_until(lambda: converged(live, 3), timeout=10)
            after_join = topo.watch(5.0)
            assert_not_reassigned(after_join, f"after {fourth.node_id} joined")

            config = tmp_path / "cluster.yaml"
            config.write_text(yaml.safe_dump({**NODE_KEYS, **zk_yaml(zk_hosts)}))
            drain = subprocess.run(
                [
                    *(sys.executable, "-m", "pmcluster", "remove-node", "--config", str(config)),
                    *("--node", fourth.node_id, "--json"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert drain.returncode == 0, drain.stdout + drain.stderr
            assert json.loads(drain.stdout)["drain"]["state"] == "done"
            assert fourth.wait_exit(timeout=10) == 0
            after_drain = topo.watch(PAST_TIMEOUT)
            assert_not_reassigned(after_drain, f"{PAST_TIMEOUT} s after {fourth.node_id} drained")
            assert after_drain["acked"] > after_join["acked"]
    print(f"pmcluster topology test: {time.monotonic() - started:.0f} s; {after_drain}")


def storm_pacemaker_run(
    storm: Sequence[str], zookeeper: ManagedZooKeeper, workdir: Path
) -> dict[str, Any]:
    """The same topology on Storm's own Pacemaker (one server): kill -9 it, restart it (empty:
    it keeps heartbeats in memory only) after the task timeout, watch 15 s. What happened."""
    server = StormPacemaker(storm, workdir)
    server.start()
    topo = None
    try:
        topo = Topology(storm, server.port, ["127.0.0.1"], zookeeper.port, workdir / "topo.log")
        baseline = topo.watch(3.0)
        assert_not_reassigned(baseline, "before any fault")
        server.kill()
        down = topo.watch(PAST_TIMEOUT)
        server.start()
        after = topo.watch(15.0)
    finally:
        if topo is not None:
            topo.close()
        server.kill()
    reassigned = bool(after["changes"]) or after["spout_opens"] > 1 or after["bolt_prepares"] > 1
    return {
        "down_secs": PAST_TIMEOUT,
        "nimbus_age_when_down": down["nimbus_age_secs"],
        "reassigned": reassigned,
        "timed_out": after["timed_out"],
        "after": after,
    }


def main() -> None:
    """`python tests/interop/test_storm_topology.py [RUNS]`: the Storm's-Pacemaker run RUNS
    times (not a test: whether Storm reassigns is a race, see docs/storm-compatibility.md)."""
    import tempfile

    from conftest import storm_java_command

    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    with tempfile.TemporaryDirectory(prefix="storm-pm-") as tmp, ManagedZooKeeper() as zk:
        storm = storm_java_command(Path(tmp))
        for run in range(runs):
            workdir = Path(tmp) / f"run-{run}"
            workdir.mkdir()
            result = storm_pacemaker_run(storm, zk, workdir)
            after = result.pop("after")
            print(
                json.dumps(
                    {**result, "changes": after["changes"][:3], "spout_opens": after["spout_opens"]}
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
