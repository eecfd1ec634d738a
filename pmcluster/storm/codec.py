"""Thrift TBinaryProtocol encoding of Storm's Pacemaker messages, and their framing. No I/O.

A frame is an int32 big-endian length N followed by N bytes of one bare `HBMessage` struct
(no service envelope). Only the structs of the spec (`STORM-PROTOCOL.md` §2) are known;
unknown fields of any Thrift type are skipped, as Thrift does. Decoding is strict about
everything else (wrong field types, unions with zero or several members, truncation, trailing
bytes) and never raises anything but `ProtocolError`, so a server can close exactly the one
connection that sent garbage.

Strings are decoded with `surrogateescape`: a path that is not UTF-8 survives decoding (the
path checks reject it later, as an invalid path) and re-encodes to the very same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from pmcluster.errors import ProtocolError

T = TypeVar("T")

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FrameDecoder",
    "HBMessage",
    "HBMessageData",
    "HBNodes",
    "HBPulse",
    "HBRecords",
    "HBServerMessageType",
    "TType",
    "decode_message",
    "encode_frame",
    "encode_message",
]

DEFAULT_MAX_FRAME_SIZE = 10_485_760  # pacemaker.thrift.message.size.max
_MAX_DEPTH = 64  # nesting limit when skipping unknown fields: no RecursionError on hostile input
# Collection elements one frame may declare in all (`pmcluster.thrift.max.elements` on a node):
# each costs Python work, so a 10 MiB frame of tiny elements must not block the loop for seconds.
DEFAULT_MAX_ELEMENTS = 1_000_000


class HBServerMessageType(IntEnum):
    """`HBMessage.type` values, Storm's names and numbers."""

    CREATE_PATH = 0
    CREATE_PATH_RESPONSE = 1
    EXISTS = 2
    EXISTS_RESPONSE = 3
    SEND_PULSE = 4
    SEND_PULSE_RESPONSE = 5
    GET_ALL_PULSE_FOR_PATH = 6
    GET_ALL_PULSE_FOR_PATH_RESPONSE = 7
    GET_ALL_NODES_FOR_PATH = 8
    GET_ALL_NODES_FOR_PATH_RESPONSE = 9
    GET_PULSE = 10
    GET_PULSE_RESPONSE = 11
    DELETE_PATH = 12
    DELETE_PATH_RESPONSE = 13
    DELETE_PULSE_ID = 14
    DELETE_PULSE_ID_RESPONSE = 15
    CONTROL_MESSAGE = 16
    SASL_MESSAGE_TOKEN = 17
    NOT_AUTHORIZED = 18


class TType(IntEnum):
    """Thrift wire type codes (TBinaryProtocol)."""

    STOP = 0
    BOOL = 2
    BYTE = 3
    DOUBLE = 4
    I16 = 6
    I32 = 8
    I64 = 10
    STRING = 11
    STRUCT = 12
    MAP = 13
    SET = 14
    LIST = 15
    UUID = 16


# Smallest encoding of one value of each type: lets a huge declared count fail fast.
_MIN_SIZE = {
    TType.BOOL: 1,
    TType.BYTE: 1,
    TType.DOUBLE: 8,
    TType.I16: 2,
    TType.I32: 4,
    TType.I64: 8,
    TType.STRING: 4,
    TType.STRUCT: 1,
    TType.MAP: 6,
    TType.SET: 5,
    TType.LIST: 5,
    TType.UUID: 16,
}
_FIXED_SIZE = {
    TType.BOOL: 1,
    TType.BYTE: 1,
    TType.DOUBLE: 8,
    TType.I16: 2,
    TType.I32: 4,
    TType.I64: 8,
    TType.UUID: 16,
}


@dataclass(frozen=True, slots=True)
class HBPulse:
    """One heartbeat: `id` is its path; `details` is absent on a GET_PULSE miss."""

    id: str
    details: bytes | None = None


