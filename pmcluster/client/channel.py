"""The client's end of a pulse channel (`pmcluster.protocol.channel`) to ONE node.

`NodeTransport.batch` sends its batches here when the node takes channels: one persistent
connection per node, opened on first use (concurrent callers share the handshake), frames
pipelined with a sequence number each, acks matched by it. Errors keep the transport's
tree: a connection that cannot be made or breaks, a timeout and a 5xx raise
`NodeUnavailable` (the frames then in flight fail with it: a node's failure, as a broken
HTTP request would be); a refused frame raises the caller's error the HTTP route names.
A node that answers the handshake with anything but 101 (an older node, writes that need
authentication, a draining node) raises `ChannelRefused`: the transport then uses
`POST /v1/batch` for `REFUSED_RETRY_SECS` before it tries again.

The node closes a channel idle past its `pmcluster.http.idle.secs` (sent in the handshake);
a channel idle for half of that is closed here and opened again, so a frame is never written
into a connection the node is closing.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import cast

from pmcluster.client.loop import running_loop
from pmcluster.errors import NodeUnavailable, PmclusterError, ProtocolError
from pmcluster.protocol.channel import (
    ACK_HEAD,
    CHANNEL_PROTOCOL,
    IDLE_HEADER,
    REQUEST_HEAD,
    handshake_request,
    parse_ok_ack,
)
from pmcluster.protocol.http import EPOCH_HEADER, caller_error

__all__ = ["REFUSED_RETRY_SECS", "BatchAck", "ChannelRefused", "PulseChannel"]

REFUSED_RETRY_SECS = 10.0  # after a refused handshake, HTTP batches for this long
_MAX_HEAD = 16384  # a 101 response head longer than this is a protocol error
_MAX_ACK = 1 << 20  # an ack's extra part longer than this is a protocol error

EpochCallback = Callable[[str, str], None]


class ChannelRefused(Exception):
    """The node answered the channel's handshake with something other than 101."""


class BatchAck:
    """A stored batch's ack: how many entries the node kept, and for each ignored entry its
    index in the batch and the newer version the node holds."""

    __slots__ = ("ignored", "stored")

    def __init__(self, stored: int, ignored: list[tuple[int, int]]) -> None:
        self.stored = stored
        self.ignored = ignored


