"""Storm DIGEST authentication on real sockets: the handshake's frames, reads gated per
connection, every out-of-order or wrong frame closing only its own connection; the
per-method auth factory (with the JAAS file Storm documents)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pmcluster.config import Config
from pmcluster.errors import AuthError, ConfigError, NotAuthorized
from pmcluster.node.local import LocalBackend
from pmcluster.store import PulseStore
from pmcluster.storm.auth import (
    DigestAuth,
    control_message,
    make_auth_factory,
    sasl_token,
    sasl_token_message,
)
from pmcluster.storm.client import StormClient
from pmcluster.storm.codec import FrameDecoder, HBMessage, HBMessageData, encode_frame
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.storm.handler import StormHandler
from pmcluster.storm.metrics import StormMetrics
from pmcluster.storm.sasl_digest import client_response, storm_digest_password
from pmcluster.storm.server import NoAuth, StormConnection

HOST = "127.0.0.1"
WAIT = 5.0
JAAS = """
/* a comment with PacemakerDigest { username="no"; }; inside */
StormServer {
   org.apache.zookeeper.server.auth.DigestLoginModule required
   user_super="adminsecret";
};
// Storm's documented form: no module, no flag
PacemakerDigest {
    username="storm"
    password="pw \\"quoted\\" ; {x}";
};
"""
PASSWORD = storm_digest_password("storm", 'pw "quoted" ; {x}')


class Node:
    def __init__(self, server: asyncio.Server, store: PulseStore, metrics: StormMetrics) -> None:
        self.server, self.store, self.metrics = server, store, metrics
        self.port = int(server.sockets[0].getsockname()[1])

    def client(self) -> StormClient:
        return StormClient(HOST, self.port, timeout=WAIT)


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    store = PulseStore()
    metrics = StormMetrics()
    handler = StormHandler(LocalBackend(store), metrics=metrics)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: StormConnection(handler, auth=DigestAuth(PASSWORD, metrics=metrics)), HOST, 0
    )
    yield Node(server, store, metrics)
    server.close()


async def test_digest_handshake_then_reads(node: Node) -> None:
    async with node.client() as anonymous:
        await anonymous.send_pulse("/w/t/a", b"beat")  # writes are open, as in Storm
        with pytest.raises(NotAuthorized):
            await anonymous.get_pulse("/w/t/a")
        await anonymous.send_pulse("/w/t/b", b"still served")
    async with node.client() as nimbus:
        await nimbus.authenticate_digest("nimbus", "storm", 'pw "quoted" ; {x}')
        assert await nimbus.get_pulse("/w/t/a") == b"beat"
        assert await nimbus.get_all_nodes_for_path("/w") == ["t"]
    assert node.metrics.auth_ok == 1 and node.metrics.not_authorized == 1


async def test_wrong_password_closes_only_that_connection(node: Node) -> None:
    async with node.client() as other:
        await other.authenticate_digest("t", "storm", 'pw "quoted" ; {x}')
        async with node.client() as intruder:
            with pytest.raises(AuthError, match="closed"):
                await intruder.authenticate_digest("t", "storm", "guess")
        assert await other.exists("/none") is False  # the other connection keeps working
    assert node.metrics.auth_failed == 1


async def exchange(port: int, frames: list[HBMessage]) -> list[HBMessage]:
    """Send frames, read replies until the server closes (bounded)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"".join(encode_frame(f) for f in frames))
        decoder, got = FrameDecoder(), list[HBMessage]()
        async with asyncio.timeout(WAIT):
            while chunk := await reader.read(65536):
                got.extend(decoder.feed(chunk))
        return got
    finally:
        writer.close()


START = control_message(-202)
BLOB_TOKEN = HBMessage(T.SASL_MESSAGE_TOKEN, HBMessageData(message_blob=b"\xfe\x0c\x00"))


@pytest.mark.parametrize(
    "frames",
    [
        [sasl_token_message(b"username=x")],  # no CONTROL(-202) first
        [control_message(-203)],  # a server-side code from the client
        [START, START],  # a second start
        [START, BLOB_TOKEN],  # a token blob with a wrong marker
        [START, HBMessage(T.CONTROL_MESSAGE, HBMessageData(message_blob=b"\xff"))],
        [START, HBMessage(T.SASL_MESSAGE_TOKEN, HBMessageData(path="/x"))],  # wrong member
        [START, sasl_token_message(b"nonce=garbage")],
    ],
    ids=[
        "token-first",
        "client-203",
        "double-start",
        "bad-marker",
        "short-control",
        "path",
        "garbage-response",
    ],
)
async def test_bad_handshakes_close_the_connection(node: Node, frames: list[HBMessage]) -> None:
    probe = HBMessage(T.SEND_PULSE_RESPONSE, None, 1)  # would be refused anyway; never reached
    got = await exchange(node.port, [*frames, probe])
    assert all(m.type in (T.SASL_MESSAGE_TOKEN,) for m in got)  # at most the challenge
    assert node.metrics.protocol_errors == 1
    assert node.store.key_count == 0
    async with node.client() as fine:  # the node still serves everyone else
        await fine.send_pulse("/ok", b"1")
    assert node.store.key_count == 1


async def test_auth_frames_after_completion_close(node: Node) -> None:
    reader, writer = await asyncio.open_connection(HOST, node.port)
    try:
        decoder, pending = FrameDecoder(), list[HBMessage]()

        async def next_frame() -> HBMessage:
            async with asyncio.timeout(WAIT):
                while not pending:
                    pending.extend(decoder.feed(await reader.read(65536)))
            return pending.pop(0)

        writer.write(encode_frame(START))
        challenge = sasl_token(await next_frame())
        user = "dG9wbw=="  # base64 of the client name, as Storm sends it
        response, rspauth = client_response(challenge, user, PASSWORD)
        writer.write(encode_frame(sasl_token_message(response)))
        assert sasl_token(await next_frame()) == rspauth
        done = await next_frame()
        assert done == HBMessage(
            T.CONTROL_MESSAGE, HBMessageData(message_blob=struct.pack(">h", -203))
        )
        writer.write(encode_frame(START))
        async with asyncio.timeout(WAIT):
            assert await reader.read(65536) == b""  # closed
    finally:
        writer.close()


def test_make_auth_factory(tmp_path: Path) -> None:
    assert isinstance(make_auth_factory(Config())(), NoAuth)
    jaas = tmp_path / "jaas.conf"
    jaas.write_text(JAAS)
    make = make_auth_factory(Config(auth_method="DIGEST", jaas_path=str(jaas)))
    first, second = make(), make()
    assert isinstance(first, DigestAuth) and first is not second  # state is per connection
    assert not first.authorized_reader
    with pytest.raises(ConfigError, match="cannot read"):  # KERBEROS: PacemakerServer needed
        make_auth_factory(Config(auth_method="KERBEROS", jaas_path=str(tmp_path / "none")))
    jaas.write_text('PacemakerDigest { username="only"; };')
    with pytest.raises(ConfigError, match="password"):
        make_auth_factory(Config(auth_method="DIGEST", jaas_path=str(jaas)))
    with pytest.raises(ConfigError, match="cannot read"):
        make_auth_factory(Config(auth_method="DIGEST", jaas_path=str(tmp_path / "none")))