@dataclass(frozen=True, slots=True)
class HBRecords:
    """GET_ALL_PULSE_FOR_PATH reply: pulses with full paths as ids."""

    pulses: tuple[HBPulse, ...] = ()


@dataclass(frozen=True, slots=True)
class HBNodes:
    """GET_ALL_NODES_FOR_PATH reply: child names (Storm's field name kept)."""

    pulseIds: tuple[str, ...] = ()  # Storm's name, camel case as on the wire


_UNION_FIELDS = ("path", "pulse", "boolval", "records", "nodes", "message_blob")


@dataclass(frozen=True, slots=True)
class HBMessageData:
    """The Thrift union: exactly one member is set (checked on construction)."""

    path: str | None = None
    pulse: HBPulse | None = None
    boolval: bool | None = None
    records: HBRecords | None = None
    nodes: HBNodes | None = None
    message_blob: bytes | None = None

    def __post_init__(self) -> None:
        count = (
            (self.path is not None)
            + (self.pulse is not None)
            + (self.boolval is not None)
            + (self.records is not None)
            + (self.nodes is not None)
            + (self.message_blob is not None)
        )
        if count != 1:
            raise ValueError(f"HBMessageData is a union: exactly one member, not {count}")

    @property
    def member(self) -> str:
        """The name of the member that is set."""
        return next(name for name in _UNION_FIELDS if getattr(self, name) is not None)


@dataclass(frozen=True, slots=True)
class HBMessage:
    """A request or reply. `type` is an `HBServerMessageType` when the value is known, else
    the raw int; `message_id` None means the field was absent (Storm's default is -1)."""

    type: int
    data: HBMessageData | None = None
    message_id: int | None = None


# ---------------------------------------------------------------------------- encoding

_I32 = struct.Struct(">i")
_FIELD = struct.Struct(">bh")


def _field(out: bytearray, ttype: TType, fid: int) -> None:
    out += _FIELD.pack(ttype, fid)


def _binary(out: bytearray, value: bytes) -> None:
    out += _I32.pack(len(value))
    out += value


def _string(out: bytearray, value: str) -> None:
    _binary(out, value.encode("utf-8", "surrogateescape"))


def _list_struct(
    out: bytearray, fid: int, etype: int, items: Sequence[T], write: Callable[[bytearray, T], None]
) -> None:
    """Field `fid`: a struct whose field 1 is a list of `etype` (HBRecords, HBNodes)."""
    _field(out, TType.STRUCT, fid)
    _field(out, TType.LIST, 1)
    out.append(etype)
    out += _I32.pack(len(items))
    for item in items:
        write(out, item)
    out.append(TType.STOP)


def _pulse(out: bytearray, pulse: HBPulse) -> None:
    _field(out, TType.STRING, 1)
    _string(out, pulse.id)
    if pulse.details is not None:
        _field(out, TType.STRING, 2)
        _binary(out, pulse.details)
    out.append(TType.STOP)


def _data(out: bytearray, data: HBMessageData) -> None:
    if data.path is not None:
        _field(out, TType.STRING, 1)
        _string(out, data.path)
    elif data.pulse is not None:
        _field(out, TType.STRUCT, 2)
        _pulse(out, data.pulse)
    elif data.boolval is not None:
        _field(out, TType.BOOL, 3)
        out.append(1 if data.boolval else 0)
    elif data.records is not None:
        _list_struct(out, 4, TType.STRUCT, data.records.pulses, _pulse)
    elif data.nodes is not None:
        _list_struct(out, 5, TType.STRING, data.nodes.pulseIds, _string)
    elif data.message_blob is not None:
        _field(out, TType.STRING, 7)
        _binary(out, data.message_blob)
    out.append(TType.STOP)


