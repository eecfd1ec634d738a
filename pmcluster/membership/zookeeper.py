"""ZooKeeper membership: nodes register ephemeral znodes, everyone watches the set.

Layout: each live node owns the ephemeral znode

    <storm.zookeeper.root>/pmcluster/members/<host:port>

whose data is JSON `{"zone": str|null, "start_time": float, "api_version": int, "pid": int}`.
Clients (no `self_member`) only watch. A snapshot's epoch is `zk-<cversion>` of the
`members` znode: its child version, read in the same `get_children` call as the children, so
an epoch always names exactly one member list and every process that sees epoch N agrees on
who the members are.

A node registers only once it can answer (`register()`, called by the daemon after its socket
listens): peers that see it in the ring at once would otherwise meet a refused connection and
back it off. `on_registered` runs on the loop each time our znode is created (first start and
after every new session).

Session rules (see RECIPES, ZooKeeper): while the connection is SUSPENDED the last snapshot
stays in force (the node keeps serving); after a LOST session kazoo reconnects with a new
session, and then `on_new_session()` runs (the node wipes its store) *before* the ephemeral
znode is created again. A znode of our own name left by an earlier session (a restart faster
than the session timeout) is our stale registration: it is deleted and re-created.

Threading: kazoo calls listeners and watches on its own threads; they only post to the event
loop (`call_soon_threadsafe`). Every ZooKeeper operation runs in a worker thread with a bound,
serialised by one asyncio task so registrations, reads and deletes never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from pmcluster import API_VERSION
from pmcluster.config import Config
from pmcluster.errors import ClusterUnavailable, ConfigError
from pmcluster.membership.base import MembershipSnapshot, SnapshotPublisher
from pmcluster.membership.seeds import parse_address
from pmcluster.ring import Member, format_node_id

log = logging.getLogger(__name__)

MEMBERS_SUBPATH = "pmcluster/members"
ZK_SERVERS_KEY = "storm.zookeeper.servers"
_ZK_ERRORS = (KazooException, KazooTimeoutError)
_RETRY_DELAY_SECS = 0.2


def members_path(config: Config) -> str:
    """The znode whose children are the members: `<zk_root>/pmcluster/members`."""
    return f"{config.zk_root.rstrip('/')}/{MEMBERS_SUBPATH}"


def kazoo_hosts(config: Config) -> str:
    """kazoo's hosts string: each `storm.zookeeper.servers` entry (`host`, `host:port`,
    `[v6]:port`), with `storm.zookeeper.port` where the entry names no port."""
    if not config.zk_servers:
        raise ConfigError(ZK_SERVERS_KEY, "no ZooKeeper servers configured")
    return ",".join(
        format_node_id(*parse_address(entry, config.zk_port, key=ZK_SERVERS_KEY))
        for entry in config.zk_servers
    )


def parse_member(name: str, data: bytes) -> Member | None:
    """The member a znode describes (None for a name that is not `host:port`).

    Unreadable data is not fatal: the member is kept, without a zone, and a warning logged.
    """
    try:
        host, port = parse_address(name, 0, key="member znode")
    except ConfigError:
        host, port = "", 0
    if port == 0:
        log.warning("ignoring member znode with a name that is not host:port: %r", name)
        return None
    zone: str | None = None
    try:
        meta = json.loads(data.decode()) if data else {}
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        raw_zone = meta.get("zone")
        if raw_zone is not None and not isinstance(raw_zone, str):
            raise ValueError(f"zone is {type(raw_zone).__name__}")
        zone = raw_zone
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("member %s has unreadable data (%s); using no zone", name, exc)
    return Member(node_id=name, host=host, port=port, zone=zone)


class ZooKeeperMembership(SnapshotPublisher):
    """`MembershipSource` backed by ZooKeeper; with `self_member` it also registers that member.

    `subscribe` callbacks, state listeners and `on_new_session` are all called on the event
    loop that ran `start()`. A subscriber is called for each new snapshot after it subscribes
    (read `current()` for the one in force).
    """

    def __init__(
        self,
        config: Config,
        self_member: Member | None,
        *,
        on_new_session: Callable[[], None] | None = None,
        on_registered: Callable[[], None] | None = None,
        register: bool = True,
        start_timeout_secs: float = 15.0,
    ) -> None:
        """`register=False`: watch only until `register()` is called (the daemon does so
        once its socket listens)."""
        super().__init__()
        self.config = config
        self.self_member = self_member
        self.path = members_path(config)
        self.hosts = kazoo_hosts(config)
        self._on_new_session = on_new_session
        self._on_registered = on_registered
        self._deferred = not register
        self._start_timeout = start_timeout_secs
        # Every blocking ZooKeeper call is bounded so a partition never hangs a thread forever.
        self._op_timeout = max(5.0, config.zk_session_timeout_secs)
        self._start_time = time.time()
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._ops = asyncio.Lock()
        self._retry: asyncio.TimerHandle | None = None
        self._state_listeners: list[Callable[[str], None]] = []
        self._state = "LOST"
        self._session_seen: int | None = None
        self._registered_session: int | None = None
        self._left = False
        self._closing = False

    # --- MembershipSource (`current`, `subscribe`: SnapshotPublisher) ----------------------

    async def start(self) -> None:
        """Connect, register `self_member` (if any) and read the first snapshot."""
        if self._client is not None:
            raise RuntimeError("ZooKeeperMembership.start() called twice")
        self._loop = asyncio.get_running_loop()
        session = self.config.zk_session_timeout_secs
        # kazoo's default reconnect back-off grows to an hour; a member must retry well within
        # its session timeout, or a short ZooKeeper outage expires the session (and wipes us).
        reconnect = KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=min(1.0, session / 4))
        self._client = KazooClient(hosts=self.hosts, timeout=session, connection_retry=reconnect)
        self._client.add_listener(self._on_kazoo_state)
        try:
            await asyncio.to_thread(self._client.start, self._start_timeout)
        except KazooTimeoutError:
            await self._abandon()
            raise ClusterUnavailable(
                f"ZooKeeper {self.hosts} not reachable within {self._start_timeout}s"
            ) from None
        deadline = time.monotonic() + self._start_timeout
        while self._current is None:
            failure: BaseException | None = None
            try:
                async with self._ops:
                    await self._reconcile()
            except _ZK_ERRORS as exc:
                failure = exc
            if self._current is not None:
                break
            if time.monotonic() > deadline:
                await self._abandon()
                raise ClusterUnavailable(
                    f"ZooKeeper {self.hosts}: no membership snapshot within "
                    f"{self._start_timeout}s (last error: {failure!r})"
                ) from failure
            await asyncio.sleep(_RETRY_DELAY_SECS)
        self._worker = asyncio.create_task(self._run(), name=f"zk-membership {self.path}")

    async def stop(self) -> None:
        """Delete our znode first (peers see us leave at once), then close the session."""
        if self._client is None or self._closing:
            return
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
        if self._worker is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(self._worker, self._op_timeout * 2)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("membership worker did not finish; closing anyway")
        async with self._ops:
            await self._deregister()
        await asyncio.to_thread(self._close_client)

    # --- extras ---------------------------------------------------------------------------

    async def register(self) -> None:
        """Register `self_member` now (deferred by `register=False`); returns once the znode
        exists or the attempt failed (the worker then retries on the next event)."""
        self._deferred = False
        try:
            async with self._ops:
                await self._reconcile()
        except _ZK_ERRORS as exc:
            log.warning("registering in ZooKeeper failed (%r); retrying when connected", exc)
            self._retry_soon()

    def refresh(self) -> None:
        """Re-read the members soon (a peer answered with a newer epoch than ours)."""
        self._post(self._wake.set)

    async def leave(self) -> None:
        """Delete our znode but keep watching (graceful shutdown / drain); never re-register."""
        self._left = True
        async with self._ops:
            await self._deregister()

    def add_state_listener(self, callback: Callable[[str], None]) -> None:
        """Call `callback('CONNECTED' | 'SUSPENDED' | 'LOST')` on the loop at each change."""
        self._state_listeners.append(callback)

    @property
    def state(self) -> str:
        """The last kazoo connection state: 'CONNECTED', 'SUSPENDED' or 'LOST'."""
        return self._state

    @property
    def session_id(self) -> int | None:
        """The current ZooKeeper session id, None while disconnected."""
        client_id = None if self._client is None else self._client.client_id
        return None if client_id is None else int(client_id[0])

    @property
    def registered(self) -> bool:
        """True while our ephemeral znode exists as far as this process knows."""
        return self._registered_session is not None

    # --- kazoo threads -> loop ------------------------------------------------------------

    def _post(self, callback: Callable[..., object], *args: object) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under us during shutdown
            loop.call_soon_threadsafe(callback, *args)

    def _on_kazoo_state(self, state: str) -> None:
        """kazoo listener (its connection thread): never block here, just post."""
        self._post(self._handle_state, str(state))

    def _on_children_event(self, event: object) -> None:
        """kazoo watch (its callback thread): the member set changed, or the connection did."""
        self._post(self._wake.set)

    def _handle_state(self, state: str) -> None:
        self._state = state
        if state == "LOST":
            log.warning("ZooKeeper session lost (%s); will re-register on a new one", self.hosts)
            self._registered_session = None
        elif state == "SUSPENDED":
            log.warning(
                "ZooKeeper connection suspended (%s); keeping the last snapshot", self.hosts
            )
        else:
            log.info("ZooKeeper connected (%s)", self.hosts)
            self._wake.set()
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("membership state listener failed")

    # --- the worker -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                async with self._ops:
                    await self._reconcile()
            except _ZK_ERRORS as exc:
                log.info("membership refresh failed (%r); retrying when connected", exc)
                self._retry_soon()
            except Exception:
                log.exception("membership refresh failed unexpectedly")
                self._retry_soon()

    def _retry_soon(self) -> None:
        if self._client is not None and self._client.connected and self._loop is not None:
            self._retry = self._loop.call_later(_RETRY_DELAY_SECS, self._wake.set)

    async def _reconcile(self) -> None:
        """Bring this process in line with ZooKeeper: session, registration, snapshot."""
        client_id = self._client.client_id
        if client_id is None:
            return  # not connected: wait for the next CONNECTED
        session: int = client_id[0]
        if session != self._session_seen:
            first = self._session_seen is None
            self._session_seen = session
            self._registered_session = None
            if not first:
                log.warning("new ZooKeeper session 0x%x: the previous one expired", session)
                if self._on_new_session is not None:
                    try:
                        self._on_new_session()
                    except Exception:
                        log.exception("on_new_session callback failed")
        if (
            self.self_member is not None
            and not self._left
            and not self._deferred
            and self._registered_session is None
        ):
            self._registered_session = await asyncio.to_thread(self._register_blocking, session)
            if self._on_registered is not None:
                self._on_registered()
        snapshot = await asyncio.to_thread(self._read_blocking)
        if snapshot is None:
            self._retry_soon()  # raced a departure: the next read has the newer epoch
        else:
            self.publish(snapshot)

    # --- blocking ZooKeeper operations (worker threads) -----------------------------------

    def _wait(self, async_result: Any) -> Any:
        return async_result.get(timeout=self._op_timeout)

    def _own_path(self) -> str:
        assert self.self_member is not None
        return f"{self.path}/{self.self_member.node_id}"

    def _register_blocking(self, session: int) -> int:
        """Create our ephemeral znode, replacing a stale one of ours; the owning session id."""
        assert self.self_member is not None
        client = self._client
        own = self._own_path()
        data = json.dumps(
            {
                "zone": self.self_member.zone if self.self_member.zone else self.config.zone,
                "start_time": self._start_time,
                "api_version": API_VERSION,
                "pid": os.getpid(),
            }
        ).encode()
        self._wait(client.ensure_path_async(self.path))
        for _ in range(5):
            try:
                _, stat = self._wait(
                    client.create_async(own, data, ephemeral=True, include_data=True)
                )
                log.info("registered %s (session 0x%x)", own, stat.ephemeralOwner)
                owner: int = stat.ephemeralOwner
                return owner
            except NodeExistsError:
                try:
                    _, stat = self._wait(client.get_async(own))
                except NoNodeError:
                    continue
                if stat.ephemeralOwner == session:
                    return session
                log.warning(
                    "deleting stale registration %s of session 0x%x", own, stat.ephemeralOwner
                )
                with contextlib.suppress(NoNodeError):
                    self._wait(client.delete_async(own, version=stat.version))
        raise ClusterUnavailable(f"could not register {own} in ZooKeeper {self.hosts}")

    def _read_blocking(self) -> MembershipSnapshot | None:
        """Children and parent stat in one read (so epoch and members match), then each
        child's data; None when a child vanished meanwhile (a newer epoch is on its way)."""
        client = self._client
        try:
            children, stat = self._wait(
                client.get_children_async(
                    self.path, watch=self._on_children_event, include_data=True
                )
            )
        except NoNodeError:  # nobody registered yet (we register only once we listen)
            self._wait(client.ensure_path_async(self.path))
            return None
        pending = [(name, client.get_async(f"{self.path}/{name}")) for name in children]
        members = []
        for name, result in pending:
            try:
                data, _ = self._wait(result)
            except NoNodeError:
                return None
            member = parse_member(name, data)
            if member is not None:
                members.append(member)
        members.sort(key=lambda m: m.node_id)
        return MembershipSnapshot(epoch=f"zk-{stat.cversion}", members=tuple(members))

    async def _deregister(self) -> None:
        if self._registered_session is None or self.self_member is None:
            return
        self._registered_session = None
        try:
            await asyncio.to_thread(self._delete_own_blocking)
        except _ZK_ERRORS as exc:
            log.warning("could not delete %s (%r); it goes with the session", self._own_path(), exc)

    def _delete_own_blocking(self) -> None:
        with contextlib.suppress(NoNodeError):
            self._wait(self._client.delete_async(self._own_path()))
        log.info("deregistered %s", self._own_path())

    async def _abandon(self) -> None:
        """A failed start: close the client so `stop()` has nothing left to do."""
        await asyncio.to_thread(self._close_client)
        self._client = None

    def _close_client(self) -> None:
        client = self._client
        client.remove_listener(self._on_kazoo_state)
        try:
            client.stop()
        finally:
            client.close()
