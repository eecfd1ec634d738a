"""`make_state` and the factory names of `storm.cluster.state.store` (no ZooKeeper needed)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pmcluster.config import Config
from pmcluster.errors import ClusterUnavailable, ConfigError
from pmcluster.state import (
    STORM_FACTORY_NAMES,
    ZooKeeperStateStorage,
    make_state,
    pacemaker_state_factory,
    resolve_factory,
    zookeeper_state_factory,
)
from pmcluster.state.zookeeper import event_name
from pmcluster.tools.localcluster import free_port

built: list[Config] = []


class FakeState(ZooKeeperStateStorage):
    """A user-supplied factory: has every `StateStorage` method; records the config it got."""

    def __init__(self, config: Config) -> None:  # no connection: only the config matters here
        built.append(config)


closed: list[object] = []


class NotAState:
    def __init__(self, config: Config) -> None:
        pass

    def close(self) -> None:
        closed.append(self)


NOT_CALLABLE = 42


@pytest.mark.parametrize(
    ("name", "factory"),
    [
        ("org.apache.storm.pacemaker.pacemaker_state_factory", pacemaker_state_factory),
        ("org.apache.storm.cluster.PaceMakerStateStorageFactory", pacemaker_state_factory),
        ("org.apache.storm.cluster.ZKStateStorageFactory", zookeeper_state_factory),
        ("org.apache.storm.cluster_state.zookeeper_state_factory", zookeeper_state_factory),
        ("pmcluster.state.pacemaker_state_factory", pacemaker_state_factory),
        ("pmcluster.state.zookeeper_state_factory", zookeeper_state_factory),
        ("  pmcluster.state.zookeeper_state_factory ", zookeeper_state_factory),
    ],
)
def test_storm_and_our_names_resolve(name: str, factory: object) -> None:
    assert resolve_factory(name) is factory


def test_default_store_is_zookeeper() -> None:
    assert resolve_factory(Config().cluster_state_store) is zookeeper_state_factory
    assert set(STORM_FACTORY_NAMES.values()) == {
        "pmcluster.state.zookeeper_state_factory",
        "pmcluster.state.pacemaker_state_factory",
    }


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("org.apache.storm.cluster.RedisStateStorageFactory", "Storm class pmcluster does not"),
        ("nodots", "not a dotted Python path"),
        ("no_such_module_xyz.factory", "cannot import module 'no_such_module_xyz'"),
        ("pmcluster.state.no_such_factory", "has no attribute 'no_such_factory'"),
        (f"{__name__}.NOT_CALLABLE", "is not callable"),
    ],
)
def test_unknown_names_are_clear_config_errors(name: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        make_state({"storm.cluster.state.store": name})
    assert info.value.key == "storm.cluster.state.store"


def test_a_mapping_of_yaml_keys_is_validated_into_a_config() -> None:
    built.clear()
    state = make_state(
        {
            "storm.cluster.state.store": f"{__name__}.FakeState",
            "storm.zookeeper.servers": ["127.0.0.1"],
            "storm.zookeeper.root": "/custom-root/",
            "storm.zookeeper.session.timeout": 2000,
        }
    )
    assert isinstance(state, FakeState)
    (config,) = built
    assert (config.zk_servers, config.zk_root, config.zk_session_timeout_secs) == (
        ("127.0.0.1",),
        "/custom-root",
        2.0,
    )
    with pytest.raises(ConfigError, match=r"storm\.zookeeper\.port"):
        make_state({"storm.zookeeper.port": "not-a-port"})


def test_a_config_is_used_as_is() -> None:
    built.clear()
    config = Config(cluster_state_store=f"{__name__}.FakeState", zk_root="/x")
    make_state(config)
    assert built == [config]


def test_a_factory_returning_something_else_is_closed_and_refused() -> None:
    closed.clear()
    with pytest.raises(ConfigError, match="lacks StateStorage methods"):
        make_state(Config(cluster_state_store=f"{__name__}.NotAState"))
    assert len(closed) == 1


@pytest.mark.parametrize("factory", [zookeeper_state_factory, pacemaker_state_factory])
def test_factories_need_zookeeper_servers(factory: Any) -> None:
    with pytest.raises(ConfigError, match=r"storm\.zookeeper\.servers"):
        factory(Config(servers=("127.0.0.1",)))


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"storm.zookeeper.auth.scheme": "digest"}, "storm.zookeeper.auth.payload"),
        ({"storm.zookeeper.retry.times": "many"}, "storm.zookeeper.retry.times"),
        ({"storm.zookeeper.connection.timeout": -1}, "storm.zookeeper.connection.timeout"),
    ],
)
def test_bad_storm_zookeeper_keys_fail_before_connecting(extra: dict[str, Any], key: str) -> None:
    conf = {"storm.zookeeper.servers": ["127.0.0.1"], "storm.zookeeper.port": free_port(), **extra}
    with pytest.raises(ConfigError) as info:
        zookeeper_state_factory(conf)
    assert info.value.key == key


def test_unreachable_zookeeper_fails_within_the_connection_timeout() -> None:
    conf = {
        "storm.zookeeper.servers": ["127.0.0.1"],
        "storm.zookeeper.port": free_port(),  # nothing listens there
        "storm.zookeeper.connection.timeout": 300,
    }
    start = time.monotonic()
    with pytest.raises(ClusterUnavailable, match=r"not reachable within 0\.3s"):
        zookeeper_state_factory(conf)
    assert time.monotonic() - start < 3.0


def test_kazoo_event_types_map_to_storm_names() -> None:
    assert [event_name(t) for t in ("CREATED", "DELETED", "CHANGED", "CHILD", "NONE")] == [
        "NODE_CREATED",
        "NODE_DELETED",
        "NODE_DATA_CHANGED",
        "NODE_CHILDREN_CHANGED",
        None,
    ]
