"""The Storm fast lane: `fastcodec` agrees with the generic codec, and a request answered
inside the read (`StormHandler.answer_now`) gets the very reply, metrics and stored state the
task path (`StormHandler.handle`) gives it, through a local store and through a node's
coordinating backend."""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import pytest

from pmcluster.client import ClusterClient
from pmcluster.config import Config
from pmcluster.errors import ProtocolError
from pmcluster.membership import FixedMembership
from pmcluster.node.coordinator import CoordinatingBackend, LocalNow, LocalTransport
from pmcluster.node.local import LocalBackend
from pmcluster.protocol.backend import NOT_NOW, NowBackend
from pmcluster.protocol.pulse import Pulse
from pmcluster.ring import Member
from pmcluster.store import PulseStore
from pmcluster.storm import fastcodec
from pmcluster.storm.codec import (
    FrameDecoder,
    HBMessage,
    HBMessageData,
    HBNodes,
    HBPulse,
    HBRecords,
    decode_message,
    encode_frame,
    encode_message,
)
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.storm.handler import REQUEST_TYPES, StormHandler
from pmcluster.tools.localcluster import free_port

PATH_TYPES = sorted(REQUEST_TYPES - {T.SEND_PULSE})
SEED = 20260511
MAX_FRAME = 1 << 20


def random_text(rng: random.Random) -> str:
    """Paths Storm might send and paths it should not: ASCII, Unicode, not UTF-8, empty."""
    kind = rng.randrange(5)
    if kind == 0:
        return ""
    if kind == 1:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
        return raw.decode("utf-8", "surrogateescape")
    if kind == 2:
        return "/" + "/".join(rng.choice(["a", "é", "日本", "..", "", "x" * 40]) for _ in range(3))
    return f"/workerbeats/topo-{rng.randrange(10)}/sup-{rng.randrange(10**6)}-6700"


def random_request(rng: random.Random) -> HBMessage:
    mid = rng.choice([0, -1, 1, 2**31 - 1, -(2**31), rng.randrange(-(2**31), 2**31)])
    if rng.random() < 0.4:
        details = rng.randbytes(rng.choice([0, 1, 17, 1024, 5000]))
        return HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse(random_text(rng), details)), mid)
    return HBMessage(rng.choice(PATH_TYPES), HBMessageData(path=random_text(rng)), mid)


def mutate(rng: random.Random, body: bytes) -> bytes:
    """A body one edit away from a valid one: truncated, extended, a byte changed, a field
    added, the message id dropped."""
    kind = rng.randrange(5)
    if kind == 0 and body:
        return body[: rng.randrange(len(body))]
    if kind == 1:
        return body + bytes([rng.randrange(256)])
    if kind == 2 and body:
        i = rng.randrange(len(body))
        return body[:i] + bytes([rng.randrange(256)]) + body[i + 1 :]
    if kind == 3:  # an unknown i32 field 9 before the STOP: generic skips it
        return body[:-1] + struct.pack(">bhi", 8, 9, 7) + b"\x00"
    return body[:-8] + b"\x00"  # no message_id (absent field: Storm's default -1)


def expected(body: bytes) -> fastcodec.FastRequest | str | None:
    """What the generic codec makes of `body`, in `decode_request`'s shape ("error" when it
    refuses it)."""
    try:
        message = decode_message(body)
    except ProtocolError:
        return "error"
    data = message.data
    if message.message_id is None or data is None:
        return None
    if message.type == T.SEND_PULSE and data.pulse is not None and data.pulse.details is not None:
        return T.SEND_PULSE, message.message_id, data.pulse.id, data.pulse.details
    if message.type in PATH_TYPES and data.path is not None:
        return T(message.type), message.message_id, data.path, None
    return None


def test_fast_decoder_agrees_with_the_generic_codec_on_random_and_edge_frames() -> None:
    rng = random.Random(SEED)
    decoded = 0
    for _ in range(4000):
        body = encode_message(random_request(rng))
        if rng.random() < 0.5:
            body = mutate(rng, body)
        fast = fastcodec.decode_request(body)
        want = expected(body)
        if fast is None:
            # The fast decoder may leave a valid frame to the generic codec, never accept
            # one the generic codec refuses; for Storm's own layout it must not decline.
            assert want is None or want == "error" or body != encode_message(decode_message(body))
        else:
            decoded += 1
            assert fast == want, body.hex()
    assert decoded > 1500  # the unmutated half is Storm's own layout