def encode_message(message: HBMessage) -> bytes:
    """The bare TBinaryProtocol struct of `message` (no length prefix)."""
    out = bytearray()
    _field(out, TType.I32, 1)
    out += _I32.pack(message.type)
    if message.data is not None:
        _field(out, TType.STRUCT, 2)
        _data(out, message.data)
    if message.message_id is not None:
        _field(out, TType.I32, 3)
        out += _I32.pack(message.message_id)
    out.append(TType.STOP)
    return bytes(out)


def encode_frame(message: HBMessage) -> bytes:
    """One frame: int32 big-endian length, then the struct."""
    body = encode_message(message)
    return _I32.pack(len(body)) + body


# ---------------------------------------------------------------------------- decoding


class _Reader:
    """A bounds-checked cursor over one frame body; every failure is a `ProtocolError`."""

    __slots__ = ("buf", "elements", "pos")

    def __init__(self, buf: bytes, max_elements: int = DEFAULT_MAX_ELEMENTS) -> None:
        self.buf = buf
        self.pos = 0
        self.elements = max_elements  # collection elements this frame may still declare

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise ProtocolError(f"truncated struct: need {n} bytes at offset {self.pos}")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def advance(self, n: int) -> None:
        """Skip `n` bytes without copying them."""
        if self.pos + n > len(self.buf):
            raise ProtocolError(f"truncated struct: need {n} bytes at offset {self.pos}")
        self.pos += n

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise ProtocolError(f"truncated struct at offset {self.pos}")
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def i16(self) -> int:
        return int.from_bytes(self.take(2), "big", signed=True)

    def i32(self) -> int:
        pos = self.pos
        if pos + 4 > len(self.buf):
            raise ProtocolError(f"truncated struct: need 4 bytes at offset {pos}")
        self.pos = pos + 4
        value: int = _I32.unpack_from(self.buf, pos)[0]
        return value

    def count(self, element_size: int) -> int:
        n = self.i32()
        if n < 0:
            raise ProtocolError(f"negative collection size {n}")
        if n * element_size > len(self.buf) - self.pos:
            raise ProtocolError(f"collection of {n} elements overruns the frame")
        self.elements -= n
        if self.elements < 0:
            raise ProtocolError(
                f"collection of {n} elements passes the frame's element limit "
                "(pmcluster.thrift.max.elements)"
            )
        return n

    def binary(self) -> bytes:
        n = self.i32()
        if n < 0:
            raise ProtocolError(f"negative string length {n}")
        return self.take(n)

    def string(self) -> str:
        return self.binary().decode("utf-8", "surrogateescape")

    def field(self) -> tuple[int, int]:
        """(type, id) of the next field; type STOP ends the struct (id 0)."""
        buf, pos = self.buf, self.pos
        if pos < len(buf) and buf[pos] == TType.STOP:
            self.pos = pos + 1
            return TType.STOP, 0
        if pos + 3 > len(buf):
            raise ProtocolError(f"truncated struct at offset {pos}")
        self.pos = pos + 3
        ttype, fid = _FIELD.unpack_from(buf, pos)
        return ttype & 0xFF, fid

    def ttype(self) -> TType:
        """A collection's element type: any value type (not STOP)."""
        code = self.byte()
        if code not in _MIN_SIZE:
            raise ProtocolError(f"invalid collection element type code {code}")
        return TType(code)

    def skip(self, code: int, depth: int = 0) -> None:
        """Skip one value of any Thrift type (unknown fields)."""
        if depth > _MAX_DEPTH:
            raise ProtocolError(f"struct nesting deeper than {_MAX_DEPTH}")
        try:
            ttype = TType(code)
        except ValueError:
            raise ProtocolError(f"unknown Thrift type code {code}") from None
        fixed = _FIXED_SIZE.get(ttype)
        if fixed is not None:
            self.advance(fixed)
        elif ttype == TType.STRING:
            self.binary()
        elif ttype == TType.STRUCT:
            while True:
                ftype, _ = self.field()
                if ftype == TType.STOP:
                    break
                self.skip(ftype, depth + 1)
        elif ttype == TType.MAP:
            ktype, vtype = self.ttype(), self.ttype()
            n = self.count(_MIN_SIZE[ktype] + _MIN_SIZE[vtype])
            kfixed, vfixed = _FIXED_SIZE.get(ktype), _FIXED_SIZE.get(vtype)
            if kfixed is not None and vfixed is not None:
                self.advance(n * (kfixed + vfixed))  # a run of fixed-size pairs: one step
                return
            for _ in range(n):
                self.skip(ktype, depth + 1)
                self.skip(vtype, depth + 1)
        elif ttype in (TType.SET, TType.LIST):
            etype = self.ttype()
            n = self.count(_MIN_SIZE[etype])
            efixed = _FIXED_SIZE.get(etype)
            if efixed is not None:
                self.advance(n * efixed)  # a run of fixed-size elements: one step
                return
            for _ in range(n):
                self.skip(etype, depth + 1)
        else:  # STOP where a value belongs
            raise ProtocolError(f"type {ttype.name} cannot be a value")


