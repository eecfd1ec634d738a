"""Storm's Pacemaker protocol on a real 3-node cluster (one port per node for HTTP and Storm).

Requests are encoded by thriftpy2 from an IDL written from the spec (an encoder pmcluster did
not write) or sent by `StormClient`. A write arriving on any node reaches the path's owners, a
read on any node answers for the whole cluster, DELETE_PATH reaches every owner for good, a
kill -9 of the writer's node loses nothing, and no bad frame harms anyone but its sender.
"""

from __future__ import annotations

import asyncio
import json
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2  # a dev dependency: missing, the suite fails (never skips)
from thriftpy2.utils import deserialize, serialize

from pmcluster.protocol.paths import to_url
from pmcluster.storm.client import StormClient
from pmcluster.storm.codec import HBMessage, HBMessageData, HBPulse, encode_frame
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.tools.localcluster import NodeCluster, NodeProcess, wait_until, zk_yaml

pytestmark = pytest.mark.integration


IDL = Path(__file__).parents[1] / "interop" / "pacemaker.thrift"
pm: Any = thriftpy2.load(str(IDL), module_name="pacemaker_cluster_thrift")
PROTO = thriftpy2.protocol.TBinaryProtocolFactory()
MT = pm.HBServerMessageType
WAIT = 10.0  # bound on waits for things that happen within milliseconds on an idle machine
NODE_KEYS: dict[str, Any] = {
    "pmcluster.request.timeout.secs": 1.0,
    "pmcluster.connect.timeout.secs": 0.3,
    "task.heartbeat.frequency.secs": 0.5,
}


# ------------------------------------------------------------------ helpers


def thrift_request(mtype: int, mid: int, *, path: str | None = None, pulse: Any = None) -> Any:
    data = pm.HBMessageData(path=path) if pulse is None else pm.HBMessageData(pulse=pulse)
    return pm.HBMessage(type=mtype, data=data, message_id=mid)


async def thrift_exchange(node: NodeProcess, requests: list[Any]) -> dict[int, Any]:
    """thriftpy2-encoded requests pipelined on one connection; decoded replies by id."""
    reader, writer = await asyncio.open_connection(node.host, node.port)
    try:
        for request in requests:
            body = serialize(request, PROTO)
            writer.write(struct.pack(">i", len(body)) + body)
        replies: dict[int, Any] = {}
        async with asyncio.timeout(WAIT):
            while len(replies) < len(requests):
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                reply = deserialize(pm.HBMessage(), await reader.readexactly(size), PROTO)
                replies[reply.message_id] = reply
        return replies
    finally:
        writer.close()


def copies(nodes: list[NodeProcess], path: str) -> int:
    return sum(node.local_pulse(path) is not None for node in nodes)


def wait_replicated(nodes: list[NodeProcess], paths: list[str]) -> None:
    """Bounded poll until each path is in exactly two stores (replication 2)."""
    for path in paths:

        def replicated(path: str = path) -> bool:
            return copies(nodes, path) == 2

        wait_until(replicated, WAIT, what=f"2 copies of {path}")


def http_get(node: NodeProcess, path: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"{node.url}/v1/pulse/{to_url(path)}", timeout=WAIT) as r:
            body: bytes = r.read()
            return body
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def storm(node: NodeProcess) -> StormClient:
    return StormClient(node.host, node.port, timeout=WAIT)


