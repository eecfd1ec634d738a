"""The HTTP fast path (`pmcluster.node.fasthttp`): forwarded heartbeat writes and reads answered
without aiohttp, everything else handed to aiohttp on the same connection.

A node's app is served twice, on the shared port with and without the fast path; the same
requests must get the same answers (status, body, the headers clients read) and leave the same
store. Raw sockets drive pipelining, split bodies, stalls and hand-over mid-connection."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from pmcluster.client import ClusterClient
from pmcluster.config import Config
from pmcluster.membership import FixedMembership
from pmcluster.node import fasthttp
from pmcluster.node.app import make_app
from pmcluster.node.appstate import LOCAL_BACKEND_KEY, METRICS_KEY, STATE_KEY, STORE_KEY
from pmcluster.node.coordinator import CoordinatingBackend, LocalTransport
from pmcluster.node.fasthttp import FastPath, parse_head
from pmcluster.node.limits import ConnectionCap
from pmcluster.node.metrics import Metrics
from pmcluster.node.sharedport import SharedServer, start_shared_server
from pmcluster.protocol import pulsecodec
from pmcluster.ring import Member
from pmcluster.store import PulseStore
from pmcluster.storm.codec import HBMessage, HBMessageData, HBPulse, encode_frame
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.storm.handler import StormHandler
from pmcluster.storm.server import StormConnection

HOST = "127.0.0.1"
WAIT = 5.0
FWD = b"X-Pmcluster-Forwarded: 1\r\n"


@dataclass
class Served:
    app: web.Application
    shared: SharedServer
    runner: web.AppRunner
    handovers: list[int]  # [connections aiohttp took over]

    @property
    def port(self) -> int:
        return self.shared.port

    @property
    def store(self) -> PulseStore:
        return self.app[STORE_KEY]


async def serve(config: Config, *, fast: bool, cap: ConnectionCap | None = None) -> Served:
    app = make_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    path = FastPath(config, app[STATE_KEY], app[LOCAL_BACKEND_KEY], app[METRICS_KEY])
    handler = StormHandler(app[LOCAL_BACKEND_KEY])
    handovers = [0]
    aiohttp_server = runner.server

    def aiohttp_handler() -> asyncio.Protocol:
        handovers[0] += 1
        return aiohttp_server()

    shared = await start_shared_server(
        HOST,
        0,
        aiohttp_handler,
        lambda: StormConnection(handler),
        fast_path=path if fast else None,
        cap=cap,
    )
    return Served(app, shared, runner, handovers)


async def stop(served: Served) -> None:
    served.shared.close()
    await asyncio.wait_for(served.shared.wait_closed(), WAIT)
    await served.runner.cleanup()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Served, Served]]:
    """The same node twice: with the fast path, and aiohttp alone."""
    config = Config(max_message_size=4096)
    fast, slow = await serve(config, fast=True), await serve(config, fast=False)
    yield fast, slow
    await stop(fast)
    await stop(slow)


@pytest.fixture
async def node() -> AsyncIterator[Served]:
    served = await serve(Config(max_message_size=4096), fast=True)
    yield served
    await stop(served)


def put(path: str, body: bytes, extra: bytes = FWD) -> bytes:
    return (
        f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def get(path: str, extra: bytes = FWD) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


def batch(entries: list[tuple[str, bytes, int]], extra: bytes = FWD) -> bytes:
    body = pulsecodec.encode(entries)
    return (
        f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


Answer = tuple[int, dict[str, str], bytes]


async def read_response(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), WAIT) if length else b""
    return status, headers, body


async def exchange(
    port: int, *requests: bytes, split: int | None = None
) -> list[tuple[int, dict[str, str], bytes]]:
    """Send `requests` pipelined on one connection (optionally in `split`-byte pieces)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        data = b"".join(requests)
        if split is None:
            writer.write(data)
        else:
            for i in range(0, len(data), split):
                writer.write(data[i : i + split])
                await writer.drain()
                await asyncio.sleep(0)
        return [await read_response(reader) for _ in requests]
    finally:
        writer.close()


