"""`PulseChannel` (the client's end of a pulse channel) against scripted peers on loopback.

The peer here is a few lines of asyncio that answer the way a node would, or the ways a
failing one does; the real node is tested in tests/integration/test_channel.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from pmcluster.client.channel import ChannelRefused, PulseChannel
from pmcluster.errors import InsufficientStorage, InvalidRequest, NodeUnavailable
from pmcluster.protocol.channel import REQUEST_HEAD, encode_ack, encode_error_ack

Peer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: pmcluster-pulses/1\r\n"
    b"Connection: Upgrade\r\nX-Pmcluster-Idle-Secs: 60.0\r\nX-Pmcluster-Epoch: e1\r\n\r\n"
)


async def frames(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    await reader.readuntil(b"\r\n\r\n")
    while True:
        try:
            head = await reader.readexactly(REQUEST_HEAD.size)
        except asyncio.IncompleteReadError:
            return
        seq, length = REQUEST_HEAD.unpack(head)
        yield seq, await reader.readexactly(length)


class Scripted:
    """A loopback server answering each connection with `peer`; counts connections."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.peer(reader, writer)
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def channel(self, epochs: list[str] | None = None, timeout: float = 1.0) -> PulseChannel:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return PulseChannel(
            "peer",
            "127.0.0.1",
            port,
            connect_timeout_secs=1.0,
            request_timeout_secs=timeout,
            on_epoch=None if epochs is None else lambda _node, e: epochs.append(e),
        )


async def test_concurrent_batches_share_one_connection_and_match_acks_by_seq() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK_101)
        got = []
        async for seq, body in frames(reader):
            got.append((seq, body))
            if len(got) == 3:  # answer in reverse order, the last one with a new epoch
                for n, (s, b) in enumerate(reversed(got)):
                    epoch = b"e2" if n == 2 else b""
                    writer.write(encode_ack(s, len(b), epoch, [(0, 99)] if b == b"x" else []))
                got = []

    epochs: list[str] = []
    async with Scripted(peer) as server:
        channel = server.channel(epochs)
        acks = await asyncio.gather(*(channel.batch(body) for body in (b"aa", b"x", b"bbb")))
        assert [(a.stored, a.ignored) for a in acks] == [(2, []), (1, [(0, 99)]), (3, [])]
        assert server.connections == 1
        assert epochs == ["e1", "e2"]  # the handshake's, then the ack's
        channel.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
)
async def test_a_refused_handshake_backs_off_to_http(answer: bytes) -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()

    async with Scripted(peer) as server:
        channel = server.channel()
        with pytest.raises(ChannelRefused):
            await channel.batch(b"z")
        assert not channel.usable()  # the transport sends its batches over HTTP meanwhile


@pytest.mark.parametrize(
    ("status", "name", "error"),
    [
        (400, "invalid_request", InvalidRequest),
        (507, "insufficient_storage", InsufficientStorage),
        (503, "fenced", NodeUnavailable),
    ],
)
async def test_an_error_ack_raises_what_the_http_route_would(
    status: int, name: str, error: type[Exception]
) -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK_101)
        async for seq, _ in frames(reader):
            body = json.dumps({"error": name, "detail": f"because {name}"}).encode()
            writer.write(encode_error_ack(seq, status, body))

    async with Scripted(peer) as server:
        channel = server.channel()
        with pytest.raises(error, match=f"because {name}"):
            await channel.batch(b"z")
        channel.close()


async def test_a_peer_that_stops_answering_times_out_and_the_next_batch_reconnects() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK_101)
        async for seq, body in frames(reader):
            if body == b"hang":
                await asyncio.sleep(5)
                return
            writer.write(encode_ack(seq, 1, b"", []))

    async with Scripted(peer) as server:
        channel = server.channel(timeout=0.3)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(NodeUnavailable, match="timed out"):
            await channel.batch(b"hang")
        assert loop.time() - began < 1.0
        assert (await channel.batch(b"ok")).stored == 1
        assert server.connections == 2
        channel.close()


async def test_a_connection_lost_mid_frame_fails_the_frames_in_flight() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK_101)
        async for _ in frames(reader):
            writer.transport.abort()
            return

    async with Scripted(peer) as server:
        channel = server.channel()
        with pytest.raises(NodeUnavailable):
            await channel.batch(b"lost")
        channel.close()


async def test_a_peer_that_is_not_there_is_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    channel = PulseChannel(
        "gone", "127.0.0.1", port, connect_timeout_secs=0.5, request_timeout_secs=0.5
    )
    with pytest.raises(NodeUnavailable):
        await channel.batch(b"z")
    assert channel.usable()  # not refused: the node is down, HTTP would fail the same way