def test_fast_decoder_declines_other_layouts() -> None:
    pulse = HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse("/a/b", b"x")), 5)
    body = encode_message(pulse)
    assert fastcodec.decode_request(body) == (T.SEND_PULSE, 5, "/a/b", b"x")
    # message_id first: valid Thrift, another field order.
    reordered = struct.pack(">bhi", 8, 3, 5) + body[:-8] + b"\x00"
    assert decode_message(reordered) == pulse
    assert fastcodec.decode_request(reordered) is None
    # SEND_PULSE without details, a path request carrying a pulse, a response type.
    assert (
        fastcodec.decode_request(
            encode_message(HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse("/a")), 1))
        )
        is None
    )
    assert (
        fastcodec.decode_request(
            encode_message(HBMessage(T.GET_PULSE, HBMessageData(pulse=HBPulse("/a", b"")), 1))
        )
        is None
    )
    assert (
        fastcodec.decode_request(
            encode_message(HBMessage(T.GET_PULSE_RESPONSE, HBMessageData(path="/a"), 1))
        )
        is None
    )
    assert (
        fastcodec.decode_request(
            encode_message(HBMessage(T.SEND_PULSE, HBMessageData(path="/a"), 1))
        )
        is None
    )
    # A negative string length.
    bad = bytearray(encode_message(HBMessage(T.GET_PULSE, HBMessageData(path="/a"), 1)))
    bad[13:17] = struct.pack(">i", -1)
    assert fastcodec.decode_request(bytes(bad)) is None


def test_fast_encoders_match_the_generic_codec() -> None:
    rng = random.Random(SEED)
    for _ in range(500):
        mid = rng.randrange(-(2**31), 2**31)
        path = random_text(rng)
        data = rng.randbytes(rng.choice([0, 3, 1024]))
        pulses = [
            Pulse(random_text(rng), rng.randbytes(rng.randrange(20)), 1)
            for _ in range(rng.randrange(4))
        ]
        names = [random_text(rng) for _ in range(rng.randrange(4))]
        for rtype in (T.SEND_PULSE_RESPONSE, T.DELETE_PATH_RESPONSE, T.NOT_AUTHORIZED):
            assert fastcodec.encode_empty_reply(rtype, mid) == encode_frame(
                HBMessage(rtype, None, mid)
            )
        assert fastcodec.encode_bool_reply(mid, data != b"") == encode_frame(
            HBMessage(T.EXISTS_RESPONSE, HBMessageData(boolval=data != b""), mid)
        )
        for details in (data, None):
            assert fastcodec.encode_pulse_reply(mid, path, details) == encode_frame(
                HBMessage(T.GET_PULSE_RESPONSE, HBMessageData(pulse=HBPulse(path, details)), mid)
            )
        records = HBRecords(tuple(HBPulse(p.path, p.data) for p in pulses))
        assert fastcodec.encode_records_reply(mid, pulses) == encode_frame(
            HBMessage(T.GET_ALL_PULSE_FOR_PATH_RESPONSE, HBMessageData(records=records), mid)
        )
        assert fastcodec.encode_nodes_reply(mid, names) == encode_frame(
            HBMessage(
                T.GET_ALL_NODES_FOR_PATH_RESPONSE, HBMessageData(nodes=HBNodes(tuple(names))), mid
            )
        )


# ------------------------------------------------------------------ sync path vs task path


class Sizes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def received(self, size: int) -> None:
        self.seen.append(("received", size))

    def sent(self, size: int) -> None:
        self.seen.append(("sent", size))

    def received_many(self, sizes: Sequence[int]) -> None:
        self.seen.extend(("received", size) for size in sizes)


