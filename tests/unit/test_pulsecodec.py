"""The pulse-list encoding of `POST /v1/batch` and `GET /v1/pulses/{path}`."""

from __future__ import annotations

import struct

import pytest

from pmcluster.errors import InvalidPath, InvalidRequest
from pmcluster.protocol.paths import normalize_key
from pmcluster.protocol.pulse import Pulse
from pmcluster.protocol.pulsecodec import decode, encode


def _record(path: bytes, version: int, data: bytes) -> bytes:
    return struct.pack(">I", len(path)) + path + struct.pack(">qI", version, len(data)) + data


def test_layout_is_the_documented_one() -> None:
    body = encode([("/a/b", b"xyz", 7)])
    assert body == b"\x00\x00\x00\x04/a/b" + b"\x00" * 7 + b"\x07" + b"\x00\x00\x00\x03xyz"


def test_round_trip_tuples_and_pulses() -> None:
    pulses = [
        ("/workerbeats/wc(1)+$[x]%?#~,/node é-6700", bytes(range(256)) * 4, 1_718_000_000_000),
        ("/a", b"", 0),
        ("/日本/🚀", b"\x00\xff", 2**63 - 1),
    ]
    assert decode(encode(pulses)) == pulses
    objects = [Pulse(path, data, version) for path, data, version in pulses]
    assert decode(encode(objects)) == pulses


def test_none_version_encodes_as_zero() -> None:
    assert decode(encode([("/a", b"x", None)])) == [("/a", b"x", 0)]


def test_empty_body_is_empty_list() -> None:
    assert decode(b"") == []
    assert encode([]) == b""


def test_accepts_bytearray_and_memoryview_and_returns_bytes() -> None:
    body = encode([("/a", b"data", 1)])
    for view in (bytearray(body), memoryview(body)):
        ((path, data, version),) = decode(view)
        assert (path, data, version) == ("/a", b"data", 1)
        assert type(data) is bytes


def test_paths_are_normalised() -> None:
    assert decode(_record(b"/a/b/", 1, b"x")) == [("/a/b", b"x", 1)]


@pytest.mark.parametrize(
    "path",
    [
        "/a",
        "/a/b-6700",
        "/a/b/",
        "/a/b///",
        "/.a",
        "/a/.b/c",
        "/a/..b",
        "/a/b.",
        "/é/x y/(+$[]%)",
        "/a/./b",
        "/a/../b",
        "/.",
        "/a//b",
        "//",
        "/",
        "a/b",
        "/a\x00b",
        "",
    ],
)
def test_paths_are_what_normalize_key_makes_of_them(path: str) -> None:
    """The decoder checks common paths inline: it must agree with `normalize_key` on all."""
    try:
        expected: str | None = normalize_key(path)
    except InvalidPath:
        expected = None
    body = _record(path.encode(), 1, b"x")
    if expected is None:
        with pytest.raises(InvalidRequest, match="entry 0: "):
            decode(body)
    else:
        assert decode(body) == [(expected, b"x", 1)]


GOOD = _record(b"/ok", 1, b"fine")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"\x00\x00", "truncated path length"),
        (struct.pack(">I", 10) + b"/abc", "truncated path"),
        (struct.pack(">I", 2) + b"/a" + b"\x00" * 5, "truncated version/data length"),
        (struct.pack(">I", 2) + b"/a" + struct.pack(">qI", 1, 5) + b"ab", "truncated data"),
        (struct.pack(">I", 0xFFFFFFFF) + b"/a", "truncated path"),
        (_record(b"/a\xff", 1, b""), "not valid UTF-8"),
        (_record(b"", 1, b""), "empty path"),
        (_record(b"rel", 1, b""), "must start with '/'"),
        (_record(b"/", 1, b""), "root"),
        (_record(b"/a//b", 1, b""), "empty path component"),
        (_record(b"/a/../b", 1, b""), "'..' component"),
        (_record(b"/a\x00", 1, b""), "NUL"),
        (_record(b"/a", -1, b""), "negative version"),
    ],
)
def test_bad_entry_is_named_by_index(bad: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason) as info:
        decode(bad)
    assert str(info.value).startswith("entry 0: ")
    # Truncated records can only be last; the others also fail before a good tail.
    tail = b"" if reason.startswith("truncated") else GOOD
    with pytest.raises(InvalidRequest, match=reason) as info:
        decode(GOOD + GOOD + bad + tail)
    assert str(info.value).startswith("entry 2: ")


def test_max_entries() -> None:
    body = GOOD * 3
    assert len(decode(body, max_entries=3)) == 3
    with pytest.raises(InvalidRequest, match="entry 2: more than 2 entries"):
        decode(body, max_entries=2)


def test_encode_rejects_out_of_range_version() -> None:
    with pytest.raises(InvalidRequest, match="entry 1: version"):
        encode([("/a", b"", 1), ("/b", b"", -5)])
    with pytest.raises(InvalidRequest, match="entry 0: version"):
        encode([("/a", b"", 2**63)])


def test_decode_in_place_equals_decoding_the_slice() -> None:
    body = encode([("/a/b", b"x" * 10, 3), ("/c", b"", 0)])
    buf = b"HEAD" + body + b"TAIL"
    assert decode(buf, start=4, stop=4 + len(body)) == decode(body)
    truncated = b"HEAD" + body[:-3]
    with pytest.raises(InvalidRequest) as in_place:
        decode(truncated, start=4, stop=len(truncated))
    with pytest.raises(InvalidRequest) as alone:
        decode(body[:-3])
    assert str(in_place.value) == str(alone.value)  # offsets count from the body's start
