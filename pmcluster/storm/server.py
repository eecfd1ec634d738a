"""Storm protocol connections, and one listening port shared by HTTP and Storm.

`StormConnection` is the `asyncio.Protocol` of one Storm client connection: it decodes frames,
runs up to `max_in_flight` requests at once (Storm clients pipeline up to 100 and match replies
by `message_id`), writes each reply as soon as it is ready (so replies may leave out of order
and a slow request never holds up the others), and closes only its own connection when the
peer breaks the wire contract. Beyond `max_in_flight` it queues requests and stops reading;
while the peer does not read its replies it starts no new request and stops reading too, so a
connection holds at most `max_in_flight` replies plus one read's worth of queued requests.

Authentication is a seam: each connection consults a `ConnectionAuth` for CONTROL/SASL frames
and for whether it may read; `NoAuth` (pacemaker.auth.method NONE) refuses every such frame.
A CONTROL/SASL frame after the first ordinary frame closes the connection (Storm: the first
ordinary frame ends the chance to authenticate).

`start_shared_server` binds one socket and decides per connection by its first byte: a Storm
frame starts with 0x00 (its length is < 16 MiB), an HTTP request never does. The sniffing
protocol then hands the transport to the chosen protocol with `transport.set_protocol`, so
every later callback (data, EOF, flow control, connection_lost) goes straight to it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from aiohttp import web

from pmcluster.errors import ProtocolError
from pmcluster.storm.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecoder,
    HBMessage,
    HBServerMessageType,
    encode_frame,
)
from pmcluster.storm.handler import StormHandler
from pmcluster.storm.metrics import StormMetrics

__all__ = [
    "ConnectionAuth",
    "NoAuth",
    "SharedServer",
    "SharedSite",
    "SniffingProtocol",
    "StormConnection",
    "start_shared_server",
]

log = logging.getLogger(__name__)

_AUTH_TYPES = frozenset(
    {HBServerMessageType.CONTROL_MESSAGE, HBServerMessageType.SASL_MESSAGE_TOKEN}
)
SNIFF_TIMEOUT_SECS = 75.0  # a connection that sends nothing at all is closed (aiohttp's keep-alive)


class ConnectionAuth(Protocol):
    """Per-connection authentication state (the SASL seam)."""

    @property
    def authorized_reader(self) -> bool:
        """Whether reads (GET_PULSE, EXISTS, GET_ALL_*) are allowed on this connection now."""
        ...

    def on_auth_frame(self, message: HBMessage) -> list[HBMessage]:
        """Handle one CONTROL_MESSAGE / SASL_MESSAGE_TOKEN frame; return the frames to send
        back, in order. Raise `ProtocolError` to close the connection (failed handshake)."""
        ...


class NoAuth:
    """pacemaker.auth.method NONE: everyone may read; CONTROL/SASL frames are a protocol error."""

    @property
    def authorized_reader(self) -> bool:
        return True

    def on_auth_frame(self, message: HBMessage) -> list[HBMessage]:
        raise ProtocolError(f"type {message.type} frame on a server without authentication")


class StormConnection(asyncio.Protocol):
    """One Storm client connection: decode, run requests concurrently, write replies."""

    def __init__(
        self,
        handler: StormHandler,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_in_flight: int = 100,
        *,
        auth: ConnectionAuth | None = None,
        metrics: StormMetrics | None = None,
    ) -> None:
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.auth: ConnectionAuth = auth if auth is not None else NoAuth()
        self.metrics = metrics if metrics is not None else handler.metrics
        self.peer = "?"
        self._decoder = FrameDecoder(max_frame_size)
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: deque[tuple[HBMessage, bool]] = deque()
        self._ordinary_seen = False
        self._write_paused = False
        self._read_paused = False
        self._draining = False
        self._lost = False
        self._closed = asyncio.Event()
        self._out: list[bytes] = []  # replies waiting for this loop iteration's single write

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            for message in self._decoder.feed(data):
                self._dispatch(message)
        except ProtocolError as exc:
            self._protocol_error(exc)
        except Exception:  # a bug in an auth plug-in: lose this connection, not the server
            log.exception("Storm connection %s: closing after an internal error", self.peer)
            self._close()

    def eof_received(self) -> bool:
        # Half-close: finish the requests already received and write their replies first.
        if self._tasks or self._pending:
            self.shutdown()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.metrics.connections_open -= 1
        self._pending.clear()
        for task in self._tasks:
            task.cancel()
        self._closed.set()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._start_pending()
        self._update_reading()

    # ------------------------------------------------------------ control

    def shutdown(self) -> None:
        """Stop reading, finish the requests received so far, then close."""
        self._draining = True
        self._update_reading()
        self._close_if_drained()

    def abort(self) -> None:
        """Close at once, dropping unfinished requests."""
        if self._transport is not None:
            self._transport.abort()

    @property
    def is_closed(self) -> bool:
        """True once the connection is gone."""
        return self._lost

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # ------------------------------------------------------------ internals

    def _dispatch(self, message: HBMessage) -> None:
        if message.type in _AUTH_TYPES:
            if self._ordinary_seen:
                raise ProtocolError("authentication frame after the first ordinary frame")
            for reply in self.auth.on_auth_frame(message):
                self._write(reply)
            return
        self._ordinary_seen = True
        # Whether this request may read is decided when it arrives, in order with auth frames.
        authorized = self.auth.authorized_reader
        if self._pending or self._write_paused or len(self._tasks) >= self.max_in_flight:
            self._pending.append((message, authorized))
            self._update_reading()
        else:
            self._start(message, authorized)

    def _start_pending(self) -> None:
        """Start queued requests while there is room and the peer reads its replies."""
        while self._pending and not self._write_paused and len(self._tasks) < self.max_in_flight:
            self._start(*self._pending.popleft())

    def _start(self, message: HBMessage, authorized: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(message, authorized))
        self._tasks.add(task)
        self.metrics.in_flight += 1
        task.add_done_callback(self._finished)

    async def _serve(self, message: HBMessage, authorized: bool) -> None:
        try:
            reply = await self.handler.handle(message, authorized_reader=authorized)
        except ProtocolError as exc:
            self._protocol_error(exc)
        except Exception as exc:  # never let one request take the server down
            self.metrics.backend_errors += 1
            log.warning("Storm connection %s: closing, request failed: %r", self.peer, exc)
            self._close()
        else:
            self._write(reply)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.metrics.in_flight -= 1
        if self._lost:
            return
        self._start_pending()
        self._update_reading()
        self._close_if_drained()

    def _write(self, message: HBMessage) -> None:
        # Replies finished in one loop iteration leave in one send(): pipelined requests
        # would otherwise cost a system call each.
        if self._transport is None or self._transport.is_closing():
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(encode_frame(message))

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.metrics.protocol_errors += 1
        log.info("Storm connection %s: closing, protocol error: %s", self.peer, exc)
        self._close()

    def _close(self) -> None:
        self._pending.clear()
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _close_if_drained(self) -> None:
        if self._draining and not self._tasks and not self._pending:
            self._close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        pause = self._draining or self._write_paused or bool(self._pending)
        if pause and not self._read_paused:
            transport.pause_reading()
        elif not pause and self._read_paused:
            transport.resume_reading()
        self._read_paused = pause


# ---------------------------------------------------------------- port sharing

HttpFactory = Callable[[], asyncio.Protocol]
StormFactory = Callable[[], StormConnection]


class SniffingProtocol(asyncio.Protocol):
    """The first protocol of every connection on the shared port: picks HTTP or Storm by the
    first byte, then hands the transport over (`set_protocol`) and steps out of the way."""

    def __init__(
        self,
        http_factory: HttpFactory,
        storm_factory: StormFactory,
        sniff_timeout: float | None = SNIFF_TIMEOUT_SECS,
    ) -> None:
        self._http_factory = http_factory
        self._storm_factory = storm_factory
        self._sniff_timeout = sniff_timeout
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._sniff_timeout is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._sniff_timeout, self._transport.close)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if not data or transport is None:
            return
        self._cancel_timer()
        inner: asyncio.Protocol = self._storm_factory() if data[0] == 0 else self._http_factory()
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
    """The listening socket of `start_shared_server` and the Storm connections it accepted.

    HTTP connections belong to aiohttp: its runner's `cleanup()` shuts them down.
    """

    def __init__(self, server: asyncio.Server, storm: weakref.WeakSet[StormConnection]) -> None:
        self.server = server
        self._storm = storm
        self.port = int(server.sockets[0].getsockname()[1])  # kept: readable after close()

    @property
    def storm_connections(self) -> list[StormConnection]:
        return [conn for conn in self._storm if not conn.is_closed]

    def close(self) -> None:
        """Stop accepting; Storm connections finish what they received, then close."""
        self.server.close()
        for conn in self.storm_connections:
            conn.shutdown()

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
) -> SharedServer:
    """Listen on host:port for both HTTP and Storm frames.

    `aiohttp_app_handler_factory` is the runner's `web.Server` (`runner.server`): calling it
    makes aiohttp's per-connection `RequestHandler`. `storm_factory` makes a `StormConnection`.
    """
    storm: weakref.WeakSet[StormConnection] = weakref.WeakSet()

    def make_storm() -> StormConnection:
        conn = storm_factory()
        storm.add(conn)
        return conn

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SniffingProtocol(aiohttp_app_handler_factory, make_storm, sniff_timeout),
        host,
        port,
        backlog=backlog,
    )
    return SharedServer(server, storm)


class SharedSite(web.BaseSite):
    """A drop-in for `web.TCPSite` that also speaks Storm on the same port.

    Registered with the runner like any site, so `runner.addresses` and `runner.cleanup()`
    keep working; `stop()` closes the listener and drains Storm connections for at most
    `drain_timeout` seconds before dropping them.
    """

    __slots__ = ("_drain_timeout", "_host", "_port", "_shared", "_storm_factory")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        storm_factory: StormFactory,
        *,
        backlog: int = 128,
        drain_timeout: float = 5.0,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._storm_factory = storm_factory
        self._drain_timeout = drain_timeout
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
            self._host, self._port, http, self._storm_factory, backlog=self._backlog
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
