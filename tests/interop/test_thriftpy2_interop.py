"""Interop with an independent Thrift implementation (thriftpy2's TBinaryProtocol, IDL in
`pacemaker.thrift` copied from Storm's storm.thrift): byte-identical encodings both ways, and
a pmcluster Storm server driven by thriftpy2-encoded requests, answering decodable replies."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
import thriftpy2  # a dev dependency: missing, the suite fails (never skips)
from thriftpy2.utils import deserialize, serialize

from pmcluster.node.local import LocalBackend
from pmcluster.store import PulseStore
from pmcluster.storm.codec import (
    HBMessage,
    HBMessageData,
    HBNodes,
    HBPulse,
    HBRecords,
    decode_message,
    encode_message,
)
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.storm.handler import StormHandler
from pmcluster.storm.server import StormConnection

pm: Any = thriftpy2.load(
    str(Path(__file__).with_name("pacemaker.thrift")), module_name="pacemaker_thrift"
)
PROTO = thriftpy2.protocol.TBinaryProtocolFactory()  # the Cython one when built
W = "/workerbeats/wc(1)+$[x]-3-17/9c1de2-10.0.0.5-6700"


def to_thrift(message: HBMessage) -> Any:
    """The thriftpy2 object equal to one of our messages."""
    data = message.data
    tdata = None
    if data is not None:
        member = data.member
        value: Any = getattr(data, member)
        if member == "pulse":
            value = pm.HBPulse(id=value.id, details=value.details)
        elif member == "records":
            value = pm.HBRecords(
                pulses=[pm.HBPulse(id=p.id, details=p.details) for p in value.pulses]
            )
        elif member == "nodes":
            value = pm.HBNodes(pulseIds=list(value.pulseIds))
        tdata = pm.HBMessageData(**{member: value})
    return pm.HBMessage(type=int(message.type), data=tdata, message_id=message.message_id)


MESSAGES = [
    HBMessage(T.CREATE_PATH, HBMessageData(path="/workerbeats"), 1),
    HBMessage(T.CREATE_PATH_RESPONSE, None, 1),
    HBMessage(T.EXISTS, HBMessageData(path=W), 2),
    HBMessage(T.EXISTS_RESPONSE, HBMessageData(boolval=True), 2),
    HBMessage(T.EXISTS_RESPONSE, HBMessageData(boolval=False), 2),
    HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse(W, b"\x1f\x8b" + bytes(300))), 3),
    HBMessage(T.SEND_PULSE_RESPONSE, None, -1),
    HBMessage(T.GET_ALL_PULSE_FOR_PATH, HBMessageData(path="/workerbeats"), 4),
    HBMessage(
        T.GET_ALL_PULSE_FOR_PATH_RESPONSE,
        HBMessageData(records=HBRecords((HBPulse("/a/b", b"1"), HBPulse("/a/é", b"")))),
        4,
    ),
    HBMessage(T.GET_ALL_NODES_FOR_PATH, HBMessageData(path="/"), 5),
    HBMessage(T.GET_ALL_NODES_FOR_PATH_RESPONSE, HBMessageData(nodes=HBNodes(("t1", "é"))), 5),
    HBMessage(T.GET_ALL_NODES_FOR_PATH_RESPONSE, HBMessageData(nodes=HBNodes()), 5),
    HBMessage(T.GET_PULSE, HBMessageData(path=W), 6),
    HBMessage(T.GET_PULSE_RESPONSE, HBMessageData(pulse=HBPulse(W, b"x")), 6),
    HBMessage(T.GET_PULSE_RESPONSE, HBMessageData(pulse=HBPulse(W)), 6),
    HBMessage(T.DELETE_PATH, HBMessageData(path="/w"), 2**31 - 1),
    HBMessage(T.DELETE_PATH_RESPONSE, None, 7),
    HBMessage(T.DELETE_PULSE_ID, HBMessageData(path=W), -(2**31)),
    HBMessage(T.DELETE_PULSE_ID_RESPONSE, None, 8),
    HBMessage(T.CONTROL_MESSAGE, HBMessageData(message_blob=struct.pack(">h", -202))),
    HBMessage(
        T.SASL_MESSAGE_TOKEN, HBMessageData(message_blob=struct.pack(">hi", -500, 2) + b"ab")
    ),
    HBMessage(T.NOT_AUTHORIZED, None, 9),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.type.name)
def test_encodings_are_byte_identical_both_ways(message: HBMessage) -> None:
    theirs = serialize(to_thrift(message), PROTO)
    ours = encode_message(message)
    assert ours == theirs
    assert decode_message(theirs) == message
    expected = to_thrift(message)
    if message.message_id is None:
        expected.message_id = -1  # absent on the wire: thriftpy2 keeps the IDL default
    assert deserialize(pm.HBMessage(), ours, PROTO) == expected


def test_thrift_default_message_id_is_written_and_read() -> None:
    # thriftpy2 (like Java) fills the IDL default -1: we read it as a set -1.
    wire = serialize(pm.HBMessage(type=pm.HBServerMessageType.SEND_PULSE_RESPONSE), PROTO)
    assert decode_message(wire) == HBMessage(T.SEND_PULSE_RESPONSE, None, -1)


async def exchange(port: int, requests: list[Any]) -> dict[int, Any]:
    """Send thriftpy2 messages framed on one connection; thriftpy2-decoded replies by id."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in requests:
            body = serialize(request, PROTO)
            writer.write(struct.pack(">i", len(body)) + body)
        replies: dict[int, Any] = {}
        async with asyncio.timeout(5):
            while len(replies) < len(requests):
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                reply = deserialize(pm.HBMessage(), await reader.readexactly(size), PROTO)
                replies[reply.message_id] = reply
        return replies
    finally:
        writer.close()


