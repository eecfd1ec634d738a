"""The ring-aware async `ClusterClient` (the blocking face is `pmcluster.client.sync`).

A thin façade over smaller parts: `Ring` says who owns a path, `NodeTransport` talks HTTP to
one node, `FailureTracker` skips failing nodes, `readmerge` merges replica answers.

- Writes go to every owner of the current ring in parallel (backed-off owners too) and are
  acknowledged only once every owner that is not failing has stored them, never on the
  first ack (docs/reliability.md, the replication guarantee). Concurrent `send_pulse` calls
  are coalesced (`pmcluster.client.coalesce`, `pmcluster.write.coalesce`, on by default):
  the writes queued in one loop iteration leave as one `POST /v1/batch` per owner.
- Reads ask the owners (plus, for `grace_window_secs` after each ring change, the replaced
  ring's owners: every ring replaced within the window, not only the last; and for the
  first grace window after the client starts, when it knows no earlier ring, every member)
  in parallel, never wait longer than one request timeout, and merge: the newest of values
  and tombstones wins. Absent only if at least one owner answered, and an owner that joined
  or restarted empty recently does not count as an answer when it says absent.
- Listing, get-all and recursive delete fan out to every member; one delete version for all.
- Membership: ZooKeeper when `zk_servers` is set; otherwise the seeds' own `GET /v1/members`
  view, refreshed whenever a response carries an epoch different from the ring's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp

from pmcluster.auth.client import make_request_auth
from pmcluster.auth.tls import client_ssl_context
from pmcluster.client import readmerge
from pmcluster.client.coalesce import MAX_BATCH_BYTES, WriteCoalescer
from pmcluster.client.failures import FailureTracker
from pmcluster.client.fanout import FanOut, abandon
from pmcluster.client.loop import create_task
from pmcluster.client.retry import MAX_VERSION_RETRIES, VersionRetry
from pmcluster.client.transport import NodeTransport, Transport
from pmcluster.client.versionclock import VersionClock
from pmcluster.config import Config
from pmcluster.errors import ClusterUnavailable, NodeNotReady, PmclusterError
from pmcluster.membership import MembershipSnapshot, MembershipSource, make_membership
from pmcluster.protocol.paths import normalize, normalize_key
from pmcluster.protocol.pulse import Pulse
from pmcluster.ring import Member, Ring

__all__ = ["MAX_VERSION_RETRIES", "ClusterClient"]

log = logging.getLogger(__name__)
T = TypeVar("T")
PulseInput = tuple[str, bytes] | tuple[str, bytes, int | None]
# Rings kept for grace reads at most: under flapping membership the oldest go first.
MAX_GRACE_RINGS = 8
LIFECYCLE_SLACK_SECS = 20.0  # ZooKeeper membership: start waits up to 15 s, a close up to 10 s
# Least time between two epoch-triggered membership refreshes.
REFRESH_INTERVAL_SECS = 0.25


class ClusterClient:
    """Async ring-aware client; `async with ClusterClient(config) as c: ...`."""

    def __init__(
        self,
        config: Config,
        *,
        membership: MembershipSource | None = None,
        session: aiohttp.ClientSession | None = None,
        failures: FailureTracker | None = None,
        local: Transport | None = None,
        coalesce: bool | None = None,
    ) -> None:
        """`local` answers for one member without HTTP (a node coordinating for itself).

        `coalesce` merges concurrent `send_pulse` calls into batches per owner
        (`pmcluster.client.coalesce`); None takes `pmcluster.write.coalesce` (on by default).

        The client routes by the ring itself, so every request it sends is marked forwarded:
        the receiving node answers from its own store instead of coordinating again."""
        self.config = config
        self.stats: Counter[str] = Counter()
        self.failures = failures if failures is not None else FailureTracker()
        self.clock = VersionClock()  # versions of writes that come without one
        self.retry = VersionRetry(self.clock, self.stats)
        self._on_behind: list[Callable[[str, str], None]] = []
        self._membership = membership
        self._own_membership = membership is None
        self._seed_mode = membership is None and not config.zk_servers
        self._session = session
        self._own_session = session is None
        self._ring: Ring | None = None
        # Rings replaced within the grace window, each with the time its window ends: a
        # reader that has moved on by several ring changes still asks the owners a writer
        # on any of those rings wrote to.
        self._previous: list[tuple[Ring, float]] = []
        # Until then (the first grace window after the first ring) reads ask every member:
        # a client that has just started knows no ring a writer may still be writing to.
        self._fresh_until = 0.0
        self._transports: dict[str, Transport] = {}
        # Credentials (`pacemaker.auth.method`) and TLS (`pmcluster.tls.*`) of this client; a
        # node's own client thereby authenticates to its peers with the node's credentials.
        self._auth = make_request_auth(config)
        self._ssl = client_ssl_context(config)
        if local is not None:
            self._transports[local.node_id] = local
        self._fanout = FanOut(
            self._transport, self.failures, self.stats, config.request_timeout_secs
        )
        self._coalescer: WriteCoalescer | None = None
        if config.write_coalesce if coalesce is None else coalesce:
            self._coalescer = WriteCoalescer(
                self._ring_owners,
                self._fanout,
                self.stats,
                max_bytes=min(MAX_BATCH_BYTES, config.max_message_size // 2),
                delay_secs=config.write_coalesce_delay_secs,
            )
        self._refresh: asyncio.Task[None] | None = None
        self._next_refresh = 0.0
        # Set by `follow_peers` while the membership source is out of reach and a peer is
        # ahead: the ring then comes from the peers' `/v1/members`, never older than this.
        self._peer_epoch: str | None = None
        self._has_ring = asyncio.Event()
        self._start_lock: asyncio.Lock | None = None
        self._subscribed = False
        self._started = False
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the session and membership, build the first ring (idempotent)."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise ClusterUnavailable("client is closed")
            if self._session is None:
                connector = aiohttp.TCPConnector(limit_per_host=32)
                # Auth cookies are handled by `self._auth` (cluster-wide, IP hosts too).
                self._session = aiohttp.ClientSession(
                    connector=connector, cookie_jar=aiohttp.DummyCookieJar()
                )
            if self._membership is None:
                self._membership = make_membership(self.config, None)
                await self._membership.start()
                self._membership.subscribe(self._on_snapshot)
            elif not self._subscribed:
                self._membership.subscribe(self._on_snapshot)  # an injected, caller-run source
            self._subscribed = True
            if self._seed_mode:
                await self._refresh_from_nodes(None)
            else:
                snapshot = self._membership.current()
                if snapshot is not None:
                    self._on_snapshot(snapshot)
                else:  # e.g. ZooKeeper's first children watch has not fired yet
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._has_ring.wait(), self.config.request_timeout_secs
                        )
            self._started = True

    async def close(self) -> None:
        """Finish or cancel background requests, stop membership, close the session."""
        self._closed = True
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
        if self._coalescer is not None:
            await self._coalescer.close()
        await self._fanout.close()
        for transport in self._transports.values():
            if isinstance(transport, NodeTransport):
                transport.close()
        if self._own_membership and self._membership is not None:
            await self._membership.stop()
        if self._own_session and self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- ring and membership ------------------------------------------------------------------

    @property
    def ring(self) -> Ring | None:
        """The current ring snapshot (None before the first membership answer)."""
        return self._ring

    def _grace_rings(self) -> list[Ring]:
        """The rings replaced less than `grace_window_secs` ago, newest first."""
        previous = self._previous
        if previous and previous[0][1] <= time.monotonic():
            now = time.monotonic()
            previous[:] = [(ring, until) for ring, until in previous if until > now]
        return [ring for ring, _ in previous]

    def _set_ring(
        self, members: Sequence[Member], epoch: str, points: int, replication: int
    ) -> None:
        current = self._ring
        if (
            current is not None
            and current.epoch == epoch
            and current.members == tuple(sorted(members, key=lambda m: m.node_id))
        ):
            return
        self._ring = Ring(members, epoch, points=points, replication=replication)
        self._has_ring.set()
        until = time.monotonic() + self.config.grace_window_secs
        if current is None:
            self._fresh_until = until
        else:
            self._previous.insert(0, (current, until))
            del self._previous[MAX_GRACE_RINGS:]
            self.stats["ring_changes"] += 1
            log.info("ring changed: %s -> %s (%d members)", current.epoch, epoch, len(members))

    def _on_snapshot(self, snapshot: MembershipSnapshot) -> None:
        """Membership source callback: ZooKeeper/injected sources define the ring directly."""
        if self._seed_mode:
            return  # seed lists only tell us whom to ask; the nodes' view defines the ring
        ring = self._ring
        following = self._peer_epoch is not None and ring is not None
        if following and ring is not None and _zk_newer(ring.epoch, snapshot.epoch):
            return  # following the peers: an old session's view must not turn the ring back
        self._set_ring(
            snapshot.members, snapshot.epoch, self.config.ring_points, self.config.replication
        )

    def follow_peers(self, node_id: str, epoch: str) -> None:
        """The membership source cannot be reached and `node_id` answered at the newer
        `epoch`: take the ring from the peers' `/v1/members` (as a seed-list client does),
        now and whenever an answer carries a newer epoch, until `follow_membership`."""
        if self._peer_epoch is None or _zk_newer(epoch, self._peer_epoch):
            self._peer_epoch = epoch
        self._next_refresh = 0.0
        self._refresh_soon(node_id)

    def follow_membership(self) -> None:
        """The membership source answers again: it alone defines the ring from now on (a
        refresh from the peers still under way is dropped, so it cannot turn the ring back)."""
        self._peer_epoch = None
        if not self._seed_mode and self._refresh is not None and not self._refresh.done():
            abandon(self._refresh)
        if self._membership is not None and not self._seed_mode:
            current = self._membership.current()
            if current is not None:
                self._on_snapshot(current)

    def caught_up(self) -> bool:
        """Whether the ring is at least as new as the epoch `follow_peers` was told about."""
        ring, epoch = self._ring, self._peer_epoch
        return epoch is None or (ring is not None and not _zk_newer(epoch, ring.epoch))

    async def catch_up(self) -> bool:
        """`caught_up`, after waiting for a refresh from the peers (started when none runs;
        half a request timeout at most, so the request itself keeps the rest)."""
        if self.caught_up():
            return True
        self._refresh_soon(None)  # rate-limited: at most one every REFRESH_INTERVAL_SECS
        refresh = self._refresh
        if refresh is not None and not refresh.done():
            with contextlib.suppress(TimeoutError, PmclusterError):
                wait = self.config.request_timeout_secs / 2
                await asyncio.wait_for(asyncio.shield(refresh), wait)
        return self.caught_up()

    def on_behind(self, callback: Callable[[str, str], None]) -> None:
        """Call `callback(node_id, epoch)` when a node answers with a ZooKeeper epoch newer
        than this client's ring (the membership changed and this process has not seen it)."""
        self._on_behind.append(callback)

    def _on_epoch(self, node_id: str, epoch: str) -> None:
        """Transport callback: a node answered with its epoch; refresh if it differs.

        Every answer carries the node's epoch, so a client or node that is behind learns it
        on its next request: seed-list clients ask the nodes for the new view, ZooKeeper
        clients re-read ZooKeeper (an epoch `zk-N` only grows) and tell `on_behind`."""
        ring = self._ring
        if not self._started or self._closed:
            return
        if ring is not None and ring.epoch == epoch:
            return
        if not self._seed_mode:
            if ring is not None and _zk_newer(epoch, ring.epoch):
                refresh = getattr(self._membership, "refresh", None)
                if refresh is not None:
                    refresh()
                for callback in self._on_behind:
                    callback(node_id, epoch)
                if self._peer_epoch is not None:
                    self.follow_peers(node_id, epoch)
            return
        self._refresh_soon(node_id)

    def _refresh_soon(self, node_id: str | None) -> None:
        """Start `_refresh_from_nodes` unless one runs or the last began too recently."""
        if self._refresh is not None and not self._refresh.done():
            return  # one refresh at a time
        if time.monotonic() < self._next_refresh:
            return  # nodes that keep disagreeing must not cause a refresh storm
        self._next_refresh = time.monotonic() + REFRESH_INTERVAL_SECS
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_from_nodes(node_id))

    async def _refresh_from_nodes(self, prefer: str | None) -> None:
        """Ask `prefer`, the ring's members and the seeds for `/v1/members`; first answer wins."""
        candidates: dict[str, Member] = {}
        ring = self._ring
        if prefer is not None and ring is not None:
            prefer_member = ring.member(prefer)
            if prefer_member is not None:
                candidates[prefer] = prefer_member
        for member in ring.members if ring is not None else ():
            candidates.setdefault(member.node_id, member)
        assert self._membership is not None
        seeds = self._membership.current()
        for member in seeds.members if seeds is not None else ():
            candidates.setdefault(member.node_id, member)
        asked = {
            asyncio.ensure_future(self._transport(m).members()): m for m in candidates.values()
        }
        calls = set(asked)
        why = ""  # the first failure, for the error an operator reads
        try:
            while calls:
                done, calls = await asyncio.wait(
                    calls,
                    timeout=self.config.request_timeout_secs,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    break
                failed = [t for t in done if t.exception() is not None]
                if failed and not why:
                    why = f"; {asked[failed[0]].node_id}: {failed[0].exception()}"
                answers = [t.result() for t in done if t.exception() is None]
                if any(self._apply_members_doc(doc) for doc in answers):
                    self.stats["membership_refreshes"] += 1
                    return
        finally:
            for task in calls:
                abandon(task)
        if self._ring is None:
            raise ClusterUnavailable(f"no seed answered GET /v1/members: {sorted(candidates)}{why}")
        log.debug("membership refresh: no node answered")

    def _apply_members_doc(self, doc: dict[str, Any]) -> bool:
        try:
            members = [_member_from_doc(m) for m in doc["members"]]
            epoch = str(doc["epoch"])
            points = int(doc.get("points", doc.get("ring_points", self.config.ring_points)))
            replication = int(doc.get("replication", self.config.replication))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("bad /v1/members answer %r: %s", doc, exc)
            return False
        if not members:
            return False
        if not self._seed_mode and self._peer_epoch is None:
            return False  # the membership source defines the ring again (`follow_membership`)
        if self._peer_epoch is not None and _zk_newer(self._peer_epoch, epoch):
            return False  # a member as far behind as this process (itself, say)
        self._set_ring(members, epoch, points, replication)
        return True

    def transport(self, member: Member) -> Transport:
        """The client's channel to one member (its pooled session and credentials)."""
        return self._transport(member)

    def _transport(self, member: Member) -> Transport:
        transport = self._transports.get(member.node_id)
        if transport is None:
            assert self._session is not None
            transport = NodeTransport(
                member.node_id,
                member.host,
                member.port,
                self._session,
                connect_timeout_secs=self.config.connect_timeout_secs,
                request_timeout_secs=self.config.request_timeout_secs,
                on_epoch=self._on_epoch,
                forwarded=True,
                auth=self._auth,
                ssl_context=self._ssl,
                max_response_bytes=self.config.response_max_bytes,
                batch_max_entries=self.config.batch_max_entries,
                channel=self.config.replication_channel,
            )
            self._transports[member.node_id] = transport
        return transport

    async def _current(self) -> Ring:
        if not self._started:
            await self.start()
        if self._ring is None or not self._ring.members:
            raise ClusterUnavailable("no cluster members known")
        return self._ring

    def _ring_owners(self, path: str) -> tuple[Member, ...]:
        """The path's owners on the current ring (the coalescer's routing, at flush time)."""
        ring = self._ring
        if ring is None or not ring.members:
            raise ClusterUnavailable("no cluster members known")
        return ring.owners(path)

    async def _owners(self, path: str, *, read: bool = False) -> list[Member]:
        """`owners_now`, once the client has started and has a ring (else it raises)."""
        await self._current()
        owners = self.owners_now(path, read=read)
        assert owners is not None  # `_current` returned: started, with members
        return owners

    def owners_now(self, path: str, *, read: bool = False) -> list[Member] | None:
        """The members a write (`read`: a read, which also asks the grace rings' owners) of
        normalised key `path` asks: the current ring's owners first. None before the client
        has started and has a ring. Without waiting, for a node that answers at once when it
        owns a key alone; the async path (`_owners`) asks the same members."""
        ring = self._ring
        if not self._started or ring is None or not ring.members:
            return None
        # One member owns everything (what `Ring.owners` answers then, without hashing).
        owners = list(ring.members) if len(ring.members) == 1 else list(ring.owners(path))
        if read and self._fresh_until and time.monotonic() < self._fresh_until:
            known = {m.node_id for m in owners}
            owners += [m for m in ring.members if m.node_id not in known]
        if read and self._previous:
            known = {m.node_id for m in owners}
            for grace in self._grace_rings():
                for member in grace.owners(path):
                    if member.node_id not in known:
                        known.add(member.node_id)
                        owners.append(member)
        return owners

    async def _all_members(self) -> list[Member]:
        """`members_now`, once the client has started and has a ring (else it raises)."""
        await self._current()
        members = self.members_now()
        assert members is not None  # `_current` returned: started, with members
        return members

    def members_now(self) -> list[Member] | None:
        """The members a listing or recursive delete asks: the current ring's and, during the
        grace window, every replaced ring's. None before the client has started and has a ring.
        Without waiting; the async path (`_all_members`) asks the same members."""
        ring = self._ring
        if not self._started or ring is None or not ring.members:
            return None
        members = {m.node_id: m for m in ring.members}
        for grace in self._grace_rings():
            for member in grace.members:
                members.setdefault(member.node_id, member)
        return list(members.values())

    def _quorum_of_all(self, members: Sequence[Member]) -> int:
        """Answers a fan-out to every member needs so that no ring arc went unheard: with
        fewer than R members silent, every path still has an owner among those answering."""
        ring = self._ring
        replication = ring.replication if ring is not None else self.config.replication
        return max(1, len(members) - min(replication, len(members)) + 1)

    # --- Storm's operations -------------------------------------------------------------------

    async def send_pulse(self, path: str, data: bytes, version: int | None = None) -> None:
        """Store `data` at `path` on its owners; returns once every owner that is not
        failing has stored it (a failing owner is still sent the write).

        With the writer's `version`, owners in back-off are not waited for. Without one,
        this client's `VersionClock` assigns it and every owner is waited for (within one
        timeout): an owner holding a newer version (or tombstone) makes the write retry
        above it (`pmcluster.client.retry`), so the write is newer than every write
        acknowledged before it began, whatever the clocks of the nodes that coordinated
        those (docs/reliability.md, clock skew); still behind after the last try, it fails.

        Concurrent calls share batch requests (`pmcluster.client.coalesce`); a write the batch
        cannot settle (an owner ignored part of it, or refused it) is repeated here alone.
        """
        path = normalize_key(path)
        v = self.clock.now() if version is None else version
        coalescer = self._coalescer
        if coalescer is not None and coalescer.accepts(data, v):
            await self._current()
            if await coalescer.write(path, data, v, versioned=version is not None):
                return
        await self._send_alone(path, data, v, version)

    def send_pulse_then(
        self, key: str, data: bytes, then: Callable[[BaseException | None], None]
    ) -> bool:
        """`send_pulse(key, data)` (normalised key, no version) with its outcome passed to
        `then` (None: stored; else the error `send_pulse` would raise), without a future or a
        task of its own when the write joins a coalesced batch (the common case under load; a
        coordinating node calls this for every plain write and Storm SEND_PULSE). False, and
        nothing done, when the write cannot be coalesced now (not started, no ring, no
        coalescer, too large): call `send_pulse`."""
        coalescer = self._coalescer
        ring = self._ring
        if coalescer is None or not self._started or ring is None or not ring.members:
            return False
        v = self.clock.now()
        if not coalescer.accepts(data, v):
            return False

        def batched(outcome: bool | BaseException) -> None:
            if outcome is True:
                then(None)
            elif outcome is False:  # the batch could not settle it: the rest of `send_pulse`
                rest = create_task(self._send_alone(key, data, v, None))
                rest.add_done_callback(lambda task: then(_task_error(task)))
            else:
                then(outcome)

        coalescer.write_then(key, data, v, batched)
        return True

    async def _send_alone(self, path: str, data: bytes, v: int, version: int | None) -> None:
        """`send_pulse` after the coalescer: this write alone, to every owner, retried above
        a newer version an owner holds (no `version` given)."""
        owners = await self._owners(path)
        if version is not None:
            await self._fanout.all_acks(owners, lambda t: t.put_pulse(path, data, version), "write")
            return
        tries = self.retry.tries(path, v)
        v = next(tries)
        while True:
            held = await self._put_all(owners, path, data, v)
            try:
                v = tries.send(held)
            except StopIteration:
                return

    async def _put_all(self, owners: Sequence[Member], path: str, data: bytes, v: int) -> int:
        """Write at `v` to every owner, waiting for each (back-off ones too, within one
        timeout); the newest version an owner kept instead (0: none)."""
        held = await self._fanout.all_acks(
            owners, lambda t: t.put_pulse(path, data, v), "write", wait_suspects=True
        )
        return max(held)

    def retry_version(self, v: int, held: int) -> int | None:
        """`VersionRetry.next_version` of this client (kept for callers of the old name)."""
        return self.retry.next_version(v, held)

    async def send_pulses(self, pulses: Sequence[PulseInput]) -> None:
        """Store many pulses: one batch request per owner; returns once every owner that is
        not failing has stored its share (each pulse acknowledged by at least one owner).
        Hand-off relies on this: a copy leaves its old owner only once its new owners hold it."""
        now = self.clock.now()
        entries: list[tuple[str, bytes, int]] = []
        for item in pulses:
            version = item[2] if len(item) == 3 else None
            entries.append((normalize_key(item[0]), item[1], now if version is None else version))
        if not entries:
            return
        ring = await self._current()
        by_node: dict[str, list[int]] = {}
        members: dict[str, Member] = {}
        for i, (path, _, _) in enumerate(entries):
            for owner in ring.owners(path):
                by_node.setdefault(owner.node_id, []).append(i)
                members[owner.node_id] = owner

        async def call(t: Transport) -> tuple[int, int]:
            return await t.batch([entries[i] for i in by_node[t.node_id]])

        await self._fanout.all_acks(
            list(members.values()), call, "write", covers=by_node.__getitem__, needed=len(entries)
        )

    async def get_pulse(self, path: str) -> Pulse | None:
        """The newest value among the owners, or None when absent (or deleted)."""
        path = normalize_key(path)
        asked = await self._owners(path, read=True)
        answers = await self._fanout.gather(
            asked, lambda t: _tagged(t, _unless_not_ready(t.get_pulse(path))), "read"
        )
        tagged = self._trusted(path, answers, (None, 0))
        pulse = readmerge.merge_pulse([answer for _, answer in tagged])
        self._read_repair(path, pulse, tagged)
        if pulse is not None:
            self.clock.observe(pulse.version)
        return pulse

    def _trusted(
        self, path: str, answers: Sequence[tuple[str, T | None]], absent: T
    ) -> list[tuple[str, T]]:
        """The answers a read may merge. A read needs an answer from an owner of the path
        (current ring or a grace ring); other members asked during the client's first grace
        window only add values. None marks a node that said absent while it is still being
        filled (joined or restarted empty recently): it is no answer, and when no owner gave
        a real one the read fails instead of reporting absent - unless every owner said so
        (a new cluster, or one restarted whole: nothing exists anywhere)."""
        owners = self._owner_ids(path)
        trusted = [(node, answer) for node, answer in answers if answer is not None]
        if any(node in owners for node, _ in trusted):
            return trusted
        not_ready = {node for node, answer in answers if answer is None and node in owners}
        if not_ready and not_ready == owners:
            return [(node, absent) for node in sorted(not_ready)]
        self.stats["read_unavailable"] += 1
        raise ClusterUnavailable(
            f"read {path}: no owner of {sorted(owners)} gave an answer to trust "
            f"({len(not_ready)} still being filled)"
        )

    def _owner_ids(self, path: str) -> set[str]:
        """The path's owners on the current ring and on every grace ring."""
        ring = self._ring
        if ring is None:
            return set()
        ids = {m.node_id for m in ring.owners(path)}
        for grace in self._grace_rings():
            ids.update(m.node_id for m in grace.owners(path))
        return ids

    def _read_repair(
        self, path: str, merged: Pulse | None, tagged: Sequence[tuple[str, PulseAnswer]]
    ) -> None:
        """Bring replicas that answered with something older up to the merged answer, in the
        background: one that missed a delete gets the tombstone (so its stale copy can never
        come back once the tombstone's holders forget it or leave the ring), a current owner
        that missed a write gets the value."""
        ring = self._ring
        owners = {m.node_id for m in ring.owners(path)} if ring is not None else set()
        newest_tomb = max((tomb for _, (_, tomb) in tagged), default=0)
        for node_id, (value, tomb) in tagged:
            transport = self._transports.get(node_id)
            if transport is None:
                continue
            if merged is None:
                if value is not None and value.version <= newest_tomb:
                    self.stats["read_repairs"] += 1
                    self._fanout.spawn(transport.delete_pulse_id(path, newest_tomb))
            elif (
                node_id in owners
                and tomb < merged.version
                and (value is None or value.version < merged.version)
            ):
                self.stats["read_repairs"] += 1
                self._fanout.spawn(transport.put_pulse(path, merged.data, merged.version))

    async def exists(self, path: str) -> bool:
        """Whether the exact key holds a value on its owners (newest of values/tombstones)."""
        path = normalize_key(path)
        asked = await self._owners(path, read=True)
        tagged = await self._fanout.gather(
            asked, lambda t: _tagged(t, _unless_not_ready(t.exists(path))), "read"
        )
        answers = [answer for _, answer in self._trusted(path, tagged, (False, 0))]
        value = max((v for present, v in answers if present), default=-1)
        tombstone = max((v for present, v in answers if not present), default=0)
        return value >= 0 and (value > tombstone or value == 0 == tombstone)

    async def get_all_nodes_for_path(self, path: str) -> list[str]:
        """Direct child names of `path` across every member, deleted children excluded."""
        path = normalize(path)
        members = await self._all_members()
        answers = await self._fanout.gather(
            members,
            lambda t: t.children_versions(path),
            "list",
            required=self._quorum_of_all(members),
        )
        return readmerge.merge_children(answers)

    async def get_all_pulse_for_path(self, path: str) -> list[Pulse]:
        """Every pulse at or under `path` across every member, newest per key, sorted."""
        path = normalize(path)

        async def own_tomb(t: Transport) -> int:
            if path == "/":
                return 0
            try:
                present, version = await t.exists(path)
            except NodeNotReady:
                return 0  # a node still being filled: its listing counts, it holds no tombstone
            return 0 if present else version

        async def call(t: Transport) -> tuple[list[Pulse], dict[str, int]]:
            pulses, (_, child_tombs), tomb = await asyncio.gather(
                t.pulses(path), t.children_versions(path), own_tomb(t)
            )
            return pulses, readmerge.subtree_tombstones(path, child_tombs, tomb)

        members = await self._all_members()
        answers = await self._fanout.gather(
            members, call, "list", required=self._quorum_of_all(members)
        )
        tombstones: dict[str, int] = {}
        for _, tombs in answers:
            for key, v in tombs.items():
                tombstones[key] = max(v, tombstones.get(key, 0))
        return readmerge.merge_pulses((pulses for pulses, _ in answers), tombstones)

    async def delete_path(self, path: str, version: int | None = None) -> None:
        """Recursive delete on every member, one version so the tombstones agree.

        Without a version, this client's clock chooses it, and a member that kept a value
        written at a newer version (a writer whose clock is ahead of ours) makes the delete
        repeat above it: the retry rule of unversioned writes (`pmcluster.client.retry`)."""
        path = normalize(path)
        members = await self._all_members()

        async def once(v: int) -> int:
            helds = await self._fanout.gather(
                members,
                lambda t: t.delete_path(path, v),
                "delete",
                skip_failing=False,  # a replica in back-off may still hear it
                required=self._quorum_of_all(members),
            )
            return max(helds, default=0)

        await self._delete_above(path, version, once)

    async def delete_pulse_id(self, path: str, version: int | None = None) -> None:
        """Delete the exact key on its owners (and the grace rings'); returns once every
        owner that is not failing has the tombstone, at least one current owner among them
        (the grace rings' owners stop being read soon). Without a version, repeated above a
        newer value an owner kept, as `delete_path`."""
        path = normalize_key(path)
        current = {m.node_id for m in await self._owners(path)}
        owners = await self._owners(path, read=True)

        async def once(v: int) -> int:
            helds = await self._fanout.all_acks(
                owners,
                lambda t: t.delete_pulse_id(path, v),
                "delete",
                covers=lambda node_id: (0,) if node_id in current else (),
            )
            return max(helds, default=0)

        await self._delete_above(path, version, once)

    async def _delete_above(
        self, path: str, version: int | None, once: Callable[[int], Awaitable[int]]
    ) -> None:
        """Run `once(v)`; without the caller's version, drive `v` by the retry rule."""
        if version is not None:
            await once(version)
            return
        tries = self.retry.tries(path, self.clock.now())
        v = next(tries)
        with contextlib.suppress(StopIteration):
            while True:
                v = tries.send(await once(v))

    async def create_path(self, path: str) -> None:
        """Storm's no-op: validated locally and by an owner, nothing stored."""
        path = normalize(path)
        await self._fanout.all_acks(
            await self._owners(path), lambda t: t.create_path(path), "write"
        )

    async def members(self) -> MembershipSnapshot:
        """The client's current view of the cluster: epoch and members."""
        ring = await self._current()
        return MembershipSnapshot(epoch=ring.epoch, members=ring.members)

    async def members_view(self) -> dict[str, Any]:
        """`GET /v1/members` of the first member that answers (it names itself in "node")."""
        ring = await self._current()
        for member in self.failures.plan([m.node_id for m in ring.members]):
            found = ring.member(member)
            if found is None:
                continue
            try:
                return await self._transport(found).members()
            except PmclusterError as exc:
                if not exc.retriable:
                    raise
                log.debug("members view from %s failed: %s", member, exc)
        raise ClusterUnavailable("no member answered GET /v1/members")


PulseAnswer = tuple[Pulse | None, int]


async def _unless_not_ready(answer: Awaitable[T]) -> T | None:
    """The node's answer, or None when it said absent while still being filled."""
    try:
        return await answer
    except NodeNotReady:
        return None


async def _tagged(transport: Transport, answer: Awaitable[T]) -> tuple[str, T]:
    """A node's answer with its name, so a merge can tell who is behind."""
    return transport.node_id, await answer


def _zk_newer(theirs: str, ours: str) -> bool:
    """True when both are ZooKeeper epochs (`zk-<cversion>`) and `theirs` is the later one."""
    if not (theirs.startswith("zk-") and ours.startswith("zk-")):
        return False
    try:
        return int(theirs[3:]) > int(ours[3:])
    except ValueError:
        return False


def _member_from_doc(item: Any) -> Member:
    """A member from `/v1/members`: `{"node_id", "host", "port", "zone"}` or `"host:port"`."""
    if isinstance(item, str):
        host, _, port = item.rpartition(":")
        return Member(item, host.strip("[]"), int(port))
    return Member(str(item["node_id"]), str(item["host"]), int(item["port"]), item.get("zone"))


def _task_error(task: asyncio.Future[None]) -> BaseException | None:
    """A finished task's error (CancelledError when it was cancelled), None when it succeeded."""
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception()