def worker_paths(topology: str, count: int) -> list[str]:
    return [f"/workerbeats/{topology}/node-{i}-6700" for i in range(count)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """Three nodes with static membership, shared by the non-destructive tests."""
    workdir = tmp_path_factory.mktemp("storm-cluster")
    with NodeCluster(3, workdir=workdir, extra=NODE_KEYS) as nodes:
        yield nodes


# ------------------------------------------------------------------ cluster semantics


async def test_thriftpy2_write_on_one_node_read_list_on_others(cluster: NodeCluster) -> None:
    writer_node, reader_node, lister_node = cluster[0], cluster[1], cluster[2]
    paths = [*worker_paths("wc-1-17", 12), "/workerbeats/wc-1-170/node-0-6700"]
    pulses = [pm.HBPulse(id=p, details=b"\x1f\x8b" + p.encode()) for p in paths]
    writes = [thrift_request(MT.SEND_PULSE, i, pulse=p) for i, p in enumerate(pulses)]
    replies = await thrift_exchange(writer_node, writes)
    assert all(r.type == MT.SEND_PULSE_RESPONSE and r.data is None for r in replies.values())
    wait_replicated(cluster.nodes, paths)  # every heartbeat reaches both owners

    reads = [thrift_request(MT.GET_PULSE, i, path=p) for i, p in enumerate(paths)]
    reads.append(thrift_request(MT.GET_PULSE, 100, path="/workerbeats/wc-1-17/absent"))
    reads.append(thrift_request(MT.EXISTS, 101, path=paths[0]))
    replies = await thrift_exchange(reader_node, reads)
    for i, pulse in enumerate(pulses):
        assert replies[i].type == MT.GET_PULSE_RESPONSE and replies[i].data.pulse == pulse
    miss = replies[100].data.pulse
    assert (miss.id, miss.details) == ("/workerbeats/wc-1-17/absent", None)
    assert replies[101].data.boolval is True

    listing = [
        thrift_request(MT.GET_ALL_NODES_FOR_PATH, 1, path="/workerbeats"),
        thrift_request(MT.GET_ALL_NODES_FOR_PATH, 2, path="/workerbeats/wc-1-17"),
        thrift_request(MT.GET_ALL_PULSE_FOR_PATH, 3, path="/workerbeats/wc-1-17"),
    ]
    replies = await thrift_exchange(lister_node, listing)
    assert {"wc-1-17", "wc-1-170"} <= set(replies[1].data.nodes.pulseIds)
    # component-aware: wc-1-17 does not list wc-1-170's worker
    assert sorted(replies[2].data.nodes.pulseIds) == sorted(p.rsplit("/", 1)[1] for p in paths[:12])
    records = {p.id: p.details for p in replies[3].data.records.pulses}
    assert records == {p.id: p.details for p in pulses[:12]}  # full paths as ids

    assert http_get(lister_node, paths[3]) == pulses[3].details  # one store, both protocols


async def test_delete_path_reaches_every_owner_and_stays_deleted(cluster: NodeCluster) -> None:
    paths = worker_paths("doomed-2-5", 10)
    async with storm(cluster[0]) as worker:
        await asyncio.gather(*(worker.send_pulse(p, b"beat") for p in paths))
    wait_replicated(cluster.nodes, paths)
    async with storm(cluster[1]) as nimbus:
        await nimbus.delete_path("/workerbeats/doomed-2-5")
    for path in paths:  # gone from every owner's store, not only hidden by a merge
        assert copies(cluster.nodes, path) == 0
    for node in cluster.nodes:  # and it never comes back, whichever node is asked
        async with storm(node) as reader:
            assert "doomed-2-5" not in await reader.get_all_nodes_for_path("/workerbeats")
            assert await reader.get_all_pulse_for_path("/workerbeats/doomed-2-5") == []
            assert await asyncio.gather(*(reader.get_pulse(p) for p in paths)) == [None] * 10
            assert not any(await asyncio.gather(*(reader.exists(p) for p in paths)))


# ------------------------------------------------------------------ bad input


def frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


GET_HEADER = b"\x08\x00\x01" + struct.pack(">i", T.GET_PULSE)
BAD_FRAMES: dict[str, bytes] = {
    # a negative length starts with 0xff: on the shared port that is not Storm, and the HTTP
    # side answers 400 and closes (a Storm server would close at once)
    "negative-length": struct.pack(">i", -1) + b"\x00" * 8,
    "oversized-length": struct.pack(">i", 10_485_761),
    "undecodable-struct": frame(b"\x08\x00\x01\x00\x00"),
    "unknown-ttype": frame(b"\x63\x00\x01\x00\x00\x00\x00\x00"),
    "trailing-bytes": frame(
        encode_frame(HBMessage(T.EXISTS, HBMessageData(path="/a"), 1))[4:] + b"x"
    ),
    "union-no-member": frame(GET_HEADER + b"\x0c\x00\x02\x00\x00"),
    "union-two-members": frame(
        GET_HEADER
        + b"\x0c\x00\x02"
        + b"\x0b\x00\x01\x00\x00\x00\x02/a"
        + b"\x02\x00\x03\x01\x00\x00"
    ),
    "union-wrong-member": encode_frame(HBMessage(T.GET_PULSE, HBMessageData(boolval=True), 2)),
    "send-pulse-no-details": encode_frame(
        HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse("/sentinel/key")), 3)
    ),
    "response-as-request": encode_frame(HBMessage(T.GET_PULSE_RESPONSE, None, 4)),
    "unknown-type": encode_frame(HBMessage(99, HBMessageData(path="/a"), 5)),
    "control-on-none-node": encode_frame(
        HBMessage(T.CONTROL_MESSAGE, HBMessageData(message_blob=struct.pack(">h", -202)))
    ),
    "sasl-after-ordinary": encode_frame(HBMessage(T.EXISTS, HBMessageData(path="/a"), 6))
    + encode_frame(
        HBMessage(T.SASL_MESSAGE_TOKEN, HBMessageData(message_blob=b"\xfe\x0c\x00\x00\x00\x00"))
    ),
}


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    got = b""
    async with asyncio.timeout(WAIT):
        while chunk := await reader.read(65536):
            got += chunk
    return got


