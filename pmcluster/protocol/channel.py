"""The pulse channel: a persistent, pipelined node-to-node connection for batched writes.

Replication traffic (a coordinating node's writes to the other owners, a ring-aware client's
batches) is many small batches to the same few peers. As HTTP requests each one costs a
request head, a response head and, on loopback, a `write` that runs the peer's TCP receive
path too. The channel is an HTTP/1.1 connection upgraded once (RFC 9110 section 7.8, as
WebSocket does) to a framed binary protocol; frames pipeline, so many batches share a
system call at both ends, and every entry is acknowledged.

Handshake (the client's request, then the node's answer; any other answer means "not here",
and the client keeps using `POST /v1/batch`):

    GET /v1/internal/pulses HTTP/1.1        HTTP/1.1 101 Switching Protocols
    Host: <host>:<port>                     Upgrade: pmcluster-pulses/1
    Connection: Upgrade                     Connection: Upgrade
    Upgrade: pmcluster-pulses/1             X-Pmcluster-Idle-Secs: <the node's idle limit>
                                            X-Pmcluster-Epoch: ... (the usual node headers)

Then, integers big-endian:

    request  u32 seq | u32 body_len | body (the pulse-list encoding of `pulsecodec`)
    ack      u32 seq | u16 status | u32 extra_len | extra

An ack with status 200 carries `u32 stored | u16 epoch_len | epoch | (u32 index, i64 held)*`:
how many entries the node stored (or already held), the node's epoch when it changed since its
previous ack on this connection (else empty), and for every entry it ignored, its index in the
request and the newer version the node holds (which won). Any other status carries the JSON
error body the HTTP route would answer (`{"error": ..., "detail": ...}`) and nothing of the
frame was stored. A request frame larger than the node's message size limit, or framing the
node cannot follow, is answered (when it can be) and the connection closed.
"""

from __future__ import annotations

import struct

__all__ = [
    "ACK_HEAD",
    "CHANNEL_PATH",
    "CHANNEL_PROTOCOL",
    "IDLE_HEADER",
    "IGNORED",
    "REQUEST_HEAD",
    "encode_ack",
    "encode_error_ack",
    "handshake_request",
    "parse_ok_ack",
]

CHANNEL_PATH = "/v1/internal/pulses"
CHANNEL_PROTOCOL = "pmcluster-pulses/1"
IDLE_HEADER = "X-Pmcluster-Idle-Secs"

REQUEST_HEAD = struct.Struct(">II")  # seq, body_len
ACK_HEAD = struct.Struct(">IHI")  # seq, status, extra_len
_OK_HEAD = struct.Struct(">IH")  # stored, epoch_len
IGNORED = struct.Struct(">Iq")  # index, held version


def handshake_request(host: str, port: int) -> bytes:
    """The client's upgrade request to `host:port` (IPv6 literals bracketed)."""
    authority = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return (
        f"GET {CHANNEL_PATH} HTTP/1.1\r\nHost: {authority}:{port}\r\n"
        f"Connection: Upgrade\r\nUpgrade: {CHANNEL_PROTOCOL}\r\n\r\n"
    ).encode("ascii")


def encode_ack(seq: int, stored: int, epoch: bytes, ignored: list[tuple[int, int]]) -> bytes:
    """A 200 ack: `stored` entries, the epoch (b"" when unchanged), the ignored entries."""
    extra = [_OK_HEAD.pack(stored, len(epoch)), epoch]
    extra.extend(IGNORED.pack(index, held) for index, held in ignored)
    body = b"".join(extra)
    return ACK_HEAD.pack(seq, 200, len(body)) + body


def encode_error_ack(seq: int, status: int, error_json: bytes) -> bytes:
    """An error ack: the status and JSON body the HTTP route would have answered."""
    return ACK_HEAD.pack(seq, status, len(error_json)) + error_json


def parse_ok_ack(extra: bytes) -> tuple[int, str, list[tuple[int, int]]]:
    """(stored, epoch or "", [(index, held)]) of a 200 ack's extra; ValueError when malformed."""
    if len(extra) < _OK_HEAD.size:
        raise ValueError(f"ack of {len(extra)} bytes, shorter than its head")
    stored, epoch_len = _OK_HEAD.unpack_from(extra)
    offset = _OK_HEAD.size + epoch_len
    rest = len(extra) - offset
    if rest < 0 or rest % IGNORED.size:
        raise ValueError(f"ack with {rest} bytes of ignored entries")
    epoch = extra[_OK_HEAD.size : offset].decode("ascii")
    ignored = [IGNORED.unpack_from(extra, at) for at in range(offset, len(extra), IGNORED.size)]
    return stored, epoch, ignored
