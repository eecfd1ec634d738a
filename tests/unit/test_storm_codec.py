"""Storm Pacemaker codec: the spec's worked frames byte for byte, round trips, skipping of
unknown fields, every malformed-input case, and a fuzz run (only ProtocolError may escape)."""

from __future__ import annotations

import random
import struct

import pytest

from pmcluster.errors import ProtocolError
from pmcluster.storm.codec import (
    FrameDecoder,
    HBMessage,
    HBMessageData,
    HBNodes,
    HBPulse,
    HBRecords,
    decode_message,
    encode_frame,
    encode_message,
)
from pmcluster.storm.codec import HBServerMessageType as T

PATH = "/workerbeats/t-1-1/n-6700"


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def decode_one(data: bytes, max_size: int = 10_485_760) -> list[HBMessage]:
    return list(FrameDecoder(max_size).feed(data))


# ------------------------------------------------------------------ spec worked frames

SEND_PULSE_FRAME = (
    h("00000040 08000100000004 0c0002 0c0002 0b000100000019")
    + PATH.encode()
    + h("0b0002 00000002 0102 00 00 08000300000007 00")
)
WORKED = [
    (HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse(PATH, b"\x01\x02")), 7), SEND_PULSE_FRAME),
    (HBMessage(T.SEND_PULSE_RESPONSE, None, 7), h("0000000f 08000100000005 08000300000007 00")),
    (HBMessage(T.NOT_AUTHORIZED, None, 8), h("0000000f 08000100000012 08000300000008 00")),
    (
        HBMessage(T.EXISTS_RESPONSE, HBMessageData(boolval=True), 9),
        h("00000017 08000100000003 0c0002 020003 01 00 08000300000009 00"),
    ),
]


@pytest.mark.parametrize(("message", "wire"), WORKED, ids=lambda x: getattr(x, "type", ""))
def test_worked_frames_encode_byte_for_byte(message: HBMessage, wire: bytes) -> None:
    assert encode_frame(message) == wire


@pytest.mark.parametrize(("message", "wire"), WORKED, ids=lambda x: getattr(x, "type", ""))
def test_worked_frames_decode(message: HBMessage, wire: bytes) -> None:
    assert decode_one(wire) == [message]


def test_message_type_values_match_storm() -> None:
    requests = [
        "CREATE_PATH",
        "EXISTS",
        "SEND_PULSE",
        "GET_ALL_PULSE_FOR_PATH",
        "GET_ALL_NODES_FOR_PATH",
        "GET_PULSE",
        "DELETE_PATH",
        "DELETE_PULSE_ID",
    ]
    expected = {}
    for i, name in enumerate(requests):
        expected[name] = 2 * i
        expected[name + "_RESPONSE"] = 2 * i + 1
    expected |= {"CONTROL_MESSAGE": 16, "SASL_MESSAGE_TOKEN": 17, "NOT_AUTHORIZED": 18}
    assert {t.name: t.value for t in T} == expected


# ------------------------------------------------------------------ round trips


def _p(path: str) -> HBMessageData:
    return HBMessageData(path=path)


