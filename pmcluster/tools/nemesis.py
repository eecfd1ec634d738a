"""A Jepsen-style nemesis: a seeded random schedule of single faults against a real cluster.

`run_seed(spec, seed, workdir)` starts ZooKeeper, `spec.nodes` node processes (plus spares to
join) on 127.0.0.1, .2, ..., and the three-kind load of `pmcluster.tools.nemesisload`, then
applies one fault at a time from a schedule drawn by `schedule(seed, ...)`: every fault kind
once, in a random order, each on a random node, each healed before the next: every node
connected to ZooKeeper and unfenced (`/health`), all at one epoch listing every member
(`NemesisCluster.converged`), then a settle time. The recorded history is then judged by the history
checker: no miss, no stale read, no resurrection, nothing invented (`NemesisResult.ok`).

Faults (`FAULTS`):

- `kill`: SIGKILL, then start the node again, empty, at the same address;
- `pause`: SIGSTOP for longer than the ZooKeeper session, then SIGCONT;
- `join`: start a spare node (a new member);
- `drain`: retire a node through `POST /v1/admin/drain`, as `pmcluster remove-node` does;
- `stop_rejoin`: graceful stop (SIGTERM), then start again;
- `zk_restart`: stop ZooKeeper and start it on the same dataDir;
- `zk_cut`: blackhole the node's own TCP proxy to ZooKeeper past the session timeout (the
  node still reaches its peers);
- `peer_cut`: drop TCP to the node's port with iptables (it still reaches ZooKeeper);
- `skew`: restart the node with its clock 5 s ahead or behind (libfaketime), run, restart
  it with the true clock.

Used by tests/integration/test_nemesis.py (3 seeds in CI) and `pmcluster soak --nemesis`.
Needs root for iptables (`peer_cut`) and Debian's faketime (`skew`): scripts/setup installs
both.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pmcluster.config import config_from_mapping
from pmcluster.tools.history import History, Report, check
from pmcluster.tools.localcluster import (
    ManagedZooKeeper,
    NodeProcess,
    free_port_on_all,
    split_zk_hosts,
    wait_until,
    zk_yaml,
)
from pmcluster.tools.nemesisload import MixedLoad, MixSpec
from pmcluster.tools.tcpproxy import TcpProxy

__all__ = [
    "FAULTS",
    "NemesisCluster",
    "NemesisResult",
    "NemesisSpec",
    "PeerCut",
    "Step",
    "faketime_env",
    "run_seed",
    "schedule",
]

FAULTS = (
    "kill",
    "pause",
    "join",
    "drain",
    "stop_rejoin",
    "zk_restart",
    "zk_cut",
    "peer_cut",
    "skew",
)
SKEW_SECS = 5.0


@dataclass(frozen=True)
class NemesisSpec:
    """One seed's run: cluster size, timings (scaled down like the fault suite's) and load."""

    nodes: int = 4
    spares: int = 1
    faults: tuple[str, ...] = FAULTS
    period: float = 0.5  # heartbeat period
    request_timeout: float = 0.5
    session_ms: int = 1500
    antientropy_secs: float = 1.0
    settle: float = 1.0  # quiet time after each fault has healed and the ring agrees
    hold: float = 1.5  # how long a fault lasts beyond what it needs (a session timeout)
    load: MixSpec = field(default_factory=MixSpec)

    def node_keys(self) -> dict[str, Any]:
        return {
            "task.heartbeat.frequency.secs": self.period,
            "pmcluster.request.timeout.secs": self.request_timeout,
            "pmcluster.connect.timeout.secs": 0.2,
            "storm.zookeeper.session.timeout": self.session_ms,
            "pmcluster.antientropy.secs": self.antientropy_secs,
            "pmcluster.log.level": "INFO",
        }


@dataclass(frozen=True)
class Step:
    """One fault of a schedule: which, on which node (an index into the running nodes, taken
    modulo their number when the step runs), and a random part of its hold time."""

    fault: str
    target: int
    jitter: float

    def __str__(self) -> str:
        return f"{self.fault}@{self.target}"


def schedule(seed: int, faults: Sequence[str] = FAULTS) -> list[Step]:
    """Every fault kind once, in a seeded random order, on seeded random targets."""
    rng = random.Random(seed)
    order = list(faults)
    rng.shuffle(order)
    return [Step(f, rng.randrange(1 << 16), rng.uniform(0.0, 0.5)) for f in order]


def faketime_env(offset_secs: float, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process whose wall clock is `offset_secs` off (monotonic kept)."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        raise RuntimeError("libfaketime not installed (Debian package faketime; scripts/setup)")
    env = dict(os.environ if base is None else base)
    env.update(
        LD_PRELOAD=found[0],
        FAKETIME=f"{offset_secs:+g}s",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    return env


class PeerCut:
    """Drop TCP to `host:port` with iptables while in the block, removing the rule after.

    Connections to the node's port time out (a partition); its own connections to ZooKeeper
    (another port) are untouched. The rule is removed in `__exit__` whatever happened.
    """

    def __init__(self, host: str, port: int, *, reject: bool = False) -> None:
        """`reject`: answer with a TCP reset instead (refused at once; nothing a client sent
        before is delivered later by a retransmission)."""
        action = ["REJECT", "--reject-with", "tcp-reset"] if reject else ["DROP"]
        self.rule = ["INPUT", "-p", "tcp", "-d", host, "--dport", str(port), "-j", *action]

    @staticmethod
    def available() -> str | None:
        """None when iptables can be used here, else why not."""
        if shutil.which("iptables") is None:
            return "iptables is not installed (scripts/setup installs it)"
        if os.geteuid() != 0:
            return "iptables needs root"
        return None

    def __enter__(self) -> PeerCut:
        subprocess.run(["iptables", "-A", *self.rule], check=True, capture_output=True)
        return self

    def __exit__(self, *_: object) -> None:
        # -D removes one copy; loop (bounded) in case a crash left another behind.
        for _attempt in range(5):
            done = subprocess.run(["iptables", "-D", *self.rule], capture_output=True)
            if done.returncode != 0:
                break


def _http(url: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError):  # refused, reset or timed out: no answer yet
        return 0, None


class NemesisCluster:
    """ZooKeeper, one TCP proxy to it per node, and the node processes (running or spare)."""

    def __init__(
        self,
        zk: ManagedZooKeeper,
        spec: NemesisSpec,
        workdir: Path,
        *,
        python: str = sys.executable,
    ) -> None:
        self.zk = zk
        self.spec = spec
        servers, chroot = split_zk_hosts(zk.new_chroot("nemesis-"))
        self.zk_servers, self.chroot = servers, chroot
        count = spec.nodes + spec.spares
        hosts = [f"127.0.0.{i}" for i in range(1, count + 1)]
        self.port = free_port_on_all(hosts)
        self.proxies = [TcpProxy(("127.0.0.1", zk.port)).start() for _ in hosts]
        keys = spec.node_keys()
        self.nodes = [
            NodeProcess(
                {
                    **keys,
                    **zk_yaml(f"{proxy.address}{chroot}"),
                    "pacemaker.host": host,
                    "pacemaker.port": self.port,
                    "pacemaker.servers": hosts[: spec.nodes],
                },
                workdir=workdir,
                python=python,
            )
            for host, proxy in zip(hosts, self.proxies, strict=True)
        ]
        self.members: list[int] = []  # indexes of the nodes that should be in the ring

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def client_keys(self) -> dict[str, Any]:
        """A client's config: ZooKeeper directly (not through a node's proxy)."""
        return {
            **self.spec.node_keys(),
            **zk_yaml(",".join(self.zk_servers) + self.chroot),
            "pacemaker.servers": [n.node_id for n in self.nodes[: self.spec.nodes]],
        }

    def start(self) -> None:
        for i in range(self.spec.nodes):
            self.nodes[i].start()
        for i in range(self.spec.nodes):
            self.nodes[i].wait_ready(30)
        self.members = list(range(self.spec.nodes))
        self.wait_converged()

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        for proxy in self.proxies:
            proxy.close()

    def views(self) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for i in self.members:
            status, doc = _http(f"{self.nodes[i].url}/v1/members", timeout=1.0)
            out.append(doc if status == 200 else None)
        return out

    def settled(self) -> bool:
        """Every member is connected to ZooKeeper and not fenced. After a ZooKeeper restart
        the ring can agree while a node is still reconnecting: its session may yet expire
        (wiping its store), so the fault has not healed until it is connected again."""
        for i in self.members:
            status, doc = _http(f"{self.nodes[i].url}/health", timeout=1.0)
            if status != 200 or doc.get("membership") != "CONNECTED" or doc.get("fenced"):
                return False
        return True

    def converged(self) -> bool:
        """The fault has healed: every member settled, at one epoch, listing every member."""
        if not self.settled():
            return False
        views = self.views()
        if any(v is None for v in views):
            return False
        want = {self.nodes[i].node_id for i in self.members}
        epochs = {v["epoch"] for v in views if v is not None}
        listed = [{m["node_id"] for m in v["members"]} for v in views if v is not None]
        return len(epochs) == 1 and all(got == want for got in listed)

    def wait_converged(self, timeout: float = 30.0) -> None:
        wait_until(self.converged, timeout=timeout, interval=0.1)

    # --- the faults ------------------------------------------------------------------------

    def apply(self, step: Step) -> str:
        """Run one fault to its end (healed); a line saying what was done."""
        spec = self.spec
        session = spec.session_ms / 1000
        hold = spec.hold + step.jitter
        fault = step.fault
        if fault == "join" and len(self.members) > spec.nodes:
            fault = "drain"  # keep the size within one of the spec's
        if fault == "drain" and len(self.members) < spec.nodes:
            fault = "join"
        if fault == "join":
            spares = [i for i in range(len(self.nodes)) if i not in self.members]
            index = spares[step.target % len(spares)]
            node = self.nodes[index]
            node.start().wait_ready(30)
            self.members.append(index)
            return f"join {node.node_id}"
        index = self.members[step.target % len(self.members)]
        node = self.nodes[index]
        what = f"{fault} {node.node_id}"
        if fault == "kill":
            node.kill()
            time.sleep(hold)
            node.start().wait_ready(30)
        elif fault == "pause":
            node.stop_signal()
            try:
                time.sleep(session + hold)
            finally:
                node.cont()
        elif fault == "drain":
            status, _ = _http(f"{node.url}/v1/admin/drain", "POST")
            if status not in (200, 202):
                raise RuntimeError(f"drain of {node.node_id}: HTTP {status}")
            node.wait_exit(60)
            self.members.remove(index)
        elif fault == "stop_rejoin":
            node.terminate()
            time.sleep(hold)
            node.start().wait_ready(30)
        elif fault == "zk_restart":
            self.zk.stop()
            try:
                time.sleep(hold)
            finally:
                self.zk.start()
            what = "zk_restart"
        elif fault == "zk_cut":
            proxy = self.proxies[index]
            proxy.set_mode("blackhole")
            try:
                time.sleep(session + hold)
            finally:
                proxy.set_mode("forward")
        elif fault == "peer_cut":
            with PeerCut(node.host, node.port):
                time.sleep(session + hold)
        elif fault == "skew":
            offset = SKEW_SECS if step.target % 2 else -SKEW_SECS
            what = f"skew {offset:+g}s {node.node_id}"
            true_env = node.env
            node.terminate()
            node.env = faketime_env(offset, true_env)
            try:
                node.start().wait_ready(30)
                self.wait_converged()
                time.sleep(hold * 2)
                node.terminate()
            finally:
                node.env = true_env
            node.start().wait_ready(30)
        else:
            raise ValueError(f"unknown fault {fault!r}")
        return what


@dataclass
class NemesisResult:
    """One seed's outcome: what was done and what the judge found."""

    seed: int
    steps: list[str]
    report: Report
    history: History
    seconds: float
    windows: list[tuple[float, float, str]] = field(default_factory=list)  # monotonic

    @property
    def ok(self) -> bool:
        r = self.report
        return not (r.misses or r.stale or r.resurrections or r.invented)

    def summary(self) -> str:
        r = self.report
        ops = self.history.ops
        reads = sum(1 for o in ops if o.op == "read" and o.outcome in ("ok", "absent"))
        writes = sum(1 for o in ops if o.op == "write" and o.outcome == "ok")
        late = sum(1 for o in ops if o.late)
        return (
            f"seed {self.seed}: {'OK' if self.ok else 'FAILED'} in {self.seconds:.0f} s; "
            f"{writes} acked writes ({late} ops late: Storm attempts given up on), "
            f"{reads} reads; misses {len(r.misses)}, stale "
            f"{len(r.stale)}, resurrections {len(r.resurrections)}, invented "
            f"{len(r.invented)}; faults: {', '.join(self.steps)}"
        )

    def fault_at(self, t: float) -> str:
        """The fault running at monotonic time `t`, or the last one healed before it."""
        last = "before any fault"
        for start, end, what in self.windows:
            if start <= t <= end:
                return what
            if end < t:
                last = f"after {what}"
        return last

    def findings(self, limit: int = 10) -> list[str]:
        """The judge's findings (not the ages), each with the fault its op ran under."""
        r = self.report
        found = [*r.misses, *r.stale, *r.resurrections, *r.invented]
        return [f"[{self.fault_at(f.op.start)}] {f}" for f in found[:limit]]

    def by_fault(self) -> dict[str, int]:
        """How many findings each fault (as `fault_at` names it) is blamed for."""
        r = self.report
        counts: dict[str, int] = {}
        for f in [*r.misses, *r.stale, *r.resurrections, *r.invented]:
            fault = " ".join(w for w in self.fault_at(f.op.start).split() if ":" not in w)
            key = f"{f.rule} {fault}"
            counts[key] = counts.get(key, 0) + 1
        return counts