def _expect(ttype: int, wanted: TType, where: str) -> None:
    if ttype != wanted:
        raise ProtocolError(f"{where}: expected Thrift type {wanted.name}, got {ttype}")


def _read_pulse(r: _Reader) -> HBPulse:
    pulse_id: str | None = None
    details: bytes | None = None
    while True:
        ttype, fid = r.field()
        if ttype == TType.STOP:
            break
        if fid == 1:
            _expect(ttype, TType.STRING, "HBPulse.id")
            pulse_id = r.string()
        elif fid == 2:
            _expect(ttype, TType.STRING, "HBPulse.details")
            details = r.binary()
        else:
            r.skip(ttype)
    if pulse_id is None:
        raise ProtocolError("HBPulse without its required id")
    return HBPulse(pulse_id, details)


def _read_list_header(r: _Reader, wanted: TType, where: str) -> int:
    etype = r.byte()
    if etype != wanted:
        raise ProtocolError(f"{where}: expected a list of {wanted.name}, got element type {etype}")
    return r.count(_MIN_SIZE[wanted])


def _read_list_struct(
    r: _Reader, etype: TType, where: str, read_one: Callable[[_Reader], T]
) -> tuple[T, ...]:
    """A struct whose field 1 is a list of `etype` (HBRecords, HBNodes): its items."""
    items: tuple[T, ...] = ()
    while True:
        ttype, fid = r.field()
        if ttype == TType.STOP:
            return items
        if fid == 1:
            _expect(ttype, TType.LIST, where)
            n = _read_list_header(r, etype, where)
            items = tuple(read_one(r) for _ in range(n))
        else:
            r.skip(ttype)


def _read_records(r: _Reader) -> HBRecords:
    return HBRecords(_read_list_struct(r, TType.STRUCT, "HBRecords.pulses", _read_pulse))


def _read_nodes(r: _Reader) -> HBNodes:
    return HBNodes(_read_list_struct(r, TType.STRING, "HBNodes.pulseIds", _Reader.string))


def _read_data(r: _Reader) -> HBMessageData:
    data: HBMessageData | None = None
    while True:
        ttype, fid = r.field()
        if ttype == TType.STOP:
            break
        if fid == 1:
            _expect(ttype, TType.STRING, "HBMessageData.path")
            member = HBMessageData(path=r.string())
        elif fid == 2:
            _expect(ttype, TType.STRUCT, "HBMessageData.pulse")
            member = HBMessageData(pulse=_read_pulse(r))
        elif fid == 3:
            _expect(ttype, TType.BOOL, "HBMessageData.boolval")
            member = HBMessageData(boolval=r.byte() != 0)
        elif fid == 4:
            _expect(ttype, TType.STRUCT, "HBMessageData.records")
            member = HBMessageData(records=_read_records(r))
        elif fid == 5:
            _expect(ttype, TType.STRUCT, "HBMessageData.nodes")
            member = HBMessageData(nodes=_read_nodes(r))
        elif fid == 7:
            _expect(ttype, TType.STRING, "HBMessageData.message_blob")
            member = HBMessageData(message_blob=r.binary())
        else:
            r.skip(ttype)
            continue
        if data is not None and data.member != member.member:
            raise ProtocolError(
                f"HBMessageData union with more than one member: {data.member}, {member.member}"
            )
        data = member  # the same member twice: the last one wins, as in Thrift
    if data is None:
        raise ProtocolError("HBMessageData union with no member set")
    return data