def script() -> list[HBMessage]:
    """Every request type: hits, misses, deletes, invalid paths, the root."""
    out: list[HBMessage] = []
    mid = 0

    def add(mtype: T, data: HBMessageData) -> None:
        nonlocal mid
        mid += 1
        out.append(HBMessage(mtype, data, mid))

    for i in range(6):
        add(
            T.SEND_PULSE, HBMessageData(pulse=HBPulse(f"/wb/t{i % 2}/w{i}", bytes([i]) * (i * 100)))
        )
    add(T.SEND_PULSE, HBMessageData(pulse=HBPulse("/wb/t0/w0", b"newer")))
    # Sorted by path string, "/wb/t0-x" comes before "/wb/t0/...": not the store's order.
    add(T.SEND_PULSE, HBMessageData(pulse=HBPulse("/wb/t0-x/w", b"dash")))
    for path in (
        "/wb/t0/w0",
        "/wb/t1/w1",
        "/wb/none",
        "/wb",
        "/",
        "relative",
        "/a//b",
        "/wb/t0/w0/",
    ):
        for mtype in (T.GET_PULSE, T.EXISTS, T.GET_ALL_NODES_FOR_PATH, T.GET_ALL_PULSE_FOR_PATH):
            add(mtype, HBMessageData(path=path))
    add(T.SEND_PULSE, HBMessageData(pulse=HBPulse("/", b"root")))
    add(T.SEND_PULSE, HBMessageData(pulse=HBPulse("no/slash", b"x")))
    add(T.DELETE_PULSE_ID, HBMessageData(path="/wb/t0/w2"))
    add(T.DELETE_PATH, HBMessageData(path="/wb/t1"))
    add(T.CREATE_PATH, HBMessageData(path="/wb/t9"))
    for path in ("/wb/t0/w2", "/wb/t1/w1", "/wb", "/wb/t1"):
        for mtype in (T.GET_PULSE, T.EXISTS, T.GET_ALL_NODES_FOR_PATH, T.GET_ALL_PULSE_FOR_PATH):
            add(mtype, HBMessageData(path=path))
    add(T.SEND_PULSE, HBMessageData(pulse=HBPulse("/wb/t1/w1", b"after delete")))
    add(T.GET_ALL_PULSE_FOR_PATH, HBMessageData(path="/wb"))
    return out


async def run(handler: StormHandler, request: HBMessage, authorized: bool, fast: bool) -> bytes:
    """The reply frame: through `answer_now` when `fast` (it must answer), else `handle`."""
    body = encode_message(request)
    decoded = fastcodec.decode_request(body)
    if fast and decoded is not None:
        mtype, mid, raw, details = decoded
        reply = handler.answer_now(mtype, raw, details, mid, authorized)
        if reply is not None:
            return reply
        assert mtype in (T.DELETE_PATH, T.DELETE_PULSE_ID, T.CREATE_PATH), request
    return encode_frame(await handler.handle(request, authorized_reader=authorized))


@dataclass
class Side:
    handler: StormHandler
    store: PulseStore
    sizes: Sizes


Make = Callable[[], AsyncIterator[Side]]


async def compare(sides: tuple[Side, Side], writes_need_auth: bool) -> None:
    fast, slow = sides
    for handler in (fast.handler, slow.handler):
        handler.writes_need_auth = writes_need_auth
    for authorized in (True, False):
        for request in script():
            a = await run(fast.handler, request, authorized, True)
            b = await run(slow.handler, request, authorized, False)
            assert a == b, request
    assert fast.handler.metrics.snapshot() == slow.handler.metrics.snapshot()
    assert fast.sizes.seen == slow.sizes.seen
    listing = [(p.path, p.data) for p in fast.store.get_all_pulse_for_path("/")]
    assert listing == [(p.path, p.data) for p in slow.store.get_all_pulse_for_path("/")]
    assert listing  # the script stored something


def fixed_now(backend: NowBackend) -> Callable[[bool], NowBackend]:
    return lambda is_read: backend


@pytest.mark.parametrize("writes_need_auth", [False, True])
async def test_local_store_sync_replies_equal_task_replies(writes_need_auth: bool) -> None:
    sides = []
    for now in (True, False):
        store, sizes = PulseStore(), Sizes()
        local = LocalBackend(store)
        resolve_now = fixed_now(LocalNow(local)) if now else None
        handler = StormHandler(local, resolve_now=resolve_now, pulse_sizes=sizes)
        sides.append(Side(handler, store, sizes))
    await compare((sides[0], sides[1]), writes_need_auth)


@dataclass
class Node:
    backend: CoordinatingBackend
    client: ClusterClient
    store: PulseStore


@pytest.fixture
async def single_nodes() -> AsyncIterator[list[Node]]:
    """Two independent single-node clusters (no HTTP needed: the node owns every key)."""
    nodes: list[Node] = []
    try:
        for _ in range(2):
            port = free_port()
            nodes.append(await coordinating([Member(f"127.0.0.1:{port}", "127.0.0.1", port)]))
        yield nodes
    finally:
        for node in nodes:
            await node.client.close()


