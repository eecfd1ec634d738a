"""Parallel requests to several nodes: one timeout, failure tracking, background stragglers.

`FanOut` is how the client asks many nodes at once. It lets the `FailureTracker` drop nodes
that are backing off, never waits longer than one request timeout, and tells node failures
(`NodeUnavailable`, `ProtocolError`: ask someone else) from caller errors (bad path, auth:
re-raised as is). Writes return on the first acknowledgements they need and leave the other
requests running in the background, tracked so `close()` can await or cancel them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from pmcluster.client.failures import FailureTracker
from pmcluster.client.transport import Transport
from pmcluster.errors import ClusterUnavailable, NodeUnavailable, ProtocolError
from pmcluster.ring import Member

__all__ = ["NODE_ERRORS", "FanOut"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Call = Callable[[Transport], Awaitable[T]]
# Failures of one node (it is skipped, others may answer); anything else is the caller's error.
NODE_ERRORS = (NodeUnavailable, ProtocolError)
# A request that "took" this many timeouts did not time out because of the node: this process
# was paused (SIGSTOP, a VM freeze, a starved loop) and every timer fired late at once. Such
# failures are not recorded, or a node resuming from SIGSTOP would skip every peer as failing
# and answer reads from its own (stale) store alone.
PAUSE_FACTOR = 2.0


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


class FanOut:
    """Runs one request per node in parallel over `transport_for(member)`."""

    def __init__(
        self,
        transport_for: Callable[[Member], Transport],
        failures: FailureTracker,
        stats: Counter[str],
        timeout_secs: float,
    ) -> None:
        self._transport_for = transport_for
        self.failures = failures
        self.stats = stats
        self.timeout_secs = timeout_secs
        self._background: set[asyncio.Task[Any]] = set()
        self._abandoned: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        """Give background requests up to one timeout to finish, then cancel them."""
        tasks = self._background | self._abandoned
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.timeout_secs)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # --- one node ---------------------------------------------------------------------------

    def _plan(self, members: Sequence[Member]) -> list[Member]:
        by_id = {m.node_id: m for m in members}
        planned = [by_id[n] for n in self.failures.plan(list(by_id))]
        self.stats["skipped"] += len(by_id) - len(planned)
        return planned

    async def _attempt(self, member: Member, call: Call[T]) -> T:
        """One request to one node, recorded with the failure tracker."""
        started = asyncio.get_running_loop().time()
        try:
            result = await call(self._transport_for(member))
        except NODE_ERRORS as exc:
            # An abandoned request is counted as timed out by `_give_up`.
            if asyncio.current_task() not in self._abandoned and not self._overslept(started):
                self.failures.record_failure(member.node_id)
                self.stats["node_failures"] += 1
                log.debug("node %s failed: %s", member.node_id, exc)
            raise
        self.failures.record_success(member.node_id)
        return result

    def _start(self, members: Sequence[Member], call: Call[T]) -> dict[asyncio.Task[T], str]:
        return {asyncio.ensure_future(self._attempt(m, call)): m.node_id for m in members}

    def _overslept(self, started: float) -> bool:
        """True when far more than a timeout passed since `started`: we were paused."""
        return asyncio.get_running_loop().time() - started > self.timeout_secs * PAUSE_FACTOR

    def spawn(self, request: Awaitable[Any]) -> None:
        """Run a request nobody waits for (read repair), tracked so `close()` awaits it."""
        task = asyncio.ensure_future(request)
        self._background.add(task)
        task.add_done_callback(self._probe_done)

    def _cancel(self, task: asyncio.Task[Any]) -> None:
        """Cancel a request nobody waits for any more, tracked until it ends (`close()`)."""
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned_done)
        task.cancel()

    def _drop(self, tasks: Iterable[asyncio.Task[Any]]) -> None:
        """The caller went away: cancel its unfinished requests (not the nodes' fault)."""
        for task in tasks:
            if not task.done():
                self._cancel(task)
            elif not task.cancelled():
                task.exception()  # consumed: nobody else will look at it

    def _give_up(
        self, tasks: Iterable[asyncio.Task[Any]], names: dict[Any, str], started: float
    ) -> None:
        """The requests in `tasks` took too long: count them failed and cancel them."""
        paused = self._overslept(started)
        for task in tasks:
            self._cancel(task)
            if paused:
                continue
            self.failures.record_failure(names[task])
            self.stats["node_failures"] += 1
            log.debug("node %s timed out", names[task])

    def _probe_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()

    def _abandoned_done(self, task: asyncio.Task[Any]) -> None:
        # aiohttp may turn our cancel into its own timeout error: consume however it ended.
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()

    @staticmethod
    def _caller_error(done: Iterable[asyncio.Task[Any]]) -> BaseException | None:
        """The first error in `done` that is not a node failure (every exception consumed)."""
        found: BaseException | None = None
        for task in done:
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not isinstance(exc, NODE_ERRORS) and found is None:
                found = exc
        return found

    # --- many nodes -------------------------------------------------------------------------

    async def gather(
        self,
        members: Sequence[Member],
        call: Call[T],
        what: str,
        *,
        skip_failing: bool = True,
        required: int = 1,
    ) -> list[T]:
        """Ask the members, wait at most one timeout, return the answers that came.

        `skip_failing=False` asks even nodes in back-off (deletes must reach every replica
        that can hear them). Raises a caller error (bad path, auth) a node reported, or
        `ClusterUnavailable` when fewer than `required` members answered.
        """
        planned = self._plan(members) if skip_failing else list(members)
        suspects = {m.node_id for m in planned if self.failures.looks_down(m.node_id)}
        loop = asyncio.get_running_loop()
        started = loop.time()
        names = self._start(planned, call)
        if not names:
            raise ClusterUnavailable(f"{what}: no members to ask")
        healthy = {task for task, node in names.items() if node not in suspects}
        probes = set(names) - healthy
        try:
            if healthy:
                # A node that has been failing is only probed: the answer waits for the
                # healthy nodes, not for the probe, which finishes in the background and
                # tells the failure tracker whether the node is back. A hung node then costs
                # one read one timeout, not one timeout per probe - unless the healthy nodes
                # gave too few answers, in which case the probes get the rest of the time.
                done, pending = await asyncio.wait(healthy, timeout=self.timeout_secs)
                done |= {task for task in probes if task.done()}
                probes -= done
                answered = sum(1 for task in done if not _failed(task))
                if probes and answered < required:
                    left = max(self.timeout_secs - (loop.time() - started), 0.0)
                    more, probes = await asyncio.wait(probes, timeout=left)
                    done |= more
                    pending |= probes
                else:
                    for task in probes:
                        self._background.add(task)
                        task.add_done_callback(self._probe_done)
            else:
                done, pending = await asyncio.wait(names, timeout=self.timeout_secs)
        except BaseException:  # the caller was cancelled: no request outlives it untracked
            self._drop(names)
            raise
        self._give_up(pending, names, started)
        error = self._caller_error(done)
        if error is not None:
            raise error
        answers = [task.result() for task in done if not _failed(task)]
        if len(answers) < required or not answers:
            self.stats[f"{what}_unavailable"] += 1
            raise ClusterUnavailable(
                f"{what}: {len(answers)} of {sorted(names.values())} answered, "
                f"{max(required, 1)} needed"
            )
        if len(answers) < len(members):
            self.stats[f"{what}_partial"] += 1
        return answers

    async def first_acks(
        self,
        members: Sequence[Member],
        call: Call[Any],
        what: str,
        covers: Callable[[str], Iterable[int]] = lambda _: (0,),
        needed: int = 1,
    ) -> None:
        """Send to every planned member; return once each of `needed` items has an ack.

        `covers(node_id)` names the items a node's ack covers (one item for a plain write,
        the batch's indices for a batch). Unfinished requests continue in the background.
        """
        names = self._start(self._plan(members), call)
        acked: set[int] = set()
        pending: set[asyncio.Task[Any]] = set(names)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_secs
        while pending and len(acked) < needed:
            try:
                done, pending = await asyncio.wait(
                    pending,
                    timeout=max(deadline - loop.time(), 0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            except BaseException:  # the caller was cancelled
                self._drop(names)
                raise
            if not done:
                break
            error = self._caller_error(done)
            if error is not None:
                self._give_up(pending, names, deadline - self.timeout_secs)
                raise error
            acked.update(i for task in done if not _failed(task) for i in covers(names[task]))
        if len(acked) < needed:
            self._give_up(pending, names, deadline - self.timeout_secs)
            self.stats[f"{what}_unavailable"] += 1
            raise ClusterUnavailable(
                f"{what}: {needed - len(acked)} item(s) unacknowledged by {sorted(names.values())}"
            )
        self._count_partial(what, len(members) - len(names), names, pending)

    def _count_partial(
        self, what: str, skipped: int, names: dict[Any, str], pending: set[asyncio.Task[Any]]
    ) -> None:
        """Count the write partial once all its requests ended, if any owner missed it."""
        failed = skipped + sum(1 for t in names if t not in pending and _failed(t))
        left = len(pending)

        def one_done(task: asyncio.Task[Any]) -> None:
            nonlocal failed, left
            self._background.discard(task)
            failed += _failed(task)
            left -= 1
            if left == 0 and failed:
                self.stats[f"{what}_partial"] += 1

        if not pending and failed:
            self.stats[f"{what}_partial"] += 1
        for task in pending:
            self._background.add(task)
            task.add_done_callback(one_done)


def abandon(task: asyncio.Task[Any]) -> None:
    """Cancel a request nobody waits for any more, and consume however it ends."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    task.cancel()
