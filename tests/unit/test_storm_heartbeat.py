"""`pmcluster.storm.heartbeat`: Storm's ClusterWorkerHeartbeat payloads decoded.

VECTOR is what storm-client 2.8.3's own `Utils.serialize` produced (gzip'd TBinaryProtocol),
made with tests/interop/java/StormDriver.java (classpath from tests/interop/storm/pom.xml):
`printf 'serialize wordcount-1-1700000000 1700000000 7\\nquit\\n' |
java -cp "$(cat cp.txt):classes" StormDriver 6699 127.0.0.1 NONE`.
tests/interop/test_storm_client.py decodes fresh ones."""

from __future__ import annotations

import gzip
import struct

import pytest

from pmcluster.storm.heartbeat import HeartbeatDecodeError, decode_heartbeat, describe

VECTOR = bytes.fromhex(
    "1f8b08000000000000ffe36660646060102bcf2f4a49ce2fcd2bd135d435343780025e06261e1ea0341307581590"
    "620252cc0cbc0c8cdcbc40164890d32a312747b7243337959b0b2ac49e929a96589a53c200015a40634851cec3c0"
    "ccc3c004b38301a61bc86086301818581858ec3f40d543dcc608711be360731b736af04720c502328b0100beaf6d"
    "916d010000"
)


def thrift_heartbeat(storm_id: str, time_type: int, time_secs: int, uptime: int) -> bytes:
    """A ClusterWorkerHeartbeat in TBinaryProtocol, by hand (time_secs as i32 or i64)."""
    sid = storm_id.encode()
    out = b"\x0b\x00\x01" + struct.pack(">i", len(sid)) + sid
    # executor_stats: map<struct, struct>, one entry {1: 4, 2: 6} -> {} (stats skipped)
    out += b"\x0d\x00\x02\x0c\x0c" + struct.pack(">i", 1)
    out += b"\x08\x00\x01" + struct.pack(">i", 4) + b"\x08\x00\x02" + struct.pack(">i", 6) + b"\x00"
    out += b"\x04\x00\x04" + struct.pack(">d", 1.5) + b"\x00"  # an ExecutorStats-ish struct
    fmt = ">i" if time_type == 8 else ">q"
    out += bytes([time_type]) + b"\x00\x03" + struct.pack(fmt, time_secs)
    out += b"\x08\x00\x04" + struct.pack(">i", uptime)
    out += b"\x0f\x00\x09\x0b" + struct.pack(">i", 1) + struct.pack(">i", 1) + b"x"  # unknown field
    return out + b"\x00"


def test_storms_own_bytes() -> None:
    beat = decode_heartbeat(VECTOR)
    assert beat.storm_id == "wordcount-1-1700000000"
    assert (beat.time_secs, beat.uptime_secs) == (1_700_000_000, 7)
    assert beat.executors == ((1, 1), (2, 3))
    assert beat.encoding == "gzip"
    assert describe(beat, now=1_700_000_012.4) == (
        "topology=wordcount-1-1700000000 time_secs=1700000000 age=12s uptime=7s "
        "executors=2 [1],[2-3]"
    )


@pytest.mark.parametrize("time_type", [8, 10])  # i32 (Storm <= 2.8) and i64 (Storm's master)
def test_i32_and_i64_time_secs(time_type: int) -> None:
    raw = thrift_heartbeat("t-2-3", time_type, 1_800_000_000, 42)
    for data, encoding in [(raw, "thrift"), (gzip.compress(raw), "gzip")]:
        beat = decode_heartbeat(data)
        assert (beat.storm_id, beat.time_secs, beat.uptime_secs) == ("t-2-3", 1_800_000_000, 42)
        assert (beat.executors, beat.encoding) == (((4, 6),), encoding)


def test_i64_beyond_i32() -> None:
    beat = decode_heartbeat(thrift_heartbeat("t", 10, 2**40, 1))
    assert beat.time_secs == 2**40


def test_zstd_without_a_decoder_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_module(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr("importlib.import_module", no_module)
    with pytest.raises(HeartbeatDecodeError, match=r"zstd-compressed heartbeat.*zstandard"):
        decode_heartbeat(b"\x28\xb5\x2f\xfd" + b"\x00" * 20)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (VECTOR[:30], "truncated gzip data"),
        (b"\x1f\x8bnot gzip at all", "bad gzip"),
        (gzip.compress(b"\x0b\x00\x01\x00\x00\x00\x05ab"), "truncated"),
        (gzip.compress(b"\x08\x00\x07\x00\x00\x00\x01\x00"), "not a ClusterWorkerHeartbeat"),
        (b"\x07\x00\x01", "unknown Thrift type 7"),
        (b"\x0f\x00\x05\x08\x7f\xff\xff\xff", "bad Thrift collection size"),
        (b"", "truncated"),
    ],
)
def test_bad_bytes_give_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(HeartbeatDecodeError, match=reason):
        decode_heartbeat(data)
