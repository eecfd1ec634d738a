"""Storm's own Pacemaker protocol against a node: pipelined SEND_PULSE and the Nimbus round.

A node serves Storm's framed Thrift protocol on its HTTP port (the first byte tells them
apart). `storm_load` is what Storm clients talking to one Pacemaker do: several TCP connections
per process, each keeping many SEND_PULSEs in flight (Storm's client pipelines up to 100 per
connection), written from prebuilt frames so the load generator is cheap. `storm_read_round`
is Nimbus over the same protocol: GET_ALL_NODES_FOR_PATH on the root, then
GET_ALL_PULSE_FOR_PATH per topology.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from pmcluster.tools.bench.load import Control, Outcome, Tally

_MID = struct.Struct(">i")

__all__ = ["StormSpec", "storm_load", "storm_populate", "storm_read_round"]

_TIMEOUT_SECS = 30.0
_TICK_SECS = 0.01  # the paced load's clock


@dataclass(frozen=True)
class StormSpec:
    """One process: `connections` Storm connections sharing `in_flight` SEND_PULSE calls."""

    host: str
    port: int
    paths: tuple[str, ...]
    payload: int
    in_flight: int
    connections: int
    # Paced: this many SEND_PULSEs per second over the process's connections, sent on a
    # clock whatever the replies (workers heartbeating on their timers), at most `in_flight`
    # unanswered; 0: closed loop (a new request for every reply).
    rate: float = 0.0
    # The connections go to these hosts in turn (Storm workers listing every server);
    # empty: all to `host`.
    hosts: tuple[str, ...] = ()


def storm_frames(paths: Sequence[str], payload: bytes) -> list[bytes]:
    """A SEND_PULSE frame per path, without its last 5 bytes (message id + STOP), which
    `_StormLoad` appends per send: Thrift writes `message_id`, field 3, last."""
    from pmcluster.storm.codec import HBMessage, HBMessageData, HBPulse, encode_frame
    from pmcluster.storm.codec import HBServerMessageType as T

    frames = []
    for path in paths:
        frame = encode_frame(
            HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse(path, payload)), 0)
        )
        if not frame.endswith(b"\x08\x00\x03\x00\x00\x00\x00\x00"):
            raise AssertionError("SEND_PULSE frame does not end with its message id")
        frames.append(frame[:-5])
    return frames


_REPLY_OK = _MID.pack(5)  # HBServerMessageType.SEND_PULSE_RESPONSE


class _StormLoad(asyncio.Protocol):
    """One Storm connection keeping `depth` SEND_PULSEs in flight, as Storm's client pipelines
    them; replies are matched by message id (they may come out of order). Written from
    prebuilt frames and parsed just enough, so the load generator's CPU goes to the wire."""

    def __init__(self, tally: Tally, depth: int, rate: float = 0.0) -> None:
        self._tally = tally
        self._depth = depth
        self._rate = rate  # paced: SEND_PULSEs per second on this connection (0: closed loop)
        self._owed = 0.0
        self._last_tick = 0.0
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._sent: dict[int, float] = {}
        self._next_id = 0
        self._stopping = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._tally.open += 1
        if self._rate > 0:
            self._last_tick = time.monotonic()
            asyncio.get_running_loop().call_later(_TICK_SECS, self._tick)
        else:
            self._send(self._depth)

    def _tick(self) -> None:
        """Paced: send what the clock owes since the last tick (within the in-flight cap)."""
        if self._stopping or self._transport is None or self._transport.is_closing():
            return
        now = time.monotonic()
        self._owed += (now - self._last_tick) * self._rate
        self._last_tick = now
        count = min(int(self._owed), self._depth - len(self._sent))
        if count > 0:
            self._owed -= count
            self._send(count)
        elif now >= self._tally.t1:
            self._send(0)  # the window is over: stop once the answers are in
        if not self._stopping:
            asyncio.get_running_loop().call_later(_TICK_SECS, self._tick)

    def _send(self, count: int) -> None:
        assert self._transport is not None
        now = time.monotonic()
        if now >= self._tally.t1:
            self._stopping = True
            if not self._sent:
                self._transport.close()
            return
        out = []
        for _ in range(count):
            mid = self._next_id
            self._next_id = (mid + 1) & 0x7FFFFFFF
            self._sent[mid] = now
            out.append(self._tally.take() + _MID.pack(mid) + b"\x00")
        self._transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        pos, answered, now = 0, 0, time.monotonic()
        while len(buffer) - pos >= 4:
            (length,) = _MID.unpack_from(buffer, pos)
            end = pos + 4 + length
            if end > len(buffer):
                break
            body = buffer[pos + 4 : end]
            pos = end
            # SEND_PULSE_RESPONSE without data: type (field 1), message_id (field 3), STOP.
            ok = len(body) == 15 and body[3:7] == _REPLY_OK
            (mid,) = _MID.unpack_from(body, len(body) - 5)
            started = self._sent.pop(mid, now)
            self._tally.record(started, now, ok)
            answered += 1
        self._buffer = buffer[pos:]
        if self._stopping:
            if not self._sent and self._transport is not None:
                self._transport.close()
        elif answered and not self._rate:
            self._send(answered)

    def connection_lost(self, exc: Exception | None) -> None:
        self._tally.closed()


