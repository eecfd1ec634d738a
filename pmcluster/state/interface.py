"""The cluster state interface: Storm's `IStateStorage`, in Python, synchronous and thread-safe.

Storm's daemons keep their cluster state (assignments, worker heartbeats, blobstore keys,
leader election) behind this one interface, and `storm.cluster.state.store` chooses the
implementation: everything in ZooKeeper, or worker heartbeats in Pacemaker. Method names are
Storm's, so code ported from Storm reads the same.

Paths are absolute (`/workerbeats/<topology>/<node>-<port>`) but relative to the configured
`storm.zookeeper.root`, as in Storm. A missing node reads as `None` (or `[]`, `False`), never
as an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "CONNECTION_STATES",
    "EVENT_TYPES",
    "ConnectionListener",
    "StateChangedCallback",
    "StateStorage",
    "VersionedData",
]

# What a `register`ed callback receives as its first argument (Storm's Watcher.Event.EventType).
EVENT_TYPES = ("NODE_CREATED", "NODE_DELETED", "NODE_DATA_CHANGED", "NODE_CHILDREN_CHANGED")
# What an `add_listener` listener receives (Curator's ConnectionState names, as Storm sees them).
CONNECTION_STATES = ("CONNECTED", "SUSPENDED", "RECONNECTED", "LOST")

StateChangedCallback = Callable[[str, str], None]
"""`callback(event_type, path)`: a watch set with `watch=True` fired (path relative to root)."""

ConnectionListener = Callable[[str], None]
"""`listener(state)`: the ZooKeeper connection changed state (one of `CONNECTION_STATES`)."""

Acls = Sequence[Any] | None
"""kazoo ACLs (`kazoo.security.ACL`), applied to the znodes a call creates; None = open."""


@dataclass(frozen=True, slots=True)
class VersionedData:
    """Storm's `VersionedData<byte[]>`: a znode's data and its data version (`stat.version`)."""

    version: int
    data: bytes


@runtime_checkable
class StateStorage(Protocol):
    """Storm's `IStateStorage`. Implementations are thread-safe; every call blocks."""

    def register(self, callback: StateChangedCallback) -> str:
        """Call `callback(event_type, path)` for every watch that fires; returns an id."""
        ...

    def unregister(self, callback_id: str) -> None:
        """Forget a callback registered with `register` (unknown ids are ignored)."""
        ...

    def create_sequential(self, path: str, data: bytes, acls: Acls) -> str:
        """Create an ephemeral sequential node `path<seq>`; returns the created path."""
        ...

    def mkdirs(self, path: str, acls: Acls) -> None:
        """Create `path` and its missing parents (persistent, empty data)."""
        ...

    def delete_node(self, path: str) -> None:
        """Delete `path` and everything under it; a missing path is not an error."""
        ...

    def set_ephemeral_node(self, path: str, data: bytes, acls: Acls) -> None:
        """Create (with parents) an ephemeral node holding `data`, or overwrite it."""
        ...

    def get_version(self, path: str, watch: bool) -> int | None:
        """The node's data version, or None when it does not exist."""
        ...

    def node_exists(self, path: str, watch: bool) -> bool:
        """Whether `path` exists."""
        ...

    def get_children(self, path: str, watch: bool) -> list[str]:
        """Sorted child names of `path`; `[]` when `path` does not exist."""
        ...

    def close(self) -> None:
        """Release connections and threads (idempotent)."""
        ...

    def set_data(self, path: str, data: bytes, acls: Acls) -> None:
        """Create `path` (with parents, persistent) holding `data`, or overwrite its data."""
        ...

    def get_data(self, path: str, watch: bool) -> bytes | None:
        """The node's data, or None when it does not exist."""
        ...

    def get_data_with_version(self, path: str, watch: bool) -> VersionedData | None:
        """The node's data and data version, or None when it does not exist."""
        ...

    def set_worker_hb(self, path: str, data: bytes, acls: Acls) -> None:
        """Store a worker heartbeat at `path` (create or overwrite)."""
        ...

    def get_worker_hb(self, path: str, watch: bool) -> bytes | None:
        """The heartbeat at `path`, or None when there is none."""
        ...

    def get_worker_hb_children(self, path: str, watch: bool) -> list[str]:
        """Sorted child names of heartbeat directory `path`; `[]` when there is none."""
        ...

    def delete_worker_hb(self, path: str) -> None:
        """Delete the heartbeat(s) at and under `path`."""
        ...

    def add_listener(self, listener: ConnectionListener) -> None:
        """Call `listener(state)` on every later ZooKeeper connection state change."""
        ...

    def sync_path(self, path: str) -> None:
        """Make this client's view of `path` at least as new as the leader's (ZooKeeper sync)."""
        ...

    def delete_node_blobstore(self, path: str, nimbus_host_port_info: str) -> None:
        """Delete each child of `path` whose name starts with `nimbus_host_port_info`."""
        ...
