"""The nemesis suite's load: Storm-like writers and readers of three kinds, with topology churn.

Three kinds of client, as a Storm cluster's daemons and operators reach pmcluster:

- `http`: plain HTTP through any node (a load balancer or curl), moving to the next node
  when one refuses or times out;
- `client`: the ring-aware `ClusterClient`;
- `storm`: Storm's own wire protocol (`pmcluster.storm.client`), one connection to one node
  at a time, moving on after a failure as Storm's client does.

Every heartbeat path has one writer of one kind, rewriting it every `period` with the writer's
clock in ns as its version. The version is also the first 8 bytes of the payload, so a
reader of any kind learns which write it read even when the node assigned the stored version
(Storm's protocol carries none). Each kind has a reader reading every path (live and
recently deleted) in a loop, and a lister lists `/workerbeats` through the client. Every
`churn_every` seconds the oldest topology is killed, as Nimbus does: its writers stop, then
its subtree is deleted (`delete_path`, by a kind in turn), and a new topology starts. Every
operation lands in one `History` for `pmcluster.tools.history.check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from yarl import URL

from pmcluster.client import ClusterClient
from pmcluster.config import Config
from pmcluster.errors import PmclusterError
from pmcluster.protocol.paths import to_url
from pmcluster.storm.client import StormClient
from pmcluster.tools.history import History

__all__ = ["KINDS", "MixSpec", "MixedLoad", "version_of"]

KINDS = ("http", "client", "storm")
ROOT = "/workerbeats"
T = TypeVar("T")
_FAILURES = (TimeoutError, PmclusterError, aiohttp.ClientError, OSError)


@dataclass(frozen=True)
class MixSpec:
    """The load's shape (the defaults fit a 2-core machine next to 5 nodes and ZooKeeper)."""

    topologies: int = 3
    workers_per_kind: int = 2  # per topology
    period: float = 0.5
    payload: int = 200
    churn_every: float = 8.0
    read_pause: float = 0.005  # between two reads of one reader
    list_every: float = 0.25
    dead_kept: int = 2  # deleted topologies whose paths readers keep reading


def version_of(data: bytes | None) -> int | None:
    """The writer's version carried in a payload's first 8 bytes."""
    if data is None or len(data) < 8:
        return None
    return int.from_bytes(data[:8], "big")


def _payload(version: int, filler: bytes) -> bytes:
    return version.to_bytes(8, "big") + filler


class _Rotation:
    """Node URLs tried in turn from a random start, like a client behind DNS."""

    def __init__(self, urls: Sequence[str], rng: random.Random) -> None:
        self.urls = list(urls)
        self.rng = rng

    async def call(self, attempt: Callable[[str], Awaitable[T]]) -> T:
        start = self.rng.randrange(len(self.urls))
        order = self.urls[start:] + self.urls[:start]
        for url in order[:-1]:
            try:
                return await attempt(url)
            except (TimeoutError, aiohttp.ClientConnectionError, OSError):
                continue
        return await attempt(order[-1])


class _StormLink:
    """One Storm-protocol connection at a time, to the next node after a failure."""

    def __init__(self, hosts: Sequence[tuple[str, int]], timeout: float, offset: int) -> None:
        self.hosts = list(hosts)
        self.timeout = timeout
        self.index = offset % len(self.hosts)
        self.client: StormClient | None = None
        # Whether the last `call` gave up on an attempt whose request may have been sent:
        # that attempt may still land later (`history.Op.late`).
        self.gave_up = False

    async def call(self, attempt: Callable[[StormClient], Awaitable[T]]) -> T:
        self.gave_up = False
        for _ in range(len(self.hosts)):
            sent = False
            try:
                if self.client is None:
                    host, port = self.hosts[self.index]
                    client = StormClient(host, port, timeout=self.timeout)
                    await client.connect()
                    self.client = client
                sent = True
                return await attempt(self.client)
            except (PmclusterError, OSError, TimeoutError):
                self.gave_up |= sent
                await self.close()
                self.index = (self.index + 1) % len(self.hosts)
        raise PmclusterError("no node answered the Storm protocol")

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(PmclusterError, OSError):
                await self.client.close()
            self.client = None