def storm_load(spec: StormSpec, ctl: Control) -> Outcome:
    """The `drive` target for the Storm protocol: `spec.connections` connections, each with
    `spec.in_flight // spec.connections` SEND_PULSEs in flight."""
    frames = storm_frames(spec.paths, os.urandom(spec.payload))
    window = ctl.wait_window()
    connections = max(1, spec.connections)
    depth = max(1, spec.in_flight // connections)

    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        tally = Tally(frames, 1, window, ctl)
        hosts = spec.hosts or (spec.host,)
        rate = spec.rate / connections
        for i in range(connections):
            await loop.create_connection(
                lambda: _StormLoad(tally, depth, rate), hosts[i % len(hosts)], spec.port
            )
        await asyncio.wait_for(tally.all_closed, window[1] - time.monotonic() + _TIMEOUT_SECS)
        ctl.progress(tally.done)
        return tally.outcome

    return asyncio.run(main())


async def storm_populate(host: str, port: int, paths: Sequence[str], payload: int) -> None:
    """Store every path with `payload` bytes over one pipelined Storm connection."""
    from pmcluster.storm.client import StormClient

    data = b"s" * payload
    async with StormClient(host, port, timeout=_TIMEOUT_SECS) as client:
        await asyncio.gather(*(client.send_pulse(path, data) for path in paths))


async def storm_read_round(host: str, port: int, root: str) -> tuple[float, int, int]:
    """One Nimbus round over the Storm protocol: (seconds, heartbeats read, bytes read)."""
    from pmcluster.storm.client import StormClient

    async with StormClient(host, port, timeout=_TIMEOUT_SECS) as client:
        started = time.monotonic()
        topologies = await client.get_all_nodes_for_path(root)
        results = await asyncio.gather(
            *(client.get_all_pulse_for_path(f"{root}/{t}") for t in topologies)
        )
        seconds = time.monotonic() - started
    pulses = [p for result in results for p in result]
    return seconds, len(pulses), sum(len(data) for _, data in pulses)


async def storm_nimbus_round(hosts: Sequence[str], port: int, root: str) -> tuple[float, int, int]:
    """A Nimbus round as Storm's own `PaceMakerStateStorage` makes it, which every Pacemaker
    server answers (Storm's returns nothing for GET_ALL_PULSE_FOR_PATH): the topologies
    (GET_ALL_NODES_FOR_PATH on `root`), each topology's workers (`get_worker_hb_children`:
    GET_ALL_NODES_FOR_PATH, unioned over the servers), then one GET_PULSE per worker to every
    server (`get_worker_hb`), keeping an answer with data. Pipelined up to 100 in flight per
    connection, as Storm's client allows. (seconds, heartbeats read, bytes read)."""
    from contextlib import AsyncExitStack

    from pmcluster.storm.client import StormClient

    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(StormClient(h, port, timeout=_TIMEOUT_SECS))
            for h in hosts
        ]
        started = time.monotonic()

        async def union(path: str) -> list[str]:
            answers = await asyncio.gather(*(c.get_all_nodes_for_path(path) for c in clients))
            return sorted({name for answer in answers for name in answer})

        async def newest(path: str) -> bytes | None:
            answers = await asyncio.gather(*(c.get_pulse(path) for c in clients))
            return next((data for data in answers if data), None)

        topologies = await union(root)
        workers = await asyncio.gather(*(union(f"{root}/{t}") for t in topologies))
        paths = [
            f"{root}/{t}/{w}" for t, names in zip(topologies, workers, strict=True) for w in names
        ]
        found = [data for data in await asyncio.gather(*map(newest, paths)) if data is not None]
        seconds = time.monotonic() - started
    return seconds, len(found), sum(len(data) for data in found)
