"""Config loading: Storm's keys and defaults, overrides, and errors that name the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pmcluster.config import Config, load_config, peer_config
from pmcluster.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pmcluster.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_storms() -> None:
    config = load_config()
    assert config.port == 6699
    assert config.max_threads == 50
    assert config.max_message_size == 10_485_760
    assert config.heartbeat_secs == 3.0
    assert config.auth_method == "NONE"
    assert config.zk_root == "/storm"
    assert config.replication == 2
    assert config.ring_points == 160
    assert config.grace_window_secs == config.heartbeat_secs + config.request_timeout_secs


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "pacemaker.port: 7000\n"
        "pacemaker.host: 127.0.0.2\n"
        "pacemaker.servers: [127.0.0.1, '127.0.0.2:7000']\n"
        "storm.zookeeper.servers: [zk1, zk2]\n"
        "storm.zookeeper.session.timeout: 4000\n"
        "pmcluster.replication: 3\n"
        "pacemaker.auth.method: none\n",
    )
    config = load_config(path)
    assert config.port == 7000
    assert config.node_id == "127.0.0.2:7000"
    assert config.servers == ("127.0.0.1", "127.0.0.2:7000")
    assert config.zk_servers == ("zk1", "zk2")
    assert config.zk_session_timeout_secs == pytest.approx(4.0)
    assert config.replication == 3
    assert config.auth_method == "NONE"


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "pacemaker.port: 7000\n")
    config = load_config(path, {"pacemaker.port": 7100, "pacemaker.host": None})
    assert config.port == 7100
    assert config.host == Config().host


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("pacemaker.port: 70000\n", "pacemaker.port"),
        ("pacemaker.port: seven\n", "pacemaker.port"),
        ("pacemaker.max.threads: 0\n", "pacemaker.max.threads"),
        ("pacemaker.auth.method: SHA\n", "pacemaker.auth.method"),
        ("pmcluster.ring.points: 50\n", "pmcluster.ring.points"),
        ("pmcluster.replication: true\n", "pmcluster.replication"),
        ("storm.zookeeper.root: relative\n", "storm.zookeeper.root"),
        ("pacemaker.servers: {a: 1}\n", "pacemaker.servers"),
        ("pmcluster.request.timeout.secs: fast\n", "pmcluster.request.timeout.secs"),
        ("pacemaker.auth.method: DIGEST\n", "java.security.auth.login.config"),
        ("pmcluster.peer.timeout.secs: 2.0\n", "pmcluster.peer.timeout.secs"),
        ("pmcluster.peer.timeout.secs: 0\n", "pmcluster.peer.timeout.secs"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key
    assert key in str(info.value)


def test_unknown_keys_warn_but_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "pmcluster.replicaton: 3\nnimbus.seeds: [a]\n")
    with caplog.at_level(logging.WARNING):
        config = load_config(path)
    assert config.replication == 2
    assert "pmcluster.replicaton" in caplog.text
    assert "nimbus.seeds" not in caplog.text  # a shared storm.yaml's keys are expected


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "pacemaker.port: [\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_a_node_waits_for_its_peers_less_than_its_clients_wait() -> None:
    """A node's own client gets a share of the request timeout (an explicit key wins), its
    connect timeout at most that, and the grace window the clients use."""
    config = Config(request_timeout_secs=2.0, connect_timeout_secs=1.5, heartbeat_secs=3.0)
    peers = peer_config(config)
    assert 0 < peers.request_timeout_secs < config.request_timeout_secs
    assert peers.connect_timeout_secs == peers.request_timeout_secs
    assert peers.grace_window_secs == config.grace_window_secs == 5.0
    explicit = peer_config(Config(request_timeout_secs=2.0, peer_timeout_secs=0.25))
    assert explicit.request_timeout_secs == 0.25
