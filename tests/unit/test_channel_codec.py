"""The pulse channel's wire format (`pmcluster.protocol.channel`): what both ends rely on."""

from __future__ import annotations

import json

import pytest

from pmcluster.protocol.channel import (
    ACK_HEAD,
    CHANNEL_PATH,
    CHANNEL_PROTOCOL,
    encode_ack,
    encode_error_ack,
    handshake_request,
    parse_ok_ack,
)


def split_ack(frame: bytes) -> tuple[int, int, bytes]:
    seq, status, extra_len = ACK_HEAD.unpack_from(frame)
    extra = frame[ACK_HEAD.size :]
    assert len(extra) == extra_len
    return seq, status, extra


@pytest.mark.parametrize(
    ("seq", "stored", "epoch", "ignored"),
    [
        (0, 0, "", []),
        (1, 100, "", [(3, 17)]),
        (2**32 - 1, 2**32 - 1, "epoch-0000000123-abcdef", [(0, 2**63 - 1), (2**32 - 1, 1)]),
        (42, 7, "e", [(i, 10**18 + i) for i in range(50)]),
    ],
)
def test_an_ok_ack_round_trips(
    seq: int, stored: int, epoch: str, ignored: list[tuple[int, int]]
) -> None:
    frame = encode_ack(seq, stored, epoch.encode(), ignored)
    got_seq, status, extra = split_ack(frame)
    assert (got_seq, status) == (seq, 200)
    assert parse_ok_ack(extra) == (stored, epoch, ignored)


def test_an_error_ack_carries_the_http_error_body() -> None:
    body = json.dumps({"error": "invalid_request", "detail": "entry 0: truncated"}).encode()
    assert split_ack(encode_error_ack(7, 400, body)) == (7, 400, body)


@pytest.mark.parametrize(
    "extra",
    [
        b"",  # shorter than its head
        b"\x00\x00\x00\x01",  # still shorter
        b"\x00\x00\x00\x01\x00\x05abc",  # epoch longer than what follows
        b"\x00\x00\x00\x01\x00\x00" + b"\x00" * 11,  # a partial ignored entry
    ],
)
def test_a_malformed_ok_ack_is_refused(extra: bytes) -> None:
    with pytest.raises(ValueError):
        parse_ok_ack(extra)


def test_the_handshake_names_the_route_the_protocol_and_the_authority() -> None:
    request = handshake_request("127.0.0.5", 6699).decode()
    lines = request.split("\r\n")
    assert lines[0] == f"GET {CHANNEL_PATH} HTTP/1.1"
    assert "Host: 127.0.0.5:6699" in lines
    assert f"Upgrade: {CHANNEL_PROTOCOL}" in lines
    assert "Connection: Upgrade" in lines
    assert request.endswith("\r\n\r\n")
    assert "Host: [::1]:6699" in handshake_request("::1", 6699).decode()
