"""Write coalescing: concurrent single writes leave as one batch per owner.

On by default (`pmcluster.write.coalesce`; `ClusterClient(..., coalesce=False)` turns it off).

Many heartbeats from one process (workers of a supervisor, a coordinating node forwarding
Storm or HTTP writes) would otherwise cost one request per heartbeat per owner. A caller of
`WriteCoalescer.write` enqueues its entry and awaits a future; the queue is flushed on the
next loop iteration (`call_soon`: no timer, so a lone write waits one iteration, not a time
slice) or as soon as it reaches `max_entries` or `max_bytes`. Under load (the previous flush
merged writes) a batch gathers for `delay_secs` (`pmcluster.write.coalesce.delay.secs`, 2 ms)
instead: on a cluster of N nodes a flush splits over up to N - 1 peers, so without it the
batches, and with them the CPU per heartbeat, shrink as the cluster grows (docs/capacity.md).
A coordinating node's writes (`write_then`) carry a callback instead of a future: the outcome
reaches the caller, and its answer the client, in the same loop iteration as the
acknowledgements, with no future, task or loop callback per write in between.
Batches travel over the pulse channel when the owner takes one (`pmcluster.client.channel`),
else as `POST /v1/batch`. A flush groups the entries by
owner on the current ring and sends each owner its share in one batch through the client's
`FanOut.all_acks` (every owner, backed-off ones too; one request timeout).

Outcome per entry (the caller's future), matching the single-write semantics: every entry
resolves only once every owner that is not failing has answered its batch (never on the first
ack: the replication guarantee of docs/reliability.md holds for coalesced writes too), then
- `versioned` entries (the writer gave a version) resolve True when some owner stored them;
- other entries (versions the client assigned; the batch then waits for backed-off owners
  too) resolve True when every answering owner stored its whole batch; False when an owner
  ignored some entry of it, because the batch answer does not say which, so the caller asks
  its owners on its own (`PUT`, which reports the version that won) and retries above it;
- an entry no owner acknowledged fails with `ClusterUnavailable`;
- when a batch fails with a caller's error (auth, memory cap, a refused body), the entries
  left unresolved resolve False: each caller repeats its write alone and gets its own
  outcome, so one caller's problem never becomes another's. A flush of a single entry also
  resolves False at once: at low load writes travel exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pmcluster.client.fanout import FanOut
from pmcluster.client.loop import create_task, running_loop
from pmcluster.client.transport import Transport
from pmcluster.client.versionclock import MAX_VERSION
from pmcluster.errors import ClusterUnavailable
from pmcluster.ring import Member

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_ENTRIES", "Outcome", "WriteCoalescer"]

log = logging.getLogger(__name__)

MAX_BATCH_ENTRIES = 500  # entries per flush
MAX_BATCH_BYTES = 1 << 20  # payload and path bytes per flush (bounded by the message size too)
_RECORD_OVERHEAD = 16  # u32 path_len + i64 version + u32 data_len

Outcome = Callable[[bool | BaseException], None]
"""What `write_then` calls once with an entry's outcome: True, False (write it alone) or the
error (`ClusterUnavailable`); called from the coalescer's own flush or batch, so it must not
block, and an exception it raises is logged and goes no further."""


@dataclass(slots=True, eq=False)
class _Entry:
    path: str
    data: bytes
    version: int
    versioned: bool
    future: asyncio.Future[bool] | None
    then: Outcome | None = None
    acks: int = 0
    ignored: bool = False
    owners: Sequence[Member] = field(default=())


class WriteCoalescer:
    """Merges concurrent writes into batches per owner; see the module docstring."""

    def __init__(
        self,
        owners: Callable[[str], Sequence[Member]],
        fanout: FanOut,
        stats: dict[str, int] | None = None,
        *,
        max_entries: int = MAX_BATCH_ENTRIES,
        max_bytes: int = MAX_BATCH_BYTES,
        delay_secs: float = 0.0,
    ) -> None:
        """`owners(path)`: the path's owners on the current ring. `delay_secs`: under load
        (the previous flush merged writes), how long a batch gathers writes after its first
        before it leaves; otherwise, and with 0, it leaves on the next loop iteration."""
        self.delay_secs = delay_secs
        self._busy = False
        self._owners = owners
        self._fanout = fanout
        self._stats: dict[str, int] = stats if stats is not None else {}
        self.max_entries = max(1, max_entries)
        self.max_bytes = max(1, max_bytes)
        self._queue: list[_Entry] = []
        self._queued_bytes = 0
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def accepts(self, data: bytes, version: int) -> bool:
        """Whether a write can join a batch: bytes no larger than a quarter batch, a valid
        i64 version. Anything else travels alone (and meets its own errors alone)."""
        return (
            isinstance(data, bytes)
            and len(data) <= self.max_bytes // 4
            and type(version) is int
            and 0 < version <= MAX_VERSION
        )

    def write(
        self, path: str, data: bytes, version: int, *, versioned: bool
    ) -> asyncio.Future[bool]:
        """Enqueue one write of a normalised key path; see the module docstring for outcomes."""
        future: asyncio.Future[bool] = running_loop().create_future()
        self._enqueue(_Entry(path, data, version, versioned, future))
        return future

    def write_then(
        self, path: str, data: bytes, version: int, then: Outcome, *, versioned: bool = False
    ) -> None:
        """`write`, with the outcome passed to `then` (once) instead of a future."""
        self._enqueue(_Entry(path, data, version, versioned, None, then))

    def _enqueue(self, entry: _Entry) -> None:
        size = len(entry.path) + len(entry.data) + _RECORD_OVERHEAD
        if self._queue and self._queued_bytes + size > self.max_bytes:
            self.flush()
        self._queue.append(entry)
        self._queued_bytes += size
        if len(self._queue) >= self.max_entries:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            loop = running_loop()
            if self.delay_secs > 0 and self._busy:
                loop.call_later(self.delay_secs, self.flush)
            else:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what has accumulated now (normally called by the loop, once per iteration)."""
        self._scheduled = False
        entries, self._queue, self._queued_bytes = self._queue, [], 0
        self._busy = len(entries) > 1
        if not entries:
            return
        if len(entries) == 1:
            _settle(entries[0], False)  # nothing to merge with: the caller writes it alone
            return
        task = create_task(self._send(entries))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        """Flush what is queued and wait for the batches in flight (each bounded by the
        request timeout)."""
        self.flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _send(self, entries: list[_Entry]) -> None:
        by_node: dict[str, list[_Entry]] = {}
        members: dict[str, Member] = {}
        try:
            for entry in entries:
                owners = entry.owners = self._owners(entry.path)
                for member in owners:
                    by_node.setdefault(member.node_id, []).append(entry)
                    members[member.node_id] = member
        except ClusterUnavailable as exc:
            for entry in entries:
                _fail(entry, exc)
            return
        self._stats["coalesced_batches"] = self._stats.get("coalesced_batches", 0) + 1
        self._stats["coalesced_writes"] = self._stats.get("coalesced_writes", 0) + len(entries)

        async def call(transport: Transport) -> None:
            share = by_node[transport.node_id]
            _, ignored = await transport.batch([(e.path, e.data, e.version) for e in share])
            for entry in share:
                entry.acks += 1
                if ignored:
                    entry.ignored = True

        try:
            await self._fanout.all_acks(
                list(members.values()),
                call,
                "write",
                wait_suspects=not all(e.versioned for e in entries),
            )
        except ClusterUnavailable:
            pass  # no owner answered: every entry left fails below
        except Exception:
            # A caller's error (auth, memory cap, ...) for the whole batch: each caller whose
            # write is not acknowledged yet repeats it alone, to get its own outcome.
            for entry in entries:
                _settle(entry, False)
            return
        for entry in entries:
            if entry.acks == 0:
                _fail(
                    entry,
                    ClusterUnavailable(
                        f"write: none of {[m.node_id for m in entry.owners]} acknowledged"
                    ),
                )
            else:
                _settle(entry, entry.versioned or not entry.ignored)


def _settle(entry: _Entry, done: bool) -> None:
    _resolve(entry, done)


def _fail(entry: _Entry, exc: BaseException) -> None:
    _resolve(entry, exc)


def _resolve(entry: _Entry, outcome: bool | BaseException) -> None:
    """Give `entry` its outcome once: through its callback, else its future."""
    then = entry.then
    if then is not None:
        entry.then = None
        try:
            then(outcome)
        except Exception:  # one caller's bug must not stop the others' outcomes
            log.exception("write coalescer: an outcome callback failed")
        return
    future = entry.future
    if future is None or future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
