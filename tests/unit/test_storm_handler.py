"""StormHandler over a real PulseStore (LocalBackend): reply shapes, component-aware listing,
invalid paths answered as empty, auth gating, and the requests that must close a connection."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pmcluster.errors import ClusterUnavailable, ProtocolError
from pmcluster.node.local import LocalBackend
from pmcluster.store import PulseStore
from pmcluster.storm.codec import (
    FrameDecoder,
    HBMessage,
    HBMessageData,
    HBNodes,
    HBPulse,
    HBRecords,
)
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.storm.handler import READ_TYPES, WRITE_TYPES, StormHandler

W = "/workerbeats/wc-3-1718000000/9c1de2-10.0.0.5-6700"


@pytest.fixture
def store() -> PulseStore:
    return PulseStore()


@pytest.fixture
def handler(store: PulseStore) -> StormHandler:
    return StormHandler(LocalBackend(store))


def path_req(mtype: T, path: str, mid: int | None = 1) -> HBMessage:
    return HBMessage(mtype, HBMessageData(path=path), mid)


def pulse_req(path: str, data: bytes, mid: int | None = 1) -> HBMessage:
    return HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse(path, data)), mid)


async def test_send_then_get_pulse(handler: StormHandler, store: PulseStore) -> None:
    assert await handler.handle(pulse_req(W, b"\x1f\x8bhb", 7)) == HBMessage(
        T.SEND_PULSE_RESPONSE, None, 7
    )
    stored = store.get_pulse(W)
    assert stored is not None and stored.data == b"\x1f\x8bhb"
    reply = await handler.handle(path_req(T.GET_PULSE, W, 8))
    assert reply == HBMessage(
        T.GET_PULSE_RESPONSE, HBMessageData(pulse=HBPulse(W, b"\x1f\x8bhb")), 8
    )


async def test_send_pulse_replaces_value(handler: StormHandler) -> None:
    await handler.handle(pulse_req(W, b"old"))
    await handler.handle(pulse_req(W, b"new"))
    reply = await handler.handle(path_req(T.GET_PULSE, W))
    assert reply.data == HBMessageData(pulse=HBPulse(W, b"new"))


async def test_get_pulse_miss_keeps_id_without_details(handler: StormHandler) -> None:
    reply = await handler.handle(path_req(T.GET_PULSE, W, 3))
    assert reply == HBMessage(T.GET_PULSE_RESPONSE, HBMessageData(pulse=HBPulse(W, None)), 3)


async def test_empty_pulse_is_stored_and_distinct_from_a_miss(handler: StormHandler) -> None:
    await handler.handle(pulse_req(W, b""))
    reply = await handler.handle(path_req(T.GET_PULSE, W))
    assert reply.data == HBMessageData(pulse=HBPulse(W, b""))


async def test_message_id_absent_is_echoed_as_minus_one(handler: StormHandler) -> None:
    reply = await handler.handle(path_req(T.EXISTS, W, None))
    assert reply.message_id == -1
    reply = await handler.handle(pulse_req(W, b"x", None))
    assert reply == HBMessage(T.SEND_PULSE_RESPONSE, None, -1)


async def test_exists_is_exact_key_only(handler: StormHandler) -> None:
    await handler.handle(pulse_req(W, b"x"))
    assert (await handler.handle(path_req(T.EXISTS, W, 4))) == HBMessage(
        T.EXISTS_RESPONSE, HBMessageData(boolval=True), 4
    )
    parent = W.rsplit("/", 1)[0]
    reply = await handler.handle(path_req(T.EXISTS, parent, 5))
    assert reply == HBMessage(T.EXISTS_RESPONSE, HBMessageData(boolval=False), 5)


async def test_listing_is_component_aware(handler: StormHandler) -> None:
    for path in ("/workerbeats/t1/a", "/workerbeats/t1/b", "/workerbeats/t10/c", "/other/x"):
        await handler.handle(pulse_req(path, b"x"))
    reply = await handler.handle(path_req(T.GET_ALL_NODES_FOR_PATH, "/workerbeats/t1", 6))
    assert reply == HBMessage(
        T.GET_ALL_NODES_FOR_PATH_RESPONSE, HBMessageData(nodes=HBNodes(("a", "b"))), 6
    )
    reply = await handler.handle(path_req(T.GET_ALL_NODES_FOR_PATH, "/workerbeats"))
    assert reply.data == HBMessageData(nodes=HBNodes(("t1", "t10")))
    reply = await handler.handle(path_req(T.GET_ALL_NODES_FOR_PATH, "/"))
    assert reply.data == HBMessageData(nodes=HBNodes(("other", "workerbeats")))
    reply = await handler.handle(path_req(T.GET_ALL_NODES_FOR_PATH, "/nothing"))
    assert reply.data == HBMessageData(nodes=HBNodes(()))


async def test_get_all_pulse_for_path_answers_full_paths(handler: StormHandler) -> None:
    await handler.handle(pulse_req("/w/t1/a", b"1"))
    await handler.handle(pulse_req("/w/t1/b/c", b"2"))
    await handler.handle(pulse_req("/w/t10/a", b"3"))
    reply = await handler.handle(path_req(T.GET_ALL_PULSE_FOR_PATH, "/w/t1", 9))
    assert reply.type == T.GET_ALL_PULSE_FOR_PATH_RESPONSE and reply.message_id == 9
    assert reply.data is not None and reply.data.records is not None
    assert sorted(reply.data.records.pulses, key=lambda p: p.id) == [
        HBPulse("/w/t1/a", b"1"),
        HBPulse("/w/t1/b/c", b"2"),
    ]
    reply = await handler.handle(path_req(T.GET_ALL_PULSE_FOR_PATH, "/none"))
    assert reply.data == HBMessageData(records=HBRecords(()))


async def test_delete_path_is_recursive_and_replies_without_data(
    handler: StormHandler, store: PulseStore
) -> None:
    for path in ("/w/t1/a", "/w/t1/b/c", "/w/t10/a"):
        await handler.handle(pulse_req(path, b"x"))
    assert (await handler.handle(path_req(T.DELETE_PATH, "/w/t1", 2))) == HBMessage(
        T.DELETE_PATH_RESPONSE, None, 2
    )
    assert [p.path for p in store.get_all_pulse_for_path("/w")] == ["/w/t10/a"]


async def test_delete_pulse_id_is_exact(handler: StormHandler, store: PulseStore) -> None:
    await handler.handle(pulse_req("/w/a", b"x"))
    await handler.handle(pulse_req("/w/a/b", b"y"))
    reply = await handler.handle(path_req(T.DELETE_PULSE_ID, "/w/a", 3))
    assert reply == HBMessage(T.DELETE_PULSE_ID_RESPONSE, None, 3)
    assert store.get_pulse("/w/a") is None
    assert store.get_pulse("/w/a/b") is not None


async def test_create_path_has_no_effect(handler: StormHandler, store: PulseStore) -> None:
    reply = await handler.handle(path_req(T.CREATE_PATH, "/workerbeats", 4))
    assert reply == HBMessage(T.CREATE_PATH_RESPONSE, None, 4)
    assert store.key_count == 0


async def test_trailing_slash_is_normalised_and_id_echoed_as_sent(handler: StormHandler) -> None:
    await handler.handle(pulse_req("/w/a/", b"x"))
    reply = await handler.handle(path_req(T.GET_PULSE, "/w/a/"))
    assert reply.data == HBMessageData(pulse=HBPulse("/w/a/", b"x"))
    reply = await handler.handle(path_req(T.GET_PULSE, "/w/a"))
    assert reply.data == HBMessageData(pulse=HBPulse("/w/a", b"x"))


async def test_storm_punctuation_round_trips(handler: StormHandler) -> None:
    path = "/workerbeats/top(1)+$[x]%~,é-3-17/node-6700"
    await handler.handle(pulse_req(path, b"p"))
    reply = await handler.handle(path_req(T.GET_PULSE, path))
    assert reply.data == HBMessageData(pulse=HBPulse(path, b"p"))


INVALID = ["", "relative/path", "/a//b", "/a/../b", "/a/./b", "/a\x00b", "/bad/\udcff"]


@pytest.mark.parametrize("bad", INVALID)
async def test_invalid_path_gets_the_empty_reply_of_each_type(
    handler: StormHandler, store: PulseStore, bad: str
) -> None:
    await handler.handle(pulse_req("/keep/me", b"x"))
    expected: dict[T, HBMessageData | None] = {
        T.GET_PULSE: HBMessageData(pulse=HBPulse(bad)),
        T.EXISTS: HBMessageData(boolval=False),
        T.GET_ALL_NODES_FOR_PATH: HBMessageData(nodes=HBNodes()),
        T.GET_ALL_PULSE_FOR_PATH: HBMessageData(records=HBRecords()),
        T.DELETE_PATH: None,
        T.DELETE_PULSE_ID: None,
        T.CREATE_PATH: None,
    }
    for mtype, data in expected.items():
        reply = await handler.handle(path_req(mtype, bad, 11))
        assert reply == HBMessage(T(mtype + 1), data, 11)
    reply = await handler.handle(pulse_req(bad, b"y", 12))
    assert reply == HBMessage(T.SEND_PULSE_RESPONSE, None, 12)
    assert [p.path for p in store.get_all_pulse_for_path("/")] == ["/keep/me"]
    assert handler.metrics.invalid_paths == 8


async def test_root_is_not_a_key_but_can_be_listed(handler: StormHandler) -> None:
    reply = await handler.handle(pulse_req("/", b"x"))
    assert reply.type == T.SEND_PULSE_RESPONSE
    reply = await handler.handle(path_req(T.GET_PULSE, "/"))
    assert reply.data == HBMessageData(pulse=HBPulse("/"))
    assert handler.metrics.invalid_paths == 2


async def test_unauthorized_connection_cannot_read_but_can_write(store: PulseStore) -> None:
    handler = StormHandler(LocalBackend(store))
    for mtype in READ_TYPES:
        reply = await handler.handle(path_req(mtype, "/a", 21), authorized_reader=False)
        assert reply == HBMessage(T.NOT_AUTHORIZED, None, 21)
    reply = await handler.handle(pulse_req("/a", b"x", 22), authorized_reader=False)
    assert reply == HBMessage(T.SEND_PULSE_RESPONSE, None, 22)
    assert store.get_pulse("/a") is not None
    reply = await handler.handle(path_req(T.DELETE_PATH, "/a", 23), authorized_reader=False)
    assert reply.type == T.DELETE_PATH_RESPONSE
    assert store.get_pulse("/a") is None
    assert handler.metrics.not_authorized == len(READ_TYPES)


async def test_writes_need_auth_refuses_writes_too(store: PulseStore) -> None:
    handler = StormHandler(LocalBackend(store), writes_need_auth=True)
    store.send_pulse("/a", b"x")
    for mtype in WRITE_TYPES - {T.SEND_PULSE}:
        reply = await handler.handle(path_req(mtype, "/a", 31), authorized_reader=False)
        assert reply == HBMessage(T.NOT_AUTHORIZED, None, 31)
    reply = await handler.handle(pulse_req("/b", b"x", 32), authorized_reader=False)
    assert reply == HBMessage(T.NOT_AUTHORIZED, None, 32)
    assert [p.path for p in store.get_all_pulse_for_path("/")] == ["/a"]
    reply = await handler.handle(pulse_req("/b", b"x", 33), authorized_reader=True)
    assert reply == HBMessage(T.SEND_PULSE_RESPONSE, None, 33)


BAD_REQUESTS = {
    **{f"{t.name} as request": HBMessage(t, None, 1) for t in T if t.name.endswith("_RESPONSE")},
    "NOT_AUTHORIZED as request": HBMessage(T.NOT_AUTHORIZED, None, 1),
    "unknown type": HBMessage(99, HBMessageData(path="/a"), 1),
    "negative type": HBMessage(-1, HBMessageData(path="/a"), 1),
    "CONTROL_MESSAGE": HBMessage(T.CONTROL_MESSAGE, HBMessageData(message_blob=b"\xff\x36")),
    "SASL_MESSAGE_TOKEN": HBMessage(T.SASL_MESSAGE_TOKEN, HBMessageData(message_blob=b"\xfe\x0c")),
    "SEND_PULSE without data": HBMessage(T.SEND_PULSE, None, 1),
    "SEND_PULSE with a path": HBMessage(T.SEND_PULSE, HBMessageData(path="/a"), 1),
    "SEND_PULSE without details": HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse("/a")), 1),
    "GET_PULSE without data": HBMessage(T.GET_PULSE, None, 1),
    "GET_PULSE with a pulse": HBMessage(T.GET_PULSE, HBMessageData(pulse=HBPulse("/a", b"")), 1),
    "DELETE_PATH with boolval": HBMessage(T.DELETE_PATH, HBMessageData(boolval=True), 1),
}


@pytest.mark.parametrize("request_", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
async def test_bad_request_is_a_protocol_error(
    handler: StormHandler, store: PulseStore, request_: HBMessage
) -> None:
    store.send_pulse("/a", b"keep")
    with pytest.raises(ProtocolError):
        await handler.handle(request_)
    pulse = store.get_pulse("/a")
    assert pulse is not None and pulse.data == b"keep"


async def test_requests_are_counted_by_type(handler: StormHandler) -> None:
    await handler.handle(pulse_req("/a", b"x"))
    await handler.handle(pulse_req("/b", b"x"))
    await handler.handle(path_req(T.GET_PULSE, "/a"))
    assert handler.metrics.snapshot()["requests"] == {"SEND_PULSE": 2, "GET_PULSE": 1}


def decode_frame_body(frame: bytes) -> HBMessage:
    [message] = FrameDecoder().feed(frame)
    return message


class ThenCoordinator:
    """What the handler needs of a node's coordinator for `send_pulse_then`: its writes with
    their outcome callbacks (called by the test), and no answers without waiting."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, bytes, Callable[[BaseException | None], None]]] = []

    def send_pulse_now(self, path: str, data: bytes) -> bool:
        return False

    def send_pulse_then(
        self, key: str, data: bytes, then: Callable[[BaseException | None], None]
    ) -> bool:
        self.writes.append((key, data, then))
        return True


