"""`pmcluster soak`: a long run of a 3-node cluster under a Storm-sized load, with crashes.

By default: ZooKeeper and 3 nodes on 127.0.0.1/.2/.3 (the test harness), 2,000 workers
writing 5 KB heartbeats every 3 s through the ring-aware client, a Nimbus-like reader that
reads every worker's heartbeat every 10 s, for 10 minutes; every 2 minutes one node (in turn)
is killed with SIGKILL and started again, empty, at the same address. Each minute it prints
the operations so far, every node's RSS and open file descriptors and the reader's p99
latency; at the end, the history checker's verdict (misses, stale, resurrections: must be 0),
RSS growth per node after warm-up (must stay under 5 %) and the descriptor counts. Not in CI:

    pmcluster soak                       # the full 10 minutes
    pmcluster soak --duration 120 --kill-every 40 --history soak.jsonl

With `--nemesis` it runs the nemesis suite instead (`pmcluster.tools.nemesis`): per seed, a
fresh ZooKeeper and 4 nodes, every fault kind once in a seeded order under the three-kind
load, judged by the history checker; a summary line per seed and the findings of the failed
ones, with the fault each happened under:

    pmcluster soak --nemesis --seeds 20            # seeds 1..20
    pmcluster soak --nemesis --seeds 1 --first-seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.process
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pmcluster.client import ClusterClient
from pmcluster.config import Config, config_from_mapping
from pmcluster.errors import PmclusterError
from pmcluster.tools.bench.procstats import rss_bytes
from pmcluster.tools.history import History, Report, check
from pmcluster.tools.loadgen import LoadSpec, StormLoad, heartbeat_paths
from pmcluster.tools.localcluster import ManagedZooKeeper, NodeCluster, NodeProcess, zk_yaml

__all__ = ["SoakSpec", "add_arguments", "run_command", "soak"]

WARMUP_SECS = 60.0  # RSS is judged from the first sample this long after a node's start


@dataclass(frozen=True)
class SoakSpec:
    """The run's shape; defaults are the documented 10-minute soak."""

    duration: float = 600.0
    workers: int = 2000
    payload: int = 5 * 1024
    period: float = 3.0
    read_every: float = 10.0
    kill_every: float = 120.0
    nodes: int = 3
    sample_every: float = 60.0
    zookeeper: bool = True
    session_timeout_ms: int = 6000
    load_procs: int = 4  # writer processes: one Python process cannot drive 2,000 workers


@dataclass
class NodeSamples:
    """RSS (bytes) and open descriptors of one node, sampled over the run."""

    started: float
    rss: list[tuple[float, int]] = field(default_factory=list)
    fds: list[tuple[float, int]] = field(default_factory=list)

    def growth_after_warmup(self) -> float | None:
        """RSS growth from the first sample after warm-up to the last one (None: too short)."""
        after = [(t, v) for t, v in self.rss if t >= self.started + WARMUP_SECS]
        if len(after) < 2:
            return None
        return after[-1][1] / after[0][1] - 1.0


def _proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _reader_rounds(
    config: Config, paths: list[str], every: float, history: History, stop: asyncio.Event
) -> None:
    """Like Nimbus: every `every` seconds, read every worker's heartbeat (64 at a time)."""
    async with ClusterClient(config) as client:
        limit = asyncio.Semaphore(64)

        async def read(path: str) -> None:
            async with limit:
                op = history.begin("nimbus-client", "read", path)
                try:
                    pulse = await client.get_pulse(path)
                    version = None if pulse is None else pulse.version
                    op.finish("absent" if pulse is None else "ok", value=version)
                except TimeoutError:
                    op.finish("timeout")
                except (PmclusterError, OSError):
                    op.finish("error")

        while not stop.is_set():
            began = time.monotonic()
            await asyncio.gather(*(read(p) for p in paths))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, every - (time.monotonic() - began)))


class _LoadThread:
    """Writers (`StormLoad`) and reader rounds on one event loop in a background thread."""

    def __init__(self, config: Config, spec: SoakSpec, history: History) -> None:
        self.paths = heartbeat_paths(spec.workers, topologies=20)
        load_spec = LoadSpec(
            paths=tuple(self.paths), period=spec.period, payload=spec.payload, readers=0
        )
        # Without writer processes, this thread writes too.
        self.load = StormLoad(config, load_spec, history=history) if not spec.load_procs else None
        self.config, self.spec, self.history = config, spec, history
        self._loop = asyncio.new_event_loop()
        # Made here, not in `_run`: a `stop()` that comes before the loop has started must
        # still reach it (the event binds to the loop on first use).
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="pmcluster-soak", daemon=True)

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self._run())
        except BaseException as exc:  # reported by stop()
            self._error = exc
        finally:
            self._loop.close()

    async def _run(self) -> None:
        reader = _reader_rounds(
            self.config, self.paths, self.spec.read_every, self.history, self._stop
        )
        if self.load is None:
            await reader
        else:
            await asyncio.gather(self.load.run(self._stop), reader)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already ended and closed
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        if self._error is not None:
            raise RuntimeError(f"soak load failed: {self._error!r}") from self._error


