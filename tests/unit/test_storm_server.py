"""Storm protocol over real sockets on 127.0.0.1: every operation through StormClient,
pipelining with out-of-order replies, bounded in-flight work, bad input closing only the
offending connection, the auth seam, and one port shared by HTTP and Storm."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from pmcluster.errors import NodeUnavailable, NotAuthorized, ProtocolError
from pmcluster.node.coordinator import LocalNow
from pmcluster.node.local import LocalBackend
from pmcluster.node.sharedport import SharedSite, start_shared_server
from pmcluster.protocol.backend import NOT_NOW, NotNow
from pmcluster.protocol.budget import BufferBudget
from pmcluster.protocol.pulse import Pulse
from pmcluster.store import PulseStore
from pmcluster.storm.client import StormClient
from pmcluster.storm.codec import (
    FrameDecoder,
    HBMessage,
    HBMessageData,
    HBPulse,
    encode_frame,
)
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.storm.handler import StormHandler
from pmcluster.storm.server import StormConnection, StormDeadlines

HOST = "127.0.0.1"
MAX_FRAME = 1 << 20
WAIT = 5.0  # bound on every wait for something that should happen at once


class SlowBackend(LocalBackend):
    """GET_PULSE of `slow_path` waits for `release`; counts how many wait at once."""

    def __init__(self, store: PulseStore, slow_path: str) -> None:
        super().__init__(store)
        self.slow_path = slow_path
        self.release = asyncio.Event()
        self.waiting = 0
        self.peak = 0

    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]:
        if path == self.slow_path:
            self.waiting += 1
            self.peak = max(self.peak, self.waiting)
            try:
                await self.release.wait()
            finally:
                self.waiting -= 1
        return await super().get_pulse(path)


async def poll(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.005)


class Server:
    def __init__(self, handler: StormHandler, server: asyncio.Server) -> None:
        self.handler = handler
        self.server = server
        self.port = int(server.sockets[0].getsockname()[1])

    def client(self) -> StormClient:
        return StormClient(HOST, self.port, timeout=WAIT)


async def start(handler: StormHandler, **kwargs: object) -> Server:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: StormConnection(handler, MAX_FRAME, **kwargs),  # type: ignore[arg-type]
        HOST,
        0,
    )
    return Server(handler, server)


@pytest.fixture
def store() -> PulseStore:
    return PulseStore()


@pytest.fixture
def backend(store: PulseStore) -> SlowBackend:
    return SlowBackend(store, "/slow")


class SlowAwareNow(LocalNow):
    """The fast lane over `SlowBackend`'s store: everything but `slow_path` answers at once."""

    def __init__(self, backend: SlowBackend) -> None:
        super().__init__(backend)
        self.slow_path = backend.slow_path

    def get_pulse_now(self, path: str) -> Pulse | NotNow | None:  # type: ignore[override]
        return NOT_NOW if path == self.slow_path else super().get_pulse_now(path)


