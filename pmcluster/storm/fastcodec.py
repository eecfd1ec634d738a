"""Fast decoding and encoding of the hot Storm request and reply shapes. No I/O.

`codec` is the reference: it decodes any valid `HBMessage` (unknown fields, any field order)
and builds dataclasses. Storm's Thrift client always writes the same byte layout for a
request (fields in id order, `message_id` set), so `decode_request` checks for exactly that
layout with `struct.unpack_from` and returns a plain tuple; anything else, including every
malformed frame, returns None and the caller decodes it with `codec.decode_message` (which
also produces the error message). The encoders fill prebuilt templates and produce byte for
byte what `codec.encode_frame` produces for the same reply (tests/unit/test_storm_fastpath.py
checks both against random and edge frames).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pmcluster.protocol.pulse import Pulse
from pmcluster.storm.codec import HBServerMessageType as T

__all__ = [
    "FastRequest",
    "decode_request",
    "encode_bool_reply",
    "encode_empty_reply",
    "encode_nodes_reply",
    "encode_pulse_reply",
    "encode_records_reply",
]

FastRequest = tuple[T, int, str, bytes | None]
"""(type, message_id, path as sent, details: SEND_PULSE's bytes, None for the others)."""

_PATH_TYPES: dict[int, T] = {
    t.value: t
    for t in (
        T.GET_PULSE,
        T.EXISTS,
        T.GET_ALL_NODES_FOR_PATH,
        T.GET_ALL_PULSE_FOR_PATH,
        T.DELETE_PATH,
        T.DELETE_PULSE_ID,
        T.CREATE_PATH,
    )
}

# HBMessage: field 1 I32 type, field 2 STRUCT data; then the union's first field header.
_HEAD = struct.Struct(">bhibhbh")
_STRING = struct.Struct(">bhi")  # a STRING field header and its length
_TAIL = struct.Struct(">bhib")  # field 3 I32 message_id, STOP
_I32 = struct.Struct(">i")
_STRING_FIELD = 11
_SEND_PULSE = int(T.SEND_PULSE)  # a plain int: an enum member lookup costs more
_SEND = T.SEND_PULSE
_STRUCT_FIELD = 12
_I32_FIELD = 8

# Replies: "<frame length> 08 0001 <type>" ... "08 0003 <message_id> 00".
_EMPTY = struct.Struct(">ibhibhib")
_EMPTY_SIZE = _EMPTY.size - 4
_PREFIX = struct.Struct(">ibhibh")  # frame length, type field, data field header
_MID = struct.Struct(">bhib")
_BOOL = struct.Struct(">ibhibhbhbbbhib")
_BOOL_SIZE = _BOOL.size - 4
_PULSE_OPEN = b"\x0c\x00\x02\x0b\x00\x01"  # data.pulse struct, then its id field header
_DETAILS = b"\x0b\x00\x02"
_RECORDS_OPEN = b"\x0c\x00\x04\x0f\x00\x01\x0c"  # data.records, its pulses list of STRUCT
_NODES_OPEN = b"\x0c\x00\x05\x0f\x00\x01\x0b"  # data.nodes, its pulseIds list of STRING
_PULSE_FIELDS = struct.Struct(">bhi")


def decode_request(body: bytes) -> FastRequest | None:
    """The request in `body` when it has Storm's exact layout of a SEND_PULSE (pulse with
    id and details) or of a path request (GET_PULSE, EXISTS, GET_ALL_*, DELETE_*,
    CREATE_PATH) with a message id; None otherwise (decode it with `codec.decode_message`)."""
    size = len(body)
    if size < 26:  # the smallest path request: an empty path
        return None
    f1, i1, mtype, f2, i2, f3, i3 = _HEAD.unpack_from(body, 0)
    if f1 != _I32_FIELD or i1 != 1 or f2 != _STRUCT_FIELD or i2 != 2:
        return None
    if mtype == _SEND_PULSE:
        if f3 != _STRUCT_FIELD or i3 != 2 or size < 13 + 7 + 7 + 2 + 8:
            return None
        ft, fid, n = _STRING.unpack_from(body, 13)
        end = 20 + n
        if ft != _STRING_FIELD or fid != 1 or n < 0 or end + 7 + 2 + 8 > size:
            return None
        ft, fid, m = _STRING.unpack_from(body, end)
        start = end + 7
        stop = start + m
        if ft != _STRING_FIELD or fid != 2 or m < 0 or stop + 2 + 8 != size:
            return None
        if body[stop] != 0 or body[stop + 1] != 0:
            return None
        ft, fid, mid, last = _TAIL.unpack_from(body, stop + 2)
        if ft != _I32_FIELD or fid != 3 or last != 0:
            return None
        path = body[20:end].decode("utf-8", "surrogateescape")
        return _SEND, mid, path, body[start:stop]
    ptype = _PATH_TYPES.get(mtype)
    if ptype is None or f3 != _STRING_FIELD or i3 != 1:
        return None
    (n,) = _I32.unpack_from(body, 13)
    end = 17 + n
    if n < 0 or end + 1 + 8 != size or body[end] != 0:
        return None
    ft, fid, mid, last = _TAIL.unpack_from(body, end + 1)
    if ft != _I32_FIELD or fid != 3 or last != 0:
        return None
    return ptype, mid, body[17:end].decode("utf-8", "surrogateescape"), None


def encode_empty_reply(rtype: int, mid: int) -> bytes:
    """A reply frame without data (SEND_PULSE, DELETE_*, CREATE_PATH replies, NOT_AUTHORIZED)."""
    return _EMPTY.pack(_EMPTY_SIZE, _I32_FIELD, 1, rtype, _I32_FIELD, 3, mid, 0)


def encode_bool_reply(mid: int, value: bool) -> bytes:
    """EXISTS_RESPONSE."""
    return _BOOL.pack(
        _BOOL_SIZE, 8, 1, T.EXISTS_RESPONSE, 12, 2, 2, 3, 1 if value else 0, 0, 8, 3, mid, 0
    )


def _frame(rtype: int, parts: list[bytes], size: int, mid: int) -> bytes:
    """Join `parts` (the data struct's fields, `size` bytes) into one reply frame."""
    total = 7 + 3 + size + 8
    parts.insert(0, _PREFIX.pack(total, _I32_FIELD, 1, rtype, _STRUCT_FIELD, 2))
    parts.append(_MID.pack(_I32_FIELD, 3, mid, 0))
    return b"".join(parts)


def encode_pulse_reply(mid: int, path: str, details: bytes | None) -> bytes:
    """GET_PULSE_RESPONSE: the pulse `path` (as requested) with `details`, or without (a miss)."""
    raw = path.encode("utf-8", "surrogateescape")
    parts = [_PULSE_OPEN, _I32.pack(len(raw)), raw]
    size = 6 + 4 + len(raw) + 2
    if details is not None:
        parts += (_DETAILS, _I32.pack(len(details)), details)
        size += 7 + len(details)
    parts.append(b"\x00\x00")
    return _frame(T.GET_PULSE_RESPONSE, parts, size, mid)


def encode_records_reply(mid: int, pulses: Sequence[Pulse]) -> bytes:
    """GET_ALL_PULSE_FOR_PATH_RESPONSE: every pulse with its full path and data."""
    parts = [_RECORDS_OPEN, _I32.pack(len(pulses))]
    size = 7 + 4 + 2
    pack = _PULSE_FIELDS.pack
    append = parts.append
    for pulse in pulses:
        raw = pulse.path.encode("utf-8", "surrogateescape")
        data = pulse.data
        append(pack(_STRING_FIELD, 1, len(raw)))
        append(raw)
        append(pack(_STRING_FIELD, 2, len(data)))
        append(data)
        append(b"\x00")
        size += 7 + len(raw) + 7 + len(data) + 1
    parts.append(b"\x00\x00")
    return _frame(T.GET_ALL_PULSE_FOR_PATH_RESPONSE, parts, size, mid)


def encode_nodes_reply(mid: int, names: Sequence[str]) -> bytes:
    """GET_ALL_NODES_FOR_PATH_RESPONSE: the child names."""
    parts = [_NODES_OPEN, _I32.pack(len(names))]
    size = 7 + 4 + 2
    for name in names:
        raw = name.encode("utf-8", "surrogateescape")
        parts += (_I32.pack(len(raw)), raw)
        size += 4 + len(raw)
    parts.append(b"\x00\x00")
    return _frame(T.GET_ALL_NODES_FOR_PATH_RESPONSE, parts, size, mid)
