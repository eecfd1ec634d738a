"""Configuration: a YAML file in Storm's style (flat dotted keys, Storm's names and defaults).

`load_config(path, overrides)` reads the file, applies command-line overrides, validates every
value and returns a frozen `Config`. A wrong type or value raises `ConfigError` naming the key,
so the daemon refuses to start with a message an operator can act on; an unknown key is only
warned about, because a real storm.yaml carries many keys that pmcluster does not use.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pmcluster.errors import ConfigError

log = logging.getLogger(__name__)

AUTH_METHODS = ("NONE", "DIGEST", "KERBEROS")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
STORM_READ_MODES = ("cluster", "local")
EVENT_LOOPS = ("uvloop", "asyncio")  # pmcluster.event.loop: the node's event loop
DEFAULT_STATE_STORE = "pmcluster.state.zookeeper_state_factory"
# A coordinating node's wait for its peers, as a share of `pmcluster.request.timeout.secs`
# (`pmcluster.peer.timeout.secs` unset): the rest is the client's hop and the node's answer.
PEER_TIMEOUT_SHARE = 0.6


@dataclass(frozen=True)
class Config:
    """Every setting a node, client or tool reads, with Storm's defaults."""

    servers: tuple[str, ...] = ()
    port: int = 6699
    host: str = "127.0.0.1"
    max_threads: int = 50
    childopts: str = ""
    auth_method: str = "NONE"
    jaas_path: str | None = None
    nimbus_daemon_user: str | None = None
    kerberos_users: tuple[str, ...] = ()
    max_message_size: int = 10 * 1024 * 1024
    zk_servers: tuple[str, ...] = ()
    zk_port: int = 2181
    zk_root: str = "/storm"
    zk_session_timeout_secs: float = 20.0
    cluster_state_store: str = DEFAULT_STATE_STORE
    heartbeat_secs: float = 3.0
    replication: int = 2
    ring_points: int = 160
    zone: str | None = None
    connect_timeout_secs: float = 0.5
    request_timeout_secs: float = 2.0
    peer_timeout_secs: float | None = None
    grace_secs: float | None = None
    ttl_secs: float | None = None
    tombstone_secs: float = 600.0
    antientropy_secs: float = 5.0
    memory_max_bytes: int | None = None
    max_connections: int = 10_000
    dns_nameservers: tuple[str, ...] = ()
    dns_refresh_secs: float = 30.0
    log_level: str = "INFO"
    storm_read_mode: str = "cluster"
    event_loop: str = "uvloop"
    auth_writes: bool = False
    auth_nonce_secs: float = 300.0
    auth_cookie_secs: float = 3600.0
    auth_secret_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_verify: bool = True
    # Hardening limits (docs/security.md): what one client may make a node hold or do.
    version_max_skew_secs: float = 30.0
    path_max_bytes: int = 4096
    path_max_depth: int = 64
    thrift_max_elements: int = 100_000
    batch_max_entries: int = 10_000
    response_max_bytes: int = 256 * 1024 * 1024
    http_idle_secs: float = 60.0
    storm_idle_secs: float = 300.0
    header_timeout_secs: float = 10.0
    handshake_timeout_secs: float = 10.0
    frame_timeout_secs: float = 30.0
    max_connections_per_address: int = 256
    peer_connections_reserved: int = 64
    buffer_max_bytes: int = 256 * 1024 * 1024
    auth_digest_md5: bool = True
    admin_users: tuple[str, ...] = ()
    admin_secret_file: str | None = None
    kerberos_peers: tuple[str, ...] = ()
    write_coalesce: bool = True
    replication_channel: bool = True
    write_coalesce_delay_secs: float = 0.002
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def node_id(self) -> str:
        """This node's stable advertised identity, `host:port`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def grace_window_secs(self) -> float:
        """How long reads also ask the previous ring's owners after a ring change."""
        if self.grace_secs is not None:
            return self.grace_secs
        return self.heartbeat_secs + self.request_timeout_secs

    @property
    def peer_request_timeout_secs(self) -> float:
        """How long a node coordinating a request waits for its peers: a share of the
        request timeout, so a plain client with that timeout gets the answer even when an
        owner hangs (the coordinator answers from the owners that did, in time)."""
        if self.peer_timeout_secs is not None:
            return self.peer_timeout_secs
        return self.request_timeout_secs * PEER_TIMEOUT_SHARE


# --- value parsers: each takes (key, raw value) and returns the typed value or raises -------

Parser = Callable[[str, Any], Any]


