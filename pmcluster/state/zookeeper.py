"""Storm's `ZKStateStorage` over kazoo: all cluster state in ZooKeeper under `storm.zookeeper.root`.

Paths are relative to the root: the kazoo client is chrooted at `storm.zookeeper.root` (a
short-lived unchrooted client creates the root first, as Storm's `zkTemp` does), so watch
events carry root-relative paths too. Semantics follow Storm's `ClientZookeeper`:
`set_data`/`set_ephemeral_node` create parents and overwrite; `delete_node` is recursive and
ignores a missing node; missing nodes read as None/False/[]; ACLs apply to created znodes.

Watches: `watch=True` arms a one-shot ZooKeeper watch; when it fires, every registered
callback gets `(event_type, path)` once (a delete that fires both a data and a child watch is
one event, as with Java's single default watcher). kazoo drops every watch when the connection
drops; ZooKeeper's Java client re-registers them. To keep Storm's behaviour, armed watches are
recorded with the zxid last seen and re-armed after a reconnect; a change missed while
disconnected fires its event then (created / deleted / data or children changed).

Retries: operations retry on connection loss within `storm.zookeeper.retry.times` attempts
(interval `storm.zookeeper.retry.interval`, doubling up to
`storm.zookeeper.retry.intervalceiling.millis`), like Storm's Curator retry policy; then
`ClusterUnavailable`. `create_sequential` is not retried (a retry could create a second node).

Authentication: `storm.zookeeper.auth.scheme` and `storm.zookeeper.auth.payload` (Storm's keys,
e.g. `digest` and `user:password`) authenticate the session, so znodes created with digest
ACLs stay writable by the same identity.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import Callback, EventType, WatchedEvent, ZnodeStat
from kazoo.retry import KazooRetry, RetryFailedError

from pmcluster.config import Config
from pmcluster.errors import ClusterUnavailable, ConfigError, NotAuthorized, PmclusterError
from pmcluster.membership.zookeeper import kazoo_hosts
from pmcluster.protocol.paths import normalize
from pmcluster.state.interface import Acls, ConnectionListener, StateChangedCallback, VersionedData

__all__ = ["ZooKeeperStateStorage"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_EVENT_NAMES = {
    EventType.CREATED: "NODE_CREATED",
    EventType.DELETED: "NODE_DELETED",
    EventType.CHANGED: "NODE_DATA_CHANGED",
    EventType.CHILD: "NODE_CHILDREN_CHANGED",
}
# Storm keys read from `Config.extra` (milliseconds where Storm uses them), with Storm's defaults.
_CONNECTION_TIMEOUT_KEY = ("storm.zookeeper.connection.timeout", 15000)
_RETRY_TIMES_KEY = ("storm.zookeeper.retry.times", 5)
_RETRY_INTERVAL_KEY = ("storm.zookeeper.retry.interval", 1000)
_RETRY_CEILING_KEY = ("storm.zookeeper.retry.intervalceiling.millis", 30000)
_AUTH_SCHEME_KEY = "storm.zookeeper.auth.scheme"
_AUTH_PAYLOAD_KEY = "storm.zookeeper.auth.payload"
_UNAVAILABLE = (
    RetryFailedError,
    KazooTimeoutError,
    ConnectionLoss,
    SessionExpiredError,
    ConnectionClosedError,
)
_WRITE_ATTEMPTS = 5  # create/exists races (another writer between our two calls) before giving up


def event_name(kazoo_type: str) -> str | None:
    """Storm's event type name for a kazoo `EventType` (None for connection-only events)."""
    return _EVENT_NAMES.get(kazoo_type)


def _extra_number(extra: Mapping[str, Any], spec: tuple[str, int]) -> float:
    key, default = spec
    raw = extra.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise ConfigError(key, f"expected a non-negative number, got {raw!r}")
    return float(raw)


