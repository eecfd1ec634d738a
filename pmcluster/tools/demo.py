"""`pmcluster up`: a local cluster plus a simulated Storm load, with a live status.

Workers write heartbeats (an 8-byte sequence number, the 8-byte write time in ns, then filler
up to the payload size) every period through the ring-aware client; a Nimbus-like reader lists
`/workerbeats`, each topology, and reads every heartbeat every read period. A heartbeat that is
absent although its worker's write was acknowledged, or older than the timeout (Storm's
30 s `nimbus.task.timeout.secs`), is counted; `--duration` makes the exit code say whether any
ever was.

Before the first status line it prints what to do next (`next_steps`): the status page's URL,
a `curl` that reads a heartbeat, the `pmcluster ls` line, which PID to kill to watch a node go
down on the page, and that Ctrl-C stops everything; `--open` opens the page in a browser
when there is one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shlex
import shutil
import signal
import struct
import sys
import tempfile
import time
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from pmcluster.client import ClusterClient
from pmcluster.config import Config
from pmcluster.node.metrics import parse_metrics
from pmcluster.protocol.paths import to_url
from pmcluster.tools.localcluster import HarnessError, NodeProcess, free_port_on_all, port_is_free

HEADER = struct.Struct(">QQ")
WORKER_TIMEOUT_SECS = 30.0
DEFAULT_PORT = 6699


@dataclass
class LoadStats:
    """What the load has seen so far; the status line and the verdict read it."""

    writes: int = 0
    write_failures: int = 0
    reads: int = 0
    read_failures: int = 0
    rounds: int = 0
    missing: int = 0
    stale: int = 0
    oldest_age: float = 0.0
    acked: dict[str, float] = field(default_factory=dict)  # path -> first ack time

    @property
    def healthy(self) -> bool:
        return self.missing == 0 and self.stale == 0


def worker_paths(workers: int, topologies: int) -> list[str]:
    """Storm-shaped heartbeat paths: /workerbeats/<storm-id>/<node>-<port>."""
    return [
        f"/workerbeats/demo-topo-{i % topologies}-1700000000/"
        f"node-{i // 4:04d}-10.0.0.{i % 250}-{6700 + i % 4}"
        for i in range(workers)
    ]


def make_payload(seq: int, size: int, filler: bytes) -> bytes:
    head = HEADER.pack(seq, time.time_ns())
    return head + filler[: max(size - len(head), 0)]


async def worker_loop(
    client: ClusterClient,
    path: str,
    size: int,
    period: float,
    stats: LoadStats,
    stop: asyncio.Event,
) -> None:
    filler = random.randbytes(max(size, 16))
    await asyncio.sleep(random.uniform(0, period))
    seq = 0
    while not stop.is_set():
        seq += 1
        try:
            await client.send_pulse(path, make_payload(seq, size, filler))
            stats.writes += 1
            stats.acked.setdefault(path, time.monotonic())
        except Exception:  # a failed write is a figure, not a crash
            stats.write_failures += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)


async def reader_round(client: ClusterClient, stats: LoadStats, expected: Sequence[str]) -> None:
    """List /workerbeats, then each topology, then read every heartbeat, as Nimbus does."""
    began = time.monotonic()
    must_exist = {p for p in expected if stats.acked.get(p, float("inf")) < began}
    seen: set[str] = set()
    oldest = 0.0
    try:
        topologies = await client.get_all_nodes_for_path("/workerbeats")
        stats.reads += 1
    except Exception:
        stats.read_failures += 1
        return
    for topo in topologies:
        try:
            names = await client.get_all_nodes_for_path(f"/workerbeats/{topo}")
            stats.reads += 1
        except Exception:
            stats.read_failures += 1
            continue
        paths = [f"/workerbeats/{topo}/{name}" for name in names]
        results = await asyncio.gather(
            *(client.get_pulse(p) for p in paths), return_exceptions=True
        )
        for path, result in zip(paths, results, strict=True):
            if isinstance(result, BaseException):
                stats.read_failures += 1
                continue
            stats.reads += 1
            if result is None:
                continue
            seen.add(path)
            _, written_ns = HEADER.unpack_from(result.data)
            age = max(time.time_ns() - written_ns, 0) / 1e9
            oldest = max(oldest, age)
            if age > WORKER_TIMEOUT_SECS:
                stats.stale += 1
    # A heartbeat not listed is also read directly: a listing gap must not hide a miss.
    for path in sorted(must_exist - seen):
        try:
            if await client.get_pulse(path) is None:
                stats.missing += 1
        except Exception:
            stats.read_failures += 1
            stats.missing += 1
    stats.oldest_age = oldest
    stats.rounds += 1


async def node_figures(session: aiohttp.ClientSession, url: str) -> tuple[int, int] | None:
    """(keys, bytes) from a node's /metrics, or None when it does not answer."""
    try:
        async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=1)) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    figures = parse_metrics(text)
    return (
        int(figures.get("pmcluster_stored_keys", 0)),
        int(figures.get("pmcluster_stored_bytes", 0)),
    )