def test_send_pulse_then_replies_once_the_owners_have_it(store: PulseStore) -> None:
    coordinator = ThenCoordinator()
    handler = StormHandler(LocalBackend(store), resolve_now=lambda _: coordinator)
    outcomes: list[bytes | BaseException] = []
    assert handler.send_pulse_then("/w/t/x-1/", b"hb", 9, True, outcomes.append)
    [(key, data, stored)] = coordinator.writes
    assert (key, data) == ("/w/t/x-1", b"hb")  # the key normalised as `handle` would
    assert outcomes == []  # no reply before the owners have it
    stored(None)
    [reply] = outcomes
    assert isinstance(reply, bytes)
    assert decode_frame_body(reply) == HBMessage(T.SEND_PULSE_RESPONSE, None, 9)
    assert handler.metrics.requests["SEND_PULSE"] == 1
    # A failed write gives the same error `handle` would raise, not a reply.
    assert handler.send_pulse_then("/w/t/x-2", b"hb", 10, True, outcomes.append)
    failure = ClusterUnavailable("no owner answered")
    coordinator.writes[-1][2](failure)
    assert outcomes[-1] is failure
    # Not for it (nothing done, nothing counted): an invalid path, writes needing auth.
    assert not handler.send_pulse_then("relative", b"hb", 11, True, outcomes.append)
    handler.writes_need_auth = True
    assert not handler.send_pulse_then("/w/t/x-3", b"hb", 12, False, outcomes.append)
    assert len(coordinator.writes) == 2 and handler.metrics.requests["SEND_PULSE"] == 2