class _Connection(asyncio.Protocol):
    """One channel connection: the handshake, then acks matched to pending frames."""

    def __init__(self, channel: PulseChannel) -> None:
        self._channel = channel
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.idle_secs = 0.0
        self.last_used = loop.time()
        self.closed = False
        self._upgraded = False
        self._buf = b""
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(handshake_request(self._channel.host, self._channel.port))

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                if len(buf) > _MAX_HEAD:
                    self.fail(ProtocolError(f"node {self._channel.node_id}: channel head too long"))
                return
            self._handshake(buf[:end])
            if self.closed:
                return
            buf = buf[end + 4 :]
        pos, size = 0, ACK_HEAD.size
        while len(buf) - pos >= size:
            seq, status, extra_len = ACK_HEAD.unpack_from(buf, pos)
            if extra_len > _MAX_ACK:
                self.fail(ProtocolError(f"node {self._channel.node_id}: channel ack too long"))
                return
            end = pos + size + extra_len
            if end > len(buf):
                break
            future = self.pending.pop(seq, None)
            if future is not None and not future.done():
                future.set_result((status, buf[pos + size : end]))
            pos = end
        self._buf = buf[pos:]

    def _handshake(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if (
            len(parts) < 2
            or parts[1] != "101"
            or headers.get("upgrade") != CHANNEL_PROTOCOL
            or headers.get("connection", "").lower() != "upgrade"
        ):
            error = ChannelRefused(f"node {self._channel.node_id} answered {lines[0]!r}")
            self.fail(error)
            return
        try:
            self.idle_secs = float(headers.get(IDLE_HEADER.lower(), "0"))
        except ValueError:
            self.idle_secs = 0.0
        self._upgraded = True
        epoch = headers.get(EPOCH_HEADER.lower())
        if epoch:
            self._channel.epoch(epoch)
        if not self.ready.done():
            self.ready.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Fail the handshake and every pending frame with `exc`; close the connection."""
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(exc)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(exc)
        self.pending.clear()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "channel closed"
        self.fail(NodeUnavailable(self._channel.node_id, reason))
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self.ready.done() and not self.ready.cancelled():
            self.ready.exception()  # consumed: a later caller sees `closed`

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def drain(self) -> None:
        if self._drained is not None:
            await self._drained


class PulseChannel:
    """A pulse channel to one node; see the module docstring."""

    def __init__(
        self,
        node_id: str,
        host: str,
        port: int,
        *,
        connect_timeout_secs: float,
        request_timeout_secs: float,
        ssl_context: ssl.SSLContext | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        self.node_id = node_id
        self.host = host
        self.port = port
        self._connect_timeout = connect_timeout_secs
        self._timeout = request_timeout_secs
        self._ssl = ssl_context
        self._on_epoch = on_epoch
        self._conn: _Connection | None = None
        self._opening: asyncio.Task[_Connection] | None = None
        self._seq = 0
        self.refused_until = 0.0

    def epoch(self, epoch: str) -> None:
        if self._on_epoch is not None:
            self._on_epoch(self.node_id, epoch)

    def usable(self) -> bool:
        """False while a refused handshake's back-off runs (the caller uses HTTP)."""
        return running_loop().time() >= self.refused_until

    async def batch(self, body: bytes) -> BatchAck:
        """Send one pulse-list body; its ack, or the error the node answered."""
        loop = running_loop()
        conn = await self._connection()
        await conn.drain()
        if conn.closed:
            raise NodeUnavailable(self.node_id, "channel closed")
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        conn.pending[seq] = future
        assert conn.transport is not None
        conn.transport.writelines((REQUEST_HEAD.pack(seq, len(body)), body))
        conn.last_used = loop.time()
        timer = loop.call_later(self._timeout, _expire, future)  # `wait_for`, lighter
        try:
            status, extra = await future
        except TimeoutError:
            # A node that does not ack in time is failing: drop the connection, so later
            # frames do not queue behind it (they reconnect or fail fast).
            conn.fail(NodeUnavailable(self.node_id, "channel ack timed out"))
            raise NodeUnavailable(self.node_id, "channel ack timed out") from None
        finally:
            timer.cancel()
            conn.pending.pop(seq, None)
        conn.last_used = loop.time()
        return self._answer(status, extra)

    def _answer(self, status: int, extra: bytes) -> BatchAck:
        if status == 200:
            try:
                stored, epoch, ignored = parse_ok_ack(extra)
            except (ValueError, UnicodeError) as exc:
                raise ProtocolError(f"node {self.node_id}: bad channel ack: {exc}") from exc
            if epoch:
                self.epoch(epoch)
            return BatchAck(stored, ignored)
        raise self._error(status, extra)

    def _error(self, status: int, extra: bytes) -> PmclusterError:
        name, detail = "", extra[:500].decode("utf-8", "replace")
        try:
            doc = json.loads(extra)
            if isinstance(doc, dict):
                name = str(doc.get("error", ""))
                detail = str(doc.get("detail", name or detail))
        except ValueError:
            pass
        error = caller_error(status, name)
        if error is not None:
            return error(detail)
        if status >= 500:
            return NodeUnavailable(self.node_id, f"channel status {status}: {detail}")
        return ProtocolError(f"node {self.node_id}: channel status {status}: {detail}")

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            loop = running_loop()
            if not conn.idle_secs or loop.time() - conn.last_used < conn.idle_secs / 2:
                return conn
            conn.fail(NodeUnavailable(self.node_id, "channel idle"))  # pending: none
            self._conn = None
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(_consume)
        return await asyncio.shield(self._opening)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
            async with asyncio.timeout(self._timeout):
                await conn.ready
        except ChannelRefused:
            self.refused_until = loop.time() + REFUSED_RETRY_SECS
            raise
        except (TimeoutError, OSError) as exc:
            if conn is not None:
                conn.fail(NodeUnavailable(self.node_id, "channel handshake timed out"))
            raise NodeUnavailable(self.node_id, f"channel: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.fail(NodeUnavailable(self.node_id, "channel opening cancelled"))
            raise
        self._conn = conn
        return conn

    def close(self) -> None:
        """Close the connection (frames in flight fail with `NodeUnavailable`)."""
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
        if self._conn is not None:
            self._conn.fail(NodeUnavailable(self.node_id, "channel closed by the client"))
            self._conn = None


def _expire(future: asyncio.Future[tuple[int, bytes]]) -> None:
    """A frame's ack did not come within the timeout."""
    if not future.done():
        future.set_exception(TimeoutError())


def _consume(task: asyncio.Task[_Connection]) -> None:
    """An opening nobody awaits any more (its callers were cancelled) ends quietly."""
    if not task.cancelled():
        task.exception()
