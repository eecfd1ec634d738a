"""Cluster state for Storm-like programs: Storm's `IStateStorage` and its two factories.

`make_state(conf)` builds the implementation named by `storm.cluster.state.store`:

- `pmcluster.state.zookeeper_state_factory` (Storm's
  `org.apache.storm.cluster.ZKStateStorageFactory`): everything in ZooKeeper under
  `storm.zookeeper.root`; heartbeats are plain data nodes.
- `pmcluster.state.pacemaker_state_factory` (Storm 2.x's
  `org.apache.storm.cluster.PaceMakerStateStorageFactory` and Storm 1.x's
  `org.apache.storm.pacemaker.pacemaker_state_factory`, both accepted): worker heartbeats in the
  pmcluster ring, everything else in ZooKeeper.

Any other dotted Python path names a callable `factory(config) -> StateStorage` of your own.
`conf` is a `Config` or a mapping of Storm YAML keys (validated by `config_from_mapping`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from pmcluster.config import Config, config_from_mapping
from pmcluster.errors import ConfigError
from pmcluster.state.interface import (
    CONNECTION_STATES,
    EVENT_TYPES,
    ConnectionListener,
    StateChangedCallback,
    StateStorage,
    VersionedData,
)
from pmcluster.state.pacemaker import PacemakerStateStorage
from pmcluster.state.zookeeper import ZooKeeperStateStorage

__all__ = [
    "CONNECTION_STATES",
    "EVENT_TYPES",
    "STORM_FACTORY_NAMES",
    "ConnectionListener",
    "PacemakerStateStorage",
    "StateChangedCallback",
    "StateStorage",
    "VersionedData",
    "ZooKeeperStateStorage",
    "as_config",
    "make_state",
    "pacemaker_state_factory",
    "resolve_factory",
    "zookeeper_state_factory",
]

STORE_KEY = "storm.cluster.state.store"
StateFactory = Callable[[Config], StateStorage]

_ZOOKEEPER = "pmcluster.state.zookeeper_state_factory"
_PACEMAKER = "pmcluster.state.pacemaker_state_factory"
# Storm's own class names (1.x and 2.x), so an existing storm.yaml works as is.
STORM_FACTORY_NAMES: dict[str, str] = {
    "org.apache.storm.cluster.ZKStateStorageFactory": _ZOOKEEPER,
    "org.apache.storm.cluster_state.zookeeper_state_factory": _ZOOKEEPER,
    "org.apache.storm.pacemaker.pacemaker_state_factory": _PACEMAKER,
    "org.apache.storm.cluster.PaceMakerStateStorageFactory": _PACEMAKER,
}


def as_config(conf: Config | Mapping[str, Any]) -> Config:
    """`conf` itself, or the validated `Config` of a mapping of Storm YAML keys."""
    return conf if isinstance(conf, Config) else config_from_mapping(conf)


def zookeeper_state_factory(conf: Config | Mapping[str, Any]) -> ZooKeeperStateStorage:
    """Everything in ZooKeeper (`storm.zookeeper.servers`, `.port`, `.root`)."""
    return ZooKeeperStateStorage(as_config(conf))


def pacemaker_state_factory(conf: Config | Mapping[str, Any]) -> PacemakerStateStorage:
    """Worker heartbeats in the pmcluster ring (members found in ZooKeeper), the rest in
    ZooKeeper. Both halves share `storm.zookeeper.*`."""
    from pmcluster.client import SyncClusterClient  # aiohttp is only needed on this path

    config = as_config(conf)
    if not config.zk_servers:
        raise ConfigError(
            "storm.zookeeper.servers",
            "the Pacemaker state store keeps non-heartbeat state in ZooKeeper: set it",
        )
    zk_state = ZooKeeperStateStorage(config)
    try:
        client = SyncClusterClient(config)
    except BaseException:
        zk_state.close()
        raise
    return PacemakerStateStorage(zk_state, client)


def resolve_factory(name: str) -> StateFactory:
    """The factory callable named by `storm.cluster.state.store` (Storm names mapped to ours)."""
    name = name.strip()
    target = STORM_FACTORY_NAMES.get(name, name)
    if target.startswith(("org.apache.storm.", "backtype.storm.")):
        known = ", ".join(sorted(STORM_FACTORY_NAMES))
        raise ConfigError(STORE_KEY, f"{name!r} is a Storm class pmcluster does not provide; "
                          f"use one of {known} or a dotted Python path")  # fmt: skip
    module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(STORE_KEY, f"{name!r} is not a dotted Python path (module.factory)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(STORE_KEY, f"cannot import module {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(STORE_KEY, f"module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ConfigError(STORE_KEY, f"{target!r} is not callable")
    resolved: StateFactory = factory
    return resolved


def make_state(conf: Config | Mapping[str, Any]) -> StateStorage:
    """Build the state store `storm.cluster.state.store` names (default: ZooKeeper)."""
    config = as_config(conf)
    factory = resolve_factory(config.cluster_state_store)
    state = factory(config)
    if not isinstance(state, StateStorage):
        close = getattr(state, "close", None)
        if callable(close):
            close()
        raise ConfigError(
            STORE_KEY,
            f"{config.cluster_state_store!r} returned {type(state).__name__}, "
            "which lacks StateStorage methods",
        )
    return state