def comparable(
    answer: tuple[int, dict[str, str], bytes],
) -> tuple[int, str | None, str | None, bool, bytes]:
    """What a client relies on: status, content type, version/held headers, node header, body."""
    status, headers, body = answer
    version = headers.get("x-pulse-version")
    held = headers.get("x-pulse-held")
    return (
        status,
        headers.get("content-type"),
        "version" if version else ("held" if held else None),
        "x-pmcluster-node" in headers and "x-pmcluster-epoch" in headers,
        body,  # (version numbers themselves differ between the two stores)
    )


# --- parsing -----------------------------------------------------------------------------


def test_parse_head_accepts_plain_http11() -> None:
    parsed = parse_head(b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n" + FWD[:-2])
    assert parsed is not None
    method, target, headers = parsed
    assert (method, target) == (b"PUT", b"/v1/pulse/a")
    assert headers[b"content-length"] == b"3"
    assert headers[b"x-pmcluster-forwarded"] == b"1"


@pytest.mark.parametrize(
    "head",
    [
        b"PUT /v1/pulse/a HTTP/1.0\r\nHost: x",  # not HTTP/1.1
        b"PUT  /v1/pulse/a HTTP/1.1\r\nHost: x",  # two spaces
        b"PUT /v1/pulse/a?x=1 HTTP/1.1\r\nHost: x",  # query string
        b"PUT http://h/v1/pulse/a HTTP/1.1\r\nHost: x",  # absolute form
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue",
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\r\nConnection: close",
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\r\nAuthorization: Digest x",
        b"PUT /v1/pulse/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",  # duplicate
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost : x",  # space before the colon
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost x",  # no colon
        b"PUT /v1/pulse/a HTTP/1.1\r\n folded: x",  # obsolete line folding
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\x00y",  # a control byte
        b"PUT /v1/pulse/\xc3\xa9 HTTP/1.1\r\nHost: x",  # a non-ASCII byte
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\nContent-Length: 9",  # a bare LF
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\rfoo",  # a bare CR
        b"PUT /v1/pulse/a\tb HTTP/1.1\r\nHost: x",  # a tab in the target
        b"PUT /v1/pulse/a HTTP/1.1\r\nContent-Length: 1",  # no Host
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"u" * 9000,  # long line
        b"PUT /v1/pulse/" + b"k" * 9000 + b" HTTP/1.1\r\nHost: x",  # long request line
    ],
)
def test_parse_head_leaves_anything_unusual_to_aiohttp(head: bytes) -> None:
    assert parse_head(head) is None


# --- same answers as aiohttp ----------------------------------------------------------------


async def test_fast_answers_match_aiohttp_and_store_the_same(pair: tuple[Served, Served]) -> None:
    fast, slow = pair
    requests = [
        put("/v1/pulse/workerbeats/t1/n-1", b"one"),
        put("/v1/pulse/workerbeats/t1/n-2", b""),  # empty value
        put("/v1/pulse/workerbeats/t%2F2/n-3", b"enc"),  # an encoded slash inside a name
        put("/v1/pulse/workerbeats/t1/n-1", b"old", FWD + b"X-Pulse-Version: 5\r\n"),  # loses
        get("/v1/pulse/workerbeats/t1/n-1"),
        get("/v1/pulse/workerbeats/t%2F2/n-3"),
        get("/v1/pulse/workerbeats/none"),  # a miss: aiohttp's 404
        batch([("/b/x", b"bx", 0), ("/b/y", b"by", 7)]),
        get("/v1/pulse/b/y"),
        put("/v1/pulse/", b"root"),  # no key: 400
        put("/v1/pulse/a/../b", b"dots"),  # invalid path: 400
        put("/v1/pulse/a", b"v", FWD + b"X-Pulse-Version: -3\r\n"),  # bad version: 400
        batch([("relative", b"r", 0)]),  # invalid batch entry: 400
        put("/v1/pulse/big", b"x" * 5000),  # over pacemaker.thrift.message.size.max: 413
    ]
    for request in requests:
        (f_answer,) = await exchange(fast.port, request)
        (s_answer,) = await exchange(slow.port, request)
        assert comparable(f_answer) == comparable(s_answer), request[:60]
    # The valid forwarded writes and hits above were the fast path's own: only the miss and
    # the five refused requests reached aiohttp.
    assert fast.handovers[0] == 6

    def contents(store: PulseStore) -> list[tuple[str, bytes]]:
        return [(p.path, p.data) for p in store.get_all_pulse_for_path("/")]

    assert contents(fast.store) == contents(slow.store)
    for store in (fast.store, slow.store):
        assert sorted(store.get_all_nodes_for_path("/workerbeats")) == ["t", "t1"]
        assert store.get_pulse("/workerbeats/t1/n-1").data == b"one"  # type: ignore[union-attr]
        assert store.get_pulse("/b/y").version == 7  # type: ignore[union-attr]
        assert store.get_pulse("/big") is None and store.get_pulse("/a") is None
    assert counters(fast) == counters(slow)


def counters(served: Served) -> list[str]:
    """Every metric line but durations and gauges of time or memory: what must agree."""
    return [
        line
        for line in served.app[METRICS_KEY].render().splitlines()
        if not line.startswith("#")
        and "duration" not in line
        and "seconds" not in line
        and "bytes" not in line
        and "memory" not in line
        and "connections" not in line
    ]


async def test_framing_a_parser_could_read_two_ways_is_refused_and_stores_nothing(
    pair: tuple[Served, Served],
) -> None:
    smuggled = put("/v1/pulse/smuggled", b"evil")
    requests = [
        # Content-Length hidden behind a bare LF: the body would be read as a second request
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\nContent-Length: %d\r\n" % len(smuggled)
        + FWD
        + b"\r\n"
        + smuggled,
        b"PUT /v1/pulse/a HTTP/1.1\r\n" + FWD + b"Content-Length: 1\r\n\r\nx",  # no Host
        b"PUT /v1/pulse/a\tb HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n" + FWD + b"\r\nx",
    ]
    for request in requests:
        for served in pair:
            reader, writer = await asyncio.open_connection(HOST, served.port)
            writer.write(request)
            status, _, _ = await read_response(reader)
            writer.close()
            assert status == 400, (request[:50], status)
    for served in pair:
        assert served.store.key_count == 0


async def test_unforwarded_and_other_routes_go_to_aiohttp(node: Served) -> None:
    answers = await exchange(
        node.port,
        put("/v1/pulse/p", b"plain", extra=b""),  # a plain client write: coordinated
        get("/health", extra=b""),
        put("/v1/pulse/q", b"fwd"),  # after the hand-over, aiohttp answers this one too
    )
    assert [a[0] for a in answers] == [204, 200, 204]
    assert node.handovers[0] == 1  # once, at the first request, for good
    assert json.loads(answers[1][2])["status"] == "ok"
    assert node.store.get_pulse("/p").data == b"plain"  # type: ignore[union-attr]
    assert node.store.get_pulse("/q").data == b"fwd"  # type: ignore[union-attr]


async def test_pipelined_and_split_requests_answer_in_order(node: Served) -> None:
    rng = random.Random(7)
    requests, expected = [], []
    for i in range(60):
        value = rng.randbytes(rng.randrange(0, 300))
        requests.append(put(f"/v1/pulse/w/t/n-{i}", value))
        expected.append(value)
    requests.append(get("/v1/pulse/w/t/n-3"))
    for split in (None, 1, 7, 1000):
        answers = await exchange(node.port, *requests, split=split)
        assert [a[0] for a in answers] == [204] * 60 + [200]
        assert answers[-1][2] == expected[3]
    assert node.handovers[0] == 0
    for i, value in enumerate(expected):
        assert node.store.get_pulse(f"/w/t/n-{i}").data == value  # type: ignore[union-attr]


async def test_a_bad_request_mid_pipeline_gets_aiohttps_error_and_the_rest_are_served(
    node: Served,
) -> None:
    answers = await exchange(
        node.port,
        put("/v1/pulse/ok/1", b"1"),
        put("/v1/pulse/bad/../x", b"2"),
        put("/v1/pulse/ok/3", b"3"),
    )
    assert [a[0] for a in answers] == [204, 400, 204]
    assert json.loads(answers[1][2])["error"] == "invalid_path"
    assert node.store.get_all_nodes_for_path("/ok") == ["1", "3"]
    assert node.store.get_all_nodes_for_path("/bad") == []


async def test_a_stalled_body_is_handed_to_aiohttp_and_completes(
    node: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fasthttp, "STALL_SECS", 0.05)
    request = put("/v1/pulse/slow/1", b"x" * 1000)
    reader, writer = await asyncio.open_connection(HOST, node.port)
    try:
        writer.write(request[:-500])
        await poll(lambda: node.handovers[0] == 1)  # past the stall: aiohttp's now
        writer.write(request[-500:] + put("/v1/pulse/slow/2", b"y"))
        assert (await read_response(reader))[0] == 204
        assert (await read_response(reader))[0] == 204
    finally:
        writer.close()
    assert node.store.get_pulse("/slow/1").data == b"x" * 1000  # type: ignore[union-attr]
    assert node.store.get_pulse("/slow/2").data == b"y"  # type: ignore[union-attr]


async def test_a_full_store_is_answered_507_by_aiohttp_and_keeps_its_data() -> None:
    served = await serve(Config(memory_max_bytes=64 * 1024), fast=True)
    try:
        served.store.send_pulse("/keep", b"k" * 40000)
        (answer,) = await exchange(served.port, put("/v1/pulse/huge", b"x" * 40000))
        assert answer[0] == 507
        assert json.loads(answer[2])["error"] == "insufficient_storage"
        assert served.store.get_pulse("/huge") is None
        assert served.store.get_pulse("/keep").data == b"k" * 40000  # type: ignore[union-attr]
    finally:
        await stop(served)


async def test_draining_node_answers_through_aiohttp_with_connection_close(node: Served) -> None:
    node.app[STATE_KEY].draining = True
    (answer,) = await exchange(node.port, put("/v1/pulse/d", b"d"))
    assert answer[0] == 204
    assert answer[1].get("connection", "").lower() == "close"
    assert node.store.get_pulse("/d").data == b"d"  # type: ignore[union-attr]


async def test_close_hands_fast_connections_to_aiohttp_which_drains_them(node: Served) -> None:
    reader, writer = await asyncio.open_connection(HOST, node.port)
    writer.write(put("/v1/pulse/i", b"i"))
    assert (await read_response(reader))[0] == 204
    assert node.handovers[0] == 0
    node.shared.close()  # the listener closes; the open connection becomes aiohttp's
    assert node.handovers[0] == 1
    node.app[STATE_KEY].draining = True
    writer.write(put("/v1/pulse/j", b"j"))  # a request racing the shutdown is answered
    status, headers, _ = await read_response(reader)
    assert status == 204 and headers.get("connection", "").lower() == "close"
    assert node.store.get_pulse("/j").data == b"j"  # type: ignore[union-attr]
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    writer.close()


async def test_idle_connections_are_closed_after_the_keep_alive() -> None:
    served = await serve(Config(http_idle_secs=0.1), fast=True)
    try:
        reader, writer = await asyncio.open_connection(HOST, served.port)
        writer.write(put("/v1/pulse/k", b"k"))
        assert (await read_response(reader))[0] == 204
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()
    finally:
        await stop(served)


async def test_a_half_sent_head_is_answered_408_and_closed_after_the_header_timeout() -> None:
    served = await serve(Config(header_timeout_secs=0.6), fast=True)
    try:
        reader, writer = await asyncio.open_connection(HOST, served.port)
        writer.write(b"PUT /v1/pulse/k HTTP/1.1\r\nHost: x\r\nX-Pmcluster-Forw")
        began = time.monotonic()
        status = (await read_response(reader))[0]
        assert status == 408 and 0.5 < time.monotonic() - began < WAIT
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()
    finally:
        await stop(served)


async def test_connection_cap_counts_http_and_storm_connections() -> None:
    metrics = Metrics()
    cap = ConnectionCap(2, metrics)
    served = await serve(Config(), fast=True, cap=cap)
    try:
        first = await asyncio.open_connection(HOST, served.port)
        first[1].write(put("/v1/pulse/c", b"c"))
        assert (await read_response(first[0]))[0] == 204
        storm = await asyncio.open_connection(HOST, served.port)
        frame = encode_frame(HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse("/s", b"s")), 1))
        storm[1].write(frame)
        assert len(await asyncio.wait_for(storm[0].read(4), WAIT)) == 4  # a reply frame
        assert cap.open == 2
        third = await asyncio.open_connection(HOST, served.port)
        third[1].write(put("/v1/pulse/c3", b"c"))
        status, _, body = await read_response(third[0])
        assert status == 503 and json.loads(body)["error"] == "service_unavailable"
        fourth = await asyncio.open_connection(HOST, served.port)
        fourth[1].write(frame)  # a Storm client past the cap: closed, no reply
        assert await asyncio.wait_for(fourth[0].read(), WAIT) == b""
        assert cap.refused == 2
        assert served.store.get_pulse("/c3") is None
        first[1].write(put("/v1/pulse/c", b"again"))  # the admitted ones keep working
        assert (await read_response(first[0]))[0] == 204
        for _, writer in (first, storm, third, fourth):
            writer.close()
    finally:
        await stop(served)