async def coordinating(members: list[Member], replication: int = 2) -> Node:
    """A coordinating node of `members` (itself first). No grace window: a client that has
    just started otherwise reads every member for one window, so nothing is its alone."""
    me = members[0]
    config = Config(
        host=me.host,
        port=me.port,
        replication=replication,
        request_timeout_secs=0.5,
        grace_secs=0.0,
    )
    store = PulseStore()
    local = LocalBackend(store)
    transport = LocalTransport(me.node_id, local, lambda: {})
    membership = FixedMembership(members)
    await membership.start()
    client = ClusterClient(config, membership=membership, local=transport)
    await client.start()
    return Node(CoordinatingBackend(local, client), client, store)


@pytest.mark.parametrize("writes_need_auth", [False, True])
async def test_coordinating_sync_replies_equal_task_replies(
    single_nodes: list[Node], writes_need_auth: bool
) -> None:
    sides = []
    for node, now in zip(single_nodes, (True, False), strict=True):
        sizes = Sizes()
        backend = node.backend
        resolve_now = fixed_now(backend) if now else None
        handler = StormHandler(backend, resolve_now=resolve_now, pulse_sizes=sizes)
        sides.append(Side(handler, node.store, sizes))
    await compare((sides[0], sides[1]), writes_need_auth)
    fast, slow = single_nodes
    assert fast.client.stats == slow.client.stats


async def test_sync_write_retries_above_a_held_version_like_the_client(
    single_nodes: list[Node],
) -> None:
    """A key holding a version ahead of the clock: the write lands above it, as the async
    client's write does (version feedback, pmcluster.client.versionclock)."""
    ahead = 2**62
    for node in single_nodes:
        node.store.send_pulse("/k", b"old", ahead)
    fast, slow = single_nodes
    assert fast.backend.send_pulse_now("/k", b"new")
    await slow.backend.send_pulse("/k", b"new")
    for node in single_nodes:
        pulse = node.store.get_pulse("/k")
        assert pulse is not None and pulse.data == b"new" and pulse.version > ahead
        assert node.client.stats["version_retries"] == 1


async def test_not_now_when_another_node_owns_the_key() -> None:
    """Two members: with R=2 every key has a remote owner, so nothing is answered at once;
    with R=1 exactly the keys this node owns are (listings always need the other node)."""
    peer = Member("127.0.0.1:1", "127.0.0.1", 1)  # never asked by the `*_now` calls
    port = free_port()
    me = Member(f"127.0.0.1:{port}", "127.0.0.1", port)
    for replication in (2, 1):
        node = await coordinating([me, peer], replication)
        try:
            backend, ring = node.backend, node.client.ring
            assert ring is not None
            seen = set()
            for i in range(50):
                key = f"/k/{i}"
                alone = ring.owners(key) == (me,)
                seen.add(alone)
                assert backend.send_pulse_now(key, b"v") is alone
                assert (node.store.get_pulse(key) is not None) is alone
                assert (backend.get_pulse_now(key) is NOT_NOW) is not alone
                assert (backend.exists_now(key) is NOT_NOW) is not alone
            assert seen == ({False} if replication == 2 else {False, True})
            assert backend.get_all_nodes_for_path_now("/k") is NOT_NOW
            assert backend.get_all_pulse_for_path_now("/k") is NOT_NOW
        finally:
            await node.client.close()


def test_split_yields_the_frames_feed_decodes_whatever_the_chunking() -> None:
    rng = random.Random(SEED)
    for _ in range(200):
        messages = [random_request(rng) for _ in range(rng.randrange(1, 8))]
        stream = b"".join(encode_frame(m) for m in messages)
        bad = rng.random() < 0.3
        if bad:  # a frame header the decoder must refuse, after the good frames
            stream += struct.pack(">i", rng.choice([-1, MAX_FRAME + 1]))
        reference, splitter = FrameDecoder(MAX_FRAME), FrameDecoder(MAX_FRAME)
        got: list[HBMessage] = []
        errors = 0
        cuts = sorted(rng.sample(range(len(stream)), min(3, len(stream))))
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            bodies, error = splitter.split(stream[a:b])
            got += [decode_message(body) for body in bodies]
            errors += error is not None
        want: list[HBMessage] = []
        with contextlib.suppress(ProtocolError):
            for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
                for message in reference.feed(stream[a:b]):
                    want.append(message)
        assert got == want == messages
        assert errors == (1 if bad else 0)
        assert splitter.split(b"")[1] is not None if bad else splitter.buffered == 0


