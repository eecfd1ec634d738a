"""Load generators: client processes driving a server for a fixed window, and what they saw.

`drive` starts one `spawn`ed process per spec (several processes, so the Python client is not
what limits a single server), lets them connect, then opens a shared measurement window:
`warmup` seconds of load that do not count, then `duration` seconds that do. Only requests
*completed* inside the window are counted; the servers' /proc figures are sampled at the
window's edges, so server CPU per heartbeat is the servers' own CPU time in the window over
the heartbeats completed in it. Window edges are CLOCK_MONOTONIC times, shared by all
processes on the machine.

Load shapes:
- `http_load`: raw HTTP/1.1 over keep-alive connections, one request in flight per
  connection, from prebuilt request bytes (a client costing a few µs per request): one PUT per
  heartbeat, or `POST /v1/batch` bodies of many heartbeats in the pulse-list encoding.
- `ring_load`: the ring-aware `ClusterClient`, `send_pulse` (or `send_pulses` batches) with N
  in flight: what a Storm worker using pmcluster's client does.
"""

from __future__ import annotations

import array
import asyncio
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

from pmcluster.protocol import pulsecodec
from pmcluster.protocol.paths import to_url
from pmcluster.tools.bench.procstats import ProcSample, sample, sample_sum

__all__ = [
    "Control",
    "HttpSpec",
    "Measured",
    "Outcome",
    "RingSpec",
    "Tally",
    "drive",
    "http_load",
    "ring_load",
    "split",
    "spread",
]

_READY_TIMEOUT_SECS = 60.0


@dataclass
class Outcome:
    """What one client process counted inside the window."""

    heartbeats: int = 0
    requests: int = 0
    errors: int = 0
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))

    def count(self, ok: bool, heartbeats: int, latency: float) -> None:
        """One request completed inside the window: `heartbeats` and its latency if `ok`."""
        self.requests += 1
        if ok:
            self.heartbeats += heartbeats
            self.latencies.append(latency)
        else:
            self.errors += 1


@dataclass
class Measured:
    """The window's totals over all client processes, and the servers' /proc change."""

    seconds: float
    heartbeats: int
    requests: int
    errors: int
    latencies: list[float]
    server: ProcSample
    client_cpu_secs: float  # the load processes' own CPU time in the window
    per_server_cpu_secs: tuple[float, ...] = ()  # each server process's CPU in the window


class Control:
    """A client process's link to the parent: readiness, the window, a progress counter."""

    def __init__(self, index: int, counts: Any, times: Any, ready: Any, go: Any) -> None:
        self._index = index
        self._counts = counts
        self._times = times
        self._ready = ready
        self._go = go

    def wait_window(self) -> tuple[float, float]:
        """Say "ready", wait for the parent's go; the window (t0, t1) in monotonic seconds."""
        self._ready.release()
        if not self._go.wait(_READY_TIMEOUT_SECS * 2):
            raise TimeoutError("the parent never opened the window")
        return float(self._times[0]), float(self._times[1])

    def progress(self, heartbeats: int) -> None:
        """Heartbeats completed so far, warm-up included (read by the parent's progress line)."""
        self._counts[self._index] = heartbeats


Target = Callable[[Any, Control], Outcome]


def _child(
    target: Target, spec: Any, index: int, counts: Any, times: Any, ready: Any, go: Any, out: Any
) -> None:
    try:
        outcome = target(spec, Control(index, counts, times, ready, go))
        out.put(
            (
                index,
                outcome.heartbeats,
                outcome.requests,
                outcome.errors,
                outcome.latencies.tobytes(),
                None,
            )
        )
    except BaseException:
        ready.release()  # never leave the parent waiting for a process that died
        out.put((index, 0, 0, 0, b"", traceback.format_exc()))