async def poll(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until `condition` holds."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_batch_split_over_many_reads_is_answered_by_the_fast_path(node: Served) -> None:
    entries = [(f"/s/t/n-{i}", bytes([i]) * 20, 0) for i in range(50)]
    (answer,) = await exchange(node.port, batch(entries), split=97)
    assert answer[0] == 200 and json.loads(answer[2]) == {"stored": 50, "ignored": 0}
    assert node.handovers[0] == 0
    assert len(node.store.get_all_nodes_for_path("/s/t")) == 50


async def test_pipelined_reads_of_a_large_value_stop_when_the_peer_does_not_read() -> None:
    served = await serve(Config(), fast=True)
    try:
        value = b"v" * (1 << 20)
        served.store.send_pulse("/big", value)
        reader, writer = await asyncio.open_connection(HOST, served.port)
        writer.transport.set_write_buffer_limits(high=1 << 22)
        writer.write(get("/v1/pulse/big") * 200)  # 200 MiB of answers; never read
        await writer.drain()
        await poll(lambda: len(served.shared._fast) == 1)
        (conn,) = list(served.shared._fast)
        transport = conn._transport
        assert transport is not None
        await poll(lambda: conn._write_paused)
        await asyncio.sleep(0.1)  # nothing more is produced while paused
        # The answers waiting in the node are bounded by one write piece beyond the
        # transport's high-water mark, not by what the peer asked for.
        assert transport.get_write_buffer_size() < 8 * len(value)
        # and reading them all still gets every answer, in order
        for _ in range(200):
            status, _, body = await read_response(reader)
            assert status == 200 and body == value
        writer.close()
    finally:
        await stop(served)


async def test_a_half_sent_request_then_eof_closes_the_connection(node: Served) -> None:
    for partial in (
        b"PUT /v1/pulse/a HTTP/1.1\r\nHost: x\r\nContent-Le",
        put("/v1/pulse/a", b"xy")[:-1],
    ):
        reader, writer = await asyncio.open_connection(HOST, node.port)
        writer.write(partial)
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(reader.read(), WAIT)  # the node closes (after any answer)
        writer.close()
    await poll(lambda: node.shared.open_connections == 0)
    assert node.store.key_count == 0


@pytest.mark.parametrize("writes", [False, True])
async def test_with_authentication_only_open_writes_take_the_fast_path(
    tmp_path: Path, writes: bool
) -> None:
    jaas = tmp_path / "jaas.conf"
    jaas.write_text('PacemakerDigest {\n  username="storm"\n  password="secret";\n};\n')
    config = Config(auth_method="DIGEST", jaas_path=str(jaas), auth_writes=writes)
    served = await serve(config, fast=True)
    try:
        served.store.send_pulse("/r", b"r")
        answers = await exchange(served.port, put("/v1/pulse/w", b"w"))
        assert answers[0][0] == (401 if writes else 204)
        assert served.handovers[0] == (1 if writes else 0)
        (read,) = await exchange(served.port, get("/v1/pulse/r"))
        assert read[0] == 401  # reads always need credentials
        assert (served.store.get_pulse("/w") is None) is writes
    finally:
        await stop(served)


async def with_coordinator(served: Served, members: list[Member]) -> ClusterClient:
    """Install a coordinator as a clustered node has one: a ring-aware client over `members`
    (the first is this node, reached through its own store)."""
    me = members[0]
    config = Config(host=me.host, port=me.port, request_timeout_secs=0.5)
    local = served.app[LOCAL_BACKEND_KEY]
    membership = FixedMembership(members)
    await membership.start()
    client = ClusterClient(
        config, membership=membership, local=LocalTransport(me.node_id, local, lambda: {})
    )
    await client.start()
    served.app[STATE_KEY].coordinator = CoordinatingBackend(local, client)
    return client


async def test_plain_requests_a_lone_owner_can_answer_take_the_fast_path(node: Served) -> None:
    me = Member(f"{HOST}:{node.port}", HOST, node.port)
    client = await with_coordinator(node, [me])
    try:
        answers = await exchange(
            node.port,
            put("/v1/pulse/plain/a", b"one", extra=b""),
            get("/v1/pulse/plain/a", extra=b""),
            put("/v1/pulse/plain/b", b"two", extra=b"X-Pulse-Version: 5\r\n"),  # versioned
        )
    finally:
        await client.close()
    assert [a[0] for a in answers] == [204, 200, 204]
    assert answers[1][2] == b"one"
    stored = node.store.get_pulse("/plain/a")
    assert stored is not None and answers[1][1]["x-pulse-version"] == str(stored.version)
    # The coordinator's clock gave the version (as on aiohttp's coordinated path): a clock
    # that could only have issued it is set back and checked to go on from it.
    client.clock._wall = lambda: 0
    assert client.clock.now() == stored.version + 1  # the last version it issued: this one
    assert node.handovers[0] == 0  # the versioned write was coordinated by the fast path


async def test_plain_requests_another_owner_must_see_go_to_aiohttp(node: Served) -> None:
    me = Member(f"{HOST}:{node.port}", HOST, node.port)
    peer = Member(f"{HOST}:1", HOST, 1)  # R=2: every key also belongs to it (down)
    client = await with_coordinator(node, [me, peer])
    try:
        (answer,) = await exchange(node.port, get("/v1/pulse/plain/a", extra=b""))
    finally:
        await client.close()
    assert answer[0] == 404  # asked through aiohttp's coordinated read
    assert node.handovers[0] == 1


async def test_plain_writes_other_owners_must_store_are_coordinated_in_order() -> None:
    """R=2 over two live nodes: plain PUTs to one are stored on both owners by the fast path
    (no hand-over to aiohttp), pipelined answers come back in order, and a write the store
    refuses gets aiohttp's error body while the connection goes on."""
    a = await serve(Config(max_message_size=4096, memory_max_bytes=64 * 1024), fast=True)
    b = await serve(Config(max_message_size=4096), fast=True)
    me, peer = (Member(f"{HOST}:{s.port}", HOST, s.port) for s in (a, b))
    client = await with_coordinator(a, [me, peer])
    try:
        a.store.send_pulse("/keep", b"k" * 40000)
        answers = await exchange(
            a.port,
            put("/v1/pulse/plain/a", b"one", extra=b""),
            put("/v1/pulse/plain/b", b"two", extra=b"X-Pulse-Version: 7\r\n"),
            put("/v1/pulse/plain/huge", b"x" * 3000 + b"y" * 1000, extra=b""),
            put("/v1/pulse/plain/c", b"three", extra=b""),
            get("/v1/pulse/plain/b", extra=b""),
        )
        assert [status for status, _, _ in answers] == [204, 204, 204, 204, 200]
        assert answers[4][2] == b"two" and answers[4][1]["x-pulse-version"] == "7"
        for served in (a, b):
            for key, data in (("/plain/a", b"one"), ("/plain/b", b"two"), ("/plain/c", b"three")):
                stored = served.store.get_pulse(key)
                assert stored is not None and stored.data == data
        # A full store on the coordinating owner: 507 with the error body, nothing stored,
        # and the next request on the connection is still answered.
        answers = await exchange(
            a.port,
            put("/v1/pulse/plain/big", b"z" * 4000, extra=b""),
            put("/v1/pulse/plain/big2", b"z" * 4000, extra=b""),
            put("/v1/pulse/plain/big3", b"z" * 4000, extra=b""),
            put("/v1/pulse/plain/big4", b"z" * 4000, extra=b""),
            put("/v1/pulse/plain/big5", b"z" * 4000, extra=b""),
            put("/v1/pulse/plain/big6", b"z" * 4000, extra=b""),
            get("/v1/pulse/plain/a", extra=b""),
        )
        statuses = [status for status, _, _ in answers]
        assert 507 in statuses and statuses[-1] == 200, statuses
        refused = answers[statuses.index(507)]
        assert refused[1]["content-type"] == "application/json"
        assert json.loads(refused[2])["error"] == "insufficient_storage"
        # Only at the two plain GETs (a read both owners must answer is aiohttp's): every
        # write before them on their connection was the fast path's.
        assert a.handovers[0] == 2
    finally:
        await client.close()
        await stop(a)
        await stop(b)


async def test_a_write_waiting_for_a_hung_owner_outlives_the_keep_alive_timer() -> None:
    """The other owner accepts and never answers: the coordinated write is acknowledged by
    this node after the peer timeout, and the connection is not closed as idle meanwhile
    (the keep-alive is shorter than the wait)."""
    served = await serve(Config(http_idle_secs=0.1), fast=True)
    hung = await asyncio.start_server(lambda r, w: None, HOST, 0)
    hung_port = hung.sockets[0].getsockname()[1]
    me = Member(f"{HOST}:{served.port}", HOST, served.port)
    client = await with_coordinator(served, [me, Member(f"{HOST}:{hung_port}", HOST, hung_port)])
    try:
        reader, writer = await asyncio.open_connection(HOST, served.port)
        await asyncio.sleep(0.15)  # the keep-alive clock has nearly run out
        writer.write(put("/v1/pulse/plain/slow", b"s", extra=b""))
        status, _, _ = await read_response(reader)
        assert status == 204
        stored = served.store.get_pulse("/plain/slow")
        assert stored is not None and stored.data == b"s"
        writer.close()
    finally:
        await client.close()
        hung.close()
        await stop(served)