def _message_type(value: int) -> int:
    try:
        return HBServerMessageType(value)
    except ValueError:
        return value


def decode_message(body: bytes, max_elements: int = DEFAULT_MAX_ELEMENTS) -> HBMessage:
    """Decode one bare `HBMessage` struct that fills `body` exactly, or raise `ProtocolError`;
    at most `max_elements` collection elements in all."""
    r = _Reader(bytes(body), max_elements)
    mtype: int | None = None
    data: HBMessageData | None = None
    message_id: int | None = None
    while True:
        ttype, fid = r.field()
        if ttype == TType.STOP:
            break
        if fid == 1:
            _expect(ttype, TType.I32, "HBMessage.type")
            mtype = _message_type(r.i32())
        elif fid == 2:
            _expect(ttype, TType.STRUCT, "HBMessage.data")
            data = _read_data(r)
        elif fid == 3:
            _expect(ttype, TType.I32, "HBMessage.message_id")
            message_id = r.i32()
        else:
            r.skip(ttype)
    if mtype is None:
        raise ProtocolError("HBMessage without a type")
    if r.pos != len(r.buf):
        raise ProtocolError(f"{len(r.buf) - r.pos} trailing bytes after the HBMessage struct")
    return HBMessage(mtype, data, message_id)


class FrameDecoder:
    """Incremental frame decoder: `feed` bytes as they arrive, iterate complete messages.

    `feed` buffers at once and returns an iterator over the messages now complete; it raises
    `ProtocolError` (while iterating) at the first bad frame, after yielding the good ones
    before it. A decoder that raised stays failed: the connection must be closed.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[HBMessage]:
        if self._error is not None:
            raise ProtocolError(self._error)
        return self._frames(*self.split(data))

    def split(self, data: bytes) -> tuple[list[bytes], ProtocolError | None]:
        """Like `feed`, for a caller with its own decoder: the raw bodies of the frames now
        complete, and the error of a bad frame header after them (None if there is none).
        A body the caller cannot decode is the caller's error."""
        if self._error is not None:
            return [], ProtocolError(self._error)
        buf: bytes | bytearray = data
        if self._buf:
            self._buf += data
            buf = self._buf
        bodies: list[bytes] = []
        error: ProtocolError | None = None
        pos, end = 0, len(buf)
        max_size = self.max_size
        while end - pos >= 4:
            (size,) = _I32.unpack_from(buf, pos)
            if size < 0 or size > max_size:
                reason = "negative frame length" if size < 0 else "frame length"
                limit = "" if size < 0 else f" exceeds the maximum {max_size}"
                error = self._fail(f"{reason} {size}{limit}")
                break
            stop = pos + 4 + size
            if stop > end:
                break
            bodies.append(bytes(buf[pos + 4 : stop]))
            pos = stop
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf += data[pos:]
        return bodies, error

    def _fail(self, reason: str) -> ProtocolError:
        self._error = f"decoder failed earlier: {reason}"
        return ProtocolError(reason)

    def _frames(self, bodies: list[bytes], error: ProtocolError | None) -> Iterator[HBMessage]:
        for body in bodies:
            try:
                message = decode_message(body)
            except ProtocolError as exc:
                raise self._fail(str(exc)) from None
            yield message
        if error is not None:
            raise error