def _auth_data(extra: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """Storm's `storm.zookeeper.auth.scheme`/`.payload` (e.g. digest, "user:password")."""
    scheme, payload = extra.get(_AUTH_SCHEME_KEY), extra.get(_AUTH_PAYLOAD_KEY)
    if scheme is None and payload is None:
        return None
    if not isinstance(scheme, str) or not isinstance(payload, str) or not scheme or not payload:
        raise ConfigError(_AUTH_PAYLOAD_KEY, f"needs {_AUTH_SCHEME_KEY} too (both strings)")
    return [(scheme, payload)]


class _Watch:
    """One armed one-shot watch: what kind, on which path, and the zxid seen when arming."""

    __slots__ = ("cancelled", "fired", "kind", "owner", "path", "seen")

    def __init__(self, owner: ZooKeeperStateStorage, kind: str, path: str) -> None:
        self.owner = owner
        self.kind = kind  # "data" (get/exists: created, deleted, changed) or "child"
        self.path = path
        self.seen: int | None = None  # mzxid (data) / pzxid (child) when armed; None: absent
        self.fired = False
        self.cancelled = False

    def __call__(self, event: WatchedEvent) -> None:
        self.owner._on_watch_event(self, event)


class ZooKeeperStateStorage:
    """All of Storm's `IStateStorage` in ZooKeeper; thread-safe (kazoo is, the registries lock)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = config.zk_root.rstrip("/") or "/"
        hosts = kazoo_hosts(config)
        extra = config.extra
        self._connect_timeout = _extra_number(extra, _CONNECTION_TIMEOUT_KEY) / 1000.0
        self._retry = KazooRetry(
            max_tries=max(1, int(_extra_number(extra, _RETRY_TIMES_KEY)) + 1),
            delay=_extra_number(extra, _RETRY_INTERVAL_KEY) / 1000.0,
            max_delay=_extra_number(extra, _RETRY_CEILING_KEY) / 1000.0,
            ignore_expire=True,
        )
        self._lock = threading.Lock()
        self._callbacks: dict[str, StateChangedCallback] = {}
        self._listeners: list[ConnectionListener] = []
        self._watches: dict[tuple[str, str], _Watch] = {}
        self._last_event: WatchedEvent | None = None
        self._was_connected = False
        self._closed = False
        auth = _auth_data(extra)
        self._ensure_root(hosts, auth)
        chroot = "" if self.root == "/" else self.root
        self._zk = KazooClient(
            hosts=hosts + chroot,
            timeout=config.zk_session_timeout_secs,
            connection_retry={"max_tries": -1, "delay": 0.05, "max_delay": 1.0},
            auth_data=auth,
        )
        self._zk.add_listener(self._on_state)
        self._start(self._zk)

    def _start(self, client: KazooClient) -> None:
        try:
            client.start(timeout=self._connect_timeout)
        except KazooTimeoutError:
            client.close()
            raise ClusterUnavailable(
                f"ZooKeeper {client.hosts} not reachable within {self._connect_timeout:g}s"
            ) from None

    def _ensure_root(self, hosts: str, auth: list[tuple[str, str]] | None) -> None:
        """Create `storm.zookeeper.root` with an unchrooted client, as Storm's zkTemp does."""
        if self.root == "/":
            return
        temp = KazooClient(hosts=hosts, timeout=self.config.zk_session_timeout_secs, auth_data=auth)
        self._start(temp)
        try:
            self._call(temp.ensure_path, self.root, op="mkdirs", path=self.root)
        finally:
            temp.stop()
            temp.close()

    # --- plumbing -----------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, op: str, path: str, **kw: Any) -> T:
        """Run one kazoo call with retries; map kazoo's errors into pmcluster's tree."""
        try:
            result: T = self._retry.copy()(fn, *args, **kw)
        except (KazooException, KazooTimeoutError) as exc:
            raise _mapped(exc, op, path) from exc
        return result

    def _arm(self, kind: str, path: str) -> _Watch:
        return _Watch(self, kind, path)

    def _record(self, watch: _Watch, seen: int | None) -> None:
        """Remember an armed watch (unless it already fired) so a reconnect can re-arm it."""
        watch.seen = seen
        with self._lock:
            if not watch.fired and not self._closed:
                self._watches[(watch.kind, watch.path)] = watch

    def _stat_exists(self, path: str, watch: bool) -> ZnodeStat | None:
        w = self._arm("data", path) if watch else None
        stat: ZnodeStat | None = self._call(self._zk.exists, path, watch=w, op="exists", path=path)
        if w is not None:
            self._record(w, None if stat is None else stat.mzxid)
        return stat

    def _get(self, path: str, watch: bool) -> tuple[bytes, ZnodeStat] | None:
        """Data and stat, or None. With `watch`, a missing node gets an exists watch (Storm)."""
        for _ in range(_WRITE_ATTEMPTS):
            w = self._arm("data", path) if watch else None
            try:
                data, stat = self._call(self._zk.get, path, watch=w, op="get_data", path=path)
            except NoNodeError:
                if not watch or self._stat_exists(path, True) is None:
                    return None
                continue  # created between the two calls: read it
            if w is not None:
                self._record(w, stat.mzxid)
            return bytes(data), stat
        return None

    # --- callbacks, watches and listeners -----------------------------------------------------

    def register(self, callback: StateChangedCallback) -> str:
        callback_id = str(uuid.uuid4())
        with self._lock:
            self._callbacks[callback_id] = callback
        return callback_id

    def unregister(self, callback_id: str) -> None:
        with self._lock:
            self._callbacks.pop(callback_id, None)

    def add_listener(self, listener: ConnectionListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def _on_watch_event(self, watch: _Watch, event: WatchedEvent) -> None:
        """kazoo's callback thread: a watch fired (or, type NONE, was dropped on disconnect)."""
        name = event_name(event.type)
        if name is None or watch.cancelled:
            return  # a dropped watch stays recorded and is re-armed after the reconnect
        with self._lock:
            watch.fired = True
            key = (watch.kind, watch.path)
            if self._watches.get(key) is watch:
                del self._watches[key]
            if event is self._last_event or self._closed:
                return  # one event fired several of our watches: deliver it once
            self._last_event = event
        self._dispatch(name, event.path)

    def _dispatch(self, event_type: str, path: str) -> None:
        with self._lock:
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            try:
                callback(event_type, path)
            except Exception:
                log.exception("state callback %r failed on %s %s", callback, event_type, path)

    def _on_state(self, state: str) -> None:
        """kazoo's connection thread: never block here; hand work to the callback thread."""
        if self._closed:
            return
        if state == KazooState.CONNECTED:
            name = "RECONNECTED" if self._was_connected else "CONNECTED"
            self._was_connected = True
        else:
            name = "SUSPENDED" if state == KazooState.SUSPENDED else "LOST"
        self._zk.handler.dispatch_callback(Callback("listener", self._notify, (name,)))
        if name == "RECONNECTED":
            self._zk.handler.dispatch_callback(Callback("rearm", self._rearm_watches, ()))

    def _notify(self, state: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(state)
            except Exception:
                log.exception("connection listener %r failed on %s", listener, state)

    def _rearm_watches(self) -> None:
        """After a reconnect: re-arm each dropped watch; fire it now if its node changed."""
        with self._lock:
            dropped = list(self._watches.values())
        for old in dropped:
            if self._closed:
                return
            try:
                self._rearm(old)
            except PmclusterError as exc:  # disconnected again: the next reconnect retries
                log.info("could not re-arm watch on %s: %s", old.path, exc)
                return

    def _rearm(self, old: _Watch) -> None:
        new = self._arm(old.kind, old.path)
        event: str | None = None
        if old.kind == "child":
            try:
                _, stat = self._call(
                    self._zk.get_children, old.path, watch=new, include_data=True,
                    op="get_children", path=old.path,
                )  # fmt: skip
                seen: int | None = stat.pzxid
                event = None if seen == old.seen else "NODE_CHILDREN_CHANGED"
            except NoNodeError:
                seen, event = None, "NODE_DELETED"
        else:
            stat = self._call(self._zk.exists, old.path, watch=new, op="exists", path=old.path)
            seen = None if stat is None else stat.mzxid
            if seen != old.seen:
                event = (
                    "NODE_CREATED" if old.seen is None
                    else "NODE_DELETED" if seen is None
                    else "NODE_DATA_CHANGED"
                )  # fmt: skip
        key = (old.kind, old.path)
        with self._lock:
            if self._watches.get(key) is not old or old.fired:
                new.cancelled = True  # fired or re-armed by a caller meanwhile
                return
            if event is None:
                new.seen = seen
                self._watches[key] = new
                return
            new.cancelled = True  # the missed change consumes the watch, as in ZooKeeper
            del self._watches[key]
        self._dispatch(event, old.path)

    # --- Storm's operations -------------------------------------------------------------------

    def create_sequential(self, path: str, data: bytes, acls: Acls) -> str:
        path = normalize(path)
        try:
            # not retried: a retry after a lost reply could leave a second sequential node
            created: str = self._zk.create(
                path, bytes(data), acl=acls, ephemeral=True, sequence=True, makepath=True
            )
        except (KazooException, KazooTimeoutError) as exc:
            raise _mapped(exc, "create_sequential", path) from exc
        return created

    def mkdirs(self, path: str, acls: Acls) -> None:
        path = normalize(path)
        if path != "/":
            self._call(self._zk.ensure_path, path, acl=acls, op="mkdirs", path=path)

    def delete_node(self, path: str) -> None:
        path = normalize(path)
        for _ in range(_WRITE_ATTEMPTS):
            try:
                self._call(self._zk.delete, path, recursive=True, op="delete_node", path=path)
                return
            except NoNodeError:
                return
            except NotEmptyError:
                continue  # a child appeared during the recursive delete: go again
        raise PmclusterError(f"ZooKeeper delete_node {path}: children keep appearing")

    def set_ephemeral_node(self, path: str, data: bytes, acls: Acls) -> None:
        self._write(normalize(path), bytes(data), acls, ephemeral=True)

    def set_data(self, path: str, data: bytes, acls: Acls) -> None:
        self._write(normalize(path), bytes(data), acls, ephemeral=False)

    def _write(self, path: str, data: bytes, acls: Acls, *, ephemeral: bool) -> None:
        """Overwrite `path`, or create it with its parents: Storm's set_data/set_ephemeral_node."""
        op = "set_ephemeral_node" if ephemeral else "set_data"
        for _ in range(_WRITE_ATTEMPTS):
            try:
                self._call(self._zk.set, path, data, op=op, path=path)
                return
            except NoNodeError:
                pass
            try:
                self._call(
                    self._zk.create, path, data, acl=acls, ephemeral=ephemeral, makepath=True,
                    op=op, path=path,
                )  # fmt: skip
                return
            except NodeExistsError:
                continue  # created by someone else in between: overwrite it
            except NoNodeError:
                continue  # a parent was deleted in between: create it again
        raise PmclusterError(f"ZooKeeper {op} {path}: node keeps appearing and disappearing")

    def get_version(self, path: str, watch: bool) -> int | None:
        stat = self._stat_exists(normalize(path), watch)
        return None if stat is None else int(stat.version)

    def node_exists(self, path: str, watch: bool) -> bool:
        return self._stat_exists(normalize(path), watch) is not None

    def get_children(self, path: str, watch: bool) -> list[str]:
        path = normalize(path)
        w = self._arm("child", path) if watch else None
        try:
            children, stat = self._call(
                self._zk.get_children, path, watch=w, include_data=True,
                op="get_children", path=path,
            )  # fmt: skip
        except NoNodeError:
            if watch and self._stat_exists(path, True) is not None:
                return self.get_children(path, watch)  # created in between
            return []
        if w is not None:
            self._record(w, stat.pzxid)
        return sorted(children)

    def get_data(self, path: str, watch: bool) -> bytes | None:
        got = self._get(normalize(path), watch)
        return None if got is None else got[0]

    def get_data_with_version(self, path: str, watch: bool) -> VersionedData | None:
        got = self._get(normalize(path), watch)
        return None if got is None else VersionedData(int(got[1].version), got[0])

    def sync_path(self, path: str) -> None:
        path = normalize(path)
        self._call(self._zk.sync, path, op="sync_path", path=path)

    def delete_node_blobstore(self, path: str, nimbus_host_port_info: str) -> None:
        path = normalize(path)
        prefix = "" if path == "/" else path
        for child in self.get_children(path, False):
            if child.startswith(nimbus_host_port_info):
                self.delete_node(f"{prefix}/{child}")

    # Storm's ZKStateStorage: heartbeats are ordinary data nodes.
    def set_worker_hb(self, path: str, data: bytes, acls: Acls) -> None:
        self.set_data(path, data, acls)

    def get_worker_hb(self, path: str, watch: bool) -> bytes | None:
        return self.get_data(path, watch)

    def get_worker_hb_children(self, path: str, watch: bool) -> list[str]:
        return self.get_children(path, watch)

    def delete_worker_hb(self, path: str) -> None:
        self.delete_node(path)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._watches.clear()
        with contextlib.suppress(KazooException):
            self._zk.stop()
        self._zk.close()

    def __enter__(self) -> ZooKeeperStateStorage:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _mapped(exc: Exception, op: str, path: str) -> Exception:
    """pmcluster's error for a kazoo error; Storm-semantics errors (no node, node exists, not
    empty) pass through unchanged for the caller to handle."""
    if isinstance(exc, NoNodeError | NodeExistsError | NotEmptyError):
        unchanged: Exception = exc
        return unchanged
    if isinstance(exc, NoAuthError):
        return NotAuthorized(f"ZooKeeper {op} {path}: not allowed by the node's ACL")
    if isinstance(exc, _UNAVAILABLE):
        return ClusterUnavailable(f"ZooKeeper {op} {path}: {type(exc).__name__} {exc}".rstrip())
    return PmclusterError(f"ZooKeeper {op} {path}: {type(exc).__name__} {exc}".rstrip())