def drive(
    target: Target,
    specs: Sequence[Any],
    *,
    warmup: float,
    duration: float,
    server_pids: Sequence[int],
    progress: Callable[[float, int], None] | None = None,
) -> Measured:
    """Run `target(spec, control)` in one process per spec; measure the window."""
    ctx = multiprocessing.get_context("spawn")
    counts: SynchronizedArray[int] = ctx.Array("q", len(specs), lock=False)
    times: SynchronizedArray[float] = ctx.Array("d", 2, lock=False)
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    out: Any = ctx.Queue()
    procs = [
        ctx.Process(
            target=_child,
            args=(target, spec, i, counts, times, ready, go, out),
            daemon=True,
            name=f"pmcluster-bench-client-{i}",
        )
        for i, spec in enumerate(specs)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=_READY_TIMEOUT_SECS):
                raise RuntimeError("a load process did not get ready in time")
        t0 = time.monotonic() + warmup
        t1 = t0 + duration
        times[0], times[1] = t0, t1
        go.set()
        client_pids = [proc.pid for proc in procs if proc.pid is not None]
        _sleep_until(t0, counts, progress, t0)
        each_before = [sample(pid).cpu_secs for pid in server_pids]
        before, clients_before = sample_sum(server_pids), sample_sum(client_pids)
        _sleep_until(t1, counts, progress, t0)
        after, clients_after = sample_sum(server_pids), sample_sum(client_pids)
        each_after = [sample(pid).cpu_secs for pid in server_pids]
        results = [out.get(timeout=duration + _READY_TIMEOUT_SECS) for _ in procs]
    finally:
        for proc in procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
    failures = [r[5] for r in results if r[5]]
    if failures:
        raise RuntimeError("a load process failed:\n" + failures[0])
    latencies: list[float] = []
    for r in results:
        chunk = array.array("d")
        chunk.frombytes(r[4])
        latencies.extend(chunk)
    return Measured(
        seconds=duration,
        heartbeats=sum(r[1] for r in results),
        requests=sum(r[2] for r in results),
        errors=sum(r[3] for r in results),
        latencies=latencies,
        server=after - before,
        client_cpu_secs=clients_after.cpu_secs - clients_before.cpu_secs,
        per_server_cpu_secs=tuple(a - b for a, b in zip(each_after, each_before, strict=True)),
    )


def _sleep_until(
    deadline: float, counts: Any, progress: Callable[[float, int], None] | None, t0: float
) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        if progress is not None:
            progress(time.monotonic() - t0, sum(counts))


# --- raw HTTP load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpSpec:
    """One process's HTTP load: `kind` "put" (one heartbeat per request) or "batch"."""

    host: str
    port: int
    kind: str
    paths: tuple[str, ...]
    payload: int
    connections: int
    batch: int = 100
    # False: a user's plain request. True: with the internal `X-Pmcluster-Forwarded` header
    # (a node's or the ring-aware client's hop to an owner), for rows labelled as such.
    forwarded: bool = False
    # Spread the connections over these hosts in turn (clients behind one DNS name with
    # several addresses); empty: every connection to `host`.
    hosts: tuple[str, ...] = ()


