"""The node's HTTP fast path: heartbeat writes and reads without the framework.

A ring-aware client (and a coordinating node) sends each heartbeat straight to its owners as
`PUT /v1/pulse/<path>` or `POST /v1/batch` with `X-Pmcluster-Forwarded: 1`: the owner only has
to store it. A plain client (curl, a load balancer) sends the same `PUT`/`GET` without the
mark: when the node's coordinator can answer it at once (`NowBackend`: this node is the key's
only owner, as in a one-node cluster), the fast path answers it too, with the coordinator's
versions and bookkeeping; otherwise aiohttp's handler coordinates it. That traffic is most
of a node's, and aiohttp's request machinery (request and response objects, middleware,
routing) costs more CPU than the store itself (docs/benchmarks.md). `FastHttpConnection` is
the first protocol of every HTTP connection on the shared port: it parses HTTP/1.1 requests
itself and answers, synchronously and with the same store calls, headers and metrics as the
aiohttp handlers, exactly these requests:

- `PUT /v1/pulse/<key>` and `POST /v1/batch` (when writes need no authentication);
- `GET /v1/pulse/<key>` that finds a value (when reads need no authentication: method NONE);
- a pulse channel's upgrade, `GET /v1/internal/pulses` (when writes need no authentication):
  101, then the connection is `PulseChannelServer`'s (`pmcluster.protocol.channel`);

with `X-Pmcluster-Forwarded: 1`, or plain (as curl sends them): a plain `GET` when the node
can answer it at once, a plain `PUT` always. A plain `PUT` the node cannot answer at once (other
owners must store it too) is coordinated by the same `CoordinatingBackend.send_pulse` that
aiohttp's handler calls, and answered when it completes: the connection reads no further
request meanwhile, so answers keep their order. Under load that write joins the coordinator's
coalesced batch without a task of its own (`CoordinatingBackend.send_pulse_then`). Bodies
come with `Content-Length` (none for GET). Anything else — another route, a plain request
the owners must answer, a chunked body, `Expect`, `Connection: close`, a query string on a
write, any header it does not find plainly well-formed, an invalid path, version or batch, a
full store, a draining node, a body still arriving after `STALL_SECS` — makes it hand the
connection to aiohttp *before* answering that request: aiohttp gets the unanswered bytes as
if it had read them itself and answers from there on (with its errors, timeouts and auth),
so every error response stays aiohttp's and nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

from pmcluster.client.loop import running_loop
from pmcluster.config import Config
from pmcluster.errors import PmclusterError
from pmcluster.node.appstate import NodeState, Slots
from pmcluster.node.channelserver import PulseChannelServer
from pmcluster.node.coordinator import CoordinatingBackend
from pmcluster.node.local import LocalBackend
from pmcluster.node.metrics import Metrics
from pmcluster.node.requests import check_versions, key_path, parse_version, version_ceiling
from pmcluster.protocol import pulsecodec
from pmcluster.protocol.backend import NOT_NOW, NowBackend
from pmcluster.protocol.budget import BudgetShare, BufferBudget
from pmcluster.protocol.channel import CHANNEL_PATH, CHANNEL_PROTOCOL, IDLE_HEADER
from pmcluster.protocol.http import HELD_HEADER, VERSION_HEADER, status_for
from pmcluster.protocol.pulse import Pulse
from pmcluster.store import PulseStore

__all__ = ["STALL_SECS", "FastHttpConnection", "FastPath", "HttpFactory", "parse_head"]

log = logging.getLogger(__name__)

HttpFactory = Callable[[], asyncio.Protocol]
# A response that comes later: the coordinated write's answer, awaited by the connection.
Later = Awaitable[bytes]

STALL_SECS = 0.5  # a body still incomplete this long goes to aiohttp (its timeouts apply)
IDLE_SECS = 60.0  # keep-alive: an idle connection is closed (pmcluster.http.idle.secs)
HEAD_SECS = 10.0  # a request head must be complete within this (pmcluster.header.timeout.secs)
MAX_HEAD = 16384  # a request head longer than this goes to aiohttp (it answers 400/431)
MAX_LINE = 8190  # aiohttp's limit for the request line and each header line
WRITE_CHUNK = 65536  # answers of one read are written in pieces of about this size

_PULSE = b"/v1/pulse/"
_BATCH = b"/v1/batch"
_UPGRADE = b"upgrade"
_CHANNEL_PATH = CHANNEL_PATH.encode()
_CHANNEL_PROTOCOL = CHANNEL_PROTOCOL.encode()
_FORWARDED = b"x-pmcluster-forwarded"
_CONTENT_LENGTH = b"content-length"
_VERSION = VERSION_HEADER.lower().encode()
_PLAIN = bytes(range(0x20, 0x7F)) + b"\r\n\t"  # the bytes a plain request head is made of
# Headers the fast path understands or may ignore; any other header hands over.
_HARMLESS = frozenset(
    {
        b"host",
        b"user-agent",
        b"accept",
        b"accept-encoding",
        b"content-type",
        b"connection",
        b"keep-alive",
        b"date",
    }
)


class ChannelUpgrade:
    """`FastPath.answer`'s verdict on a pulse channel's handshake: write `response` (101),
    then the connection speaks the channel (`PulseChannelServer`)."""

    __slots__ = ("response",)

    def __init__(self, response: bytes) -> None:
        self.response = response


class FastPath:
    """What the fast path of one node answers with: its store, identity, metrics and rules."""

    def __init__(
        self, config: Config, state: NodeState, local: LocalBackend, metrics: Metrics
    ) -> None:
        self.state = state
        self.local = local
        self.store: PulseStore = local.store
        self.metrics = metrics
        self.max_body = config.max_message_size
        self.skew_secs = config.version_max_skew_secs
        self.max_entries = config.batch_max_entries
        self.idle_secs = config.http_idle_secs
        self.head_secs = config.header_timeout_secs
        self.frame_secs = config.frame_timeout_secs
        self.channel_open = config.replication_channel
        self.budget: BufferBudget | None = None  # bytes of unfinished requests (sharedport's)
        # The node's limit of coordinated requests (`pacemaker.max.threads`; the daemon's).
        self.limiter: Slots | None = None
        self.writes_open = config.auth_method == "NONE" or not config.auth_writes
        self.reads_open = config.auth_method == "NONE"
        self._head_key: tuple[int, str, str] | None = None
        self._head = b""

    def common_head(self) -> bytes:
        """`Date` and the node headers every response carries, rebuilt once a second."""
        now = int(time.time())
        key = (now, self.state.node_id, self.state.epoch)
        if key != self._head_key:
            self._head_key = key
            lines = [("Date", formatdate(now, usegmt=True)), *self.state.identity_headers()]
            self._head = "".join(f"{name}: {value}\r\n" for name, value in lines).encode("latin-1")
        return self._head

    def answer(
        self,
        method: bytes,
        target: bytes,
        headers: dict[bytes, bytes],
        buf: bytes,
        start: int,
        stop: int,
    ) -> bytes | Later | ChannelUpgrade | None:
        """The whole response to one request whose body is `buf[start:stop]` (left in the
        receive buffer: a batch is decoded in place); an awaitable of it (a plain write the
        owners must store); a channel's 101 (`ChannelUpgrade`); or None: aiohttp must answer
        it."""
        if self.state.draining or self.state.fenced:
            return None
        if _UPGRADE in headers or headers.get(b"connection") == b"upgrade":
            return self._upgrade(method, target, headers, stop - start)
        coordinator = self.state.coordinator
        if headers.get(_FORWARDED) == b"1" or coordinator is None:
            now = None  # this node's own store answers (as the aiohttp handlers do)
        elif not isinstance(coordinator, CoordinatingBackend):
            return None
        elif method == b"PUT" and target.startswith(_PULSE) and self.writes_open:
            return self._put_plain(coordinator, target, headers, buf[start:stop])
        elif _VERSION not in headers:
            now = coordinator  # a plain read: for the cluster, when it needs no waiting
        else:
            return None
        began = time.perf_counter()
        response: bytes | None
        try:
            if method == b"PUT" and target.startswith(_PULSE) and self.writes_open:
                op, response = "send_pulse", self._put(target, headers, buf[start:stop])
            elif method == b"POST" and target == _BATCH and self.writes_open and now is None:
                op, response = "batch", self._batch(buf, start, stop)
            elif method == b"GET" and target.startswith(_PULSE) and self.reads_open:
                if stop > start:
                    return None  # a GET with a body: aiohttp's to judge
                op, response = "get_pulse", self._get(target, now)
            else:
                return None
        except (PmclusterError, UnicodeError):
            return None  # aiohttp answers it (400, 413, 507, ...): nothing was stored
        except Exception:
            log.exception("fast path: unexpected error; aiohttp answers the request instead")
            return None
        if response is not None:
            status = 204 if op == "send_pulse" else 200
            self.metrics.record(op, time.perf_counter() - began, status)
        return response

    def _upgrade(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], body_len: int
    ) -> ChannelUpgrade | None:
        """A pulse channel's handshake (`pmcluster.protocol.channel`), when this node takes
        channels and writes need no authentication; None otherwise: aiohttp answers (404)."""
        if (
            method == b"GET"
            and target == _CHANNEL_PATH
            and headers.get(_UPGRADE) == _CHANNEL_PROTOCOL
            and headers.get(b"connection") == b"upgrade"
            and body_len == 0
            and self.channel_open
            and self.writes_open
            and _FORWARDED not in headers
            and _VERSION not in headers
        ):
            return ChannelUpgrade(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n"
                b"%s: %s\r\n"
                % (_CHANNEL_PROTOCOL, IDLE_HEADER.encode(), repr(self.idle_secs).encode())
                + self.common_head()
                + b"\r\n"
            )
        return None

    def _put(self, target: bytes, headers: dict[bytes, bytes], body: bytes) -> bytes:
        path = key_path(target[len(_PULSE) :].decode("ascii"), "/v1/pulse/")
        raw_version = headers.get(_VERSION)
        version = None
        if raw_version is not None:
            ceiling = version_ceiling(self.skew_secs)
            version = parse_version(raw_version.decode("ascii"), ceiling)
        stored = self.store.send_pulse(path, body, version)
        self.metrics.received(len(body))
        if stored:
            return b"HTTP/1.1 204 No Content\r\n" + self.common_head() + b"\r\n"
        held = f"{HELD_HEADER}: {self.local.held_version(path)}\r\n".encode()
        return b"HTTP/1.1 204 No Content\r\n" + held + self.common_head() + b"\r\n"

    def _batch(self, buf: bytes, start: int, stop: int) -> bytes:
        # The decoder's entries go to the store unchanged: trusted entries take 0 as "now".
        entries = pulsecodec.decode(buf, start=start, stop=stop, max_entries=self.max_entries)
        check_versions(entries, version_ceiling(self.skew_secs))
        stored = self.store.send_pulses(entries, trusted=True)
        self.metrics.received_many([len(data) for _, data, _ in entries])
        # json.dumps's exact output for this dict, without its per-call machinery
        payload = b'{"stored": %d, "ignored": %d}' % (stored, len(entries) - stored)
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % len(payload) + self.common_head() + b"\r\n" + payload
        )

    def _put_plain(
        self,
        coordinator: CoordinatingBackend,
        target: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
    ) -> bytes | Later | None:
        """A plain PUT: answered at once when this node alone owns the key and no version
        came; else coordinated to the owners (`CoordinatingBackend.send_pulse`, as aiohttp's
        handler does) and answered when that completes. None: aiohttp answers (bad input)."""
        began = time.perf_counter()
        try:
            path = key_path(target[len(_PULSE) :].decode("ascii"), "/v1/pulse/")
            raw = headers.get(_VERSION)
            if raw is None and coordinator.send_pulse_now(path, body):
                self.metrics.received(len(body))
                self.metrics.record("send_pulse", time.perf_counter() - began, 204)
                return b"HTTP/1.1 204 No Content\r\n" + self.common_head() + b"\r\n"
            version = None
            if raw is not None:
                version = parse_version(raw.decode("ascii"), version_ceiling(self.skew_secs))
            elif (soon := self._coordinated_soon(coordinator, path, body, began)) is not None:
                return soon
        except (PmclusterError, UnicodeError):
            return None  # aiohttp answers it (400): nothing was stored
        except Exception:
            log.exception("fast path: unexpected error; aiohttp answers the request instead")
            return None
        return self._coordinated(coordinator, path, body, version, began)

    def _coordinated_soon(
        self, coordinator: CoordinatingBackend, path: str, body: bytes, began: float
    ) -> asyncio.Future[bytes] | None:
        """`_coordinated` without a task: the write joins a coalesced batch
        (`CoordinatingBackend.send_pulse_then`) and its answer is made in a callback. Under
        the same limit and in-flight count; None when it must go the awaited way (no free
        slot: it then waits for one in `_coordinated`)."""
        limiter = self.limiter
        if limiter is not None and not limiter.try_acquire():
            return None
        state = self.state
        answer: asyncio.Future[bytes] = running_loop().create_future()

        def done(exc: BaseException | None) -> None:
            if limiter is not None:
                limiter.release()
            state.request_done()
            if answer.done():
                return
            if isinstance(exc, asyncio.CancelledError):
                answer.cancel()
            elif isinstance(exc, PmclusterError):
                status, name = status_for(exc)
                self.metrics.record("send_pulse", time.perf_counter() - began, status)
                answer.set_result(self.error(status, name, str(exc)))
            elif exc is not None:
                log.error("fast path: unexpected error coordinating a write", exc_info=exc)
                self.metrics.record("send_pulse", time.perf_counter() - began, 500)
                answer.set_result(
                    self.error(500, "internal_error", "unexpected server error (logged)")
                )
            else:
                self.metrics.received(len(body))
                self.metrics.record("send_pulse", time.perf_counter() - began, 204)
                answer.set_result(b"HTTP/1.1 204 No Content\r\n" + self.common_head() + b"\r\n")

        state.in_flight += 1  # before: `done` undoes it, whenever it runs
        taken = False
        try:
            taken = coordinator.send_pulse_then(path, body, done)
        finally:
            if not taken:
                if limiter is not None:
                    limiter.release()
                state.request_done()
        return answer if taken else None

    async def _coordinated(
        self,
        coordinator: CoordinatingBackend,
        path: str,
        body: bytes,
        version: int | None,
        began: float,
    ) -> bytes:
        """The response to a plain PUT once its owners have stored it (or its error). Counted
        in the node's requests in flight (a drain waits for it) and run under the limit of
        coordinated requests (`pacemaker.max.threads`), as aiohttp's handler is."""
        self.state.in_flight += 1
        try:
            if self.limiter is None:
                await coordinator.send_pulse(path, body, version)
            else:
                async with self.limiter:
                    await coordinator.send_pulse(path, body, version)
        except PmclusterError as exc:
            status, name = status_for(exc)
            self.metrics.record("send_pulse", time.perf_counter() - began, status)
            return self.error(status, name, str(exc))
        except Exception:
            log.exception("fast path: unexpected error coordinating a write")
            self.metrics.record("send_pulse", time.perf_counter() - began, 500)
            return self.error(500, "internal_error", "unexpected server error (logged)")
        finally:
            self.state.request_done()
        self.metrics.received(len(body))
        self.metrics.record("send_pulse", time.perf_counter() - began, 204)
        return b"HTTP/1.1 204 No Content\r\n" + self.common_head() + b"\r\n"

    def error(self, status: int, name: str, detail: str) -> bytes:
        """The error response aiohttp's handlers give (`requests.error_response`)."""
        payload = json.dumps({"error": name, "detail": detail}).encode()
        return (
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            % (status, HTTPStatus(status).phrase.encode(), len(payload))
            + self.common_head()
            + b"\r\n"
            + payload
        )

    def _get(self, target: bytes, now: NowBackend | None) -> bytes | None:
        path = key_path(target[len(_PULSE) :].decode("ascii"), "/v1/pulse/")
        pulse = self.store.get_pulse(path) if now is None else now.get_pulse_now(path)
        if pulse is None or pulse is NOT_NOW:
            # Absent (the 404 carries the tombstone's version) or the owners must be asked:
            # aiohttp's handler answers.
            return None
        assert isinstance(pulse, Pulse)
        self.metrics.pulse_read(len(pulse.data))
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n%s: %d\r\n"
            % (len(pulse.data), VERSION_HEADER.encode(), pulse.version)
            + self.common_head()
            + b"\r\n"
            + pulse.data
        )


def parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]] | None:
    """Method, target and lower-cased headers of a request head, or None when it is anything
    but plain HTTP/1.1 with unique, simple, well-formed headers (aiohttp then judges it)."""
    if head.translate(None, _PLAIN):
        return None  # a control or non-ASCII byte: aiohttp decides what it is
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        return None  # a bare CR or LF: framing only llhttp may judge (no smuggling)
    lines = head.split(b"\r\n")
    if b"\t" in lines[0] or max(map(len, lines)) > MAX_LINE:
        return None
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1].startswith(b"/"):
        return None
    method, target = parts[0], parts[1]
    if b"?" in target or b"#" in target:
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        name = name.lower()
        if not sep or name in headers or not name.replace(b"-", b"").isalnum():
            return None
        headers[name] = value.strip(b" \t")
    if b"host" not in headers:
        return None  # aiohttp answers 400: HTTP/1.1 requires Host
    for name, value in headers.items():
        if name in (_FORWARDED, _CONTENT_LENGTH, _VERSION, _UPGRADE):
            continue
        if name not in _HARMLESS:
            return None
        if name == b"connection":
            value = headers[name] = value.lower()
            if value != b"keep-alive" and value != b"upgrade":
                return None
    return method, target, headers


class FastHttpConnection(asyncio.Protocol):
    """One HTTP connection, answered by `FastPath` until a request needs aiohttp.

    Answers of one read leave in as few writes as possible, but in pieces of `WRITE_CHUNK`:
    after each piece a peer that does not read (`pause_writing`) stops the loop, so pipelined
    reads of large values cannot pile up in memory. A body arriving in several reads is
    collected in pieces and joined once."""

    def __init__(self, fast: FastPath, fallback: HttpFactory) -> None:
        self._fast = fast
        self._fallback = fallback
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # set by `connection_made`
        self._buf = b""  # unanswered bytes, from the start of the next request
        self._more: list[bytes] = []  # pieces after `_buf` while a body arrives
        self._have = 0  # len(_buf) + len(pieces) while `_need` > 0
        self._need = 0  # bytes the current request needs in all (0: not waiting for a body)
        self._eof = False
        self._write_paused = False
        self._reading_paused = False
        self._stall: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._share = BudgetShare(fast.budget)  # bytes of unanswered requests held
        self._later: asyncio.Future[bytes] | None = None  # a coordinated write being answered
        self._hand_over_later = False  # `shutdown` came while `_later` ran
        self.handed_over = False
        self._channel: PulseChannelServer | None = None  # after an upgrade to a pulse channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        loop = self._loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._idle = loop.call_later(self._fast.idle_secs, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self._later is not None:
            # A pipelined request while a coordinated write waits: keep it, read no more
            # until that write is answered (a client that waits for its answer, as nearly
            # all do, costs no pause and resume of reading per write).
            self._pause_reading()
        if self._need:
            self._more.append(data)
            self._have += len(data)
            if self._have < self._need:
                self._account(self._have)
                return
            self._buf = b"".join([self._buf, *self._more])
            self._more, self._need = [], 0
        else:
            self._buf = self._buf + data if self._buf else data
        self._process()
        if not self.handed_over:
            self._account(self._have if self._need else len(self._buf))

    def _account(self, held: int) -> None:
        """Report the bytes held for unanswered requests; past the node's buffer budget the
        connection is dropped (a half-sent request must not exhaust the node)."""
        if self._share.hold(held):
            return
        log.warning("HTTP connection dropped: pmcluster.buffer.max.bytes of partial requests held")
        if self._transport is not None:
            self._transport.abort()

    def _release(self) -> None:
        self._share.release()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if self._later is not None:
            return True  # its answer is written first, then the connection closes
        if self._buf or self._more:
            # A half-sent request: aiohttp answers it and decides whether to close.
            return self._hand_over()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._release()

    def shutdown(self) -> None:
        """The node is stopping: aiohttp takes the connection, so it is drained and closed
        exactly like aiohttp's own (a request racing in is answered `Connection: close`);
        after the answer of a write being coordinated, when there is one. A pulse channel
        closes (it has answered every frame it received)."""
        if self._channel is not None:
            self._channel.shutdown()
            return
        if self._later is not None:
            self._hand_over_later = True
            return
        self._hand_over()

    def pause_writing(self) -> None:
        # The peer does not read its responses: stop reading its requests too.
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._later is not None:
            return  # reading resumes once the coordinated write is answered
        if self._transport is not None and not self.handed_over:
            self._resume_reading()
            if not self._need:
                self._process()
            if not self.handed_over:
                self._account(self._have if self._need else len(self._buf))

    # ------------------------------------------------------------------ internals

    def _process(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self.handed_over or self._later:
            return
        buf, pos, answered = self._buf, 0, False
        out: list[bytes] = []
        size = 0
        while pos < len(buf) and not self._write_paused:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_HEAD:
                    break  # hand over below
                self._wait(buf[pos:], 0, out, answered)
                return
            parsed = parse_head(buf[pos:end])
            if parsed is None:
                break
            method, target, headers = parsed
            length_raw = headers.get(_CONTENT_LENGTH, b"0")
            if not length_raw.isdigit() or len(length_raw) > 12:
                break
            length = int(length_raw)
            if length > self._fast.max_body:
                break
            body_end = end + 4 + length
            if body_end > len(buf):
                self._wait(buf[pos:], body_end - pos, out, answered)
                return
            response = self._fast.answer(method, target, headers, buf, end + 4, body_end)
            if response is None:
                break
            if isinstance(response, ChannelUpgrade):
                out.append(response.response)
                self._flush(out)
                self._to_channel(buf[body_end:])
                return
            if not isinstance(response, bytes):
                # Coordinated: answered when the owners have it; nothing more is read
                # meanwhile, so the answers of this connection keep their order.
                self._buf = buf[body_end:]
                self._flush(out)
                self._disarm_stall()
                self._later = (  # a future when coordinated without a task (the usual case)
                    response
                    if isinstance(response, asyncio.Future)
                    else asyncio.ensure_future(response)
                )
                self._later.add_done_callback(self._answered_later)
                return
            out.append(response)
            size += len(response)
            pos, answered = body_end, True
            if size >= WRITE_CHUNK:  # may pause writing: then the loop stops here
                self._flush(out)
                out, size = [], 0
        else:
            # Everything received was answered (or writing paused with requests waiting).
            self._buf = buf[pos:]
            self._flush(out)
            self._disarm_stall()
            self._last = self._loop.time()
            return
        self._buf = buf[pos:]
        self._flush(out)
        self._hand_over()

    def _answered_later(self, task: asyncio.Future[bytes]) -> None:
        """Write a coordinated write's answer, then go on with what arrived meanwhile."""
        self._later = None
        transport = self._transport
        if task.cancelled() or transport is None or transport.is_closing():
            return
        transport.write(task.result())  # `_coordinated` answers every error itself
        self._last = self._loop.time()
        if self._hand_over_later:
            self._hand_over()
        elif self._eof and not self._buf:
            transport.close()
        elif self._eof:
            self._hand_over()  # a half-sent request and the peer's close: aiohttp decides
        else:
            if not self._write_paused:
                self._resume_reading()
            self._process()
            if not self.handed_over:
                self._account(self._have if self._need else len(self._buf))

    def _wait(self, rest: bytes, need: int, out: list[bytes], answered: bool) -> None:
        """Keep `rest` (an incomplete request; `need`: its full size when known) and wait."""
        self._buf = rest
        if need:
            self._need, self._have = need, len(rest)
        self._flush(out)
        if answered:
            self._disarm_stall()  # the stall clock runs per request
        self._arm_stall()

    def _flush(self, out: list[bytes]) -> None:
        if out and self._transport is not None:
            self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _to_channel(self, rest: bytes) -> None:
        """The connection speaks the pulse channel from here (the 101 is written)."""
        transport = self._transport
        assert transport is not None
        self.handed_over = True
        self._cancel_timers()
        self._release()
        channel = self._channel = PulseChannelServer(self._fast, keep=self)
        transport.set_protocol(channel)
        channel.connection_made(transport)
        if self._write_paused:
            channel.pause_writing()
        self._buf, self._more, self._need = b"", [], 0
        if rest:
            channel.data_received(rest)

    def _hand_over(self) -> bool:
        """Give the connection, with every unanswered byte, to aiohttp for good; returns what
        aiohttp's `eof_received` answered when the peer had already half-closed."""
        transport = self._transport
        if transport is None or self.handed_over or transport.is_closing():
            return False
        self.handed_over = True
        self._cancel_timers()
        self._release()  # aiohttp's own limits apply from here
        inner = self._fallback()
        transport.set_protocol(inner)
        inner.connection_made(transport)
        if self._write_paused:
            inner.pause_writing()
        transport.resume_reading()  # aiohttp keeps its own flow control from here
        self._reading_paused = False
        rest = b"".join([self._buf, *self._more]) if self._more else self._buf
        self._buf, self._more, self._need = b"", [], 0
        if rest:
            inner.data_received(rest)
        if self._eof and not transport.is_closing():
            return bool(inner.eof_received())
        return False

    # The stall clock: `_waiting_since` is when the incomplete request began to wait; one
    # timer per connection checks it and re-arms itself while requests keep completing, so a
    # large body arriving in several reads costs no timer of its own.

    def _arm_stall(self) -> None:
        loop = asyncio.get_running_loop()
        if self._waiting_since is None:
            self._waiting_since = loop.time()
        if self._stall is None:
            self._stall = loop.call_at(self._waiting_since + STALL_SECS, self._stalled)

    def _disarm_stall(self) -> None:
        self._waiting_since = None

    def _stalled(self) -> None:
        self._stall = None
        since = self._waiting_since
        if since is None:
            return  # nothing is waiting: the next wait arms the clock again
        loop = asyncio.get_running_loop()
        if loop.time() < since + STALL_SECS:
            self._stall = loop.call_at(since + STALL_SECS, self._stalled)
            return
        if not self._need and len(self._buf) <= MAX_HEAD and not self._buf.translate(None, _PLAIN):
            # A plain head, incomplete: keep it here (aiohttp would hold a half-sent head
            # until its keep-alive timeout) and give up on it after `head_secs`. Anything
            # else goes to aiohttp, whose parser refuses garbage at once.
            head_until = since + self._fast.head_secs
            if loop.time() < head_until:
                self._stall = loop.call_at(head_until, self._stalled)
                return
            self._head_timeout()
            return
        self._hand_over()

    def _head_timeout(self) -> None:
        """408 and close: a request head not complete within pmcluster.header.timeout.secs."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        body = (
            b'{"error": "request_timeout", "detail": "request head not complete within '
            b'pmcluster.header.timeout.secs"}'
        )
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n"
            % len(body)
            + self._fast.common_head()
            + b"\r\n"
            + body
        )
        self._buf, self._more = b"", []
        self._release()
        transport.close()

    def _check_idle(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self.handed_over:
            return
        loop = asyncio.get_running_loop()
        idle_until = self._last + self._fast.idle_secs
        if self._buf or self._more or self._later is not None or loop.time() < idle_until:
            self._idle = loop.call_at(max(idle_until, loop.time() + 1.0), self._check_idle)
            return
        transport.close()

    def _cancel_timers(self) -> None:
        self._waiting_since = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
