"""Storm's `PaceMakerStateStorage`: worker heartbeats in the pmcluster ring, the rest in ZooKeeper.

The four heartbeat methods go through the ring-aware `SyncClusterClient` (writes to every owner
of the path, first ack returns; reads ask the owners, plus the previous ring's owners during the
grace window, and the newest answer wins; listings and recursive deletes reach every member).
Membership comes from ZooKeeper (`<storm.zookeeper.root>/pmcluster/members`), so nodes that
join or die change the ring without a restart, and a dead node never holds a caller longer than
one request timeout. Everything else (assignments, blobstore keys, leader election, watches,
connection listeners) is delegated to a `ZooKeeperStateStorage`, as Storm does.

As in Storm, `watch` is ignored by the heartbeat methods (Pacemaker has no watches) and so
are `acls` (heartbeats are protected by `pacemaker.auth.method`, not znode ACLs).
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from pmcluster.state.interface import Acls, ConnectionListener, StateChangedCallback, VersionedData
from pmcluster.state.zookeeper import ZooKeeperStateStorage

if TYPE_CHECKING:  # imported by `pacemaker_state_factory`: the ZooKeeper store needs no aiohttp
    from pmcluster.client import SyncClusterClient

__all__ = ["PacemakerStateStorage"]


class PacemakerStateStorage:
    """Heartbeats in pmcluster, everything else in ZooKeeper; thread-safe, owns both clients."""

    def __init__(self, zk_state: ZooKeeperStateStorage, client: SyncClusterClient) -> None:
        self.zk_state = zk_state
        self.cluster_client = client
        self._closed = False

    # --- heartbeats: the pmcluster ring -------------------------------------------------------

    def set_worker_hb(self, path: str, data: bytes, acls: Acls) -> None:
        self.cluster_client.send_pulse(path, bytes(data))

    def get_worker_hb(self, path: str, watch: bool) -> bytes | None:
        pulse = self.cluster_client.get_pulse(path)
        return None if pulse is None else pulse.data

    def get_worker_hb_children(self, path: str, watch: bool) -> list[str]:
        return sorted(self.cluster_client.get_all_nodes_for_path(path))

    def delete_worker_hb(self, path: str) -> None:
        self.cluster_client.delete_path(path)

    # --- everything else: ZooKeeper -----------------------------------------------------------

    def register(self, callback: StateChangedCallback) -> str:
        return self.zk_state.register(callback)

    def unregister(self, callback_id: str) -> None:
        self.zk_state.unregister(callback_id)

    def add_listener(self, listener: ConnectionListener) -> None:
        self.zk_state.add_listener(listener)

    def create_sequential(self, path: str, data: bytes, acls: Acls) -> str:
        return self.zk_state.create_sequential(path, data, acls)

    def mkdirs(self, path: str, acls: Acls) -> None:
        self.zk_state.mkdirs(path, acls)

    def delete_node(self, path: str) -> None:
        self.zk_state.delete_node(path)

    def set_ephemeral_node(self, path: str, data: bytes, acls: Acls) -> None:
        self.zk_state.set_ephemeral_node(path, data, acls)

    def get_version(self, path: str, watch: bool) -> int | None:
        return self.zk_state.get_version(path, watch)

    def node_exists(self, path: str, watch: bool) -> bool:
        return self.zk_state.node_exists(path, watch)

    def get_children(self, path: str, watch: bool) -> list[str]:
        return self.zk_state.get_children(path, watch)

    def set_data(self, path: str, data: bytes, acls: Acls) -> None:
        self.zk_state.set_data(path, data, acls)

    def get_data(self, path: str, watch: bool) -> bytes | None:
        return self.zk_state.get_data(path, watch)

    def get_data_with_version(self, path: str, watch: bool) -> VersionedData | None:
        return self.zk_state.get_data_with_version(path, watch)

    def sync_path(self, path: str) -> None:
        self.zk_state.sync_path(path)

    def delete_node_blobstore(self, path: str, nimbus_host_port_info: str) -> None:
        self.zk_state.delete_node_blobstore(path, nimbus_host_port_info)

    def close(self) -> None:
        """Close the cluster client, then the ZooKeeper state (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.cluster_client.close()
        finally:
            self.zk_state.close()

    def __enter__(self) -> PacemakerStateStorage:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