ROUND_TRIP = [
    HBMessage(T.CREATE_PATH, _p("/workerbeats"), 1),
    HBMessage(T.CREATE_PATH_RESPONSE, None, 1),
    HBMessage(T.EXISTS, _p(PATH), 2),
    HBMessage(T.EXISTS_RESPONSE, HBMessageData(boolval=False), 2),
    HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse(PATH, b"\x1f\x8b" + bytes(5000))), 3),
    HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse(PATH, b"")), 3),
    HBMessage(T.SEND_PULSE_RESPONSE, None, -1),
    HBMessage(T.GET_ALL_PULSE_FOR_PATH, _p("/workerbeats/t-1-1"), 4),
    HBMessage(
        T.GET_ALL_PULSE_FOR_PATH_RESPONSE,
        HBMessageData(records=HBRecords((HBPulse("/a/b", b"1"), HBPulse("/a/c", b"")))),
        4,
    ),
    HBMessage(T.GET_ALL_PULSE_FOR_PATH_RESPONSE, HBMessageData(records=HBRecords()), 4),
    HBMessage(T.GET_ALL_NODES_FOR_PATH, _p("/"), 5),
    HBMessage(
        T.GET_ALL_NODES_FOR_PATH_RESPONSE, HBMessageData(nodes=HBNodes(("t1", "t10", "é"))), 5
    ),
    HBMessage(T.GET_ALL_NODES_FOR_PATH_RESPONSE, HBMessageData(nodes=HBNodes()), 5),
    HBMessage(T.GET_PULSE, _p("/w/top(1)+$[x]/n-1"), 6),
    HBMessage(T.GET_PULSE_RESPONSE, HBMessageData(pulse=HBPulse(PATH, b"data")), 6),
    HBMessage(T.GET_PULSE_RESPONSE, HBMessageData(pulse=HBPulse(PATH)), 6),  # miss
    HBMessage(T.DELETE_PATH, _p("/workerbeats/t-1-1"), 2**31 - 1),
    HBMessage(T.DELETE_PATH_RESPONSE, None, 7),
    HBMessage(T.DELETE_PULSE_ID, _p(PATH), -(2**31)),
    HBMessage(T.DELETE_PULSE_ID_RESPONSE, None, 8),
    HBMessage(T.CONTROL_MESSAGE, HBMessageData(message_blob=struct.pack(">h", -202))),
    HBMessage(
        T.SASL_MESSAGE_TOKEN, HBMessageData(message_blob=struct.pack(">hi", -500, 3) + b"abc")
    ),
    HBMessage(T.NOT_AUTHORIZED, None, 9),
    HBMessage(T.GET_PULSE, _p("/bad/\udcff\udcfe"), 10),  # not UTF-8: bytes kept as they came
    HBMessage(99, None, 11),  # unknown type: decoded as a plain int
]


@pytest.mark.parametrize("message", ROUND_TRIP, ids=lambda m: str(m.type))
def test_round_trip(message: HBMessage) -> None:
    wire = encode_frame(message)
    assert decode_one(wire) == [message]
    assert decode_message(encode_message(message)) == message


def test_every_type_is_round_tripped() -> None:
    assert {int(m.type) for m in ROUND_TRIP} >= {int(t) for t in T}


def test_non_utf8_path_keeps_its_bytes() -> None:
    raw = b"/bad/\xff\xfe"
    wire = frame(h("08000100000000 0c0002 0b0001") + struct.pack(">i", len(raw)) + raw + h("00 00"))
    (message,) = decode_one(wire)
    assert message.data is not None and message.data.path is not None
    assert encode_frame(message) == wire


def test_absent_message_id_is_none_and_not_written() -> None:
    message = HBMessage(T.CONTROL_MESSAGE, HBMessageData(message_blob=b"\xff\x35"))
    wire = encode_message(message)
    assert wire == h("08000100000010 0c0002 0b0007 00000002 ff35 00 00")
    assert decode_message(wire).message_id is None


def test_union_rejects_zero_or_two_members_on_construction() -> None:
    with pytest.raises(ValueError):
        HBMessageData()
    with pytest.raises(ValueError):
        HBMessageData(path="/a", boolval=True)


# ------------------------------------------------------------------ incremental decoding


def test_decoder_byte_by_byte_and_many_frames_per_chunk() -> None:
    wire = b"".join(encode_frame(m) for m in ROUND_TRIP)
    decoder = FrameDecoder()
    got: list[HBMessage] = []
    for i in range(len(wire)):
        got.extend(decoder.feed(wire[i : i + 1]))
    assert got == ROUND_TRIP
    assert decoder.buffered == 0
    assert list(FrameDecoder().feed(wire)) == ROUND_TRIP


def test_decoder_keeps_partial_frame() -> None:
    wire = encode_frame(ROUND_TRIP[4])
    decoder = FrameDecoder()
    assert list(decoder.feed(wire[:100])) == []
    assert decoder.buffered == 100
    assert list(decoder.feed(wire[100:] + wire[:3])) == [ROUND_TRIP[4]]
    assert decoder.buffered == 3


def test_frame_of_exactly_max_size_is_accepted() -> None:
    wire = encode_frame(ROUND_TRIP[4])
    assert decode_one(wire, max_size=len(wire) - 4) == [ROUND_TRIP[4]]
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_one(wire, max_size=len(wire) - 5)


