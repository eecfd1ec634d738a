"""KERBEROS on the Storm protocol (SASL GSSAPI, RFC 4752) against a real KDC (Debian's
krb5-kdc, a throwaway realm on 127.0.0.1), through a node's shared port: `nimbus` (and
`pacemaker.kerberos.users`) read, another principal is refused, unauthenticated reads get
NOT_AUTHORIZED, `pmcluster.auth.writes` closes writes, and bad or replayed tokens close only
their own connection."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from pmcluster.errors import AuthError, NodeUnavailable, NotAuthorized
from pmcluster.node.app import make_app
from pmcluster.node.sharedport import SharedSite
from pmcluster.node.stormfront import storm_factory
from pmcluster.storm.auth import (
    SASL_COMPLETE_REQUEST,
    SASL_TOKEN_MESSAGE_REQUEST,
    control_code,
    control_message,
    sasl_token,
    sasl_token_message,
)
from pmcluster.storm.client import StormClient
from pmcluster.storm.codec import FrameDecoder, HBMessage, HBMessageData, encode_frame
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.storm.metrics import StormMetrics
from pmcluster.testing.kdc import PacemakerRealm, pacemaker_realm

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
WAIT = 5.0


@pytest.fixture(scope="module")
def realm(kdc_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacemakerRealm]:
    workdir = tmp_path_factory.mktemp("storm-krb")
    users = ("nimbus", "alice", "bob")
    with pacemaker_realm(workdir, [HOST], users, ccache="MEMORY:pmcluster-storm-tests") as realm:
        yield realm


@dataclasses.dataclass
class Node:
    port: int
    metrics: StormMetrics

    def client(self) -> StormClient:
        return StormClient(HOST, self.port, timeout=WAIT)

    async def authenticated(self, realm: PacemakerRealm, who: str, **kwargs: str) -> StormClient:
        client = self.client()
        await client.connect()
        try:
            await client.authenticate_gssapi(
                "pacemaker", keytab=realm.keytab(who), principal=realm.principal(who), **kwargs
            )
        except BaseException:
            await client.close()
            raise
        return client


async def start_node(realm: PacemakerRealm, **changes: object) -> AsyncIterator[Node]:
    app = make_app(realm.node_config(port=0, host=HOST, kerberos_users=("bob",), **changes))
    factory = storm_factory(app)
    metrics = factory().metrics  # the front end's shared counters (this probe never connects)
    runner = web.AppRunner(app)
    await runner.setup()
    site = SharedSite(runner, HOST, 0, factory, drain_timeout=1.0)
    await site.start()
    assert site.shared is not None
    try:
        yield Node(site.shared.port, metrics)
    finally:
        await runner.cleanup()


@pytest.fixture
async def node(realm: PacemakerRealm) -> AsyncIterator[Node]:
    async for started in start_node(realm):
        yield started


async def raw_exchange(port: int, frames: list[HBMessage]) -> list[HBMessage] | None:
    """Send `frames`, then collect replies until the server closes (None: it did not)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"".join(encode_frame(f) for f in frames))
        decoder, replies = FrameDecoder(), list[HBMessage]()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                return replies
            replies.extend(decoder.feed(chunk))
        return None
    finally:
        writer.close()


async def test_nimbus_and_kerberos_users_read_over_sasl_gssapi(
    realm: PacemakerRealm, node: Node
) -> None:
    async with node.client() as worker:  # Storm's workers: no authentication, writes open
        await worker.send_pulse("/workerbeats/t1/w1", b"beat")
        with pytest.raises(NotAuthorized):
            await worker.get_pulse("/workerbeats/t1/w1")
    started = time.perf_counter()
    nimbus = await node.authenticated(realm, "nimbus")
    handshake_ms = (time.perf_counter() - started) * 1000
    try:
        assert await nimbus.get_pulse("/workerbeats/t1/w1") == b"beat"
        assert await nimbus.exists("/workerbeats/t1/w1")
        assert await nimbus.get_all_nodes_for_path("/workerbeats/t1") == ["w1"]
        assert await nimbus.get_all_pulse_for_path("/workerbeats") == [
            ("/workerbeats/t1/w1", b"beat")
        ]
    finally:
        await nimbus.close()
    # pacemaker.kerberos.users may read too; an explicit authzid naming itself is fine.
    bob = await node.authenticated(realm, "bob", authzid=realm.principal("bob"))
    try:
        assert await bob.get_pulse("/workerbeats/t1/w1") == b"beat"
    finally:
        await bob.close()
    assert node.metrics.auth_ok == 2 and node.metrics.auth_failed == 0
    assert handshake_ms < 2000, f"GSSAPI handshake took {handshake_ms:.0f} ms"


@pytest.mark.parametrize(
    ("who", "authzid"),
    [("alice", ""), ("alice", "nimbus"), ("bob", "nimbus")],
    ids=["unauthorized-principal", "impersonation-unauthorized", "impersonation-authorized"],
)
async def test_other_principals_are_refused_and_read_nothing(
    realm: PacemakerRealm, node: Node, who: str, authzid: str
) -> None:
    async with node.client() as worker:
        await worker.send_pulse("/workerbeats/t1/w1", b"beat")
    client = node.client()
    await client.connect()
    try:
        with pytest.raises(AuthError, match="closed the connection"):
            await client.authenticate_gssapi(
                "pacemaker",
                keytab=realm.keytab(who),
                principal=realm.principal(who),
                authzid=authzid,
            )
        with pytest.raises(NodeUnavailable):  # the connection is gone: nothing can be read
            await client.get_pulse("/workerbeats/t1/w1")
    finally:
        await client.close()
    assert node.metrics.auth_failed == 1 and node.metrics.auth_ok == 0


