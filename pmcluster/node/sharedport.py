"""One listening port for both protocols: HTTP (the API) and Storm's Pacemaker frames.

`start_shared_server` binds one socket and decides per connection by its first byte: a Storm
frame starts with 0x00 (its length is < 16 MiB), an HTTP request never does. The sniffing
protocol then hands the transport to the chosen protocol with `transport.set_protocol`, so
every later callback (data, EOF, flow control, connection_lost) goes straight to it.
`SharedSite` registers that listener with an aiohttp runner like any site.

Every connection the listener accepts counts against `pmcluster.max.connections`, whichever
protocol it speaks: past the cap, an HTTP connection is answered 503 and closed, a Storm one is
closed (Storm's client then tries its next server). HTTP connections start on the fast path
(`pmcluster.node.fasthttp`) when the site is given one, and move to aiohttp when a request needs it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import cast

from aiohttp import web

from pmcluster.node.fasthttp import FastHttpConnection, FastPath, HttpFactory
from pmcluster.node.limits import ConnectionCap
from pmcluster.storm.server import StormConnection, StormFactory

__all__ = [
    "SNIFF_TIMEOUT_SECS",
    "HttpFactory",
    "SharedServer",
    "SharedSite",
    "SniffingProtocol",
    "start_shared_server",
]

log = logging.getLogger(__name__)

SNIFF_TIMEOUT_SECS = 10.0  # a connection that sends nothing at all is closed
# (pmcluster.handshake.timeout.secs)


class SniffingProtocol(asyncio.Protocol):
    """The first protocol of every connection on the shared port: picks HTTP or Storm by the
    first byte, then hands the transport over (`set_protocol`) and steps out of the way."""

    def __init__(
        self,
        http_factory: HttpFactory,
        storm_factory: StormFactory,
        sniff_timeout: float | None = SNIFF_TIMEOUT_SECS,
        *,
        cap: ConnectionCap | None = None,
        accepted: weakref.WeakSet[asyncio.BaseTransport] | None = None,
    ) -> None:
        self._http_factory = http_factory
        self._storm_factory = storm_factory
        self._sniff_timeout = sniff_timeout
        self._cap = cap
        self._accepted = accepted
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._accepted is not None:
            self._accepted.add(transport)
        if self._sniff_timeout is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._sniff_timeout, self._transport.close)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if not data or transport is None:
            return
        self._cancel_timer()
        storm = data[0] == 0
        if self._cap is not None:
            reason = "over" if self._cap.over_limit() else self._cap.admit(transport)
            if reason is not None:
                self._cap.refuse(
                    transport, http=not storm, reason=None if reason == "over" else reason
                )
                return
        inner: asyncio.Protocol = self._storm_factory() if storm else self._http_factory()
        transport.set_protocol(inner)
        inner.connection_made(transport)
        inner.data_received(data)

    def eof_received(self) -> bool:
        return False  # closed before saying anything

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class SharedServer:
    """The listening socket of `start_shared_server` and the connections it accepted.

    Storm connections and HTTP connections still on the fast path are this server's to close;
    HTTP connections handed to aiohttp belong to aiohttp: its runner's `cleanup()` shuts them
    down.
    """

    def __init__(
        self,
        server: asyncio.Server,
        storm: weakref.WeakSet[StormConnection],
        fast: weakref.WeakSet[FastHttpConnection],
        accepted: weakref.WeakSet[asyncio.BaseTransport],
    ) -> None:
        self.server = server
        self._storm = storm
        self._fast = fast
        self._accepted = accepted
        self.closing = False
        self.port = int(server.sockets[0].getsockname()[1])  # kept: readable after close()

    @property
    def storm_connections(self) -> list[StormConnection]:
        return [conn for conn in self._storm if not conn.is_closed]

    @property
    def open_connections(self) -> int:
        """Connections accepted here and not closed yet, whatever their protocol."""
        return sum(1 for transport in list(self._accepted) if not transport.is_closing())

    @property
    def open_at_most(self) -> int:
        """An upper bound of `open_connections` in O(1): closed transports may linger in the
        set until they are collected."""
        return len(self._accepted)

    def close(self) -> None:
        """Stop accepting; Storm connections finish what they received, then close; HTTP
        connections on the fast path go to aiohttp, which drains and closes them."""
        self.closing = True
        self.server.close()
        for conn in self.storm_connections:
            conn.shutdown()
        for fast in list(self._fast):
            fast.shutdown()

    def abort(self) -> None:
        """Drop every Storm connection at once (after `close`, when draining takes too long)."""
        for conn in self.storm_connections:
            conn.abort()

    async def wait_closed(self) -> None:
        """Wait until the listener and every Storm connection are closed."""
        await self.server.wait_closed()
        await asyncio.gather(*(conn.wait_closed() for conn in self.storm_connections))


async def start_shared_server(
    host: str,
    port: int,
    aiohttp_app_handler_factory: HttpFactory,
    storm_factory: StormFactory,
    *,
    backlog: int = 128,
    sniff_timeout: float | None = SNIFF_TIMEOUT_SECS,
    fast_path: FastPath | None = None,
    cap: ConnectionCap | None = None,
) -> SharedServer:
    """Listen on host:port for both HTTP and Storm frames.

    `aiohttp_app_handler_factory` is the runner's `web.Server` (`runner.server`): calling it
    makes aiohttp's per-connection `RequestHandler`. `storm_factory` makes a `StormConnection`.
    With `fast_path`, HTTP connections start on it (`FastHttpConnection`) and reach aiohttp
    only when a request needs it. With `cap`, every accepted connection counts against it.
    """
    storm: weakref.WeakSet[StormConnection] = weakref.WeakSet()
    fast: weakref.WeakSet[FastHttpConnection] = weakref.WeakSet()
    accepted: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    def make_storm() -> StormConnection:
        conn = storm_factory()
        storm.add(conn)
        return conn

    http_factory = aiohttp_app_handler_factory
    if fast_path is not None:
        path = fast_path

        def make_fast() -> asyncio.Protocol:
            if shared.closing:  # accepted before close(), first byte after: aiohttp's
                return aiohttp_app_handler_factory()
            conn = FastHttpConnection(path, aiohttp_app_handler_factory)
            fast.add(conn)
            return conn

        http_factory = make_fast

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SniffingProtocol(
            http_factory, make_storm, sniff_timeout, cap=cap, accepted=accepted
        ),
        host,
        port,
        backlog=backlog,
    )
    shared = SharedServer(server, storm, fast, accepted)
    if cap is not None:
        cap.count_with(lambda: shared.open_connections, lambda: shared.open_at_most)
    return shared


class SharedSite(web.BaseSite):
    """A drop-in for `web.TCPSite` that also speaks Storm on the same port.

    Registered with the runner like any site, so `runner.addresses` and `runner.cleanup()`
    keep working; `stop()` closes the listener and drains Storm connections for at most
    `drain_timeout` seconds before dropping them.
    """

    __slots__ = (
        "_cap",
        "_drain_timeout",
        "_fast_path",
        "_host",
        "_port",
        "_shared",
        "_sniff_timeout",
        "_storm_factory",
    )

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        storm_factory: StormFactory,
        *,
        backlog: int = 128,
        drain_timeout: float = 5.0,
        fast_path: FastPath | None = None,
        cap: ConnectionCap | None = None,
        sniff_timeout: float | None = SNIFF_TIMEOUT_SECS,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._sniff_timeout = sniff_timeout
        self._host = host
        self._port = port
        self._storm_factory = storm_factory
        self._drain_timeout = drain_timeout
        self._fast_path = fast_path
        self._cap = cap
        self._shared: SharedServer | None = None

    @property
    def name(self) -> str:
        port = self._shared.port if self._shared is not None else self._port
        return f"http+storm://{self._host}:{port}"

    @property
    def shared(self) -> SharedServer | None:
        return self._shared

    async def start(self) -> None:
        await super().start()
        http = self._runner.server
        assert http is not None
        self._shared = await start_shared_server(
            self._host,
            self._port,
            http,
            self._storm_factory,
            backlog=self._backlog,
            fast_path=self._fast_path,
            cap=self._cap,
            sniff_timeout=self._sniff_timeout,
        )
        self._server = self._shared.server

    async def stop(self) -> None:
        await super().stop()
        if self._shared is None:
            return
        self._shared.close()
        try:
            await asyncio.wait_for(self._shared.wait_closed(), self._drain_timeout)
        except TimeoutError:
            log.warning(
                "Storm connections still busy after %gs: dropping them", self._drain_timeout
            )
            self._shared.abort()
