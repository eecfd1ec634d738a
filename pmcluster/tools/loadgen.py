"""A Storm-like heartbeat load that records every operation for the history checker.

Workers rewrite their heartbeat path every period with a fresh version (the writer's clock in
ns); readers read every path continuously. A nimbus-like task meanwhile runs short topology
lives under their own roots: write a few heartbeats, read and list them, delete one key
(`delete_pulse_id`) and then the topology (`delete_path`), and read and list again, so the
checker's delete rules (miss, resurrection, listings) are exercised under the same faults.
Heartbeat writes and reads go through the ring-aware client and, when node URLs are given,
also as plain HTTP against a random node (the coordination path that curl or a load balancer
takes). Every operation lands in a `History`; `check()`
judges it. Used by the fault suite, and runnable in a background thread from synchronous tests
through `BackgroundLoad`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TypeVar

import aiohttp
from yarl import URL

from pmcluster.client import ClusterClient
from pmcluster.config import Config
from pmcluster.errors import PmclusterError
from pmcluster.protocol.paths import to_url
from pmcluster.tools.history import History, Report, check

__all__ = ["BackgroundLoad", "LoadSpec", "StormLoad", "heartbeat_paths"]

T = TypeVar("T")


def heartbeat_paths(workers: int, topologies: int = 3) -> list[str]:
    """Storm-shaped heartbeat paths: /workerbeats/<storm-id>/<node>-<port>."""
    return [
        f"/workerbeats/topo-{i % topologies}-1700000000/node-{i // 4:03d}-{6700 + i % 4}"
        for i in range(workers)
    ]


@dataclass(frozen=True)
class LoadSpec:
    """What the load does: paths, cadence, payload and which paths take the plain-HTTP route."""

    paths: tuple[str, ...]
    period: float = 0.5
    payload: int = 256
    readers: int = 2
    plain_http_share: float = 0.25  # of writes and reads, when node URLs are known
    lifecycles: bool = True  # run the nimbus-like task (deletes and listings)
    lifecycle_keys: int = 3  # heartbeats per short-lived topology


class StormLoad:
    """Writers and readers over one `ClusterClient` (plus plain HTTP), recording a history."""

    def __init__(
        self,
        config: Config,
        spec: LoadSpec,
        *,
        node_urls: Sequence[str] = (),
        history: History | None = None,
        seed: int = 1,
    ) -> None:
        self.config = config
        self.spec = spec
        self.node_urls = list(node_urls)
        self.history = history if history is not None else History()
        self.rng = random.Random(seed)
        self._timeout = aiohttp.ClientTimeout(
            total=config.request_timeout_secs, sock_connect=config.connect_timeout_secs
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; every operation started is finished and recorded."""
        async with (
            ClusterClient(self.config) as client,
            aiohttp.ClientSession(timeout=self._timeout) as session,
        ):
            tasks = [
                asyncio.create_task(self._writer(client, session, path, stop))
                for path in self.spec.paths
            ]
            tasks += [
                asyncio.create_task(self._reader(client, session, i, stop))
                for i in range(self.spec.readers)
            ]
            if self.spec.lifecycles:
                tasks.append(asyncio.create_task(self._nimbus(client, stop)))
            await asyncio.gather(*tasks)

    def _plain(self) -> str | None:
        if self.node_urls and self.rng.random() < self.spec.plain_http_share:
            return self.rng.choice(self.node_urls)
        return None

    async def _writer(
        self,
        client: ClusterClient,
        session: aiohttp.ClientSession,
        path: str,
        stop: asyncio.Event,
    ) -> None:
        filler = bytes(self.rng.getrandbits(8) for _ in range(self.spec.payload))
        await asyncio.sleep(self.rng.uniform(0, self.spec.period))
        while not stop.is_set():
            began = time.monotonic()
            version = time.time_ns()
            url = self._plain()
            name = f"writer-{'http' if url else 'client'}"
            op = self.history.begin(name, "write", path, value=version)
            try:
                if url is None:
                    await client.send_pulse(path, filler, version)
                else:
                    await self._rotate(
                        url,
                        functools.partial(
                            self._http_put, session, path=path, data=filler, version=version
                        ),
                    )
                op.finish("ok")
            except TimeoutError:
                op.finish("timeout")
            except (PmclusterError, aiohttp.ClientError, OSError):
                op.finish("error")
            delay = self.spec.period - (time.monotonic() - began)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _reader(
        self,
        client: ClusterClient,
        session: aiohttp.ClientSession,
        index: int,
        stop: asyncio.Event,
    ) -> None:
        paths = list(self.spec.paths)
        rng = random.Random(index)
        while not stop.is_set():
            rng.shuffle(paths)
            for path in paths:
                if stop.is_set():
                    return
                url = self._plain()
                name = f"reader{index}-{'http' if url else 'client'}"
                op = self.history.begin(name, "read", path)
                try:
                    if url is None:
                        pulse = await client.get_pulse(path)
                        version = None if pulse is None else pulse.version
                    else:
                        version = await self._rotate(
                            url, functools.partial(self._http_get, session, path=path)
                        )
                    op.finish("ok" if version is not None else "absent", value=version)
                except TimeoutError:
                    op.finish("timeout")
                except (PmclusterError, aiohttp.ClientError, OSError):
                    op.finish("error")
            await asyncio.sleep(0.01)

    async def _nimbus(self, client: ClusterClient, stop: asyncio.Event) -> None:
        """Short topology lives, one after another, each under a root never used again."""
        life = 0
        while not stop.is_set():
            life += 1
            root = f"/workerbeats/life-{life}-1700000000"
            keys = [f"{root}/node-{i:03d}-6700" for i in range(self.spec.lifecycle_keys)]
            for key in keys:
                version = time.time_ns()
                await self._record("write", key, client.send_pulse(key, b"beat", version), version)
                await self._record_read(client, key)
            await self._record_list(client, root)
            await self._record("delete", keys[0], client.delete_pulse_id(keys[0]))
            await self._record_read(client, keys[0])
            await self._record_list(client, root)
            await self._record("delete_path", root, client.delete_path(root))
            await self._record_read(client, keys[-1])
            await self._record_list(client, root)
            await self._record_list(client, "/workerbeats")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.spec.period)

    async def _record(
        self, kind: str, path: str, call: Awaitable[None], value: int | None = None
    ) -> None:
        op = self.history.begin("nimbus-client", kind, path, value=value)
        try:
            await call
            op.finish("ok")
        except TimeoutError:
            op.finish("timeout")
        except (PmclusterError, aiohttp.ClientError, OSError):
            op.finish("error")

    async def _record_read(self, client: ClusterClient, path: str) -> None:
        op = self.history.begin("nimbus-client", "read", path)
        try:
            pulse = await client.get_pulse(path)
            op.finish(
                "absent" if pulse is None else "ok", value=None if pulse is None else pulse.version
            )
        except TimeoutError:
            op.finish("timeout")
        except (PmclusterError, aiohttp.ClientError, OSError):
            op.finish("error")

    async def _record_list(self, client: ClusterClient, path: str) -> None:
        op = self.history.begin("nimbus-client", "list", path)
        try:
            names = await client.get_all_nodes_for_path(path)
            op.finish("ok", children=names)
        except TimeoutError:
            op.finish("timeout")
        except (PmclusterError, aiohttp.ClientError, OSError):
            op.finish("error")

    async def _rotate(self, first: str, call: Callable[[str], Awaitable[T]]) -> T:
        """Like a client behind DNS (or Storm's, rotating after a failure): a node that
        refuses or times out is followed by the next one, until every node was tried."""
        start = self.node_urls.index(first)
        order = self.node_urls[start:] + self.node_urls[:start]
        for url in order[:-1]:
            try:
                return await call(url)
            except (TimeoutError, aiohttp.ClientConnectionError, OSError):
                continue
        return await call(order[-1])

    @staticmethod
    def _url(base: str, route: str, path: str) -> URL:
        return URL(f"{base}/v1/{route}{to_url(path)}", encoded=True)

    async def _http_put(
        self, session: aiohttp.ClientSession, base: str, *, path: str, data: bytes, version: int
    ) -> None:
        headers = {"X-Pulse-Version": str(version)}
        async with session.put(self._url(base, "pulse/", path), data=data, headers=headers) as r:
            if r.status != 204:
                raise aiohttp.ClientResponseError(
                    r.request_info, (), status=r.status, message=await r.text()
                )

    async def _http_get(
        self, session: aiohttp.ClientSession, base: str, *, path: str
    ) -> int | None:
        async with session.get(self._url(base, "pulse/", path)) as r:
            await r.read()
            if r.status == 404:
                return None
            if r.status != 200:
                raise aiohttp.ClientResponseError(
                    r.request_info, (), status=r.status, message="unexpected status"
                )
            return int(r.headers["X-Pulse-Version"])


class BackgroundLoad:
    """Runs a `StormLoad` on its own event loop in a thread: `with BackgroundLoad(...) as l:`."""

    def __init__(self, load: StormLoad) -> None:
        self.load = load
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="pmcluster-load", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        except BaseException as exc:  # reported to the test by stop()
            self._error = exc
        finally:
            self._ready.set()
            self._loop.close()

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        self._ready.set()
        await self.load.run(self._stop)

    def start(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self, timeout: float = 30.0) -> History:
        """Stop the load, wait for every operation to finish, return the history."""
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("load did not stop in time")
        if self._error is not None:
            raise RuntimeError(f"load failed: {self._error!r}") from self._error
        return self.load.history

    def check(self) -> Report:
        """Judge the run (ages against each writer's measured next write: no slack)."""
        config = self.load.config
        return check(
            self.load.history,
            period=self.load.spec.period,
            request_timeout=config.request_timeout_secs,
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._thread.is_alive():
            self.stop()