def test_oversized_length_fails_on_the_header_alone() -> None:
    decoder = FrameDecoder(1000)
    with pytest.raises(ProtocolError, match="exceeds"):
        list(decoder.feed(struct.pack(">i", 1001)))


def test_good_frames_before_a_bad_one_are_yielded_and_decoder_stays_failed() -> None:
    good = encode_frame(HBMessage(T.EXISTS, _p("/a"), 1))
    decoder = FrameDecoder()
    got: list[HBMessage] = []
    with pytest.raises(ProtocolError):
        for message in decoder.feed(good + struct.pack(">i", -1)):
            got.append(message)
    assert got == [HBMessage(T.EXISTS, _p("/a"), 1)]
    with pytest.raises(ProtocolError):
        list(decoder.feed(good))


# ------------------------------------------------------------------ unknown fields


def _field(ttype: int, fid: int, value: bytes) -> bytes:
    return struct.pack(">bh", ttype, fid) + value


UNKNOWN_VALUES = {
    "bool": _field(2, 50, b"\x01"),
    "byte": _field(3, 51, b"\x7f"),
    "double": _field(4, 52, struct.pack(">d", 1.5)),
    "i16": _field(6, 53, struct.pack(">h", -3)),
    "i32": _field(8, 54, struct.pack(">i", 5)),
    "i64": _field(10, 55, struct.pack(">q", 2**40)),
    "string": _field(11, 56, struct.pack(">i", 3) + b"xyz"),
    "struct": _field(12, 57, _field(8, 1, b"\0\0\0\1") + _field(12, 2, b"\x00") + b"\x00"),
    "map": _field(
        13, 58, b"\x0b\x08" + struct.pack(">i", 2) + (h("00000001") + b"k" + h("00000007")) * 2
    ),
    "empty map": _field(13, 59, b"\x0b\x08" + struct.pack(">i", 0)),
    "set": _field(14, 60, b"\x06" + struct.pack(">i", 2) + b"\x00\x01\x00\x02"),
    "list of lists": _field(
        15, 61, b"\x0f" + struct.pack(">i", 1) + b"\x08" + struct.pack(">ii", 1, 9)
    ),
    "list of structs": _field(15, 62, b"\x0c" + struct.pack(">i", 2) + b"\x00\x00"),
    "uuid": _field(16, 63, bytes(range(16))),
}
ALL_UNKNOWN = b"".join(UNKNOWN_VALUES.values())


@pytest.mark.parametrize("extra", list(UNKNOWN_VALUES.values()), ids=list(UNKNOWN_VALUES))
def test_unknown_field_of_each_type_is_skipped(extra: bytes) -> None:
    body = h("08000100000004") + extra + h("08000300000007 00")
    assert decode_message(body) == HBMessage(T.SEND_PULSE, None, 7)


def test_unknown_fields_are_skipped_at_every_struct_level() -> None:
    x = ALL_UNKNOWN
    pulse = (
        x + _field(11, 1, struct.pack(">i", 2) + b"/a") + x + _field(11, 2, h("00000001 09")) + x
    )
    records = x + _field(15, 1, b"\x0c" + struct.pack(">i", 1) + pulse + b"\x00") + x
    nodes = x + _field(15, 1, b"\x0b" + struct.pack(">i", 1) + h("00000001") + b"n") + x
    for member, expected in (
        (_field(12, 2, pulse + b"\x00"), HBMessageData(pulse=HBPulse("/a", b"\x09"))),
        (
            _field(12, 4, records + b"\x00"),
            HBMessageData(records=HBRecords((HBPulse("/a", b"\x09"),))),
        ),
        (_field(12, 5, nodes + b"\x00"), HBMessageData(nodes=HBNodes(("n",)))),
    ):
        body = x + h("08000100000004") + x + _field(12, 2, x + member + x + b"\x00") + x + b"\x00"
        assert decode_message(body) == HBMessage(T.SEND_PULSE, expected, None)


# ------------------------------------------------------------------ malformed input

