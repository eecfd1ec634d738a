"""The pulse channel (persistent, pipelined replica writes) against real node processes.

What users rely on: a replicated write acknowledged by any node is on both owners whether
replica writes travel over the channel (the default) or over `POST /v1/batch`; the channel is
one connection per peer, not one request per batch; a node that takes no channel (switched
off, or writes that need authentication) is written over HTTP instead; and a peer's bad
frames get a refusal with the HTTP route's status, never a crash, and damage nothing stored.
"""

from __future__ import annotations

import asyncio
import json
import struct
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pmcluster.client.transport import NodeTransport
from pmcluster.node.metrics import parse_metrics
from pmcluster.protocol import pulsecodec
from pmcluster.protocol.channel import ACK_HEAD, REQUEST_HEAD, handshake_request, parse_ok_ack
from pmcluster.tools.localcluster import NodeCluster, NodeProcess, free_port

pytestmark = pytest.mark.integration

WAIT = 10.0
KEYS = {"pmcluster.request.timeout.secs": 2.0, "pmcluster.connect.timeout.secs": 0.5}


def metric(node: NodeProcess, name: str) -> float:
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
        return parse_metrics(response.read().decode()).get(name, 0.0)


def single_node(tmp_path: Path, **extra: Any) -> NodeProcess:
    port = free_port("127.0.0.1")
    config = {"pacemaker.host": "127.0.0.1", "pacemaker.port": port, **KEYS, **extra}
    return NodeProcess(config, workdir=tmp_path)


async def plain_puts(node: NodeProcess, paths: list[str], in_flight: int = 16) -> None:
    """Plain `PUT /v1/pulse` (no internal header), `in_flight` at a time, each 204."""
    async with aiohttp.ClientSession() as session:
        queue = list(paths)

        async def worker() -> None:
            while queue:
                path = queue.pop()
                url = f"{node.url}/v1/pulse{path}"
                async with session.put(url, data=path.encode()) as resp:
                    assert resp.status == 204, (path, resp.status, await resp.text())

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(in_flight))), WAIT * 3)


@pytest.mark.parametrize("channel", [True, False])
async def test_acknowledged_plain_writes_are_on_both_owners(tmp_path: Path, channel: bool) -> None:
    keys = {**KEYS, "pmcluster.replication": 2, "pmcluster.replication.channel": channel}
    with NodeCluster(3, workdir=tmp_path, extra=keys) as cluster:
        paths = [f"/workerbeats/ch-{n}/w-{i}-6700" for n in range(3) for i in range(200)]
        for n, node in enumerate(cluster.nodes):
            await plain_puts(node, [p for p in paths if p.startswith(f"/workerbeats/ch-{n}/")])
        for path in paths:  # no polling: each PUT was answered after both owners stored it
            holders = [node for node in cluster.nodes if node.local_pulse(path) == path.encode()]
            assert len(holders) == 2, path
        frames = sum(metric(node, "pmcluster_channel_frames_total") for node in cluster.nodes)
        opened = sum(metric(node, "pmcluster_channel_connections_total") for node in cluster.nodes)
        if channel:
            # Persistent: one connection per ordered pair of nodes, however many batches.
            assert 0 < opened <= 6, opened
            assert frames > opened * 5, (frames, opened)
        else:
            assert frames == 0 and opened == 0


async def test_a_node_without_the_channel_is_written_over_http(tmp_path: Path) -> None:
    with single_node(tmp_path, **{"pmcluster.replication.channel": False}) as node:
        async with aiohttp.ClientSession() as session:
            transport = transport_to(node, session)
            assert await transport.batch(
                [("/fallback/a", b"1", 10), ("/fallback/b", b"2", 10)]
            ) == (
                2,
                0,
            )
            transport.close()
        assert node.local_pulse("/fallback/a") == b"1"
        assert node.local_pulse("/fallback/b") == b"2"
        assert metric(node, "pmcluster_channel_frames_total") == 0


def transport_to(node: NodeProcess, session: aiohttp.ClientSession) -> NodeTransport:
    return NodeTransport(
        node.node_id,
        node.host,
        node.port,
        session,
        connect_timeout_secs=0.5,
        request_timeout_secs=2.0,
        forwarded=True,
        channel=True,
    )