class StatusPrinter:
    """Refreshes the status in place on a terminal; prints plain lines otherwise."""

    def __init__(self, stream: Any = sys.stdout) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.lines_drawn = 0

    def show(self, lines: list[str]) -> None:
        if self.tty:
            if self.lines_drawn:
                self.stream.write(f"\x1b[{self.lines_drawn}A")
            for line in lines:
                self.stream.write("\x1b[2K" + line + "\n")
            self.lines_drawn = len(lines)
        else:
            self.stream.write(" | ".join(lines) + "\n")
        self.stream.flush()


def status_lines(
    stats: LoadStats,
    elapsed: float,
    prev: tuple[int, int],
    interval: float,
    nodes: dict[str, tuple[int, int] | None],
) -> list[str]:
    wps = (stats.writes - prev[0]) / interval
    rps = (stats.reads - prev[1]) / interval
    lines = [
        f"t={elapsed:6.0f}s writes/s={wps:7.1f} reads/s={rps:7.1f} "
        f"oldest heartbeat age={stats.oldest_age:5.1f}s rounds={stats.rounds} "
        f"failed requests={stats.write_failures + stats.read_failures} "
        f"missing={stats.missing} stale={stats.stale}"
    ]
    for node_id, figures in nodes.items():
        if figures is None:
            lines.append(f"  {node_id:22} DOWN")
        else:
            lines.append(f"  {node_id:22} keys={figures[0]:7d} bytes={figures[1]:11d}")
    return lines


async def drive_load(
    config: Config,
    node_urls: dict[str, str],
    args: argparse.Namespace,
    stop: asyncio.Event,
    printer: StatusPrinter,
) -> LoadStats:
    stats = LoadStats()
    paths = worker_paths(args.workers, args.topologies)
    started = time.monotonic()
    async with ClusterClient(config) as client, aiohttp.ClientSession() as session:
        tasks = [
            asyncio.create_task(worker_loop(client, p, args.payload, args.period, stats, stop))
            for p in paths
        ]

        async def reader() -> None:
            await asyncio.sleep(min(args.read_period, args.period * 1.5))
            while not stop.is_set():
                await reader_round(client, stats, paths)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.read_period)

        tasks.append(asyncio.create_task(reader()))
        interval = 2.0
        prev = (0, 0)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            figures = await asyncio.gather(*(node_figures(session, u) for u in node_urls.values()))
            nodes = dict(zip(node_urls, figures, strict=True))
            printer.show(status_lines(stats, time.monotonic() - started, prev, interval, nodes))
            prev = (stats.writes, stats.reads)
            if args.duration and time.monotonic() - started >= args.duration:
                stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def cli_command() -> str:
    """How this `pmcluster` was started, so a printed command runs as it is."""
    program = sys.argv[0] if sys.argv else ""
    if Path(program).name == "pmcluster":
        return shlex.quote(program)
    return f"{shlex.quote(sys.executable)} -m pmcluster"


def next_steps(procs: Sequence[NodeProcess], sample_path: str, cli: str) -> list[str]:
    """What to do with the running cluster: the lines printed before the first status line."""
    first, last = procs[0], procs[-1]
    servers = ",".join(p.node_id for p in procs)
    pulse_url = f"{first.url}/v1/pulse/{to_url(sample_path)}"
    return [
        f"  status page:      {first.url}/   (every node serves it, e.g. {last.url}/)",
        f"  read a heartbeat: curl -sS -D - -o /dev/null {pulse_url}",
        f"  list topologies:  {cli} ls --servers {servers} /workerbeats",
        f"  kill a node:      kill -9 {last.pid}   (node {last.node_id}); the page shows it down",
        "  Ctrl-C stops everything: the load and every node started here.",
    ]


def open_page(url: str) -> str:
    """Open `url` in a graphical browser if this machine has one; what happened, as a line."""
    graphical = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if not graphical:  # a console browser would take over the terminal the status is on
        return f"  --open: no graphical display here; open {url} yourself"
    try:
        opened = webbrowser.get().open(url)
    except webbrowser.Error:
        opened = False
    return f"  --open: opened {url}" if opened else f"  --open: no browser found; open {url}"


def node_hosts(nodes: int) -> list[str]:
    return [f"127.0.0.{i + 1}" for i in range(nodes)]


