"""Fuzz cases for a node: raw bytes of HTTP requests, Storm frames and garbage, from a seed.

`make_case(seed, index)` is a pure function: the same seed and index always give the same
bytes, so any case of a run can be replayed alone (`pmcluster fuzz --seed S --only I`).
Every case addresses paths under `FUZZ_ROOT` (or no valid path at all), never the root or
the fuzzer's kept data (`KEEP_ROOT`), so a fuzz run can check afterwards that what was stored
before it is intact: deletes and writes may only land on the fuzzer's own paths.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from pmcluster.protocol import pulsecodec
from pmcluster.protocol.pulse import Pulse
from pmcluster.storm.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    HBMessage,
    HBMessageData,
    HBNodes,
    HBPulse,
    HBRecords,
    HBServerMessageType,
    encode_frame,
)

__all__ = ["FUZZ_ROOT", "KEEP_ROOT", "Case", "make_case"]

FUZZ_ROOT = "fz"  # first path component of every path the fuzzer may write or delete
KEEP_ROOT = "/pmcluster-fuzz-kept"  # values written before a run and checked after it

_METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
_ODD_METHODS = ("OPTIONS", "PATCH", "TRACE", "CONNECT", "get", "PUTT", "M-SEARCH", "\x00GET", "")
_ROUTES = (
    "/v1/pulse/",
    "/v1/children/",
    "/v1/pulses/",
    "/v1/path/",
    "/v1/batch",
    "/v1/members",
    "/health",
    "/metrics",
)
_ODD_ROUTES = ("/", "/v1/", "/v2/pulse/", "//v1/pulse/", "/v1/pulse", "/v1/batch/x", "*", "")
_VERSIONS = (
    "1",
    "0",
    "-1",
    "00000000000000000001",
    str(2**63 - 1),
    str(2**63),
    str(2**64),
    "1e9",
    " 42 ",
    "0x10",
    "١٢٣",
    "",
    "9" * 400,
)
_CONTENT_TYPES = (pulsecodec.MEDIA_TYPE, "application/json", "text/plain", "x/\x7f", "")
_TLS_HELLO = bytes.fromhex("160301002a0100002603035b") + bytes(40)


@dataclass(frozen=True, slots=True)
class Case:
    """One fuzz case: what it is (`kind`), the bytes to send, and whether to half-close the
    connection after them (for requests known to be incomplete: the server would wait for
    the rest; a half-close makes it give up at once instead of after its body timeout)."""

    index: int
    kind: str
    payload: bytes
    half_close: bool = True


def _component(rng: random.Random) -> str:
    """One path component as it appears in a URL: plain, encoded, mis-encoded or hostile."""
    roll = rng.random()
    if roll < 0.35:
        return "".join(rng.choice("abcdef0123456789-_.") for _ in range(rng.randint(1, 12)))
    if roll < 0.5:
        return "".join(f"%{rng.randrange(256):02X}" for _ in range(rng.randint(1, 6)))
    if roll < 0.6:
        return rng.choice(["%zz", "%4", "%", "%%41", "%2F", "%2f%2F", "%00", "%C0%AF", "%ED%A0%80"])
    if roll < 0.7:
        return rng.choice([".", "..", "%2e%2e", "%2E", "", " ", "\t", "a b", "\\"])
    if roll < 0.8:
        return rng.choice(["ünï", "日本", "🙂", "\u202e", "\ufeff", "a\u0000b"])
    if roll < 0.9:
        return rng.choice("xyz") * rng.choice([100, 1000, 5000, 20000])
    return "".join(chr(rng.randrange(0x21, 0x7F)) for _ in range(rng.randint(1, 10)))


def _target(rng: random.Random, route: str) -> str:
    if route in ("/v1/pulse/", "/v1/children/", "/v1/pulses/", "/v1/path/"):
        parts = [FUZZ_ROOT] + [_component(rng) for _ in range(rng.randint(0, 5))]
        tail = "/".join(parts)
        if rng.random() < 0.1:
            tail += "/"
        target = route + tail
    else:
        target = route
    if rng.random() < 0.15:
        target += rng.choice(["?versions=1", "?versions=true", "?x=%ff", "?", "?a=b&a=c", "#f"])
    return target


def _pulses(rng: random.Random, count: int) -> list[Pulse]:
    return [
        Pulse(
            f"/{FUZZ_ROOT}/b{rng.randrange(50)}/{rng.randrange(1000)}",
            rng.randbytes(rng.randint(0, 300)),
            rng.choice([0, 1, rng.randrange(1, 2**63)]),
        )
        for _ in range(count)
    ]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """Bit flips, overwrites, truncation or duplication of a slice of `data`."""
    if not data:
        return rng.randbytes(rng.randint(1, 16))
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        pos = rng.randrange(len(out)) if out else 0
        if roll < 0.4 and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif roll < 0.6 and out:
            out[pos] = rng.choice([0, 0xFF, 0x7F, 0x80])
        elif roll < 0.8:
            del out[pos : pos + rng.randint(1, 8)]
        else:
            out[pos:pos] = out[pos : pos + rng.randint(1, 8)]
    return bytes(out)


def _body(rng: random.Random, method: str, route: str, max_body: int) -> bytes:
    roll = rng.random()
    if route == "/v1/batch" and roll < 0.6:
        valid = pulsecodec.encode(_pulses(rng, rng.randint(0, 20)))
        return valid if rng.random() < 0.4 else _mutate(rng, valid)
    if roll < 0.35 and method in ("GET", "HEAD", "DELETE"):
        return b""
    if roll < 0.7:
        return rng.randbytes(rng.randint(0, 2048))
    if roll < 0.8:
        return b'{"pulse": "' + rng.randbytes(20).hex().encode() + b'"}'
    if roll < 0.8 + 0.002:
        return rng.randbytes(max_body + 1)  # just past the cap
    return b""


def _chunked(rng: random.Random, body: bytes) -> tuple[bytes, bool]:
    """`body` in chunked encoding, sometimes broken; (bytes, complete)."""
    complete = True
    out = bytearray()
    pos = 0
    while pos < len(body):
        size = rng.randint(1, 700)
        chunk = body[pos : pos + size]
        pos += size
        size_text = f"{len(chunk):x}"
        if rng.random() < 0.05:
            size_text = rng.choice(["zz", "-1", "ffffff"])
            complete = False
        out += size_text.encode() + b"\r\n" + chunk + b"\r\n"
    if rng.random() < 0.9:
        out += b"0\r\n\r\n"
    else:
        complete = False
    return bytes(out), complete


def _http(rng: random.Random, max_body: int) -> tuple[str, bytes, bool]:
    """(kind, raw request, complete)."""
    method = rng.choice(_METHODS) if rng.random() < 0.9 else rng.choice(_ODD_METHODS)
    route = rng.choice(_ROUTES) if rng.random() < 0.92 else rng.choice(_ODD_ROUTES)
    target = _target(rng, route)
    body = _body(rng, method, route, max_body)
    headers: list[tuple[str, str]] = []
    if rng.random() < 0.95:
        headers.append(("Host", "fuzz"))
    if rng.random() < 0.4:
        headers.append(("X-Pulse-Version", rng.choice(_VERSIONS)))
    if rng.random() < 0.25:
        headers.append(("X-Pmcluster-Forwarded", rng.choice(["1", "0", "yes", ""])))
    if rng.random() < 0.3:
        headers.append(("Content-Type", rng.choice(_CONTENT_TYPES)))
    if rng.random() < 0.2:
        headers.append(("Accept", rng.choice(["application/json", "*/*", "\x01"])))
    if rng.random() < 0.03:
        headers.append(("X-Big", "v" * rng.choice([9000, 70000])))  # past the header limits
    if rng.random() < 0.02:
        headers += [(f"X-H{i}", "v") for i in range(rng.choice([50, 200]))]
    if rng.random() < 0.03:
        headers.append(("Expect", "100-continue"))
    complete = True
    if body and rng.random() < 0.12:
        headers.append(("Transfer-Encoding", "chunked"))
        body, complete = _chunked(rng, body)
    else:
        roll = rng.random()
        if roll < 0.7:
            headers.append(("Content-Length", str(len(body))))
        elif roll < 0.8:
            headers.append(("Content-Length", str(len(body) + rng.randint(1, 5000))))  # short
            complete = False
        elif roll < 0.85 and body:
            headers.append(("Content-Length", str(rng.randrange(len(body)))))  # long
        elif roll < 0.9:
            headers.append(("Content-Length", rng.choice(["-1", "abc", "1e3", "", str(2**64)])))
        elif roll < 0.93:
            headers += [("Content-Length", str(len(body))), ("Content-Length", "0")]
        elif roll < 0.96:
            headers.append(("Content-Length", str(10**12)))  # oversized, refused unread
    if rng.random() < 0.05:
        headers.append(("Bad Header", "x") if rng.random() < 0.5 else ("NoColon", "\r\n x"))
    version = "HTTP/1.1" if rng.random() < 0.95 else rng.choice(["HTTP/1.0", "HTTP/2.0", "HTTP/9"])
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    raw = head.encode("utf-8", "surrogateescape") + b"\r\n" + body
    if rng.random() < 0.05:  # truncated mid-request
        raw = raw[: rng.randrange(len(raw))]
        complete = False
    kind = "http-batch" if route == "/v1/batch" else "http"
    return kind, raw, complete


_STORM_REQUESTS = tuple(t for t in HBServerMessageType if t <= 14 and t % 2 == 0)


def _storm_message(rng: random.Random) -> HBMessage:
    path = f"/{FUZZ_ROOT}/s{rng.randrange(40)}/{rng.choice([_component(rng)[:200], 'w-6700'])}"
    data: HBMessageData | None
    if rng.random() < 0.7:  # a well-formed request, as Storm's client sends them
        kind = rng.choice(_STORM_REQUESTS)
        if kind == HBServerMessageType.SEND_PULSE:
            data = HBMessageData(pulse=HBPulse(path, rng.randbytes(rng.randint(0, 500))))
        else:
            data = HBMessageData(path=path)
        return HBMessage(int(kind), data, rng.randrange(2**31))
    kind = rng.choice(list(HBServerMessageType))
    roll = rng.random()
    if roll < 0.5:
        data = HBMessageData(path=path)
    elif roll < 0.75:
        data = HBMessageData(pulse=HBPulse(path, rng.randbytes(rng.randint(0, 200))))
    elif roll < 0.8:
        data = HBMessageData(boolval=rng.random() < 0.5)
    elif roll < 0.85:
        data = HBMessageData(records=HBRecords((HBPulse(path, b"r"),) * rng.randint(0, 3)))
    elif roll < 0.9:
        data = HBMessageData(nodes=HBNodes(("a", "b")))
    elif roll < 0.95:
        data = HBMessageData(message_blob=rng.randbytes(rng.randint(0, 100)))
    else:
        data = None
    message_id = rng.choice([None, -1, 0, rng.randrange(2**31)])
    return HBMessage(int(kind), data, message_id)


def _storm(rng: random.Random) -> bytes:
    frames = [encode_frame(_storm_message(rng)) for _ in range(rng.randint(1, 4))]
    roll = rng.random()
    if roll < 0.6:
        return b"".join(frames)
    if roll < 0.85:
        return b"".join(frames[:-1]) + _mutate(rng, frames[-1])
    if roll < 0.9:
        return struct.pack(">i", rng.choice([2**31 - 1, 10**8, -5, 1])) + rng.randbytes(8)
    return b"\x00" + rng.randbytes(rng.randint(0, 300))


def _hardening(rng: random.Random) -> tuple[str, bytes, bool]:
    """The shapes of issue 17: deep and long paths, versions far ahead of the clock, huge
    collections (batches, Thrift lists), half-sent requests; (kind, bytes, half_close)."""
    roll = rng.random()
    if roll < 0.2:  # deep path: past pmcluster.path.max.depth, or just within it
        depth = rng.choice([63, 65, 200, 1000, 3000])
        target = "/v1/pulse/" + FUZZ_ROOT + "/a" * depth
        head = f"PUT {target} HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 1\r\n\r\nx"
        return "deep-path", head.encode(), True
    if roll < 0.4:  # a version far ahead: 2^63-1, a year, an hour, or just within the skew
        version = rng.choice([2**63 - 1, 2**62, 10**19 // 2, 3 * 10**18])
        method, route = rng.choice(
            [("PUT", "/v1/pulse/"), ("DELETE", "/v1/pulse/"), ("DELETE", "/v1/path/")]
        )
        head = (
            f"{method} {route}{FUZZ_ROOT}/v{rng.randrange(20)} HTTP/1.1\r\nHost: fuzz\r\n"
            f"X-Pulse-Version: {version}\r\nContent-Length: 1\r\n\r\nx"
        )
        return "huge-version", head.encode(), True
    if roll < 0.6:  # a huge collection: a batch of many entries, a Thrift list of many elements
        if rng.random() < 0.5:
            count = rng.choice([10_001, 50_000])
            body = pulsecodec.encode(
                [
                    Pulse(f"/{FUZZ_ROOT}/h/{i}", b"", rng.choice([0, 2**63 - 1]))
                    for i in range(count)
                ]
            )
            head = f"POST /v1/batch HTTP/1.1\r\nHost: fuzz\r\nContent-Length: {len(body)}\r\n\r\n"
            return "huge-collection", head.encode() + body, True
        etype = rng.choice([2, 3, 8, 11])  # bool, byte, i32, string elements
        size = {2: 1, 3: 1, 8: 4, 11: 4}[etype]
        count = rng.choice([100_001, 1_000_000])
        message = struct.pack(">bhi", 8, 1, 0) + struct.pack(">bhbi", 15, 9, etype, count)
        body = message + b"\x00" * (count * size) + b"\x00"
        return "huge-collection", struct.pack(">i", len(body)) + body, True
    if roll < 0.8:  # half-sent: a head, a body or a frame that never completes (no EOF)
        choice = rng.random()
        if choice < 0.4:
            raw = b"PUT /v1/pulse/" + FUZZ_ROOT.encode() + b"/h HTTP/1.1\r\nHost: fuzz\r\nX-Pa"
        elif choice < 0.7:
            raw = (
                b"PUT /v1/pulse/" + FUZZ_ROOT.encode() + b"/h HTTP/1.1\r\nHost: fuzz\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"x" * 1000
            )
        else:
            raw = struct.pack(">i", 10 * 1024 * 1024) + rng.randbytes(4096)
        return "half-sent", raw, False
    # a long path component (within the request-line limit)
    target = "/v1/pulse/" + FUZZ_ROOT + "/" + "p" * rng.choice([4000, 5000, 8000])
    return "long-path", f"GET {target} HTTP/1.1\r\nHost: fuzz\r\n\r\n".encode(), True


def make_case(
    seed: int, index: int, *, storm: bool = True, max_body: int = DEFAULT_MAX_FRAME_SIZE
) -> Case:
    """Case `index` of the run seeded with `seed` (independent of every other case)."""
    rng = random.Random(f"pmcluster-fuzz-{seed}-{index}")
    roll = rng.random()
    if storm and roll < 0.15:
        return Case(index, "storm", _storm(rng), half_close=rng.random() < 0.5)
    if roll < 0.22:
        raw = rng.choice(
            [
                rng.randbytes(rng.randint(1, 4096)),
                b"GET " + rng.randbytes(rng.randint(0, 200)),
                b"GET /health\r\n",
                _TLS_HELLO,
                b"\r\n" * rng.randint(1, 50),
                bytes([rng.randrange(1, 256)]) + rng.randbytes(rng.randint(0, 64)),
            ]
        )
        return Case(index, "raw", raw, half_close=rng.random() < 0.9)
    if roll < 0.26:
        kind, raw, half_close = _hardening(rng)
        return Case(index, kind, raw, half_close=half_close)
    kind, raw, complete = _http(rng, max_body)
    if rng.random() < 0.1:  # pipelined: a valid request first, then the fuzzed one
        raw = b"GET /health HTTP/1.1\r\nHost: fuzz\r\n\r\n" + raw
        kind += "-pipelined"
    return Case(index, kind, raw, half_close=not complete or rng.random() < 0.05)