async def test_the_channel_acknowledges_every_entry_and_reconnects_after_idle(
    tmp_path: Path,
) -> None:
    with single_node(tmp_path, **{"pmcluster.http.idle.secs": 0.6}) as node:
        async with aiohttp.ClientSession() as session:
            transport = transport_to(node, session)
            assert await transport.batch([("/ack/a", b"new", 20), ("/ack/b", b"b", 20)]) == (2, 0)
            # One entry older than what the node holds: ignored, the rest stored.
            done = await transport.batch([("/ack/a", b"old", 10), ("/ack/c", b"c", 20)])
            assert done == (1, 1)
            # A single write is a frame of one: stored (0) or the version that won over it.
            assert await transport.put_pulse("/ack/e", b"e", 20) == 0
            assert await transport.put_pulse("/ack/a", b"older", 15) == 20
            await asyncio.sleep(1.0)  # past the node's idle limit: the client reconnects
            assert await transport.batch([("/ack/d", b"d", 20)]) == (1, 0)
            transport.close()
        assert node.local_pulse("/ack/a") == b"new"
        assert node.local_pulse("/ack/c") == b"c"
        assert node.local_pulse("/ack/d") == b"d"
        assert node.local_pulse("/ack/e") == b"e"
        assert metric(node, "pmcluster_channel_frames_total") == 5
        assert metric(node, "pmcluster_channel_connections_total") == 2


class RawChannel:
    """A hand-made channel connection, for the frames no well-behaved client sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, node: NodeProcess) -> RawChannel:
        reader, writer = await asyncio.open_connection(node.host, node.port)
        writer.write(handshake_request(node.host, node.port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    def send(self, seq: int, body: bytes) -> None:
        self.writer.write(REQUEST_HEAD.pack(seq, len(body)) + body)

    async def ack(self) -> tuple[int, int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(ACK_HEAD.size), WAIT)
        seq, status, extra_len = ACK_HEAD.unpack(head)
        return seq, status, await asyncio.wait_for(self.reader.readexactly(extra_len), WAIT)

    async def closed_by_node(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), WAIT) == b""

    def close(self) -> None:
        self.writer.close()


async def test_bad_frames_are_refused_with_a_reason_and_store_nothing(tmp_path: Path) -> None:
    with single_node(tmp_path, **{"pacemaker.thrift.message.size.max": 65536}) as node:
        raw = await RawChannel.open(node)
        good = pulsecodec.encode([("/raw/kept", b"v1", 5)])
        raw.send(1, good)
        assert (await raw.ack())[:2] == (1, 200)
        # A malformed body (truncated record), a version far past the node's clock: 400 each,
        # the connection stays usable, nothing of either frame stored.
        raw.send(2, good[:-1])
        raw.send(3, pulsecodec.encode([("/raw/future", b"x", 2**62)]))
        raw.send(4, pulsecodec.encode([("/raw/after", b"ok", 5)]))
        acks = [await raw.ack() for _ in range(3)]
        assert [(seq, status) for seq, status, _ in acks] == [(2, 400), (3, 400), (4, 200)]
        assert json.loads(acks[0][2])["error"] == "invalid_request"
        assert "truncated" in json.loads(acks[0][2])["detail"]
        assert "skew" in json.loads(acks[1][2])["detail"]
        assert parse_ok_ack(acks[2][2])[0] == 1
        # A frame larger than the message limit: 413, then the node closes the connection
        # (it never buffers the frame).
        raw.writer.write(struct.pack(">II", 5, 1 << 20))
        seq, status, extra = await raw.ack()
        assert (seq, status) == (5, 413) and json.loads(extra)["error"] == "payload_too_large"
        assert await raw.closed_by_node()
        raw.close()
        # A frame cut off by the peer's close: nothing of it is stored.
        raw = await RawChannel.open(node)
        half = pulsecodec.encode([("/raw/half", b"h" * 1000, 5)])
        raw.writer.write(REQUEST_HEAD.pack(6, len(half)) + half[:500])
        await raw.writer.drain()
        raw.close()
        # The upgrade for another protocol is not a channel: aiohttp answers it.
        reader, writer = await asyncio.open_connection(node.host, node.port)
        writer.write(handshake_request(node.host, node.port).replace(b"pulses/1", b"pulses/9"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 4"), head
        writer.close()
        assert node.local_pulse("/raw/kept") == b"v1"
        assert node.local_pulse("/raw/after") == b"ok"
        for absent in ("/raw/future", "/raw/half"):
            assert node.local_pulse(absent) is None
        with urllib.request.urlopen(f"{node.url}/health", timeout=5) as response:
            assert response.status == 200
