"""Membership: who is in the cluster, as a stream of immutable snapshots.

Three sources share the `MembershipSource` protocol (`base`): ZooKeeper (`zookeeper`, nodes
register themselves), a seed list (`seeds.SeedMembership`: IP literals and DNS names whose
A/AAAA records are the nodes, re-resolved periodically) and a fixed member list
(`seeds.FixedMembership`, a node alone or a test). `make_membership` picks one from the config;
the ZooKeeper module (and kazoo) is imported only when the config asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pmcluster.errors import ConfigError
from pmcluster.membership.base import MembershipSnapshot, MembershipSource, SnapshotPublisher
from pmcluster.membership.seeds import (
    SERVERS_KEY,
    FixedMembership,
    SeedMembership,
    parse_address,
    parse_ip,
    parse_nameserver,
)
from pmcluster.ring import Member

if TYPE_CHECKING:
    from pmcluster.config import Config

__all__ = [
    "FixedMembership",
    "MembershipSnapshot",
    "MembershipSource",
    "SeedMembership",
    "SnapshotPublisher",
    "make_membership",
    "parse_address",
    "parse_ip",
    "parse_nameserver",
]


def make_membership(
    config: Config,
    self_member: Member | None,
    *,
    on_new_session: Callable[[], None] | None = None,
    on_registered: Callable[[], None] | None = None,
    register: bool = True,
) -> MembershipSource:
    """The membership source `config` asks for.

    ZooKeeper when `storm.zookeeper.servers` is set (the node registers `self_member`;
    `on_new_session` is called when a new ZooKeeper session starts, so the node can wipe its
    store; `on_registered` each time its znode is created; `register=False` defers the
    registration to the source's `register()`); else the `pacemaker.servers` seed list; else,
    for a node, itself alone.
    """
    if config.zk_servers:
        from pmcluster.membership.zookeeper import ZooKeeperMembership

        return ZooKeeperMembership(
            config,
            self_member,
            on_new_session=on_new_session,
            on_registered=on_registered,
            register=register,
        )
    if config.servers:
        return SeedMembership(
            config.servers,
            config.port,
            nameservers=config.dns_nameservers,
            refresh_secs=config.dns_refresh_secs,
            resolve_timeout_secs=config.request_timeout_secs,
        )
    if self_member is not None:
        return FixedMembership([self_member])
    raise ConfigError(
        SERVERS_KEY, "no servers and no ZooKeeper configured: nothing to find the cluster with"
    )