BAD_BODIES = {
    "empty body": b"",
    "no STOP": h("08000100000004"),
    "no type": h("08000300000007 00"),
    "type is a string": h("0b0001 00000001 41 00"),
    "data is an i32": h("08000100000004 080002 00000001 00"),
    "message_id is a string": h("08000100000004 0b0003 00000000 00"),
    "union with no member": h("08000100000002 0c0002 00 00"),
    "union with two members": h("08000100000002 0c0002 0b0001 00000001 41 020003 01 00 00"),
    "path is an i32": h("08000100000002 0c0002 080001 00000001 00 00"),
    "boolval is an i32": h("08000100000003 0c0002 080003 00000001 00 00"),
    "pulse is a string": h("08000100000004 0c0002 0b0002 00000000 00 00"),
    "pulse without id": h("08000100000004 0c0002 0c0002 0b0002 00000000 00 00 00"),
    "pulse id is a struct": h("08000100000004 0c0002 0c0002 0c0001 00 00 00 00"),
    "records list of strings": h("08000100000007 0c0002 0c0004 0f0001 0b 00000000 00 00 00"),
    "nodes list of i32": h("08000100000009 0c0002 0c0005 0f0001 08 00000001 00000001 00 00 00"),
    "nodes field is a map": h("08000100000009 0c0002 0c0005 0d0001 0b0b 00000000 00 00 00"),
    "truncated string": h("08000100000002 0c0002 0b0001 00000010 4141 00 00"),
    "negative string length": h("08000100000002 0c0002 0b0001 ffffffff 00 00"),
    "negative list count": h("08000100000009 0c0002 0c0005 0f0001 0b ffffffff 00 00 00"),
    "huge list count": h("08000100000009 0c0002 0c0005 0f0001 0b 7fffffff 00 00 00"),
    "unknown type code": h("08000100000002 090009 00 00"),
    "unknown element type": h("08000100000002 0f0009 63 00000001 00 00"),
    "STOP as element type": h("08000100000002 0f0009 00 00000001 00"),
    "huge unknown map": h("08000100000002 0d0009 0808 7fffffff 00"),
    "trailing bytes": h("08000100000002 00 00"),
    "truncated i32": h("080001 0000"),
    "deep nesting": h("08000100000002") + h("0c0009") * 200 + b"\x00" * 201,
}


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_malformed_struct_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_one(frame(body))


def test_negative_frame_length_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="negative"):
        decode_one(h("ffffffff"))


def test_frame_whose_length_cuts_the_struct_short() -> None:
    body = encode_message(HBMessage(T.EXISTS, _p("/a"), 1))
    with pytest.raises(ProtocolError, match="truncated"):
        decode_one(struct.pack(">i", len(body) - 2) + body[:-2])


# ------------------------------------------------------------------ fuzz


def _check_only_protocol_errors(data: bytes) -> bool:
    """True when `data` decoded (and re-encoded), False on ProtocolError; anything else fails."""
    decoder = FrameDecoder(1 << 16)
    try:
        for message in decoder.feed(data):
            encode_message(message)  # what decodes must encode again
    except ProtocolError:
        return False
    return True


def test_fuzz_random_bytes_raise_only_protocol_error() -> None:
    rng = random.Random(20240611)
    for _ in range(5000):
        body = rng.randbytes(rng.randrange(0, 64))
        _check_only_protocol_errors(frame(body))
        _check_only_protocol_errors(rng.randbytes(rng.randrange(0, 16)))
        _check_only_protocol_errors(b"\x00\x00" + rng.randbytes(rng.randrange(0, 40)))


def test_fuzz_mutated_valid_frames_raise_only_protocol_error() -> None:
    rng = random.Random(7)
    seeds = [encode_message(m) for m in ROUND_TRIP if len(encode_message(m)) < 2000]
    outcomes = {True: 0, False: 0}
    for _ in range(10000):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(body))
            if op == 0:
                body[pos] = rng.randrange(256)
            elif op == 1:
                del body[pos : pos + rng.randrange(1, 8)]
            else:
                body[pos:pos] = rng.randbytes(rng.randrange(1, 8))
            if not body:
                break
        outcomes[_check_only_protocol_errors(frame(bytes(body)))] += 1
    assert outcomes[True] > 500 and outcomes[False] > 500  # both paths really exercised
