"""One Storm request → one Storm reply, answered by a `Backend`.

Reply shapes follow the spec exactly: every reply echoes `message_id` (-1 when the request had
none); replies with nothing to say omit `data`; a GET_PULSE miss still carries `pulse.id` (the
requested path) without `details`; GET_ALL_PULSE_FOR_PATH answers `HBRecords` with full paths
as ids; GET_ALL_NODES_FOR_PATH answers child names.

Storm has no error reply, so:
- an invalid path (relative, `..`, empty component, not UTF-8, ...) is logged and counted, and
  gets the normal empty answer of its type (absent / false / no children / no records; a write
  is acknowledged but stores nothing): the connection and the caller keep working;
- a request that breaks the wire contract (a `*_RESPONSE`, unknown, CONTROL or SASL type sent
  here, SEND_PULSE without pulse or details, a path request without its path) raises
  `ProtocolError`, which closes that one connection;
- backend failures (`ClusterUnavailable`, ...) propagate: the server closes the connection so
  Storm's client retries elsewhere rather than trusting a made-up answer.

`answer_now` is the same mapping for requests whose answer needs no waiting (`NowBackend`):
it returns the encoded reply frame, or None when the request must take `handle`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from pmcluster.errors import InvalidPath, ProtocolError
from pmcluster.protocol.backend import NOT_NOW, Backend, NowBackend
from pmcluster.protocol.paths import normalize, normalize_key
from pmcluster.storm import fastcodec
from pmcluster.storm.codec import (
    HBMessage,
    HBMessageData,
    HBNodes,
    HBPulse,
    HBRecords,
    encode_frame,
)
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.storm.fastcodec import FastRequest
from pmcluster.storm.metrics import StormMetrics

__all__ = [
    "READ_TYPES",
    "REQUEST_TYPES",
    "WRITE_TYPES",
    "BackendResolver",
    "NowResolver",
    "PulseSizes",
    "StormHandler",
]

log = logging.getLogger(__name__)

READ_TYPES = frozenset({T.GET_PULSE, T.EXISTS, T.GET_ALL_NODES_FOR_PATH, T.GET_ALL_PULSE_FOR_PATH})
WRITE_TYPES = frozenset({T.SEND_PULSE, T.DELETE_PATH, T.DELETE_PULSE_ID, T.CREATE_PATH})
REQUEST_TYPES = READ_TYPES | WRITE_TYPES

_LOG_FIRST = 10  # invalid-path warnings logged in full; after that one in _LOG_EVERY
_LOG_EVERY = 1000


BackendResolver = Callable[[bool], Backend]
"""`resolve(is_read)` -> the backend that answers this request, looked up per request."""

NowResolver = Callable[[bool], NowBackend | None]
"""`resolve_now(is_read)` -> what may answer this request without waiting (None: nothing)."""


ThenWrite = Callable[[str, bytes, Callable[[BaseException | None], None]], bool]
"""A coordinator's `send_pulse_then(key, data, then)`: the write, its outcome passed to
`then`, without a task of its own; False when it must go the awaited way
(`Backend.send_pulse`)."""

StormOutcome = Callable[[bytes | BaseException], None]
"""What `StormHandler.send_pulse_then` calls once: the encoded reply, or the error that
`handle` would raise."""


class PulseSizes(Protocol):
    """Where pulse sizes are reported (the node's `Metrics`: the pulse metrics)."""

    def received(self, size: int) -> None: ...

    def received_many(self, sizes: Sequence[int]) -> None: ...

    def sent(self, size: int) -> None: ...


def _type_name(mtype: int) -> str:
    return mtype.name if isinstance(mtype, T) else f"unknown type {mtype}"


class StormHandler:
    """Maps decoded requests to replies; one instance serves every connection.

    `handle(request, authorized_reader=...)`: reads on a connection that is not an authorized
    reader get NOT_AUTHORIZED; with `writes_need_auth` (pmcluster.auth.writes) writes and
    deletes do too (Storm leaves them open).

    The backend is either fixed (`backend`) or looked up for every request by `resolve`
    (a node's coordinating backend only exists once it has joined the cluster, and reads may
    be answered by another backend than writes: `pmcluster.storm.read.mode`).
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        resolve: BackendResolver | None = None,
        resolve_now: NowResolver | None = None,
        writes_need_auth: bool = False,
        metrics: StormMetrics | None = None,
        pulse_sizes: PulseSizes | None = None,
    ) -> None:
        if resolve is None:
            if backend is None:
                raise ValueError("StormHandler needs a backend or a resolver")
            fixed = backend
            resolve = lambda is_read: fixed  # noqa: E731
        self._resolve = resolve
        self._resolve_now = resolve_now
        self.writes_need_auth = writes_need_auth
        self.metrics = metrics if metrics is not None else StormMetrics()
        self.pulse_sizes = pulse_sizes

    async def handle(self, request: HBMessage, *, authorized_reader: bool = True) -> HBMessage:
        """The reply to `request`; raises `ProtocolError` for a request that is not one."""
        mtype = request.type
        if mtype not in REQUEST_TYPES:
            raise ProtocolError(f"{_type_name(mtype)} is not a request type")
        assert isinstance(mtype, T)
        raw = self._raw_path(mtype, request.data)
        mid = -1 if request.message_id is None else request.message_id
        self.metrics.count_request(mtype.name)
        if not authorized_reader and (mtype in READ_TYPES or self.writes_need_auth):
            self.metrics.not_authorized += 1
            return HBMessage(T.NOT_AUTHORIZED, None, mid)
        reply = T(mtype + 1)
        try:
            data = await self._answer(mtype, raw, request.data)
        except InvalidPath as exc:
            self._invalid_path(mtype, exc)
            data = _empty(mtype, raw)
        return HBMessage(reply, data, mid)

    def answer_now(
        self, mtype: T, raw: str, details: bytes | None, mid: int, authorized_reader: bool
    ) -> bytes | None:
        """The encoded reply frame of a request decoded by `fastcodec.decode_request`, when it
        can be answered without waiting; None (nothing done, nothing counted) otherwise.

        Same replies, errors and metrics as `handle`; an error other than `InvalidPath`
        propagates (the server closes the connection, as for `handle`)."""
        is_read = mtype in READ_TYPES
        name = _NAMES[mtype]
        if not authorized_reader and (is_read or self.writes_need_auth):
            self.metrics.count_request(name)
            self.metrics.not_authorized += 1
            return fastcodec.encode_empty_reply(T.NOT_AUTHORIZED, mid)
        resolve_now = self._resolve_now
        now = resolve_now(is_read) if resolve_now is not None else None
        if now is None or mtype not in _NOW_TYPES:
            return None
        try:
            if mtype == _SEND_PULSE:  # the hot one, inline
                assert details is not None
                if not now.send_pulse_now(raw, details):
                    return None
                if self.pulse_sizes is not None:
                    self.pulse_sizes.received(len(details))
                reply: bytes | None = fastcodec.encode_empty_reply(_SEND_PULSE_RESPONSE, mid)
            else:
                reply = self._answer_now(now, mtype, raw, mid)
        except InvalidPath as exc:
            self.metrics.count_request(name)
            self._invalid_path(mtype, exc)
            return encode_frame(HBMessage(T(mtype + 1), _empty(mtype, raw), mid))
        except Exception:
            self.metrics.count_request(name)
            raise
        if reply is not None:
            self.metrics.count_request(name)
        return reply

    def coordinates_writes(self, authorized_reader: bool) -> bool:
        """Whether SEND_PULSEs on such a connection go to a coordinator that takes them
        without waiting (`send_pulse_then`): a node of a cluster, writes allowed."""
        if not authorized_reader and self.writes_need_auth:
            return False
        resolve_now = self._resolve_now
        now = resolve_now(False) if resolve_now is not None else None
        return getattr(now, "send_pulse_then", None) is not None

    def send_pulse_then(
        self, raw: str, details: bytes, mid: int, authorized_reader: bool, then: StormOutcome
    ) -> bool:
        """Coordinate a SEND_PULSE the cluster must store without a task or a future of its
        own (the node's coordinator joins it to a coalesced batch:
        `CoordinatingBackend.send_pulse_then`); `then` gets the encoded reply once its owners
        have it, or the error `handle` would raise. False (nothing done, nothing counted) when
        it must go the awaited way: `handle`."""
        if not authorized_reader and self.writes_need_auth:
            return False
        resolve_now = self._resolve_now
        now = resolve_now(False) if resolve_now is not None else None
        write: ThenWrite | None = getattr(now, "send_pulse_then", None)
        if write is None:
            return False
        try:
            key = normalize_key(raw)
        except InvalidPath:
            return False  # `handle` answers it, with its bookkeeping
        sizes = self.pulse_sizes

        def stored(error: BaseException | None) -> None:
            if error is not None:
                then(error)
                return
            if sizes is not None:
                sizes.received(len(details))
            then(fastcodec.encode_empty_reply(_SEND_PULSE_RESPONSE, mid))

        if not write(key, details, stored):
            return False
        self.metrics.count_request("SEND_PULSE")
        return True

    def send_pulses_now(self, run: Sequence[FastRequest], authorized_reader: bool) -> list[bytes]:
        """The reply frames of consecutive SEND_PULSE requests of one read that could be
        answered without waiting, from the start of `run` (possibly none): `answer_now` of
        each, with the per-request bookkeeping done once for all (pipelined heartbeats)."""
        if not authorized_reader and self.writes_need_auth:
            return []
        resolve_now = self._resolve_now
        now = resolve_now(False) if resolve_now is not None else None
        if now is None:
            return []
        done = now.send_pulses_now([(raw, details or b"") for _, _, raw, details in run])
        if not done:
            return []
        requests = self.metrics.requests
        requests["SEND_PULSE"] = requests.get("SEND_PULSE", 0) + done
        if self.pulse_sizes is not None:
            self.pulse_sizes.received_many([len(r[3] or b"") for r in run[:done]])
        encode = fastcodec.encode_empty_reply
        return [encode(_SEND_PULSE_RESPONSE, mid) for _, mid, _, _ in run[:done]]

    def _answer_now(self, now: NowBackend, mtype: T, raw: str, mid: int) -> bytes | None:
        """The reads of `answer_now`."""
        sizes = self.pulse_sizes
        if mtype == T.GET_PULSE:
            pulse = now.get_pulse_now(raw)
            if pulse is NOT_NOW:
                return None
            if pulse is None:
                return fastcodec.encode_pulse_reply(mid, raw, None)
            if sizes is not None:
                sizes.sent(len(pulse.data))
            return fastcodec.encode_pulse_reply(mid, raw, pulse.data)
        if mtype == T.EXISTS:
            found = now.exists_now(raw)
            if found is NOT_NOW:
                return None
            return fastcodec.encode_bool_reply(mid, found)
        if mtype == T.GET_ALL_NODES_FOR_PATH:
            names = now.get_all_nodes_for_path_now(raw)
            if names is NOT_NOW:
                return None
            return fastcodec.encode_nodes_reply(mid, names)
        pulses = now.get_all_pulse_for_path_now(raw)
        if pulses is NOT_NOW:
            return None
        if sizes is not None:
            sizes.sent(sum(len(p.data) for p in pulses))
        return fastcodec.encode_records_reply(mid, pulses)

    @staticmethod
    def _raw_path(mtype: T, data: HBMessageData | None) -> str:
        """The path as sent; checks the request carries the union member its type needs."""
        if mtype == T.SEND_PULSE:
            if data is None or data.pulse is None:
                raise ProtocolError("SEND_PULSE without a pulse")
            if data.pulse.details is None:
                raise ProtocolError("SEND_PULSE without pulse details")
            return data.pulse.id
        if data is None or data.path is None:
            raise ProtocolError(f"{mtype.name} without a path")
        return data.path

    async def _answer(self, mtype: T, raw: str, data: HBMessageData | None) -> HBMessageData | None:
        backend = self._resolve(mtype in READ_TYPES)
        sizes = self.pulse_sizes
        if mtype == T.SEND_PULSE:
            assert data is not None and data.pulse is not None and data.pulse.details is not None
            await backend.send_pulse(normalize_key(raw), data.pulse.details, None)
            if sizes is not None:
                sizes.received(len(data.pulse.details))
            return None
        if mtype == T.GET_PULSE:
            pulse, _ = await backend.get_pulse(normalize_key(raw))
            if pulse is None:
                return HBMessageData(pulse=HBPulse(raw))
            if sizes is not None:
                sizes.sent(len(pulse.data))
            return HBMessageData(pulse=HBPulse(raw, pulse.data))
        if mtype == T.EXISTS:
            found, _ = await backend.exists(normalize_key(raw))
            return HBMessageData(boolval=found)
        if mtype == T.GET_ALL_NODES_FOR_PATH:
            names = await backend.get_all_nodes_for_path(normalize(raw))
            return HBMessageData(nodes=HBNodes(tuple(names)))
        if mtype == T.GET_ALL_PULSE_FOR_PATH:
            pulses = await backend.get_all_pulse_for_path(normalize(raw))
            if sizes is not None:
                sizes.sent(sum(len(p.data) for p in pulses))
            records = HBRecords(tuple(HBPulse(p.path, p.data) for p in pulses))
            return HBMessageData(records=records)
        if mtype == T.DELETE_PATH:
            await backend.delete_path(normalize(raw), None)
        elif mtype == T.DELETE_PULSE_ID:
            await backend.delete_pulse_id(normalize_key(raw), None)
        elif mtype == T.CREATE_PATH:
            await backend.create_path(normalize(raw))
        return None

    def _invalid_path(self, mtype: T, exc: InvalidPath) -> None:
        self.metrics.invalid_paths += 1
        n = self.metrics.invalid_paths
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            log.warning("Storm %s with an invalid path (%d so far): %s", mtype.name, n, exc)


def _empty(mtype: T, raw: str) -> HBMessageData | None:
    """The normal 'nothing here' answer of each request type."""
    if mtype == T.GET_PULSE:
        return HBMessageData(pulse=HBPulse(raw))
    if mtype == T.EXISTS:
        return HBMessageData(boolval=False)
    if mtype == T.GET_ALL_NODES_FOR_PATH:
        return HBMessageData(nodes=HBNodes())
    if mtype == T.GET_ALL_PULSE_FOR_PATH:
        return HBMessageData(records=HBRecords())
    return None


_NAMES = {t: t.name for t in T}
_SEND_PULSE = int(T.SEND_PULSE)  # module constants: an enum member lookup costs more
_SEND_PULSE_RESPONSE = int(T.SEND_PULSE_RESPONSE)
_NOW_TYPES = frozenset(
    {T.SEND_PULSE, T.GET_PULSE, T.EXISTS, T.GET_ALL_NODES_FOR_PATH, T.GET_ALL_PULSE_FOR_PATH}
)
