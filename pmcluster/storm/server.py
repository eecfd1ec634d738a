"""Storm protocol connections (the listening port they share with HTTP is the node's:
`pmcluster.node.sharedport`).

`StormConnection` is the `asyncio.Protocol` of one Storm client connection: it decodes frames,
runs up to `max_in_flight` requests at once (Storm clients pipeline up to 100 and match replies
by `message_id`), writes each reply as soon as it is ready (so replies may leave out of order
and a slow request never holds up the others), and closes only its own connection when the
peer breaks the wire contract. Beyond `max_in_flight` it queues requests and stops reading;
while the peer does not read its replies it starts no new request and stops reading too, so a
connection holds at most `max_in_flight` replies plus one read's worth of queued requests.

Authentication is a seam: each connection consults a `ConnectionAuth` for CONTROL/SASL frames
and for whether it may read; `NoAuth` (pacemaker.auth.method NONE) refuses every such frame.
A CONTROL/SASL frame after the first ordinary frame closes the connection (Storm: the first
ordinary frame ends the chance to authenticate).

Deadlines (`StormDeadlines`, from the node's config): a connection that completes no frame for
`pmcluster.storm.idle.secs` is closed, so is one whose partial frame is older than
`pmcluster.frame.timeout.secs`, and one that began a SASL handshake and has not finished it
within `pmcluster.handshake.timeout.secs`. The bytes of partial frames count against the
node's `BufferBudget` (`pmcluster.buffer.max.bytes`): past it, the growing connection is closed.

The fast lane: a frame in Storm's usual layout (`fastcodec.decode_request`) whose answer needs
no waiting (`StormHandler.answer_now`: this node alone answers for the key) is answered inside
`data_received`, without a task; the replies of one read leave in one write. Everything else
(other layouts, auth frames, requests that wait on peers, requests while others are queued or
the peer does not read) takes the task path above, unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from pmcluster.errors import ProtocolError
from pmcluster.protocol.budget import BufferBudget
from pmcluster.storm.codec import (
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecoder,
    HBMessage,
    HBMessageData,
    HBPulse,
    HBServerMessageType,
    decode_message,
    encode_frame,
)
from pmcluster.storm.fastcodec import FastRequest, decode_request
from pmcluster.storm.handler import StormHandler
from pmcluster.storm.metrics import StormMetrics

__all__ = [
    "ConnectionAuth",
    "NoAuth",
    "StormConnection",
    "StormDeadlines",
    "StormFactory",
]

log = logging.getLogger(__name__)

_SEND_PULSE = int(HBServerMessageType.SEND_PULSE)
# Requests that change the store. Storm's protocol carries no version, so the coordinating
# node gives each the version of the moment it runs it (`ClusterClient.clock`).
_MUTATIONS = frozenset(
    {
        HBServerMessageType.SEND_PULSE,
        HBServerMessageType.DELETE_PULSE_ID,
        HBServerMessageType.DELETE_PATH,
        HBServerMessageType.CREATE_PATH,
    }
)

_AUTH_TYPES = frozenset(
    {HBServerMessageType.CONTROL_MESSAGE, HBServerMessageType.SASL_MESSAGE_TOKEN}
)


class ConnectionAuth(Protocol):
    """Per-connection authentication state (the SASL seam)."""

    @property
    def authorized_reader(self) -> bool:
        """Whether reads (GET_PULSE, EXISTS, GET_ALL_*) are allowed on this connection now."""
        ...

    def on_auth_frame(self, message: HBMessage) -> list[HBMessage]:
        """Handle one CONTROL_MESSAGE / SASL_MESSAGE_TOKEN frame; return the frames to send
        back, in order. Raise `ProtocolError` to close the connection (failed handshake)."""
        ...


class NoAuth:
    """pacemaker.auth.method NONE: everyone may read; CONTROL/SASL frames are a protocol error.
    `reads=False`: nobody may read (authentication that cannot be offered)."""

    def __init__(self, *, reads: bool = True) -> None:
        self._reads = reads

    @property
    def authorized_reader(self) -> bool:
        return self._reads

    def on_auth_frame(self, message: HBMessage) -> list[HBMessage]:
        raise ProtocolError(f"type {message.type} frame on a server without authentication")


@dataclass(frozen=True, slots=True)
class StormDeadlines:
    """How long a connection may idle, hold a partial frame, and take to authenticate (s)."""

    idle_secs: float = 300.0
    frame_secs: float = 30.0
    handshake_secs: float = 10.0

    @property
    def period(self) -> float:
        """How often a connection checks them (a fraction of the shortest, 0.05-5 s)."""
        return min(5.0, max(0.05, min(self.idle_secs, self.frame_secs, self.handshake_secs) / 4))


class StormConnection(asyncio.Protocol):
    """One Storm client connection: decode, run requests concurrently, write replies."""

    def __init__(
        self,
        handler: StormHandler,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_in_flight: int = 100,
        *,
        auth: ConnectionAuth | None = None,
        metrics: StormMetrics | None = None,
        deadlines: StormDeadlines | None = None,
        budget: BufferBudget | None = None,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.auth: ConnectionAuth = auth if auth is not None else NoAuth()
        self.metrics = metrics if metrics is not None else handler.metrics
        self.peer = "?"
        self._decoder = FrameDecoder(max_frame_size)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # set by `connection_made`
        self._tasks: set[asyncio.Future[None] | _Slot] = set()  # requests in flight
        # SEND_PULSEs coordinated without a task each, started next iteration (`_start_soon`)
        self._soon: list[tuple[FastRequest, bool, _Slot]] = []
        self._pending: deque[tuple[HBMessage, bool]] = deque()
        self._ordinary_seen = False
        self._write_paused = False
        self._read_paused = False
        self._draining = False
        self._lost = False
        self._eof = False  # the client has closed its side
        self._closed = asyncio.Event()
        self._out: list[bytes] = []  # replies waiting for this loop iteration's single write
        self._answered = 0  # fast-lane replies in `_out`: they hold in-flight slots until written
        self._deadlines = deadlines
        self._budget = budget
        self._max_elements = max_elements
        self._held = 0  # partial-frame bytes counted in `budget`
        self._began = self._last_frame = time.monotonic()
        self._partial_since: float | None = None
        self._auth_begun = False
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1
        if self._deadlines is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._deadlines.period, self._check_deadlines)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        bodies, error = self._decoder.split(data)
        tracked = self._deadlines is not None or self._budget is not None
        if tracked and not self._track(bool(bodies)):
            return
        try:
            i, count = 0, len(bodies)
            while i < count:
                fast = decode_request(bodies[i])
                if fast is None:
                    self._dispatch(decode_message(bodies[i], self._max_elements))
                    i += 1
                    continue
                if fast[0] == _SEND_PULSE and self._lane_open():
                    done = self._answer_sends_now(fast, bodies, i)
                    if done:
                        i += done
                        self._flush_window()
                        continue
                if not self._answer_now(fast):
                    return  # the request failed: the connection is closed
                i += 1
                self._flush_window()
            if error is not None:
                raise error
        except ProtocolError as exc:
            self._protocol_error(exc)
        except Exception:  # a bug in an auth plug-in: lose this connection, not the server
            log.exception("Storm connection %s: closing after an internal error", self.peer)
            self._close()
        finally:
            if self._out:
                self._flush()

    def eof_received(self) -> bool:
        # Half-close: finish the requests already received and write their replies first
        # (a write whose client closed before it ran is dropped instead: `_serve`).
        self._eof = True
        if self._tasks or self._pending:
            self.shutdown()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._budget is not None and self._held:
            self._budget.hold(self._held, 0)
            self._held = 0
        self.metrics.connections_open -= 1
        self._pending.clear()
        for task in list(self._tasks):
            if isinstance(task, _Slot):
                self._release(task)  # its outcome, when it comes, is dropped
            else:
                task.cancel()
        self._closed.set()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._start_pending()
        self._update_reading()

    # ------------------------------------------------------------ control

    def shutdown(self) -> None:
        """Stop reading, finish the requests received so far, then close."""
        self._draining = True
        self._update_reading()
        self._close_if_drained()

    def abort(self) -> None:
        """Close at once, dropping unfinished requests."""
        if self._transport is not None:
            self._transport.abort()

    @property
    def is_closed(self) -> bool:
        """True once the connection is gone."""
        return self._lost

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # ------------------------------------------------------------ internals

    def _track(self, completed: bool) -> bool:
        """Note frame progress for the deadlines and the buffer budget; False when the
        connection was dropped for holding too much."""
        now = time.monotonic()
        if completed:
            self._last_frame = now
        buffered = self._decoder.buffered
        if not buffered:
            self._partial_since = None
        elif self._partial_since is None or completed:
            self._partial_since = now
        if self._budget is not None and buffered != self._held:
            if not self._budget.hold(self._held, buffered):
                self._held = 0
                self.metrics.protocol_errors += 1
                log.warning(
                    "Storm connection %s: dropped, partial frames past pmcluster.buffer.max.bytes",
                    self.peer,
                )
                self.abort()
                return False
            self._held = buffered
        return True

    def _check_deadlines(self) -> None:
        self._timer = None
        deadlines = self._deadlines
        if self._lost or deadlines is None or self._transport is None:
            return
        now = time.monotonic()
        reason = None
        if self._partial_since is not None and now - self._partial_since > deadlines.frame_secs:
            reason = "a partial frame older than pmcluster.frame.timeout.secs"
        elif (
            self._auth_begun
            and not self._ordinary_seen
            and not self.auth.authorized_reader
            and now - self._began > deadlines.handshake_secs
        ):
            reason = "no completed handshake within pmcluster.handshake.timeout.secs"
        elif not self._tasks and not self._pending and now - self._last_frame > deadlines.idle_secs:
            reason = "idle for pmcluster.storm.idle.secs"
        if reason is not None:
            log.info("Storm connection %s: closing, %s", self.peer, reason)
            self._close()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(deadlines.period, self._check_deadlines)

    def _dispatch(self, message: HBMessage) -> None:
        if message.type in _AUTH_TYPES:
            self._auth_begun = True
            if self._ordinary_seen:
                raise ProtocolError("authentication frame after the first ordinary frame")
            for reply in self.auth.on_auth_frame(message):
                self._write(reply)
            return
        self._ordinary_seen = True
        # Whether this request may read is decided when it arrives, in order with auth frames.
        self._admit(message, self.auth.authorized_reader)

    def _admit(self, message: HBMessage, authorized: bool) -> None:
        """Start an ordinary request's task, or queue it (and stop reading) when there is no
        room or the peer does not read its replies."""
        if self._lane_open():
            self._start(message, authorized)
        else:
            self._pending.append((message, authorized))
            self._update_reading()

    def _lane_open(self) -> bool:
        """Whether a request may be answered now (nothing queued, the peer reads, room)."""
        return not (self._pending or self._write_paused or len(self._tasks) >= self.max_in_flight)

    def _flush_window(self) -> None:
        if self._answered + len(self._tasks) >= self.max_in_flight:
            # A window of replies, as many as tasks could have made: write them, so a peer
            # that does not read them stops the lane (`pause_writing`).
            self._flush()

    def _answer_sends_now(self, first: FastRequest, bodies: list[bytes], at: int) -> int:
        """Answer the run of SEND_PULSEs starting at `bodies[at]` (decoded: `first`) in one
        pass, at most a window's worth; how many were answered (0: none, go one by one). On
        a node whose writes go to other owners, the run is admitted to be coordinated
        (`_admit_soon`) instead, each decoded once."""
        room = self.max_in_flight - self._answered - len(self._tasks)
        run = [first]
        for body in bodies[at + 1 : at + room]:
            fast = decode_request(body)
            if fast is None or fast[0] != _SEND_PULSE:
                break
            run.append(fast)
        self._ordinary_seen = True
        authorized = self.auth.authorized_reader
        replies = self.handler.send_pulses_now(run, authorized)
        if not replies and self.handler.coordinates_writes(authorized):
            for request in run:
                self._admit_soon(request, authorized)
            return len(run)
        self._out.extend(replies)
        self._answered += len(replies)
        return len(replies)

    def _answer_now(self, request: FastRequest) -> bool:
        """Answer an ordinary request now if it needs no waiting, else dispatch it as usual;
        False when it failed and the connection is closed."""
        self._ordinary_seen = True
        authorized = self.auth.authorized_reader
        if not (self._pending or self._write_paused or len(self._tasks) >= self.max_in_flight):
            # `_lane_open()`, inline: this is the hot path of every non-batched request.
            mtype, mid, raw, details = request
            try:
                reply = self.handler.answer_now(mtype, raw, details, mid, authorized)
            except ProtocolError:
                raise
            except Exception as exc:  # as in `_serve`: this connection goes, not the server
                self.metrics.backend_errors += 1
                log.warning("Storm connection %s: closing, request failed: %r", self.peer, exc)
                self._close()
                return False
            if reply is not None:
                self._out.append(reply)
                self._answered += 1
                return True
            if request[0] == _SEND_PULSE:
                self._admit_soon(request, authorized)
                return True
        self._admit(_message(request), authorized)
        return True

    def _admit_soon(self, request: FastRequest, authorized: bool) -> None:
        """A SEND_PULSE its owners must store: it holds an in-flight slot from now and starts
        two loop iterations later, without a task of its own. As `_serve` does for every
        mutation, a write whose client closed meanwhile is dropped then."""
        slot = _Slot()
        self._tasks.add(slot)
        self.metrics.in_flight += 1
        if not self._soon:
            # Two iterations, as a task's `await asyncio.sleep(0)` in `_serve` takes: a close
            # that came with the request is seen by then (selector loops read the EOF in the
            # iteration after the data).
            loop = self._loop
            loop.call_soon(loop.call_soon, self._start_soon)
        self._soon.append((request, authorized, slot))

    def _start_soon(self) -> None:
        batch, self._soon = self._soon, []
        send = self.handler.send_pulse_then
        for request, authorized, slot in batch:
            if slot.ended:
                continue  # the connection was lost meanwhile
            _, mid, raw, details = request
            if self._eof:
                self.metrics.abandoned += 1
                log.info(
                    "Storm connection %s: dropped a SEND_PULSE its client closed before it ran",
                    self.peer,
                )
                self._release(slot)
                continue
            try:
                taken = send(
                    raw, details or b"", mid, authorized, functools.partial(self._stored, slot)
                )
            except Exception as exc:  # as in `_serve`: this connection goes, not the server
                self._request_failed(exc)
                self._release(slot)
                continue
            if not taken:  # the awaited way, in a task that holds this slot
                task = self._loop.create_task(self._serve_now(_message(request), authorized))
                task.add_done_callback(functools.partial(self._chained, slot=slot))

    def _stored(self, slot: _Slot, outcome: bytes | BaseException) -> None:
        """A coordinated SEND_PULSE's outcome (`StormHandler.send_pulse_then`): its reply
        joins this iteration's single write, or the error closes the connection."""
        if slot.ended:
            return  # the connection was lost meanwhile
        if isinstance(outcome, asyncio.CancelledError):
            pass  # the node is stopping: no reply, as for a cancelled task
        elif isinstance(outcome, BaseException):
            self._request_failed(outcome)
        elif self._transport is not None and not self._transport.is_closing():
            if not self._out:
                self._loop.call_soon(self._flush)
            self._out.append(outcome)
        self._release(slot)

    def _chained(self, task: asyncio.Future[None], slot: _Slot) -> None:
        """`slot` ends when `task` does (its outcome was handled inside it)."""
        if not task.cancelled():
            task.exception()
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        if not slot.ended:
            slot.ended = True
            self._finished(slot)

    def _request_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ProtocolError):
            self._protocol_error(exc)
            return
        self.metrics.backend_errors += 1
        log.warning("Storm connection %s: closing, request failed: %r", self.peer, exc)
        self._close()

    def _start_pending(self) -> None:
        """Start queued requests while there is room and the peer reads its replies."""
        while self._pending and not self._write_paused and len(self._tasks) < self.max_in_flight:
            self._start(*self._pending.popleft())

    def _start(self, message: HBMessage, authorized: bool) -> None:
        task = self._loop.create_task(self._serve(message, authorized))
        self._tasks.add(task)
        self.metrics.in_flight += 1
        task.add_done_callback(self._finished)

    async def _serve(self, message: HBMessage, authorized: bool) -> None:
        if message.type in _MUTATIONS:
            # A client that closes has given up on its request: Storm's client (and ours)
            # closes on a timeout and sends the write to the next node. Its bytes can still
            # arrive here with the close, late: after a SIGSTOP of this node, or when the
            # network held them. Run then, the write would get a version newer than the
            # writes acknowledged meanwhile (or a delete acknowledged meanwhile) and win over
            # them. One loop iteration lets a close that came with the request be seen first.
            await asyncio.sleep(0)
            if self._eof:
                self.metrics.abandoned += 1
                log.info(
                    "Storm connection %s: dropped a %s its client closed before it ran",
                    self.peer,
                    HBServerMessageType(message.type).name,
                )
                return
        await self._serve_now(message, authorized)

    async def _serve_now(self, message: HBMessage, authorized: bool) -> None:
        try:
            reply = await self.handler.handle(message, authorized_reader=authorized)
        except ProtocolError as exc:
            self._protocol_error(exc)
        except Exception as exc:  # never let one request take the server down
            self.metrics.backend_errors += 1
            log.warning("Storm connection %s: closing, request failed: %r", self.peer, exc)
            self._close()
        else:
            self._write(reply)

    def _finished(self, task: asyncio.Future[None] | _Slot) -> None:
        self._tasks.discard(task)
        self.metrics.in_flight -= 1
        if self._lost:
            return
        self._start_pending()
        self._update_reading()
        self._close_if_drained()

    def _write(self, message: HBMessage) -> None:
        # Replies finished in one loop iteration leave in one send(): pipelined requests
        # would otherwise cost a system call each.
        if self._transport is None or self._transport.is_closing():
            return
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(encode_frame(message))

    def _flush(self) -> None:
        out, self._out = self._out, []
        self._answered = 0
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.metrics.protocol_errors += 1
        log.info("Storm connection %s: closing, protocol error: %s", self.peer, exc)
        self._close()

    def _close(self) -> None:
        self._pending.clear()
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _close_if_drained(self) -> None:
        if self._draining and not self._tasks and not self._pending:
            self._close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        pause = self._draining or self._write_paused or bool(self._pending)
        if pause and not self._read_paused:
            transport.pause_reading()
        elif not pause and self._read_paused:
            transport.resume_reading()
        self._read_paused = pause


def _message(request: FastRequest) -> HBMessage:
    """The `HBMessage` the generic codec decodes from the same frame."""
    mtype, mid, raw, details = request
    if details is not None:
        return HBMessage(mtype, HBMessageData(pulse=HBPulse(raw, details)), mid)
    return HBMessage(mtype, HBMessageData(path=raw), mid)


StormFactory = Callable[[], StormConnection]


class _Slot:
    """The in-flight place of a SEND_PULSE coordinated without a task (`_admit_soon`): it
    ends once, when its reply is queued, it is dropped, or the connection is lost."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False
