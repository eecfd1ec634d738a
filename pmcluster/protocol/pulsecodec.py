"""The binary pulse-list encoding (media type `application/x-pmcluster-pulses`).

A body is a sequence of records, nothing before or after, integers big-endian:

    u32 path_len | path (UTF-8) | i64 version | u32 data_len | data

Used by `POST /v1/batch` (request; version 0 means "assign now") and `GET /v1/pulses/{path}`
(response). `decode` is the hot path of batched writes, so it reads with precompiled
`struct.Struct.unpack_from` at offsets into the body and copies only each path and payload.
It validates everything and names the 0-based entry index of the first bad record.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Protocol

from pmcluster.errors import InvalidPath, InvalidRequest
from pmcluster.protocol.paths import normalize_key

__all__ = ["MAX_VERSION", "MEDIA_TYPE", "PulseLike", "decode", "encode"]

MEDIA_TYPE = "application/x-pmcluster-pulses"
MAX_VERSION = 2**63 - 1  # the largest version: records carry versions as i64

_U32 = struct.Struct(">I")
_VERSION_LEN = struct.Struct(">qI")
_U32_MAX = 0xFFFFFFFF


class PulseLike(Protocol):
    """Anything with `path`, `data`, `version` (such as `pmcluster.protocol.pulse.Pulse`)."""

    @property
    def path(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def version(self) -> int: ...


def encode(pulses: Iterable[tuple[str, bytes, int | None] | PulseLike]) -> bytes:
    """Encode pulses, given as `(path, data, version)` tuples or `Pulse`-like objects.

    A version of `None` is sent as 0 ("assign now"). Raises `InvalidRequest("entry N: ...")`
    for a version outside 0..2**63-1 or a path/payload longer than 2**32-1 bytes.
    """
    parts: list[bytes] = []
    append = parts.append
    pack_u32 = _U32.pack
    pack_version_len = _VERSION_LEN.pack
    for index, pulse in enumerate(pulses):
        if isinstance(pulse, tuple):
            path, data, version = pulse
        else:
            path, data, version = pulse.path, pulse.data, pulse.version
        if version is None:
            version = 0
        if not 0 <= version <= MAX_VERSION:
            raise InvalidRequest(f"entry {index}: version {version} outside 0..2**63-1")
        raw_path = path.encode("utf-8")
        if len(raw_path) > _U32_MAX or len(data) > _U32_MAX:
            raise InvalidRequest(f"entry {index}: path or data longer than 2**32-1 bytes")
        append(pack_u32(len(raw_path)))
        append(raw_path)
        append(pack_version_len(version, len(data)))
        append(data)
    return b"".join(parts)


def decode(
    body: bytes | bytearray | memoryview,
    *,
    max_entries: int | None = None,
    start: int = 0,
    stop: int | None = None,
) -> list[tuple[str, bytes, int]]:
    """Decode a body into `(path, data, version)` tuples; paths come back normalised.

    `start`/`stop`: the body is `body[start:stop]`, decoded in place (a server's receive
    buffer holding more than one request is not copied first). Raises `InvalidRequest("entry
    N: reason")` for a truncated record, a path that is not UTF-8 or not a valid key, a
    negative version, or more than `max_entries` records (offsets in messages count from
    `start`). An empty body is an empty list.
    """
    if not isinstance(body, bytes):
        body = bytes(body)
    end = len(body) if stop is None else stop
    out: list[tuple[str, bytes, int]] = []
    append = out.append
    unpack_u32 = _U32.unpack_from
    unpack_version_len = _VERSION_LEN.unpack_from
    limit = end + 1 if max_entries is None else max_entries
    offset = start
    index = 0
    while offset < end:
        if index >= limit:
            raise InvalidRequest(f"entry {index}: more than {limit} entries in one body")
        if offset + 4 > end:
            raise InvalidRequest(
                f"entry {index}: truncated path length at offset {offset - start} "
                f"({end - offset} of 4 bytes)"
            )
        (path_len,) = unpack_u32(body, offset)
        offset += 4
        path_end = offset + path_len
        if path_end + 12 > end:
            if path_end > end:
                raise InvalidRequest(
                    f"entry {index}: truncated path at offset {offset - start} "
                    f"(path_len {path_len}, {end - offset} bytes left)"
                )
            raise InvalidRequest(
                f"entry {index}: truncated version/data length at offset {path_end - start} "
                f"({end - path_end} of 12 bytes)"
            )
        try:
            path = body[offset:path_end].decode()
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"entry {index}: path is not valid UTF-8 ({exc.reason})") from None
        # What `normalize_key` accepts unchanged, checked inline (the call costs more than the
        # checks): starts with "/", no trailing "/" (so not the root), no empty, "." or ".."
        # component, no NUL; decoded UTF-8 is always encodable. Anything else, such as a
        # trailing "/" to strip or a component starting with ".", takes the full check.
        if not (
            path_len
            and path[0] == "/"
            and path[-1] != "/"
            and "//" not in path
            and "/." not in path
            and "\x00" not in path
        ):
            try:
                path = normalize_key(path)
            except InvalidPath as exc:
                raise InvalidRequest(f"entry {index}: {exc}") from None
        version, data_len = unpack_version_len(body, path_end)
        if version < 0:
            raise InvalidRequest(f"entry {index}: negative version {version}")
        offset = path_end + 12
        data_end = offset + data_len
        if data_end > end:
            raise InvalidRequest(
                f"entry {index}: truncated data at offset {offset - start} "
                f"(data_len {data_len}, {end - offset} bytes left)"
            )
        append((path, body[offset:data_end], version))
        offset = data_end
        index += 1
    return out