def _writer_process(
    config_keys: dict[str, Any], paths: list[str], spec: SoakSpec, out: str, seed: int
) -> None:
    """One writer process: `StormLoad` writers for `paths` for the run, history to `out`."""
    history = History()
    load_spec = LoadSpec(paths=tuple(paths), period=spec.period, payload=spec.payload, readers=0)
    load = StormLoad(config_from_mapping(config_keys), load_spec, history=history, seed=seed)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(spec.duration, stop.set)
        await load.run(stop)

    asyncio.run(main())
    history.dump_jsonl(out)


def _start_writers(
    config_keys: dict[str, Any], paths: list[str], spec: SoakSpec, workdir: Path
) -> list[tuple[multiprocessing.process.BaseProcess, Path]]:
    context = multiprocessing.get_context("spawn")
    started: list[tuple[multiprocessing.process.BaseProcess, Path]] = []
    for i in range(spec.load_procs):
        out = workdir / f"writers-{i}.jsonl"
        proc = context.Process(
            target=_writer_process,
            args=(config_keys, paths[i :: spec.load_procs], spec, str(out), i + 1),
            name=f"pmcluster-soak-writers-{i}",
            daemon=True,
        )
        proc.start()
        started.append((proc, out))
    return started


def _minute_line(
    elapsed: float, history: History, nodes: list[NodeProcess], samples: list[NodeSamples]
) -> str:
    ops = history.ops
    failed = sum(1 for o in ops if o.outcome in ("error", "timeout"))
    reads = [o.end - o.start for o in ops if o.op == "read" and o.end >= time.monotonic() - 60]
    parts = [f"t={elapsed:5.0f}s ops here {len(ops)} failed {failed}"]
    for node, sample in zip(nodes, samples, strict=True):
        if node.running():
            rss = sample.rss[-1][1] / 2**20 if sample.rss else 0.0
            fds = sample.fds[-1][1] if sample.fds else 0
            parts.append(f"{node.host} {rss:.1f} MiB {fds} fds")
        else:
            parts.append(f"{node.host} down")
    parts.append(f"read p99 {_p99(reads) * 1000:.1f} ms (last minute)")
    return " | ".join(parts)


def _sample(nodes: list[NodeProcess], samples: list[NodeSamples]) -> None:
    now = time.monotonic()
    for node, sample in zip(nodes, samples, strict=True):
        if node.running():
            with contextlib.suppress(OSError):
                sample.rss.append((now, rss_bytes(node.pid)))
                sample.fds.append((now, _proc_fds(node.pid)))


def soak(spec: SoakSpec, workdir: Path, history_path: Path | None = None) -> Report:
    """Run the soak; prints a line per sample and the summary; returns the checker's report."""
    history = History()
    keys: dict[str, Any] = {
        "task.heartbeat.frequency.secs": spec.period,
        "storm.zookeeper.session.timeout": spec.session_timeout_ms,
        "pmcluster.log.level": "INFO",
    }
    with contextlib.ExitStack() as stack:
        zk_hosts = None
        if spec.zookeeper:
            zk = stack.enter_context(ManagedZooKeeper(workdir / "zk", tick_ms=500))
            zk_hosts = zk.new_chroot("soak-")
        cluster = stack.enter_context(
            NodeCluster(spec.nodes, workdir=workdir, zk_hosts=zk_hosts, extra=keys)
        )
        client_keys = dict(keys)
        client_keys.update(zk_yaml(zk_hosts) if zk_hosts else {})
        client_keys["pacemaker.servers"] = cluster.node_ids
        config = config_from_mapping(client_keys)
        samples = [NodeSamples(time.monotonic()) for _ in cluster.nodes]
        load = _LoadThread(config, spec, history)
        writers = _start_writers(client_keys, load.paths, spec, workdir)
        load.start()
        began = time.monotonic()
        next_kill = began + spec.kill_every
        next_sample = began + spec.sample_every
        victim = 0
        try:
            while (now := time.monotonic()) < began + spec.duration:
                if now >= next_kill:
                    node = cluster[victim % len(cluster)]
                    print(f"t={now - began:5.0f}s kill -9 {node.node_id}, restarting it empty")
                    node.kill()
                    node.start().wait_ready(30)
                    samples[victim % len(cluster)] = NodeSamples(time.monotonic())
                    victim += 1
                    next_kill += spec.kill_every
                if now >= next_sample:
                    _sample(cluster.nodes, samples)
                    print(_minute_line(now - began, history, cluster.nodes, samples), flush=True)
                    next_sample += spec.sample_every
                time.sleep(0.2)
        finally:
            load.stop()
            for proc, out in writers:
                proc.join(spec.period + 60)
                if proc.is_alive():
                    proc.kill()
                elif out.exists():
                    history.extend(History.load_jsonl(out).ops)
        _sample(cluster.nodes, samples)
    if history_path is not None:
        history.dump_jsonl(history_path)
    report = check(history, period=spec.period, request_timeout=config.request_timeout_secs)
    _print_summary(report, history, cluster.nodes, samples)
    return report