class MixedLoad:
    """Run with `await load.run(stop)`; `history` holds every operation."""

    def __init__(
        self,
        config: Config,
        node_urls: Sequence[str],
        spec: MixSpec,
        *,
        history: History | None = None,
        seed: int = 1,
    ) -> None:
        self.config = config
        self.urls = list(node_urls)
        self.hosts = [(URL(u).host or "127.0.0.1", URL(u).port or 6699) for u in self.urls]
        self.spec = spec
        self.history = history if history is not None else History()
        self.rng = random.Random(seed)
        self._names = itertools.count()
        self.live: list[tuple[str, list[str]]] = []  # (topology path, its heartbeat paths)
        self.dead: list[list[str]] = []
        self._timeout = config.request_timeout_secs * 2

    def _topology(self) -> tuple[str, list[str]]:
        n = next(self._names)
        top = f"{ROOT}/topo-{n}-1700000000"
        paths = [
            f"{top}/{kind}-node-{i:02d}-{6700 + i}"
            for kind in KINDS
            for i in range(self.spec.workers_per_kind)
        ]
        return top, paths

    def read_paths(self) -> list[str]:
        return [p for _, ps in self.live for p in ps] + [p for ps in self.dead for p in ps]

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(
            total=self._timeout, sock_connect=self.config.connect_timeout_secs
        )
        async with (
            ClusterClient(self.config) as client,
            aiohttp.ClientSession(timeout=timeout) as session,
        ):
            writers: dict[str, tuple[asyncio.Event, list[asyncio.Task[None]]]] = {}

            def start_topology() -> None:
                top, paths = self._topology()
                quit_ = asyncio.Event()
                tasks = [
                    asyncio.create_task(self._writer(client, session, p, quit_, stop))
                    for p in paths
                ]
                writers[top] = (quit_, tasks)
                self.live.append((top, paths))

            for _ in range(self.spec.topologies):
                start_topology()
            others = [
                asyncio.create_task(self._reader(client, session, kind, stop)) for kind in KINDS
            ]
            others.append(asyncio.create_task(self._lister(client, stop)))
            turn = 0
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.spec.churn_every)
                if stop.is_set():
                    break
                top, paths = self.live.pop(0)
                quit_, tasks = writers.pop(top)
                quit_.set()
                await asyncio.gather(*tasks)  # every write of the topology has ended
                await self._delete_path(client, session, top, KINDS[turn % len(KINDS)])
                turn += 1
                self.dead = [*self.dead, paths][-self.spec.dead_kept :]
                start_topology()
            for _, tasks in writers.values():
                others.extend(tasks)
            await asyncio.gather(*others)

    # --- the three kinds of operation ------------------------------------------------------

    async def _write(
        self,
        kind: str,
        client: ClusterClient,
        session: aiohttp.ClientSession,
        link: _StormLink,
        path: str,
        data: bytes,
        version: int,
    ) -> None:
        if kind == "client":
            await client.send_pulse(path, data, version)
        elif kind == "http":
            url_of = self._url

            async def put(base: str) -> None:
                headers = {"X-Pulse-Version": str(version)}
                async with session.put(
                    url_of(base, "pulse/", path), data=data, headers=headers
                ) as r:
                    if r.status != 204:
                        raise PmclusterError(f"PUT {path}: HTTP {r.status}")

            await _Rotation(self.urls, self.rng).call(put)
        else:
            await link.call(lambda c: c.send_pulse(path, data))

    async def _read(
        self,
        kind: str,
        client: ClusterClient,
        session: aiohttp.ClientSession,
        link: _StormLink,
        path: str,
    ) -> bytes | None:
        if kind == "client":
            pulse = await client.get_pulse(path)
            return None if pulse is None else pulse.data
        if kind == "http":
            url_of = self._url

            async def get(base: str) -> bytes | None:
                async with session.get(url_of(base, "pulse/", path)) as r:
                    body = await r.read()
                    if r.status == 404:
                        return None
                    if r.status != 200:
                        raise PmclusterError(f"GET {path}: HTTP {r.status}")
                    return body

            return await _Rotation(self.urls, self.rng).call(get)
        return await link.call(lambda c: c.get_pulse(path))

    async def _delete_path(
        self, client: ClusterClient, session: aiohttp.ClientSession, top: str, kind: str
    ) -> None:
        link = _StormLink(self.hosts, self._timeout, self.rng.randrange(len(self.hosts)))
        op = self.history.begin(f"nimbus-{kind}", "delete_path", top)
        try:
            if kind == "client":
                await client.delete_path(top)
            elif kind == "http":
                url_of = self._url
                version = time.time_ns()

                async def delete(base: str) -> None:
                    headers = {"X-Pulse-Version": str(version)}
                    async with session.delete(url_of(base, "path/", top), headers=headers) as r:
                        if r.status != 204:
                            raise PmclusterError(f"DELETE {top}: HTTP {r.status}")

                await _Rotation(self.urls, self.rng).call(delete)
            else:
                await link.call(lambda c: c.delete_path(top))
            op.finish("ok", late=link.gave_up)
        except _FAILURES as exc:
            op.finish("timeout" if isinstance(exc, TimeoutError) else "error", late=link.gave_up)
        finally:
            await link.close()

    @staticmethod
    def _url(base: str, route: str, path: str) -> URL:
        return URL(f"{base}/v1/{route}{to_url(path)}", encoded=True)

    # --- the actors ------------------------------------------------------------------------

    async def _writer(
        self,
        client: ClusterClient,
        session: aiohttp.ClientSession,
        path: str,
        quit_: asyncio.Event,
        stop: asyncio.Event,
    ) -> None:
        kind = path.rsplit("/", 1)[1].split("-", 1)[0]
        rng = random.Random(path)
        filler = bytes(rng.getrandbits(8) for _ in range(self.spec.payload))
        link = _StormLink(self.hosts, self._timeout, rng.randrange(len(self.hosts)))
        await asyncio.sleep(rng.uniform(0, self.spec.period))
        try:
            while not stop.is_set() and not quit_.is_set():
                began = time.monotonic()
                version = time.time_ns()
                op = self.history.begin(f"writer-{kind}", "write", path, value=version)
                try:
                    await self._write(
                        kind, client, session, link, path, _payload(version, filler), version
                    )
                    op.finish("ok", late=link.gave_up)
                except _FAILURES as exc:
                    op.finish(
                        "timeout" if isinstance(exc, TimeoutError) else "error",
                        late=link.gave_up,
                    )
                delay = self.spec.period - (time.monotonic() - began)
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(quit_.wait(), delay)
        finally:
            await link.close()

    async def _reader(
        self, client: ClusterClient, session: aiohttp.ClientSession, kind: str, stop: asyncio.Event
    ) -> None:
        link = _StormLink(self.hosts, self._timeout, KINDS.index(kind))
        try:
            while not stop.is_set():
                paths = self.read_paths()
                self.rng.shuffle(paths)
                for path in paths:
                    if stop.is_set():
                        return
                    op = self.history.begin(f"reader-{kind}", "read", path)
                    try:
                        version = version_of(await self._read(kind, client, session, link, path))
                        op.finish("ok" if version is not None else "absent", value=version)
                    except _FAILURES as exc:
                        op.finish("timeout" if isinstance(exc, TimeoutError) else "error")
                    await asyncio.sleep(self.spec.read_pause)
        finally:
            await link.close()

    async def _lister(self, client: ClusterClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            op = self.history.begin("lister-client", "list", ROOT)
            try:
                names = await client.get_all_nodes_for_path(ROOT)
                op.finish("ok", children=tuple(names))
            except _FAILURES as exc:
                op.finish("timeout" if isinstance(exc, TimeoutError) else "error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.spec.list_every)