async def test_a_run_of_pipelined_writes_is_answered_as_each_would_be_alone(
    single_nodes: list[Node],
) -> None:
    """`send_pulses_now` (one pass over a read's SEND_PULSEs) against `answer_now` per frame:
    same replies, metrics, sizes, store and client stats; a key held ahead of the clock is
    retried above; the run stops before an invalid path, which then goes one by one."""
    ahead = 2**62
    for node in single_nodes:
        node.store.send_pulse("/wb/t/ahead", b"old", ahead)
    requests = [(f"/wb/t/w{i}", bytes([i]) * (10 * i)) for i in range(40)]
    requests[7] = ("/wb/t/ahead", b"new")
    requests[30] = ("no/slash", b"bad")
    sides = []
    for node in single_nodes:
        sizes = Sizes()
        backend = node.backend
        handler = StormHandler(backend, resolve_now=fixed_now(backend), pulse_sizes=sizes)
        sides.append(Side(handler, node.store, sizes))
    batched, single = sides
    fast_requests = []
    for mid, (path, data) in enumerate(requests):
        body = encode_message(
            HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse(path, data)), mid)
        )
        decoded = fastcodec.decode_request(body)
        assert decoded is not None
        fast_requests.append(decoded)
    # The first call finds the ring not yet known to be this node's alone: one by one.
    first = fast_requests[0]
    assert batched.handler.send_pulses_now(fast_requests[:1], True) == []
    replies_a = [batched.handler.answer_now(first[0], first[2], first[3], first[1], True)]
    rest = fast_requests[1:]
    runs = []
    while rest:
        replies = batched.handler.send_pulses_now(rest, True)
        runs.append(len(replies))
        if not replies:  # the invalid path: alone, as the server does
            one = rest[0]
            replies = [batched.handler.answer_now(one[0], one[2], one[3], one[1], True)]
        replies_a += replies
        rest = rest[len(replies) :]
    replies_b = [single.handler.answer_now(r[0], r[2], r[3], r[1], True) for r in fast_requests]
    assert replies_a == replies_b and len(replies_a) == 40
    assert runs == [29, 0, 9]  # two runs in one pass each, around the invalid path
    assert batched.handler.metrics.snapshot() == single.handler.metrics.snapshot()
    assert batched.handler.metrics.invalid_paths == 1
    assert batched.sizes.seen == single.sizes.seen
    for node in single_nodes:
        pulse = node.store.get_pulse("/wb/t/ahead")
        assert pulse is not None and pulse.data == b"new" and pulse.version > ahead
        assert node.client.stats["version_retries"] == 1
    listing = [(p.path, p.data) for p in batched.store.get_all_pulse_for_path("/")]
    assert listing == [(p.path, p.data) for p in single.store.get_all_pulse_for_path("/")]
    assert len(listing) == 39


@pytest.mark.parametrize("authorized", [False, True])
async def test_pipelined_heartbeats_need_auth_when_writes_do(
    single_nodes: list[Node], authorized: bool
) -> None:
    """`send_pulses_now` (the server's batch of pipelined SEND_PULSEs) honours
    pmcluster.auth.writes like `handle`: an unauthenticated connection stores nothing."""
    node = single_nodes[0]
    handler = StormHandler(node.backend, resolve_now=fixed_now(node.backend), writes_need_auth=True)
    # The first write learns that this node owns every key (see the test above).
    assert handler.answer_now(T.SEND_PULSE, "/wb/warm", b"x", 0, True) is not None
    run_ = [(T.SEND_PULSE, mid, f"/wb/t0/w{mid}", b"beat") for mid in (1, 2, 3)]
    replies = handler.send_pulses_now(run_, authorized_reader=authorized)
    stored = sorted(p.path for p in node.store.get_all_pulse_for_path("/wb/t0"))
    if authorized:
        assert len(replies) == 3 and stored == ["/wb/t0/w1", "/wb/t0/w2", "/wb/t0/w3"]
    else:
        assert replies == [] and stored == []
    assert handler.metrics.requests["SEND_PULSE"] == (4 if authorized else 1)