def _int(lo: int, hi: int) -> Parser:
    def parse(key: str, raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
                raw = int(raw.strip())
            else:
                raise ConfigError(key, f"expected an integer, got {raw!r}")
        if not lo <= raw <= hi:
            raise ConfigError(key, f"must be between {lo} and {hi}, got {raw}")
        return int(raw)

    return parse


def _float(lo: float, hi: float, *, scale: float = 1.0) -> Parser:
    def parse(key: str, raw: Any) -> float:
        if isinstance(raw, bool):
            raise ConfigError(key, f"expected a number, got {raw!r}")
        try:
            value = float(raw) * scale
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number, got {raw!r}") from None
        if math.isnan(value) or not lo <= value <= hi:
            raise ConfigError(key, f"must be between {lo / scale:g} and {hi / scale:g}, got {raw}")
        return value

    return parse


def _off_or(inner: Parser) -> Parser:
    """0 switches the feature off; any other value goes through `inner`."""

    def parse(key: str, raw: Any) -> Any:
        if not isinstance(raw, bool) and isinstance(raw, int | float) and raw == 0:
            return 0.0
        return inner(key, raw)

    return parse


def _optional(inner: Parser) -> Parser:
    def parse(key: str, raw: Any) -> Any:
        return None if raw is None else inner(key, raw)

    return parse


def _str(key: str, raw: Any) -> str:
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise ConfigError(key, f"expected a string, got {raw!r}")
    return str(raw)


def _nonempty_str(key: str, raw: Any) -> str:
    value = _str(key, raw).strip()
    if not value:
        raise ConfigError(key, "must not be empty")
    return value


def _str_list(key: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [part for part in raw.replace(",", " ").split() if part]
    if not isinstance(raw, list | tuple):
        raise ConfigError(key, f"expected a list of strings, got {raw!r}")
    out = []
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ConfigError(key, f"expected a list of strings, got item {item!r}")
        text = str(item).strip()
        if not text:
            raise ConfigError(key, "list items must not be empty")
        out.append(text)
    return tuple(out)


def _bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower() if isinstance(raw, str | int) else None
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ConfigError(key, f"expected true or false, got {raw!r}")


def _choice(choices: tuple[str, ...]) -> Parser:
    def parse(key: str, raw: Any) -> str:
        value = _str(key, raw).strip().upper()
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _lower_choice(choices: tuple[str, ...]) -> Parser:
    """`_choice` of lower-case `choices`, answering in lower case (any case accepted)."""
    upper = _choice(tuple(choice.upper() for choice in choices))

    def parse(key: str, raw: Any) -> str:
        value: str = upper(key, raw)
        return value.lower()

    return parse


def _zk_root(key: str, raw: Any) -> str:
    value = _nonempty_str(key, raw)
    if not value.startswith("/"):
        raise ConfigError(key, f"must be an absolute ZooKeeper path, got {raw!r}")
    return value.rstrip("/") or "/"


_MAX_SECS = 7 * 24 * 3600.0

# YAML key -> (Config attribute, parser). The one table of what pmcluster understands.
KEYS: dict[str, tuple[str, Parser]] = {
    "pacemaker.servers": ("servers", _str_list),
    "pacemaker.port": ("port", _int(1, 65535)),
    "pacemaker.host": ("host", _nonempty_str),
    "pacemaker.max.threads": ("max_threads", _int(1, 10_000)),
    "pacemaker.childopts": ("childopts", _optional(_str)),
    "pacemaker.auth.method": ("auth_method", _choice(AUTH_METHODS)),
    "java.security.auth.login.config": ("jaas_path", _optional(_nonempty_str)),
    "nimbus.daemon.user": ("nimbus_daemon_user", _optional(_nonempty_str)),
    "pacemaker.kerberos.users": ("kerberos_users", _str_list),
    "pacemaker.thrift.message.size.max": ("max_message_size", _int(1024, 1 << 30)),
    "storm.zookeeper.servers": ("zk_servers", _str_list),
    "storm.zookeeper.port": ("zk_port", _int(1, 65535)),
    "storm.zookeeper.root": ("zk_root", _zk_root),
    "storm.zookeeper.session.timeout": (
        "zk_session_timeout_secs",
        _float(0.2, _MAX_SECS, scale=0.001),
    ),
    "storm.cluster.state.store": ("cluster_state_store", _nonempty_str),
    "task.heartbeat.frequency.secs": ("heartbeat_secs", _float(0.01, 3600.0)),
    "pmcluster.replication": ("replication", _int(1, 16)),
    "pmcluster.ring.points": ("ring_points", _int(100, 10_000)),
    "pmcluster.zone": ("zone", _optional(_nonempty_str)),
    "pmcluster.connect.timeout.secs": ("connect_timeout_secs", _float(0.001, 600.0)),
    "pmcluster.request.timeout.secs": ("request_timeout_secs", _float(0.001, 600.0)),
    "pmcluster.peer.timeout.secs": ("peer_timeout_secs", _optional(_float(0.001, 600.0))),
    "pmcluster.grace.secs": ("grace_secs", _optional(_float(0.0, _MAX_SECS))),
    "pmcluster.ttl.secs": ("ttl_secs", _optional(_float(0.001, _MAX_SECS))),
    "pmcluster.tombstone.secs": ("tombstone_secs", _float(0.001, _MAX_SECS)),
    "pmcluster.antientropy.secs": ("antientropy_secs", _off_or(_float(0.1, _MAX_SECS))),
    "pmcluster.memory.max.bytes": ("memory_max_bytes", _optional(_int(1024, 1 << 50))),
    "pmcluster.max.connections": ("max_connections", _int(1, 1_000_000)),
    "pmcluster.dns.nameservers": ("dns_nameservers", _str_list),
    "pmcluster.dns.refresh.secs": ("dns_refresh_secs", _float(0.05, _MAX_SECS)),
    "pmcluster.log.level": ("log_level", _choice(LOG_LEVELS)),
    "pmcluster.auth.writes": ("auth_writes", _bool),
    "pmcluster.auth.nonce.secs": ("auth_nonce_secs", _float(1.0, _MAX_SECS)),
    "pmcluster.auth.cookie.secs": ("auth_cookie_secs", _float(1.0, _MAX_SECS)),
    "pmcluster.auth.secret.file": ("auth_secret_file", _optional(_nonempty_str)),
    "pmcluster.tls.cert": ("tls_cert", _optional(_nonempty_str)),
    "pmcluster.tls.key": ("tls_key", _optional(_nonempty_str)),
    "pmcluster.tls.ca": ("tls_ca", _optional(_nonempty_str)),
    "pmcluster.tls.verify": ("tls_verify", _bool),
    "pmcluster.write.coalesce": ("write_coalesce", _bool),
    "pmcluster.replication.channel": ("replication_channel", _bool),
    "pmcluster.write.coalesce.delay.secs": ("write_coalesce_delay_secs", _float(0.0, 1.0)),
    "pmcluster.storm.read.mode": ("storm_read_mode", _lower_choice(STORM_READ_MODES)),
    "pmcluster.event.loop": ("event_loop", _lower_choice(EVENT_LOOPS)),
    "pmcluster.version.max.skew.secs": ("version_max_skew_secs", _float(0.001, 86_400.0)),
    "pmcluster.path.max.bytes": ("path_max_bytes", _int(256, 1 << 20)),
    "pmcluster.path.max.depth": ("path_max_depth", _int(32, 4096)),
    "pmcluster.thrift.max.elements": ("thrift_max_elements", _int(16, 100_000_000)),
    "pmcluster.batch.max.entries": ("batch_max_entries", _int(1, 10_000_000)),
    "pmcluster.response.max.bytes": ("response_max_bytes", _int(1 << 16, 1 << 40)),
    "pmcluster.http.idle.secs": ("http_idle_secs", _float(0.1, _MAX_SECS)),
    "pmcluster.storm.idle.secs": ("storm_idle_secs", _float(0.1, _MAX_SECS)),
    "pmcluster.header.timeout.secs": ("header_timeout_secs", _float(0.05, 3600.0)),
    "pmcluster.handshake.timeout.secs": ("handshake_timeout_secs", _float(0.05, 3600.0)),
    "pmcluster.frame.timeout.secs": ("frame_timeout_secs", _float(0.05, 3600.0)),
    "pmcluster.max.connections.per.address": ("max_connections_per_address", _int(1, 1_000_000)),
    "pmcluster.peer.connections.reserved": ("peer_connections_reserved", _int(0, 1_000_000)),
    "pmcluster.buffer.max.bytes": ("buffer_max_bytes", _int(1 << 16, 1 << 50)),
    "pmcluster.auth.digest.md5": ("auth_digest_md5", _bool),
    "pmcluster.admin.users": ("admin_users", _str_list),
    "pmcluster.admin.secret.file": ("admin_secret_file", _optional(_nonempty_str)),
    "pmcluster.kerberos.peers": ("kerberos_peers", _str_list),
}

# Keys that a shared storm.yaml carries for other daemons: accepted silently.
_FOREIGN_PREFIXES = (
    "storm.",
    "nimbus.",
    "supervisor.",
    "worker.",
    "topology.",
    "ui.",
    "drpc.",
    "logviewer.",
    "pacemaker.",
    "java.",
    "task.",
    "transactional.",
    "dev.",
)


def config_from_mapping(values: Mapping[str, Any]) -> Config:
    """Validate a mapping of YAML keys to values and build a `Config`."""
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, raw in values.items():
        if not isinstance(key, str):
            raise ConfigError(str(key), "config keys must be strings")
        spec = KEYS.get(key)
        if spec is None:
            extra[key] = raw
            if key.startswith("pmcluster.") or not key.startswith(_FOREIGN_PREFIXES):
                log.warning("unknown config key %r ignored", key)
            continue
        attr, parse = spec
        kwargs[attr] = parse(key, raw)
    config = Config(**kwargs, extra=extra)
    _check_consistency(config)
    return config


def peer_config(config: Config) -> Config:
    """The settings of a node's own cluster client: `peer_request_timeout_secs` as its
    request timeout (connect timeout at most that), the node's grace window unchanged."""
    timeout = config.peer_request_timeout_secs
    return replace(
        config,
        request_timeout_secs=timeout,
        connect_timeout_secs=min(config.connect_timeout_secs, timeout),
        grace_secs=config.grace_window_secs,
    )


def _check_consistency(config: Config) -> None:
    if config.connect_timeout_secs > config.request_timeout_secs:
        raise ConfigError(
            "pmcluster.connect.timeout.secs",
            f"({config.connect_timeout_secs:g}) must not exceed pmcluster.request.timeout.secs "
            f"({config.request_timeout_secs:g})",
        )
    if config.peer_timeout_secs is not None and (
        config.peer_timeout_secs >= config.request_timeout_secs
    ):
        raise ConfigError(
            "pmcluster.peer.timeout.secs",
            f"({config.peer_timeout_secs:g}) must be less than pmcluster.request.timeout.secs "
            f"({config.request_timeout_secs:g}): a client waiting that long through a "
            "coordinating node must get the node's answer",
        )
    if config.auth_method == "DIGEST" and not config.jaas_path:
        raise ConfigError(
            "java.security.auth.login.config",
            "DIGEST authentication needs a JAAS file with a PacemakerDigest section",
        )
    if config.auth_method == "KERBEROS" and not config.jaas_path:
        raise ConfigError(
            "java.security.auth.login.config",
            "KERBEROS authentication needs a JAAS file with PacemakerServer/PacemakerClient",
        )
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError(
            "pmcluster.tls.key" if config.tls_key is None else "pmcluster.tls.cert",
            "pmcluster.tls.cert and pmcluster.tls.key go together",
        )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a Storm-style YAML file; an empty file is an empty mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of keys to values")
    return data


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Load the YAML file (if any), apply command-line overrides (YAML key names), validate."""
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return config_from_mapping(values)


def client_config(
    path: str | Path | None = None,
    *,
    servers: str | None = None,
    zookeeper: str | None = None,
    timeout: float | None = None,
) -> Config:
    """A client's config: the file, then the command-line seeds, ZooKeeper and timeout (the
    connect timeout at most 0.5 s of it); with neither seeds nor ZooKeeper, the local node
    127.0.0.1. Shared by the CLI's data commands and the operator tools."""
    overrides: dict[str, Any] = {}
    if servers:
        overrides["pacemaker.servers"] = servers
    if zookeeper:
        overrides["storm.zookeeper.servers"] = zookeeper
    if timeout:
        overrides["pmcluster.request.timeout.secs"] = timeout
        overrides["pmcluster.connect.timeout.secs"] = min(timeout, 0.5)
    config = load_config(path, overrides)
    if not config.servers and not config.zk_servers:
        config = load_config(path, {**overrides, "pacemaker.servers": ["127.0.0.1"]})
    return config


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `client_config` takes: --config, --servers, --zookeeper, --timeout."""
    parser.add_argument("--config", metavar="FILE", help="Storm-style YAML config file")
    parser.add_argument(
        "--servers",
        metavar="HOST[:PORT],...",
        help="comma-separated seed nodes (overrides pacemaker.servers)",
    )
    parser.add_argument(
        "--zookeeper",
        metavar="HOST:PORT,...",
        help="ZooKeeper connect string (overrides storm.zookeeper.servers)",
    )
    parser.add_argument("--timeout", type=float, help="request timeout in seconds")
