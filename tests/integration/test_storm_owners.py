"""Where a Storm write lands, checked at the moment it is acknowledged (real node processes).

A SEND_PULSE carries no version, so its coordinating node assigns one and hears every owner
(within one request timeout) before it replies: the fast lane (`StormHandler.answer_now`)
answers at once only when the node is the key's only owner, which never holds with three
nodes and replication 2. So on a healthy 3-node cluster a write acknowledged by any node,
owner of the key or not, is already in both owners' stores, and a kill -9 of the
coordinating node right after the acknowledgement loses none of it. What the rule allows to
be lost is a write acknowledged while one owner did not answer within the timeout: it then
lives on the owners that answered only (docs/reliability.md).
A one-node cluster answers everything in the fast lane: replies, metrics and listings hold.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pmcluster.storm.client import StormClient
from pmcluster.storm.codec import FrameDecoder, HBMessage, HBMessageData, HBPulse, encode_frame
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.tools.localcluster import NodeCluster, NodeProcess

pytestmark = pytest.mark.integration

WAIT = 10.0
NODE_KEYS = {
    "pmcluster.request.timeout.secs": 1.0,
    "pmcluster.connect.timeout.secs": 0.3,
}


async def pipelined(node: NodeProcess, requests: list[HBMessage]) -> dict[int, HBMessage]:
    """Every request in one write on one connection; the replies by message id."""
    reader, writer = await asyncio.open_connection(node.host, node.port)
    try:
        writer.write(b"".join(encode_frame(r) for r in requests))
        decoder = FrameDecoder()
        replies: dict[int, HBMessage] = {}
        async with asyncio.timeout(WAIT):
            while len(replies) < len(requests):
                chunk = await reader.read(65536)
                assert chunk, "connection closed before every reply came"
                for reply in decoder.feed(chunk):
                    assert reply.message_id is not None
                    replies[reply.message_id] = reply
        return replies
    finally:
        writer.close()


def writes(paths: list[str], payload: bytes) -> list[HBMessage]:
    return [
        HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse(p, payload + p.encode())), i)
        for i, p in enumerate(paths)
    ]


async def test_a_write_is_on_both_owners_when_acknowledged_by_an_owner_or_not(
    tmp_path: Path,
) -> None:
    with NodeCluster(3, workdir=tmp_path, extra=NODE_KEYS) as cluster:
        for n, coordinator in enumerate(cluster.nodes):
            paths = [f"/workerbeats/owners-{n}/w-{i}-6700" for i in range(40)]
            replies = await pipelined(coordinator, writes(paths, b"v"))
            assert all(r.type == T.SEND_PULSE_RESPONSE for r in replies.values())
            owner, other = 0, 0
            for path in paths:  # no polling: the acknowledgement came after both owners'
                holders = [node for node in cluster.nodes if node.local_pulse(path) is not None]
                assert len(holders) == 2, path
                if coordinator in holders:
                    owner += 1
                else:
                    other += 1
            assert owner and other, "the coordinator must be an owner of some keys, not all"


async def test_kill_9_of_the_coordinator_right_after_the_ack_loses_nothing(
    tmp_path: Path,
) -> None:
    with NodeCluster(3, workdir=tmp_path, extra=NODE_KEYS) as cluster:
        coordinator, survivors = cluster[0], cluster.nodes[1:]
        paths = [f"/workerbeats/kill-1/w-{i}-6700" for i in range(60)]
        replies = await pipelined(coordinator, writes(paths, b"k"))
        assert len(replies) == len(paths)
        coordinator.kill()  # SIGKILL by PID, at once: no time for any background copy
        for node in survivors:
            async with StormClient(node.host, node.port, timeout=WAIT) as nimbus:
                values = await asyncio.gather(*(nimbus.get_pulse(p) for p in paths))
            assert values == [b"k" + p.encode() for p in paths]


async def test_one_node_answers_a_pipelined_read_in_the_fast_lane(tmp_path: Path) -> None:
    with NodeCluster(1, workdir=tmp_path, extra=NODE_KEYS) as cluster:
        node = cluster[0]
        paths = [f"/workerbeats/solo/w-{i}-6700" for i in range(300)]
        requests = writes(paths, b"s")
        n = len(requests)
        requests += [
            HBMessage(T.GET_PULSE, HBMessageData(path=p), n + i) for i, p in enumerate(paths)
        ]
        requests.append(HBMessage(T.GET_PULSE, HBMessageData(path="/workerbeats/solo/x"), 2 * n))
        requests.append(HBMessage(T.EXISTS, HBMessageData(path=paths[0]), 2 * n + 1))
        requests.append(HBMessage(T.GET_PULSE, HBMessageData(path="bad"), 2 * n + 2))
        replies = await pipelined(node, requests)
        for i, path in enumerate(paths):
            assert replies[i] == HBMessage(T.SEND_PULSE_RESPONSE, None, i)
            data = replies[n + i].data
            assert data is not None and data.pulse == HBPulse(path, b"s" + path.encode())
        miss = replies[2 * n].data
        assert miss is not None and miss.pulse == HBPulse("/workerbeats/solo/x")
        found = replies[2 * n + 1].data
        assert found is not None and found.boolval is True
        bad = replies[2 * n + 2].data
        assert bad is not None and bad.pulse == HBPulse("bad")  # invalid path: empty answer
        async with StormClient(node.host, node.port, timeout=WAIT) as nimbus:
            records = await nimbus.get_all_pulse_for_path("/workerbeats/solo")
            assert sorted(records) == sorted((p, b"s" + p.encode()) for p in paths)
            assert await nimbus.get_all_nodes_for_path("/workerbeats") == ["solo"]
        with urllib.request.urlopen(f"{node.url}/metrics", timeout=WAIT) as response:
            metrics = response.read().decode()
        assert 'pmcluster_storm_requests_total{type="SEND_PULSE"} 300' in metrics
        assert 'pmcluster_storm_errors_total{kind="invalid_path"} 1' in metrics