def build_requests(spec: HttpSpec) -> tuple[list[bytes], int]:
    """Prebuilt request bytes cycled by the connections, and heartbeats per request."""
    data = os.urandom(spec.payload)
    head = f"Host: {spec.host}:{spec.port}\r\n"
    if spec.forwarded:
        head += "X-Pmcluster-Forwarded: 1\r\n"
    if spec.kind == "put":
        requests = [
            (
                f"PUT /v1/pulse/{to_url(path)} HTTP/1.1\r\n{head}"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data
            for path in spec.paths
        ]
        return requests, 1
    if spec.kind != "batch":
        raise ValueError(f"unknown HTTP load kind {spec.kind!r}")
    requests = []
    for start in range(0, len(spec.paths), spec.batch):
        group = spec.paths[start : start + spec.batch]
        if len(group) < spec.batch:  # every request carries exactly `batch` heartbeats
            group = (group + spec.paths)[: spec.batch]
        body = pulsecodec.encode([(path, data, None) for path in group])
        requests.append(
            (
                f"POST /v1/batch HTTP/1.1\r\n{head}Content-Type: {pulsecodec.MEDIA_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
    return requests, spec.batch


class Tally:
    """Counts shared by one process's connections; requests handed out round-robin."""

    def __init__(
        self, requests: list[bytes], per_request: int, window: tuple[float, float], ctl: Control
    ) -> None:
        self.requests = requests
        self.per_request = per_request
        self.t0, self.t1 = window
        self.ctl = ctl
        self.next = 0
        self.done = 0
        self.outcome = Outcome()
        self.open = 0
        self.all_closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def take(self) -> bytes:
        request = self.requests[self.next]
        self.next = (self.next + 1) % len(self.requests)
        return request

    def record(self, started: float, now: float, ok: bool) -> None:
        self.done += self.per_request
        if self.done % 512 < self.per_request:
            self.ctl.progress(self.done)
        if self.t0 <= now <= self.t1:
            self.outcome.count(ok, self.per_request, now - started)

    def closed(self) -> None:
        self.open -= 1
        if self.open == 0 and not self.all_closed.done():
            self.all_closed.set_result(None)


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection with one request in flight; parses just enough HTTP."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._tally.open += 1
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        now = time.monotonic()
        if now >= self._tally.t1:
            self._transport.close()
            return
        self._sent_at = now
        self._transport.write(self._tally.take())

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            self._buffer = buffer
            return
        head = buffer[:head_end]
        length = 0
        at = head.lower().find(b"\r\ncontent-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end >= 0 else None])
        if len(buffer) < head_end + 4 + length:
            self._buffer = buffer
            return
        self._buffer = buffer[head_end + 4 + length :]
        status = int(head[9:12])
        self._tally.record(self._sent_at, time.monotonic(), 200 <= status < 300)
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self._tally.closed()


def http_load(spec: HttpSpec, ctl: Control) -> Outcome:
    """The `drive` target for raw HTTP load."""
    requests, per_request = build_requests(spec)
    window = ctl.wait_window()

    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        tally = Tally(requests, per_request, window, ctl)
        hosts = spec.hosts or (spec.host,)
        for i in range(spec.connections):
            host = hosts[i % len(hosts)]
            await loop.create_connection(lambda: _HttpConnection(tally), host, spec.port)
        await asyncio.wait_for(tally.all_closed, window[1] - time.monotonic() + 30.0)
        ctl.progress(tally.done)
        return tally.outcome

    return asyncio.run(main())


# --- the ring-aware client ----------------------------------------------------------------------


@dataclass(frozen=True)
class RingSpec:
    """One process of Storm workers writing through `ClusterClient` (batch 0 = send_pulse)."""

    servers: tuple[str, ...]
    port: int
    replication: int
    paths: tuple[str, ...]
    payload: int
    in_flight: int
    batch: int = 0
    versioned: bool = False  # send_pulse with the writer's own version (time_ns)


def ring_load(spec: RingSpec, ctl: Control) -> Outcome:
    """The `drive` target for the ring-aware client."""
    from pmcluster.client import ClusterClient
    from pmcluster.config import Config

    config = Config(servers=spec.servers, port=spec.port, replication=spec.replication)
    data = os.urandom(spec.payload)
    per_call = max(1, spec.batch)

    async def main() -> Outcome:
        outcome = Outcome()
        async with ClusterClient(config) as client:
            t0, t1 = await asyncio.to_thread(ctl.wait_window)
            done = 0
            cursor = 0

            async def worker() -> None:
                nonlocal done, cursor
                while (started := time.monotonic()) < t1:
                    first = cursor
                    cursor = (cursor + per_call) % len(spec.paths)
                    ok = True
                    try:
                        if spec.batch:
                            group = [
                                spec.paths[(first + k) % len(spec.paths)] for k in range(per_call)
                            ]
                            await client.send_pulses([(p, data) for p in group])
                        elif spec.versioned:
                            await client.send_pulse(spec.paths[first], data, time.time_ns())
                        else:
                            await client.send_pulse(spec.paths[first], data)
                    except Exception:
                        ok = False
                    now = time.monotonic()
                    done += per_call
                    ctl.progress(done)
                    if t0 <= now <= t1:
                        outcome.count(ok, per_call, now - started)

            await asyncio.gather(*(worker() for _ in range(spec.in_flight)))
        return outcome

    return asyncio.run(main())


def split(items: Sequence[str], parts: int) -> list[tuple[str, ...]]:
    """`items` dealt round-robin into `parts` tuples (each client process its own keys)."""
    return [tuple(items[i::parts]) for i in range(parts)]


def spread(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal positive integers."""
    base, extra = divmod(max(total, parts), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