def _print_summary(
    report: Report, history: History, nodes: list[NodeProcess], samples: list[NodeSamples]
) -> None:
    reads = [o.end - o.start for o in history.ops if o.op == "read" and o.outcome != "error"]
    writes = [o for o in history.ops if o.op == "write"]
    failed = sum(1 for o in writes if o.outcome in ("error", "timeout"))
    print(report.verdict_line())
    print(f"writes {len(writes)} ({failed} failed or timed out)")
    print(f"reads {len(reads)}, p99 read latency {_p99(reads) * 1000:.1f} ms")
    for node, sample in zip(nodes, samples, strict=True):
        growth = sample.growth_after_warmup()
        shown = "n/a (restarted too recently)" if growth is None else f"{growth * 100:+.1f} %"
        fds = [v for _, v in sample.fds]
        fd_range = f"{min(fds)}..{max(fds)}" if fds else "n/a"
        print(f"{node.node_id}: RSS growth after warm-up {shown}, open fds {fd_range}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `pmcluster soak`."""
    d = SoakSpec()
    p.add_argument("--duration", type=float, default=d.duration, help="seconds (600)")
    p.add_argument("--workers", type=int, default=d.workers, help="heartbeat paths (2000)")
    p.add_argument("--payload", type=int, default=d.payload, help="heartbeat bytes (5120)")
    p.add_argument("--period", type=float, default=d.period, help="heartbeat period, s (3)")
    p.add_argument("--read-every", type=float, default=d.read_every, help="reader round, s (10)")
    p.add_argument("--kill-every", type=float, default=d.kill_every, help="kill -9 period (120)")
    p.add_argument("--sample-every", type=float, default=d.sample_every, help="report, s (60)")
    p.add_argument("--load-procs", type=int, default=d.load_procs, help="writer processes (4)")
    p.add_argument("--no-zookeeper", action="store_true", help="static membership instead")
    p.add_argument("--workdir", help="node configs and logs (default: a temp dir, kept)")
    p.add_argument("--history", metavar="FILE", help="dump the history as JSON lines")
    p.add_argument("--nemesis", action="store_true", help="run the nemesis suite instead")
    p.add_argument("--seeds", type=int, default=20, help="nemesis: how many seeds (20)")
    p.add_argument("--first-seed", type=int, default=1, help="nemesis: the first seed (1)")


def run_nemesis(args: argparse.Namespace, workdir: Path) -> int:
    """`pmcluster soak --nemesis`: 0 when every seed's history is clean, 1 otherwise."""
    from pmcluster.tools.nemesis import NemesisSpec, PeerCut, faketime_env, run_seed

    missing = PeerCut.available()
    try:
        faketime_env(0)
    except RuntimeError as exc:
        missing = missing or str(exc)
    if missing is not None:
        print(f"soak --nemesis: {missing}")
        return 2
    failed: list[int] = []
    blame: dict[str, int] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        result = run_seed(NemesisSpec(), seed, workdir / f"seed-{seed}")
        print(result.summary(), flush=True)
        if args.history:
            result.history.dump_jsonl(f"{args.history}.seed-{seed}")
        if not result.ok:
            failed.append(seed)
            for line in result.findings(10):
                print(f"  {line}")
            for key, count in result.by_fault().items():
                blame[key] = blame.get(key, 0) + count
    print(f"nemesis: {args.seeds - len(failed)} of {args.seeds} seeds clean; failed: {failed}")
    for key, count in sorted(blame.items(), key=lambda kv: -kv[1]):
        print(f"  {count:5d} {key}")
    return 1 if failed else 0


def run_command(args: argparse.Namespace) -> int:
    """`pmcluster soak`: 0 when no heartbeat was lost, hidden or resurrected, 1 otherwise."""
    if args.nemesis:
        if not 1 <= args.seeds <= 1000:
            print("soak: --seeds must be between 1 and 1000")
            return 2
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pmcluster-nemesis-"))
        print(f"soak --nemesis: {args.seeds} seeds from {args.first_seed}; logs in {workdir}")
        return run_nemesis(args, workdir)
    spec = SoakSpec(
        duration=args.duration,
        workers=args.workers,
        payload=args.payload,
        period=args.period,
        read_every=args.read_every,
        kill_every=args.kill_every,
        sample_every=args.sample_every,
        zookeeper=not args.no_zookeeper,
        load_procs=args.load_procs,
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pmcluster-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"soak: {spec}; logs in {workdir}")
    report = soak(spec, workdir, Path(args.history) if args.history else None)
    # Lost or hidden heartbeats fail the soak; an age past period + timeout (writes failing
    # while the machine is starved) is reported above but is no loss: Nimbus waits 30 s.
    lost = report.misses or report.stale or report.resurrections or report.invented
    return 1 if lost else 0
