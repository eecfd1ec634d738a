"""The node's end of a pulse channel (`pmcluster.protocol.channel`): batches in, acks out.

`FastHttpConnection` answers a well-formed upgrade request with 101 and hands the connection
to `PulseChannelServer`. Every complete frame of a read is stored at once (the store is
synchronous, so nothing is ever in flight here) and the acks of one read leave in one write.
A frame is validated as `POST /v1/batch`'s body is (decoder, version ceiling, memory cap);
a refused frame stores nothing and is answered with the HTTP route's status and error body.

Bounds: a frame larger than the node's message size limit is refused and the connection
closed (its bytes are never buffered); the bytes of an incomplete frame count against the
node's buffer budget; a frame must complete within `pmcluster.frame.timeout.secs` of its
first byte, and a channel with nothing to do for `pmcluster.http.idle.secs` is closed (the
client knows the limit from the handshake and reconnects before it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Protocol, cast

from pmcluster.errors import PmclusterError
from pmcluster.node.appstate import NodeState
from pmcluster.node.local import LocalBackend
from pmcluster.node.metrics import Metrics
from pmcluster.node.requests import check_versions, version_ceiling
from pmcluster.protocol import pulsecodec
from pmcluster.protocol.budget import BudgetShare, BufferBudget
from pmcluster.protocol.channel import REQUEST_HEAD, encode_ack, encode_error_ack
from pmcluster.protocol.http import status_for
from pmcluster.store import PulseStore

__all__ = ["ChannelHost", "PulseChannelServer"]

log = logging.getLogger(__name__)

_HEAD = REQUEST_HEAD.size


class ChannelHost(Protocol):
    """What a channel needs of its node: `FastPath` (the HTTP fast path's store and rules)."""

    state: NodeState
    local: LocalBackend
    store: PulseStore
    metrics: Metrics
    budget: BufferBudget | None
    max_body: int
    max_entries: int
    skew_secs: float
    idle_secs: float
    frame_secs: float


def _error_body(name: str, detail: str) -> bytes:
    return json.dumps({"error": name, "detail": detail}).encode()


class PulseChannelServer(asyncio.Protocol):
    """One upgraded connection; see the module docstring."""

    def __init__(self, fast: ChannelHost, keep: object = None) -> None:
        """`keep`: an object that must live as long as this connection (the HTTP connection
        the node's shutdown reaches it through)."""
        self._fast = fast
        self._keep = keep
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # set by `connection_made`
        self._buf = b""
        self._more: list[bytes] = []
        self._have = 0
        self._need = 0  # the size of the frame being collected in `_more` (0: none)
        self._epoch = ""  # the epoch the last ack carried
        self._share = BudgetShare(fast.budget)  # bytes of an incomplete frame held
        self._last = 0.0
        self._frame_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._epoch = self._fast.state.epoch  # the 101 carried it
        self._fast.metrics.channels_opened.value += 1
        loop = self._loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_later(min(self._fast.idle_secs, self._fast.frame_secs), self._tick)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last = self._loop.time()
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
        if not self._closing:
            self._account(self._have if self._need else len(self._buf))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release()
        self._keep = None

    def pause_writing(self) -> None:
        # The client does not read its acks: stop reading its frames too.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    def shutdown(self) -> None:
        """The node is stopping: every frame received was answered already; close."""
        self._close()

    # --- frames -------------------------------------------------------------------------------

    def _process(self) -> None:
        buf, pos, out = self._buf, 0, []
        limit = self._fast.max_body
        while len(buf) - pos >= _HEAD:
            seq, length = REQUEST_HEAD.unpack_from(buf, pos)
            if length > limit:
                out.append(
                    encode_error_ack(
                        seq,
                        413,
                        _error_body(
                            "payload_too_large",
                            f"channel frame of {length} bytes exceeds the limit of {limit} "
                            "bytes (pacemaker.thrift.message.size.max)",
                        ),
                    )
                )
                self._write(out)
                self._close()
                return
            end = pos + _HEAD + length
            if end > len(buf):
                self._buf = buf[pos:]
                self._need, self._have = end - pos, len(buf) - pos
                self._frame_since = self._frame_since or self._loop.time()
                self._write(out)
                return
            out.append(self._frame(seq, buf, pos + _HEAD, end))
            pos = end
            self._frame_since = None
        self._buf = buf[pos:]
        if self._buf:
            self._frame_since = self._frame_since or self._loop.time()
        self._write(out)

    def _frame(self, seq: int, buf: bytes, start: int, stop: int) -> bytes:
        """Store one frame's batch; its ack."""
        fast = self._fast
        began = time.perf_counter()
        fast.metrics.channel_frames.value += 1
        if fast.state.fenced:
            fast.metrics.record("batch", time.perf_counter() - began, 503)
            detail = "this node lost its ZooKeeper session; ask another node"
            return encode_error_ack(seq, 503, _error_body("fenced", detail))
        try:
            entries = pulsecodec.decode(buf, start=start, stop=stop, max_entries=fast.max_entries)
            check_versions(entries, version_ceiling(fast.skew_secs))
            stored = fast.store.send_pulses(entries, trusted=True)
        except PmclusterError as exc:
            status, name = status_for(exc)
            fast.metrics.record("batch", time.perf_counter() - began, status)
            return encode_error_ack(seq, status, _error_body(name, str(exc)))
        except Exception:
            log.exception("pulse channel: unexpected error storing a batch")
            fast.metrics.record("batch", time.perf_counter() - began, 500)
            return encode_error_ack(
                seq, 500, _error_body("internal_error", "unexpected server error (logged)")
            )
        fast.metrics.received_many([len(data) for _, data, _ in entries])
        ignored: list[tuple[int, int]] = []
        if stored < len(entries):
            ignored = self._ignored(entries)
        epoch = fast.state.epoch
        changed = b""
        if epoch != self._epoch:
            self._epoch = epoch
            changed = epoch.encode("ascii")
        fast.metrics.record("batch", time.perf_counter() - began, 200)
        return encode_ack(seq, stored, changed, ignored)

    def _ignored(self, entries: list[tuple[str, bytes, int]]) -> list[tuple[int, int]]:
        """The entries the store did not keep, with the version that won over each: what it
        holds now is not exactly the entry (a newer value, a covering tombstone, or a later
        entry of the same batch for the same key)."""
        store, local = self._fast.store, self._fast.local
        out = []
        for index, (path, data, version) in enumerate(entries):
            pulse = store.get_pulse(path)
            if pulse is None or pulse.version != version or pulse.data != data:
                out.append((index, local.held_version(path)))
        return out

    # --- plumbing -----------------------------------------------------------------------------

    def _write(self, out: list[bytes]) -> None:
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _account(self, held: int) -> None:
        """The bytes of an incomplete frame count against the node's buffer budget; past it
        the connection is dropped, as an HTTP connection's would be."""
        if self._share.hold(held):
            return
        log.warning("pulse channel dropped: pmcluster.buffer.max.bytes of partial frames held")
        self._abort()

    def _release(self) -> None:
        self._share.release()

    def _tick(self) -> None:
        """Close a channel idle past the node's idle limit, or a frame stalled past the frame
        timeout; re-arm otherwise."""
        self._timer = None
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        since = self._frame_since
        if since is not None and now - since >= self._fast.frame_secs:
            log.warning(
                "pulse channel dropped: a frame incomplete after %gs "
                "(pmcluster.frame.timeout.secs)",
                self._fast.frame_secs,
            )
            self._abort()
            return
        if since is None and now - self._last >= self._fast.idle_secs:
            self._close()
            return
        until = self._last + self._fast.idle_secs
        if since is not None:
            until = min(until, since + self._fast.frame_secs)
        self._timer = loop.call_at(max(until, now + 0.05), self._tick)

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()
