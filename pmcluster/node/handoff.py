"""Hand-off after a ring change: keys a node no longer owns go to their owners, then away.

When the ring changes, some of a node's keys get new owners. Writers move to the new owners at
once, and for the grace window readers still ask the old ones. After the grace window the old
owner sends each key it no longer owns to the key's owners with its version (an owner ignores
a copy older than its own or than a tombstone it holds) and then forgets its copy without a
tombstone (`PulseStore.discard`, only if the copy was not rewritten meanwhile). It also passes
on its tombstones, so a new owner knows of a delete before some replica that missed the
delete hands it a stale copy. So memory
follows ownership, adding a node takes load off the others, and a key that is not rewritten
(a path a tool created, a worker that stopped) survives any number of ring changes.

A node that is not in the ring (it is leaving, or between sessions) hands nothing off: a
drain does that. Cost: one pass over the node's keys per ring change, in chunks that yield to
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from pmcluster.client import ClusterClient
from pmcluster.errors import PmclusterError
from pmcluster.store import PulseStore

log = logging.getLogger(__name__)

CHUNK = 500
RETRY_SWEEPS = 3  # after a sweep that could not hand everything off, try again this often


@dataclass(frozen=True)
class HandOffResult:
    """What one sweep did: keys handed off and dropped, keys it could not hand off."""

    moved: int = 0
    failed: int = 0


class HandOff:
    """Schedules a sweep a grace window after every ring change (debounced)."""

    def __init__(
        self, store: PulseStore, client: ClusterClient, node_id: str, delay_secs: float
    ) -> None:
        self.store = store
        self.client = client
        self.node_id = node_id
        self.delay_secs = delay_secs
        self.total_moved = 0
        self._task: asyncio.Task[None] | None = None

    def ring_changed(self) -> None:
        """Call on the event loop whenever the membership changes: (re)start the countdown."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pmcluster-handoff")

    async def _run(self) -> None:
        for _ in range(1 + RETRY_SWEEPS):
            await asyncio.sleep(self.delay_secs)
            result = await self.sweep()
            if result.failed == 0:
                return

    async def sweep(self) -> HandOffResult:
        """Hand off every local key this node does not own in the current ring."""
        ring = self.client.ring
        if ring is None or ring.member(self.node_id) is None:
            return HandOffResult()
        foreign = [
            pulse
            for pulse in self.store.get_all_pulse_for_path("/")
            if all(owner.node_id != self.node_id for owner in ring.owners(pulse.path))
        ]
        moved = failed = 0
        for start in range(0, len(foreign), CHUNK):
            chunk = foreign[start : start + CHUNK]
            try:
                await self.client.send_pulses([(p.path, p.data, p.version) for p in chunk])
            except PmclusterError as exc:
                failed += len(chunk)
                log.warning("hand-off of %d keys failed: %s", len(chunk), exc)
                continue
            moved += sum(self.store.discard(p.path, p.version) for p in chunk)
            await asyncio.sleep(0)
        failed += await self._pass_on_deletes()
        if moved or failed:
            log.info("hand-off after epoch %s: %d keys moved, %d failed", ring.epoch, moved, failed)
        self.total_moved += moved
        return HandOffResult(moved, failed)

    async def _pass_on_deletes(self) -> int:
        """Send this node's tombstones to where they now belong (a recursive delete to every
        member, an exact delete to the key's owners): a new owner must know of a delete
        before a replica that missed it hands it a stale copy. Returns the failures."""
        failed = 0
        for path, tree_version, key_version in self.store.tombstones():
            try:
                if tree_version:
                    await self.client.delete_path(path, tree_version)
                if key_version > tree_version and path != "/":
                    await self.client.delete_pulse_id(path, key_version)
            except PmclusterError as exc:
                failed += 1
                log.debug("hand-off of the delete of %s failed: %s", path, exc)
        return failed

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