def choose_port(choice: str | int, hosts: list[str]) -> int:
    """`--port`: a number as given, or `auto`: 6699 when it is free on every node address,
    else a port the kernel says is free on all of them (two `up`s side by side, CI)."""
    if str(choice) != "auto":
        try:
            port = int(choice)
        except ValueError:
            raise ValueError(f"--port must be a number or auto, not {choice!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"--port must be in 1..65535, not {port}")
        return port
    if all(port_is_free(h, DEFAULT_PORT) for h in hosts):
        return DEFAULT_PORT
    return free_port_on_all(hosts)


def node_configs(args: argparse.Namespace, port: int) -> list[dict[str, Any]]:
    hosts = node_hosts(args.nodes)
    members = [f"{h}:{port}" for h in hosts]
    configs = []
    for host in hosts:
        conf: dict[str, Any] = {
            "pacemaker.host": host,
            "pacemaker.port": port,
            "task.heartbeat.frequency.secs": args.period,
        }
        if args.zookeeper:
            conf["storm.zookeeper.servers"] = [args.zookeeper]
        else:
            conf["pacemaker.servers"] = members
        configs.append(conf)
    return configs


def run_up(args: argparse.Namespace) -> int:
    """Start the nodes, run the load until Ctrl-C or --duration, stop every process started."""
    if args.nodes < 1 or args.workers < 1 or args.topologies < 1:
        print("pmcluster up: --nodes, --workers and --topologies must be >= 1", file=sys.stderr)
        return 2
    if args.nodes > 254:
        print("pmcluster up: at most 254 nodes (127.0.0.1 .. 127.0.0.254)", file=sys.stderr)
        return 2
    try:
        port = choose_port(args.port, node_hosts(args.nodes))
    except (ValueError, HarnessError) as exc:
        print(f"pmcluster up: {exc}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="pmcluster-up-"))
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[NodeProcess] = []
    try:
        for i, conf in enumerate(node_configs(args, port)):
            node_dir = workdir / f"node{i + 1}"
            node_dir.mkdir(exist_ok=True)
            procs.append(NodeProcess(conf, workdir=node_dir))
        for proc in procs:
            proc.start()
        try:
            for proc in procs:
                proc.wait_ready(timeout=20)
        except HarnessError as exc:
            print(f"pmcluster up: a node did not start: {exc}", file=sys.stderr)
            return 2
        print(
            f"pmcluster up: {len(procs)} nodes ({', '.join(p.node_id for p in procs)}); "
            f"{args.workers} workers x {args.payload} B every {args.period:g} s; "
            f"logs in {workdir}",
            flush=True,
        )
        steps = next_steps(procs, worker_paths(1, 1)[0], cli_command())
        if args.open:
            steps.append(open_page(f"{procs[0].url}/"))
        print("\n".join(steps), flush=True)
        client_conf = Config(
            servers=tuple(p.node_id for p in procs) if not args.zookeeper else (),
            zk_servers=(args.zookeeper,) if args.zookeeper else (),
            heartbeat_secs=args.period,
        )
        urls = {p.node_id: p.url for p in procs}
        stats = asyncio.run(_main(client_conf, urls, args))
    finally:
        for proc in procs:
            proc.terminate()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    verdict = "OK" if stats.healthy else "FAILED"
    print(
        f"pmcluster up: {verdict}: {stats.writes} writes, {stats.reads} reads, "
        f"{stats.rounds} reader rounds, missing={stats.missing} stale={stats.stale} "
        f"failed requests={stats.write_failures + stats.read_failures}"
    )
    return 0 if stats.healthy else 1


async def _main(config: Config, urls: dict[str, str], args: argparse.Namespace) -> LoadStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await drive_load(config, urls, args, stop, StatusPrinter())
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


__all__ = ["LoadStats", "next_steps", "open_page", "run_up", "worker_paths"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `pmcluster up`."""
    p.add_argument("--nodes", type=int, default=3, help="nodes on 127.0.0.1, .2, ... (3)")
    p.add_argument("--workers", type=int, default=200, help="simulated workers (200)")
    p.add_argument("--topologies", type=int, default=4, help="topologies (4)")
    p.add_argument("--payload", type=int, default=5 * 1024, help="heartbeat bytes (5120)")
    p.add_argument("--period", type=float, default=3.0, help="heartbeat period, s (3)")
    p.add_argument("--read-period", type=float, default=10.0, help="reader round, s (10)")
    p.add_argument("--port", default="auto", help="node port, or auto (6699 if free, else any)")
    p.add_argument("--zookeeper", help="use this ZooKeeper (HOST:PORT) instead of static members")
    p.add_argument("--duration", type=float, help="run this many seconds, then exit")
    p.add_argument("--workdir", help="where node configs and logs go (a temp dir)")
    p.add_argument(
        "--open", action="store_true", help="open the status page in a browser, if there is one"
    )