async def test_server_speaks_to_thriftpy2() -> None:
    store = PulseStore()
    handler = StormHandler(LocalBackend(store))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: StormConnection(handler), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = pm.HBServerMessageType

    def req(mtype: int, mid: int, path: str) -> Any:
        return pm.HBMessage(type=mtype, data=pm.HBMessageData(path=path), message_id=mid)

    try:
        pulse = pm.HBPulse(id=W, details=b"\x1f\x8bbeat")
        writes = [
            pm.HBMessage(type=t.SEND_PULSE, data=pm.HBMessageData(pulse=pulse), message_id=1),
            req(t.CREATE_PATH, 2, "/workerbeats"),
        ]
        r = await exchange(port, writes)
        assert (r[1].type, r[1].data) == (t.SEND_PULSE_RESPONSE, None)
        assert (r[2].type, r[2].data) == (t.CREATE_PATH_RESPONSE, None)

        parent = W.rsplit("/", 1)[0]
        reads = [
            req(t.GET_PULSE, 10, W),
            req(t.GET_PULSE, 11, "/missing"),
            req(t.EXISTS, 12, W),
            req(t.GET_ALL_NODES_FOR_PATH, 13, "/workerbeats"),
            req(t.GET_ALL_PULSE_FOR_PATH, 14, parent),
        ]
        r = await exchange(port, reads)
        assert r[10].type == t.GET_PULSE_RESPONSE
        assert r[10].data.pulse == pm.HBPulse(id=W, details=b"\x1f\x8bbeat")
        assert r[11].data.pulse == pm.HBPulse(id="/missing", details=None)
        assert r[12].data.boolval is True
        assert r[13].data.nodes.pulseIds == [parent.rsplit("/", 1)[1]]
        assert r[14].data.records.pulses == [pulse]

        deletes = [req(t.DELETE_PULSE_ID, 20, W), req(t.DELETE_PATH, 21, "/workerbeats")]
        r = await exchange(port, deletes)
        assert r[20].type == t.DELETE_PULSE_ID_RESPONSE and r[21].type == t.DELETE_PATH_RESPONSE
        assert store.key_count == 0
    finally:
        server.close()
