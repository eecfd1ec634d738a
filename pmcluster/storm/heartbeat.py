"""Storm's `ClusterWorkerHeartbeat` payloads, decoded for people (`pmcluster get/ls --decode`).

A worker's heartbeat is `Utils.serialize(ClusterWorkerHeartbeat)`: TBinaryProtocol, gzip'd by
Storm <= 2.8 (magic 1f 8b), zstd on Storm's master (28 b5 2f fd), plain Thrift with Storm's
`ThriftSerializationDelegate`. Fields: 1 storm_id string, 2 executor_stats
map<ExecutorInfo{1 task_start i32, 2 task_end i32}, ExecutorStats>, 3 time_secs (i32 in <= 2.8,
i64 on master), 4 uptime_secs i32. Pure: no I/O, stdlib only (zstd only if a decoder imports).
"""

from __future__ import annotations

import importlib
import struct
import zlib
from dataclasses import dataclass
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_INFLATED = 64 * 1024 * 1024  # a heartbeat is 1-15 KB; refuse a decompression bomb
MAX_DEPTH = 32

# Thrift TType codes
_STOP, _BOOL, _BYTE, _DOUBLE, _I16, _I32, _I64 = 0, 2, 3, 4, 6, 8, 10
_STRING, _STRUCT, _MAP, _SET, _LIST = 11, 12, 13, 14, 15
_FIXED = {_BOOL: 1, _BYTE: 1, _DOUBLE: 8, _I16: 2, _I32: 4, _I64: 8}


class HeartbeatDecodeError(ValueError):
    """The bytes are not a ClusterWorkerHeartbeat this decoder can read (the reason says why)."""


@dataclass(frozen=True)
class WorkerHeartbeat:
    """The fields of a ClusterWorkerHeartbeat people look at."""

    storm_id: str
    time_secs: int
    uptime_secs: int
    executors: tuple[tuple[int, int], ...]  # (task_start, task_end), sorted
    encoding: str  # "gzip", "zstd" or "thrift"


def _zstd_decompress(data: bytes) -> bytes:
    for module_name in ("compression.zstd", "zstandard"):  # Python 3.14's stdlib, then PyPI's
        try:
            module: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        if module_name == "zstandard":
            out: bytes = module.ZstdDecompressor().decompress(data, max_output_size=MAX_INFLATED)
        else:
            out = module.decompress(data)
        return out
    raise HeartbeatDecodeError(
        "zstd-compressed heartbeat (Storm's master delegate): no zstd decoder importable "
        "(pip install zstandard, or Python 3.14's compression.zstd)"
    )


def _inflate(data: bytes) -> tuple[bytes, str]:
    if data.startswith(GZIP_MAGIC):
        inflater = zlib.decompressobj(wbits=31)
        try:
            out = inflater.decompress(data, MAX_INFLATED)
        except zlib.error as exc:
            raise HeartbeatDecodeError(f"bad gzip data: {exc}") from exc
        if not inflater.eof:
            too_big = len(out) >= MAX_INFLATED
            raise HeartbeatDecodeError(
                "gzip data inflates past 64 MiB" if too_big else "truncated gzip data"
            )
        return out, "gzip"
    if data.startswith(ZSTD_MAGIC):
        return _zstd_decompress(data), "zstd"
    return data, "thrift"


class _Reader:
    """Just enough TBinaryProtocol to read one struct and skip what it does not need."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise HeartbeatDecodeError(f"truncated Thrift data at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def i16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def i32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def i64(self) -> int:
        return int(struct.unpack(">q", self.take(8))[0])

    def string(self) -> str:
        raw = self.take(self.i32())
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise HeartbeatDecodeError("storm_id is not UTF-8") from exc

    def skip(self, ttype: int, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise HeartbeatDecodeError("Thrift data nested too deeply")
        if ttype in _FIXED:
            self.take(_FIXED[ttype])
        elif ttype == _STRING:
            self.take(self.i32())
        elif ttype == _STRUCT:
            while (field_type := self.byte()) != _STOP:
                self.i16()
                self.skip(field_type, depth + 1)
        elif ttype == _MAP:
            key_type, value_type, count = self.byte(), self.byte(), self.i32()
            for _ in range(self._count(count)):
                self.skip(key_type, depth + 1)
                self.skip(value_type, depth + 1)
        elif ttype in (_SET, _LIST):
            element_type, count = self.byte(), self.i32()
            for _ in range(self._count(count)):
                self.skip(element_type, depth + 1)
        else:
            raise HeartbeatDecodeError(f"unknown Thrift type {ttype} at byte {self.pos}")

    def _count(self, count: int) -> int:
        if count < 0 or count > len(self.data) - self.pos:
            raise HeartbeatDecodeError(f"bad Thrift collection size {count}")
        return count

    def int_field(self, ttype: int) -> int:
        if ttype == _I32:
            return self.i32()
        if ttype == _I64:
            return self.i64()
        raise HeartbeatDecodeError(f"expected an i32 or i64, got Thrift type {ttype}")

    def executor_info(self) -> tuple[int, int]:
        start = end = None
        while (field_type := self.byte()) != _STOP:
            field_id = self.i16()
            if field_id == 1 and field_type == _I32:
                start = self.i32()
            elif field_id == 2 and field_type == _I32:
                end = self.i32()
            else:
                self.skip(field_type)
        if start is None or end is None:
            raise HeartbeatDecodeError("ExecutorInfo without task_start/task_end")
        return start, end


def decode_heartbeat(data: bytes) -> WorkerHeartbeat:
    """Decode Storm's serialized ClusterWorkerHeartbeat (gzip, zstd or plain Thrift)."""
    body, encoding = _inflate(data)
    reader = _Reader(body)
    storm_id: str | None = None
    time_secs: int | None = None
    uptime_secs: int | None = None
    executors: list[tuple[int, int]] = []
    while (field_type := reader.byte()) != _STOP:
        field_id = reader.i16()
        if field_id == 1 and field_type == _STRING:
            storm_id = reader.string()
        elif field_id == 2 and field_type == _MAP:
            key_type, value_type, count = reader.byte(), reader.byte(), reader.i32()
            if key_type != _STRUCT:
                raise HeartbeatDecodeError("executor_stats keys are not ExecutorInfo structs")
            for _ in range(reader._count(count)):
                executors.append(reader.executor_info())
                reader.skip(value_type)
        elif field_id == 3:
            time_secs = reader.int_field(field_type)
        elif field_id == 4:
            uptime_secs = reader.int_field(field_type)
        else:
            reader.skip(field_type)
    if storm_id is None or time_secs is None or uptime_secs is None:
        raise HeartbeatDecodeError(
            "not a ClusterWorkerHeartbeat: storm_id, time_secs or uptime_secs missing"
        )
    return WorkerHeartbeat(storm_id, time_secs, uptime_secs, tuple(sorted(executors)), encoding)


def describe(beat: WorkerHeartbeat, now: float) -> str:
    """One line: topology, time_secs and its age, uptime, executors."""
    age = now - beat.time_secs
    executors = ",".join(f"[{s}-{e}]" if s != e else f"[{s}]" for s, e in beat.executors)
    return (
        f"topology={beat.storm_id} time_secs={beat.time_secs} age={age:.0f}s "
        f"uptime={beat.uptime_secs}s executors={len(beat.executors)} {executors}"
    ).rstrip()