@pytest.fixture(params=["tasks", "fast-lane"])
async def srv(backend: SlowBackend, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """Every test runs twice: all requests as tasks, and with the fast lane (requests that
    need no waiting answered inside the read)."""
    now = SlowAwareNow(backend) if request.param == "fast-lane" else None
    server = await start(StormHandler(backend, resolve_now=None if now is None else lambda r: now))
    yield server
    backend.release.set()
    server.server.close()


async def raw_exchange(port: int, payload: bytes) -> bytes:
    """Send `payload` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(WAIT):
            return await reader.read()
    finally:
        writer.close()


# ------------------------------------------------------------------ every operation


async def test_every_operation_round_trips(srv: Server, store: PulseStore) -> None:
    async with srv.client() as c:
        await c.create_path("/workerbeats")
        assert store.key_count == 0
        await c.send_pulse("/workerbeats/t1/a", b"\x1f\x8b one")
        await c.send_pulse("/workerbeats/t1/b", b"two")
        await c.send_pulse("/workerbeats/t10/c", b"three")
        assert await c.get_pulse("/workerbeats/t1/a") == b"\x1f\x8b one"
        assert await c.get_pulse("/workerbeats/t1/zzz") is None
        assert await c.exists("/workerbeats/t1/b") is True
        assert await c.exists("/workerbeats/t1") is False
        assert await c.get_all_nodes_for_path("/workerbeats") == ["t1", "t10"]
        assert await c.get_all_nodes_for_path("/workerbeats/t1") == ["a", "b"]
        assert sorted(await c.get_all_pulse_for_path("/workerbeats/t1")) == [
            ("/workerbeats/t1/a", b"\x1f\x8b one"),
            ("/workerbeats/t1/b", b"two"),
        ]
        await c.delete_pulse_id("/workerbeats/t1/a")
        assert await c.get_pulse("/workerbeats/t1/a") is None
        await c.delete_path("/workerbeats/t1")
        assert await c.get_all_nodes_for_path("/workerbeats") == ["t10"]
        assert store.key_count == 1
    snap = srv.handler.metrics.snapshot()
    assert snap["requests"]["SEND_PULSE"] == 3 and snap["requests"]["GET_PULSE"] == 3
    await poll(lambda: srv.handler.metrics.connections_open == 0)
    assert srv.handler.metrics.connections_total == 1


async def test_large_pulse_round_trips(srv: Server) -> None:
    data = bytes(range(256)) * 4000  # ~1 MB, under MAX_FRAME
    async with srv.client() as c:
        await c.send_pulse("/big", data)
        assert await c.get_pulse("/big") == data


# ------------------------------------------------------------------ pipelining


async def test_100_in_flight_slow_request_does_not_block_others(
    srv: Server, store: PulseStore, backend: SlowBackend
) -> None:
    for i in range(99):
        store.send_pulse(f"/fast/{i}", str(i).encode())
    async with srv.client() as c:
        slow = asyncio.ensure_future(c.get_pulse("/slow"))
        fast = [asyncio.ensure_future(c.get_pulse(f"/fast/{i}")) for i in range(99)]
        async with asyncio.timeout(WAIT):
            results = await asyncio.gather(*fast)
        assert results == [str(i).encode() for i in range(99)]
        assert not slow.done() and backend.waiting == 1
        store.send_pulse("/slow", b"late")
        backend.release.set()
        assert await asyncio.wait_for(slow, WAIT) == b"late"


async def test_replies_leave_out_of_order_on_the_wire(srv: Server, store: PulseStore) -> None:
    store.send_pulse("/fast", b"f")
    requests = [
        HBMessage(T.GET_PULSE, HBMessageData(path="/slow"), 1),
        HBMessage(T.GET_PULSE, HBMessageData(path="/fast"), 2),
        HBMessage(T.EXISTS, HBMessageData(path="/fast"), 3),
    ]
    reader, writer = await asyncio.open_connection(HOST, srv.port)
    try:
        writer.write(b"".join(encode_frame(m) for m in requests))
        decoder = FrameDecoder()
        got: list[HBMessage] = []
        async with asyncio.timeout(WAIT):
            while len(got) < 2:
                got.extend(decoder.feed(await reader.read(4096)))
        assert [m.message_id for m in got] == [2, 3]
        assert got[0].data == HBMessageData(pulse=HBPulse("/fast", b"f"))
    finally:
        writer.close()


async def test_in_flight_is_bounded_per_connection(store: PulseStore) -> None:
    backend = SlowBackend(store, "/slow")
    server = await start(StormHandler(backend), max_in_flight=3)
    try:
        async with server.client() as c:
            calls = [asyncio.ensure_future(c.get_pulse("/slow")) for _ in range(5)]
            await poll(lambda: backend.waiting == 3)
            await asyncio.sleep(0.05)  # give a wrongly started 4th request the chance to show
            assert backend.waiting == 3 and server.handler.metrics.in_flight == 3
            backend.release.set()
            assert await asyncio.wait_for(asyncio.gather(*calls), WAIT) == [None] * 5
            assert backend.peak == 3
    finally:
        server.server.close()


async def test_peer_that_does_not_read_replies_is_not_served_further(
    srv: Server, store: PulseStore
) -> None:
    value = bytes(256 * 1024)
    store.send_pulse("/big", value)
    n = 300
    requests = b"".join(
        encode_frame(HBMessage(T.GET_PULSE, HBMessageData(path="/big"), i)) for i in range(n)
    )
    reader, writer = await asyncio.open_connection(HOST, srv.port)
    try:
        writer.write(requests)
        metrics = srv.handler.metrics
        await poll(lambda: metrics.requests.get("GET_PULSE", 0) > 0 and metrics.in_flight == 0)
        await asyncio.sleep(0.05)  # a server ignoring back-pressure would go on answering
        assert metrics.requests["GET_PULSE"] <= 100  # at most one window, not all 300
        decoder = FrameDecoder(1 << 20)
        ids: list[int | None] = []
        async with asyncio.timeout(WAIT):
            while len(ids) < n:
                for reply in decoder.feed(await reader.read(1 << 20)):
                    assert reply.data == HBMessageData(pulse=HBPulse("/big", value))
                    ids.append(reply.message_id)
        assert sorted(i for i in ids if i is not None) == list(range(n))
    finally:
        writer.close()


async def test_half_closed_connection_still_gets_its_replies(
    srv: Server, store: PulseStore
) -> None:
    store.send_pulse("/a", b"x")
    reader, writer = await asyncio.open_connection(HOST, srv.port)
    try:
        writer.write(encode_frame(HBMessage(T.GET_PULSE, HBMessageData(path="/a"), 5)))
        writer.write_eof()
        async with asyncio.timeout(WAIT):
            data = await reader.read()
        assert list(FrameDecoder().feed(data)) == [
            HBMessage(T.GET_PULSE_RESPONSE, HBMessageData(pulse=HBPulse("/a", b"x")), 5)
        ]
    finally:
        writer.close()


# ------------------------------------------------------------------ bad input


def frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


BAD_INPUT = {
    "negative length": h("ffffff9c"),
    "oversized length": struct.pack(">i", MAX_FRAME + 1),
    "undecodable struct": frame(h("08000100000002 090009 00 00")),
    "garbage body": frame(b"\x0c\x00\x02\xff\xff\xff"),
    "union with no member": frame(h("08000100000002 0c0002 00 08000300000001 00")),
    "union with two members": frame(h("0800010000000a 0c0002 0b0001 00000001 41 020003 01 00 00")),
    "SEND_PULSE without details": encode_frame(
        HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse("/a")), 1)
    ),
    "response type as request": encode_frame(HBMessage(T.GET_PULSE_RESPONSE, None, 1)),
    "unknown type": encode_frame(HBMessage(77, HBMessageData(path="/a"), 1)),
    "CONTROL frame to NONE server": encode_frame(
        HBMessage(T.CONTROL_MESSAGE, HBMessageData(message_blob=struct.pack(">h", -202)))
    ),
    "SASL frame to NONE server": encode_frame(
        HBMessage(T.SASL_MESSAGE_TOKEN, HBMessageData(message_blob=struct.pack(">hi", -500, 0)))
    ),
}


@pytest.mark.parametrize("payload", list(BAD_INPUT.values()), ids=list(BAD_INPUT))
async def test_bad_input_closes_only_that_connection(
    srv: Server, store: PulseStore, payload: bytes
) -> None:
    async with srv.client() as good:
        await good.send_pulse("/keep", b"before")
        assert await raw_exchange(srv.port, payload) == b""  # closed, nothing answered
        assert srv.handler.metrics.protocol_errors == 1
        assert await good.get_pulse("/keep") == b"before"
        await good.send_pulse("/keep", b"after")
        assert await good.get_pulse("/keep") == b"after"
    assert [p.path for p in store.get_all_pulse_for_path("/")] == ["/keep"]


async def test_good_request_before_bad_frame_is_answered_or_dropped_never_crashes(
    srv: Server, store: PulseStore
) -> None:
    store.send_pulse("/a", b"x")
    good = encode_frame(HBMessage(T.GET_PULSE, HBMessageData(path="/a"), 1))
    data = await raw_exchange(srv.port, good + BAD_INPUT["negative length"])
    assert list(FrameDecoder().feed(data)) in (
        [],
        [HBMessage(T.GET_PULSE_RESPONSE, HBMessageData(pulse=HBPulse("/a", b"x")), 1)],
    )
    async with srv.client() as c:
        assert await c.get_pulse("/a") == b"x"


# ------------------------------------------------------------------ auth seam


class TokenAuth:
    """A stand-in for SASL: a CONTROL frame with blob b"ok" authenticates the connection."""

    def __init__(self) -> None:
        self.authenticated = False

    @property
    def authorized_reader(self) -> bool:
        return self.authenticated

    def on_auth_frame(self, message: HBMessage) -> list[HBMessage]:
        if message.data is None or message.data.message_blob != b"ok":
            raise ProtocolError("bad token")
        self.authenticated = True
        done = HBMessageData(message_blob=struct.pack(">h", -203))
        return [HBMessage(T.CONTROL_MESSAGE, done)]


async def test_auth_seam_gates_reads_and_refuses_late_auth_frames(store: PulseStore) -> None:
    server = await start(StormHandler(LocalBackend(store)), auth=TokenAuth())
    token = encode_frame(HBMessage(T.CONTROL_MESSAGE, HBMessageData(message_blob=b"ok")))
    try:
        async with server.client() as anonymous:
            await anonymous.send_pulse("/a", b"x")  # writes stay open, as in Storm
            with pytest.raises(NotAuthorized):
                await anonymous.get_pulse("/a")
        # an auth frame after an ordinary frame closes the connection
        late = encode_frame(HBMessage(T.EXISTS, HBMessageData(path="/a"), 3)) + token
        refused = [HBMessage(T.NOT_AUTHORIZED, None, 3)]
        assert list(FrameDecoder().feed(await raw_exchange(server.port, late))) in ([], refused)
        assert server.handler.metrics.protocol_errors == 1

        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            get = HBMessage(T.GET_PULSE, HBMessageData(path="/a"), 4)
            writer.write(token + encode_frame(get))
            decoder = FrameDecoder()
            got: list[HBMessage] = []
            async with asyncio.timeout(WAIT):
                while len(got) < 2:
                    got.extend(decoder.feed(await reader.read(4096)))
            assert got[0] == HBMessage(
                T.CONTROL_MESSAGE, HBMessageData(message_blob=struct.pack(">h", -203))
            )
            assert got[1] == HBMessage(
                T.GET_PULSE_RESPONSE, HBMessageData(pulse=HBPulse("/a", b"x")), 4
            )
        finally:
            writer.close()
    finally:
        server.server.close()


# ------------------------------------------------------------------ shared port


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello from http")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/hello", hello)
    return app


async def test_one_port_serves_http_and_storm(store: PulseStore) -> None:
    runner = web.AppRunner(make_app())
    await runner.setup()
    handler = StormHandler(LocalBackend(store))
    assert runner.server is not None
    shared = await start_shared_server(
        HOST, 0, runner.server, lambda: StormConnection(handler, MAX_FRAME)
    )
    try:
        url = f"http://{HOST}:{shared.port}/hello"
        async with aiohttp.ClientSession() as session, StormClient(HOST, shared.port) as storm:
            await storm.send_pulse("/w/t/n", b"beat")
            async with session.get(url) as response:
                assert response.status == 200
                assert await response.text() == "hello from http"
            assert await storm.get_pulse("/w/t/n") == b"beat"
            # a Storm protocol error on the shared port closes only that connection
            assert await raw_exchange(shared.port, BAD_INPUT["union with no member"]) == b""
            assert handler.metrics.protocol_errors == 1
            # (a first byte other than 0x00, e.g. a negative length, is HTTP's to refuse)
            assert (await raw_exchange(shared.port, h("ffffffff"))).startswith(b"HTTP/1.")
            async with session.get(url) as response:  # keep-alive connection reused
                assert response.status == 200
            assert await storm.exists("/w/t/n") is True
            assert len(shared.storm_connections) == 1
    finally:
        shared.close()
        await asyncio.wait_for(shared.wait_closed(), WAIT)
        await runner.cleanup()
    assert handler.metrics.connections_open == 0


async def test_shared_close_drains_in_flight_storm_requests(
    store: PulseStore, backend: SlowBackend
) -> None:
    runner = web.AppRunner(make_app())
    await runner.setup()
    assert runner.server is not None
    handler = StormHandler(backend)
    shared = await start_shared_server(HOST, 0, runner.server, lambda: StormConnection(handler))
    try:
        async with StormClient(HOST, shared.port, timeout=WAIT) as storm:
            store.send_pulse("/slow", b"s")
            pending = asyncio.ensure_future(storm.get_pulse("/slow"))
            await poll(lambda: backend.waiting == 1)
            shared.close()
            with pytest.raises(OSError):
                await asyncio.open_connection(HOST, shared.port)
            backend.release.set()
            assert await asyncio.wait_for(pending, WAIT) == b"s"  # answered, then closed
            await asyncio.wait_for(shared.wait_closed(), WAIT)
            with pytest.raises(NodeUnavailable):
                await storm.get_pulse("/slow")
    finally:
        shared.close()
        await runner.cleanup()


async def test_shared_site_is_a_drop_in_tcp_site(store: PulseStore) -> None:
    runner = web.AppRunner(make_app())
    await runner.setup()
    handler = StormHandler(LocalBackend(store))
    site = SharedSite(runner, HOST, 0, lambda: StormConnection(handler), drain_timeout=WAIT)
    await site.start()
    try:
        ((host, port),) = runner.addresses
        assert host == HOST and port > 0
        async with aiohttp.ClientSession() as session, StormClient(HOST, port) as storm:
            async with session.get(f"http://{HOST}:{port}/hello") as response:
                assert await response.text() == "hello from http"
            await storm.send_pulse("/x", b"1")
            assert await storm.get_all_pulse_for_path("/") == [("/x", b"1")]
            await runner.cleanup()
            with pytest.raises(NodeUnavailable):
                await storm.get_pulse("/x")
    finally:
        await runner.cleanup()
    assert handler.metrics.connections_open == 0


async def test_deadlines_close_idle_and_partial_frame_connections(store: PulseStore) -> None:
    deadlines = StormDeadlines(idle_secs=0.3, frame_secs=0.3, handshake_secs=0.3)
    budget = BufferBudget(1 << 20)
    server = await start(StormHandler(LocalBackend(store)), deadlines=deadlines, budget=budget)
    port = server.port
    try:
        idle_r, idle_w = await asyncio.open_connection(HOST, port)
        partial_r, partial_w = await asyncio.open_connection(HOST, port)
        partial_w.write(struct.pack(">i", 500_000) + b"\x08" * 1000)  # a frame never finished
        await partial_w.drain()
        await poll(lambda: budget.used == 1004)
        for reader in (idle_r, partial_r):
            assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed by the node
        await poll(lambda: budget.used == 0)
        idle_w.close()
        partial_w.close()
    finally:
        server.server.close()
        await server.server.wait_closed()


async def test_partial_frames_past_the_buffer_budget_drop_the_connection(
    store: PulseStore,
) -> None:
    budget = BufferBudget(4096)
    server = await start(StormHandler(LocalBackend(store)), budget=budget)
    port = server.port
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(struct.pack(">i", 500_000) + b"\x08" * 8192)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        assert budget.refused == 1 and budget.used == 0
        writer.close()
    finally:
        server.server.close()
        await server.server.wait_closed()


async def test_a_write_whose_client_closed_before_it_ran_is_dropped(
    backend: SlowBackend, store: PulseStore
) -> None:
    # As after a SIGSTOP of the node or a partition: the write and the client's close arrive
    # together, long after the client gave up and sent the write elsewhere. (Requests as
    # tasks, as on a node of a cluster: the fast lane only answers a node's own keys.)
    srv = await start(StormHandler(backend))
    reader, writer = await asyncio.open_connection(HOST, srv.port)
    try:
        pulse = HBMessageData(pulse=HBPulse("/b", b"y"))
        writer.write(encode_frame(HBMessage(T.SEND_PULSE, pulse, 6)))
        writer.write_eof()
        async with asyncio.timeout(WAIT):
            data = await reader.read()
        assert data == b""  # no answer: the client has gone
        assert store.get_pulse("/b") is None
        assert srv.handler.metrics.abandoned == 1
    finally:
        writer.close()
        srv.server.close()