class _Load:
    """The mixed load on its own event loop in a thread."""

    def __init__(self, load: MixedLoad) -> None:
        self.load = load
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="nemesis-load", daemon=True)

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self.load.run(self._stop))
        except BaseException as exc:
            self._error = exc
        finally:
            self._loop.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        if self._thread.is_alive():
            raise RuntimeError("nemesis load did not stop within 60 s")
        if self._error is not None:
            raise RuntimeError(f"nemesis load failed: {self._error!r}") from self._error


def run_seed(
    spec: NemesisSpec,
    seed: int,
    workdir: Path,
    *,
    zk: ManagedZooKeeper | None = None,
    say: Any = print,
) -> NemesisResult:
    """One seed: cluster up, load on, every scheduled fault in turn, load off, judged."""
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    steps = schedule(seed, spec.faults)
    done: list[str] = []
    windows: list[tuple[float, float, str]] = []
    history = History()
    with contextlib.ExitStack() as stack:
        if zk is None:
            zk = stack.enter_context(ManagedZooKeeper(workdir / "zk", tick_ms=200))
        cluster = NemesisCluster(zk, spec, workdir)
        stack.callback(cluster.close)
        cluster.start()
        config = config_from_mapping(cluster.client_keys())
        load = _Load(MixedLoad(config, cluster.urls, spec.load, history=history, seed=seed))
        load.start()
        try:
            time.sleep(spec.settle * 2)
            for step in steps:
                t0 = time.monotonic()
                what = cluster.apply(step)
                cluster.wait_converged()
                windows.append((t0, time.monotonic(), what))
                healed = "healed: nodes connected, ring agreed"
                say(f"seed {seed} t={t0 - began:5.1f}s {what} ({healed})")
                done.append(what)
                time.sleep(spec.settle)
        finally:
            load.stop()
    report = check(
        history,
        period=spec.period,
        request_timeout=spec.request_timeout,
        writer_slack=0.1 * spec.period,
    )
    return NemesisResult(seed, done, report, history, time.monotonic() - began, windows)
