"""Parallel requests to several nodes: one timeout, failure tracking, background stragglers.

`FanOut` is how the client asks many nodes at once. It lets the `FailureTracker` drop nodes
that are backing off (reads), never waits longer than one request timeout, and tells node
failures (an error class with `retriable = True`: ask someone else) from caller errors (bad
path, auth: re-raised as is). Writes (`all_acks`) go to every owner, backed-off ones too,
and return once every owner that is not failing has answered: the acknowledgement of a
write means every live owner stored it (docs/reliability.md, the replication guarantee).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from pmcluster.client.failures import FailureTracker
from pmcluster.client.loop import create_task, running_loop
from pmcluster.client.transport import Transport
from pmcluster.errors import ClusterUnavailable, PmclusterError
from pmcluster.ring import Member

__all__ = ["FanOut", "node_failure"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Call = Callable[[Transport], Awaitable[T]]
# A request that "took" this many timeouts did not time out because of the node: this process
# was paused (SIGSTOP, a VM freeze, a starved loop) and every timer fired late at once. Such
# failures are not recorded, or a node resuming from SIGSTOP would skip every peer as failing
# and answer reads from its own (stale) store alone.
PAUSE_FACTOR = 2.0


def node_failure(exc: BaseException | None) -> bool:
    """True for one node's failure (its error class is `retriable`): another node may answer."""
    return isinstance(exc, PmclusterError) and exc.retriable


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _why(done: Iterable[asyncio.Task[Any]], names: dict[Any, str]) -> str:
    """The first node failure among `done`, for an unavailable error's message: a wrong CA,
    a refused connection or a timeout reads differently to an operator."""
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            return f"; {names[task]}: {task.exception()}"
    return ""


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
        started = running_loop().time()
        try:
            result = await call(self._transport_for(member))
        except PmclusterError as exc:
            # An abandoned request is counted as timed out by `_give_up`.
            if (
                exc.retriable
                and exc.suspect
                and asyncio.current_task() not in self._abandoned
                and not self._overslept(started)
            ):
                self.failures.record_failure(member.node_id)
                self.stats["node_failures"] += 1
                log.debug("node %s failed: %s", member.node_id, exc)
            raise
        self.failures.record_success(member.node_id)
        return result

    def _start(self, members: Sequence[Member], call: Call[T]) -> dict[asyncio.Task[T], str]:
        return {create_task(self._attempt(m, call)): m.node_id for m in members}

    def _overslept(self, started: float) -> bool:
        """True when far more than a timeout passed since `started`: we were paused."""
        return running_loop().time() - started > self.timeout_secs * PAUSE_FACTOR

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
            if exc is not None and not node_failure(exc) and found is None:
                found = exc
        return found

    # --- many nodes -------------------------------------------------------------------------

    async def _wait(
        self,
        names: dict[asyncio.Task[T], str],
        suspects: set[str],
        enough: Callable[[set[asyncio.Task[T]]], bool],
        started: float,
    ) -> tuple[set[asyncio.Task[T]], set[asyncio.Task[T]]]:
        """Wait at most one timeout for the requests of members not in `suspects`; if their
        answers are not `enough`, the suspects' requests (probes) get the rest of the time.
        Probes still running then finish in the background and tell the failure tracker
        whether their node is back. Returns (done, pending); pending ones are given up."""
        loop = running_loop()
        healthy = {task for task, node in names.items() if node not in suspects}
        probes = set(names) - healthy
        try:
            if not healthy:
                done, pending = await asyncio.wait(names, timeout=self.timeout_secs)
                return done, pending
            # A node that has been failing is only probed: the answer waits for the healthy
            # nodes, not for the probe. A hung node then costs one request one timeout, not
            # one timeout per probe - unless the healthy nodes gave too little.
            done, pending = await asyncio.wait(healthy, timeout=self.timeout_secs)
        except BaseException:  # the caller was cancelled: no request outlives it untracked
            self._drop(names)
            raise
        done |= {task for task in probes if task.done()}
        probes -= done
        if probes and not enough(done):
            left = max(self.timeout_secs - (loop.time() - started), 0.0)
            try:
                more, probes = await asyncio.wait(probes, timeout=left)
            except BaseException:
                self._drop(names)
                raise
            done |= more
            pending |= probes
        else:
            for task in probes:
                self._background.add(task)
                task.add_done_callback(self._probe_done)
        return done, pending

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
        started = running_loop().time()
        names = self._start(planned, call)
        if not names:
            raise ClusterUnavailable(f"{what}: no members to ask")

        def enough(done: set[asyncio.Task[T]]) -> bool:
            return sum(1 for task in done if not _failed(task)) >= required

        done, pending = await self._wait(names, suspects, enough, started)
        self._give_up(pending, names, started)
        error = self._caller_error(done)
        if error is not None:
            raise error
        answers = [task.result() for task in done if not _failed(task)]
        if len(answers) < required or not answers:
            self.stats[f"{what}_unavailable"] += 1
            raise ClusterUnavailable(
                f"{what}: {len(answers)} of {sorted(names.values())} answered, "
                f"{max(required, 1)} needed{_why(done, names)}"
            )
        if len(answers) < len(members):
            self.stats[f"{what}_partial"] += 1
        return answers

    async def all_acks(
        self,
        members: Sequence[Member],
        call: Call[T],
        what: str,
        *,
        covers: Callable[[str], Iterable[int]] = lambda _: (0,),
        needed: int = 1,
        wait_suspects: bool = False,
    ) -> list[T]:
        """Send to every member (backed-off ones too) and wait, at most one timeout, for
        every member that is not failing: a write is acknowledged only once every live
        owner has it, never on the first ack. Members in back-off get the request as a
        probe; `wait_suspects=True` waits for them as well (writes whose version this
        client chose: docs/reliability.md, clock skew). Returns the answers that came.

        `covers(node_id)` names the items a node's ack covers (one item for a plain write,
        the batch's indices for a batch); each of the `needed` items must be acknowledged
        by some member, or `ClusterUnavailable` is raised. A caller error is re-raised.
        """
        names = self._start(members, call)
        if not names:
            raise ClusterUnavailable(f"{what}: no members to ask")
        suspects = (
            set()
            if wait_suspects
            else {m.node_id for m in members if self.failures.looks_down(m.node_id)}
        )
        started = running_loop().time()

        def acked(done: Iterable[asyncio.Task[T]]) -> set[int]:
            return {i for task in done if not _failed(task) for i in covers(names[task])}

        def enough(done: set[asyncio.Task[T]]) -> bool:
            return len(acked(done)) >= needed

        done, pending = await self._wait(names, suspects, enough, started)
        self._give_up(pending, names, started)
        error = self._caller_error(done)
        if error is not None:
            raise error
        missing = needed - len(acked(done))
        if missing > 0:
            self.stats[f"{what}_unavailable"] += 1
            raise ClusterUnavailable(
                f"{what}: {missing} item(s) unacknowledged by {sorted(names.values())}"
                f"{_why(done, names)}"
            )
        answered = [task for task in done if not _failed(task)]
        if len(answered) < len(members):
            self.stats[f"{what}_partial"] += 1
        return [task.result() for task in answered]


def abandon(task: asyncio.Task[Any]) -> None:
    """Cancel a request nobody waits for any more, and consume however it ends."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    task.cancel()