def metrics_text(node: NodeProcess) -> str:
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=WAIT) as response:
        text: str = response.read().decode()
        return text


def protocol_errors(node: NodeProcess) -> int:
    for line in metrics_text(node).splitlines():
        if line.startswith('pmcluster_storm_errors_total{kind="protocol"}'):
            return int(line.split()[-1])
    raise AssertionError("no Storm protocol error counter in /metrics")


async def test_bad_frames_close_only_their_connection(cluster: NodeCluster) -> None:
    node = cluster[1]
    sentinel = "/sentinel/key"
    async with storm(cluster[0]) as writer:
        await writer.send_pulse(sentinel, b"precious")
    before = protocol_errors(node)
    async with storm(node) as bystander:  # a connection open through all the garbage
        for name, garbage in BAD_FRAMES.items():
            reader, raw = await asyncio.open_connection(node.host, node.port)
            try:
                raw.write(garbage)
                leftover = await read_until_closed(reader)  # the node closes that connection
            finally:
                raw.close()
            if garbage[0] == 0:  # a Storm frame: at most the reply to the good frame before
                assert len(leftover) in (0, 0x17 + 4), (name, leftover)
            else:  # not a zero first byte: the port's HTTP side refuses it
                assert leftover.startswith(b"HTTP/1.") and b" 400 " in leftover, name
            assert await bystander.get_pulse(sentinel) == b"precious", name
            async with storm(node) as newcomer:
                assert await newcomer.exists(sentinel), name
            assert http_get(node, sentinel) == b"precious", name
            node.check_alive()
    storm_frames = sum(garbage[0] == 0 for garbage in BAD_FRAMES.values())
    assert protocol_errors(node) - before == storm_frames
    assert copies(cluster.nodes, sentinel) == 2  # nothing stored was damaged or dropped


# ------------------------------------------------------------------ failover


async def test_kill_the_writers_node_and_read_everything_elsewhere(
    tmp_path: Path, zk_hosts: str
) -> None:
    keys = {**NODE_KEYS, **zk_yaml(zk_hosts), "storm.zookeeper.session.timeout": 1500}
    with NodeCluster(3, workdir=tmp_path, extra=keys) as cluster:
        wait_until(lambda: all(len(members(n)) == 3 for n in cluster.nodes), WAIT, what="3 members")
        writer_node, survivors = cluster[0], cluster.nodes[1:]
        paths = worker_paths("crash-3-9", 30)
        writes = [
            thrift_request(MT.SEND_PULSE, i, pulse=pm.HBPulse(id=p, details=p.encode()))
            for i, p in enumerate(paths)
        ]
        await thrift_exchange(writer_node, writes)
        wait_replicated(cluster.nodes, paths)
        held = [p for p in paths if writer_node.local_pulse(p) is not None]
        assert held, "the writer's node owns none of the keys: the kill would prove nothing"

        writer_node.kill()  # SIGKILL by PID
        for node in survivors:  # at once: the dead node is still in the ring (refused)
            await read_all(node, paths)
        wait_until(
            lambda: all(len(members(n)) == 2 for n in survivors), WAIT, what="ring drops the node"
        )
        for node in survivors:  # and after the ring dropped it
            await read_all(node, paths)
        async with storm(survivors[0]) as worker:  # writes keep working
            await worker.send_pulse(paths[0], b"after")
        async with storm(survivors[1]) as nimbus:
            assert await nimbus.get_pulse(paths[0]) == b"after"


def members(node: NodeProcess) -> list[Any]:
    with urllib.request.urlopen(f"{node.url}/v1/members", timeout=WAIT) as response:
        found: list[Any] = json.loads(response.read())["members"]
        return found


async def read_all(node: NodeProcess, paths: list[str]) -> None:
    """Every path's value through `node` (thriftpy2-encoded), and the listing (StormClient)."""
    reads = [thrift_request(MT.GET_PULSE, i, path=p) for i, p in enumerate(paths)]
    replies = await thrift_exchange(node, reads)
    assert [replies[i].data.pulse.details for i in range(len(paths))] == [p.encode() for p in paths]
    async with storm(node) as nimbus:
        names = await nimbus.get_all_nodes_for_path("/workerbeats/crash-3-9")
        assert sorted(names) == sorted(p.rsplit("/", 1)[1] for p in paths)