async def test_auth_writes_refuses_unauthenticated_writes(realm: PacemakerRealm) -> None:
    async for node in start_node(realm, auth_writes=True):
        async with node.client() as worker:
            with pytest.raises(NotAuthorized):
                await worker.send_pulse("/workerbeats/t1/w1", b"beat")
            with pytest.raises(NotAuthorized):
                await worker.delete_path("/workerbeats")
        nimbus = await node.authenticated(realm, "nimbus")
        try:
            await nimbus.send_pulse("/workerbeats/t1/w1", b"from nimbus")
            assert await nimbus.get_pulse("/workerbeats/t1/w1") == b"from nimbus"
        finally:
            await nimbus.close()


async def test_bad_tokens_close_only_their_connection(realm: PacemakerRealm, node: Node) -> None:
    from pmcluster.auth.kerberos import KerberosInitiator

    async with node.client() as bystander:  # an open connection, untouched by the others
        await bystander.send_pulse("/workerbeats/t1/w1", b"beat")
        initiator = KerberosInitiator(
            keytab=realm.keytab("nimbus"),
            principal=realm.principal("nimbus"),
            service_name="pacemaker",
        )
        token = initiator.start(HOST, sasl=True).token
        bad: list[list[HBMessage]] = [
            [sasl_token_message(b"\x60\x82garbage" + os.urandom(64))],  # not a GSSAPI token
            [sasl_token_message(b"")],
            [sasl_token_message(token[:-7])],  # truncated
            [control_message(SASL_TOKEN_MESSAGE_REQUEST)],  # DIGEST's start on a KERBEROS node
        ]
        for frames in bad:
            assert await raw_exchange(node.port, frames) == [], frames
        # The genuine token is answered (AP-REP) once; replayed on another connection it is not.
        reader, writer = await asyncio.open_connection(HOST, node.port)
        try:
            writer.write(encode_frame(sasl_token_message(token)))
            chunk = await asyncio.wait_for(reader.read(65536), WAIT)
            assert [m.type for m in FrameDecoder().feed(chunk)] == [T.SASL_MESSAGE_TOKEN]
        finally:
            writer.close()
        assert await raw_exchange(node.port, [sasl_token_message(token)]) == []
        # A read before authenticating ends the chance to do so: a token after it closes.
        read_then_token = [
            HBMessage(T.GET_PULSE, HBMessageData(path="/workerbeats/t1/w1"), 1),
            sasl_token_message(token),
        ]
        replies = await raw_exchange(node.port, read_then_token)
        assert replies is not None  # closed; at most the read's NOT_AUTHORIZED got out first
        assert all(reply.type == T.NOT_AUTHORIZED for reply in replies)
        assert node.metrics.auth_failed == 4  # 3 bad tokens + the replay (-202: protocol error)
        # Everyone else is still served: the bystander writes, nimbus authenticates and reads.
        await bystander.send_pulse("/workerbeats/t1/w2", b"beat2")
        nimbus = await node.authenticated(realm, "nimbus")
        try:
            assert await nimbus.get_all_nodes_for_path("/workerbeats/t1") == ["w1", "w2"]
        finally:
            await nimbus.close()


async def test_server_frames_follow_rfc_4752(realm: PacemakerRealm, node: Node) -> None:
    """The wire, by hand: AP-REP token, then the wrapped layer offer (none, size 0), then one
    CONTROL(-203) after the client's choice, and the connection reads."""
    from pmcluster.auth.kerberos import KerberosInitiator

    initiator = KerberosInitiator(
        keytab=realm.keytab("nimbus"), principal=realm.principal("nimbus"), service_name="pacemaker"
    )
    started = initiator.start(HOST, sasl=True)
    ctx = started.ctx
    reader, writer = await asyncio.open_connection(HOST, node.port)
    decoder = FrameDecoder()
    pending: list[HBMessage] = []

    async def next_frame() -> HBMessage:
        while not pending:
            chunk = await asyncio.wait_for(reader.read(65536), WAIT)
            assert chunk, "server closed the connection"
            pending.extend(decoder.feed(chunk))
        return pending.pop(0)

    try:
        writer.write(encode_frame(sasl_token_message(started.token)))
        ap_rep = await next_frame()
        assert ap_rep.type == T.SASL_MESSAGE_TOKEN and ap_rep.message_id is None
        assert ctx.step(sasl_token(ap_rep)) is None and ctx.complete  # mutual authentication
        writer.write(encode_frame(sasl_token_message(b"")))
        offer = await next_frame()
        assert offer.type == T.SASL_MESSAGE_TOKEN
        unwrapped = ctx.unwrap(sasl_token(offer))
        assert unwrapped.message == b"\x01\x00\x00\x00" and not unwrapped.encrypted
        writer.write(encode_frame(sasl_token_message(ctx.wrap(b"\x01\x00\x10\x00", False).message)))
        done = await next_frame()
        assert done.type == T.CONTROL_MESSAGE and control_code(done) == SASL_COMPLETE_REQUEST
        # Nothing else was sent (no second -203): the next frame is the reply to a read.
        writer.write(encode_frame(HBMessage(T.EXISTS, HBMessageData(path="/nothing"), 7)))
        reply = await next_frame()
        assert reply.type == T.EXISTS_RESPONSE and reply.message_id == 7
        assert reply.data is not None and reply.data.boolval is False
    finally:
        writer.close()
