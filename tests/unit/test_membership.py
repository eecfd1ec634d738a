"""Membership: seed parsing, epochs, DNS seeds against a real in-process DNS server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from pmcluster.config import Config
from pmcluster.errors import ConfigError
from pmcluster.membership import (
    FixedMembership,
    MembershipSnapshot,
    SeedMembership,
    make_membership,
    parse_address,
    parse_nameserver,
)
from pmcluster.ring import Member
from pmcluster.testing.dns import DnsServer, query

NAME = "pm.cluster.test"


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


def ids(snapshot: MembershipSnapshot | None) -> list[str]:
    assert snapshot is not None
    return list(snapshot.node_ids)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 6699)),
        ("10.0.0.1:7000", ("10.0.0.1", 7000)),
        ("node-a.example", ("node-a.example", 6699)),
        ("node-a.example.:80", ("node-a.example.", 80)),
        ("pm_1:6700", ("pm_1", 6700)),
        ("localhost", ("localhost", 6699)),
        ("[::1]:6700", ("::1", 6700)),
        ("[::1]", ("::1", 6699)),
        ("::1", ("::1", 6699)),
        ("[0:0::1]:1", ("::1", 1)),
        ("  10.0.0.2  ", ("10.0.0.2", 6699)),
    ],
)
def test_parse_address(entry: str, expected: tuple[str, int]) -> None:
    assert parse_address(entry, 6699) == expected


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("", "expected"),
        ("host:", "port must be 1-65535"),
        ("host:0", "port must be 1-65535"),
        ("host:65536", "port must be 1-65535"),
        ("host:http", "port must be 1-65535"),
        (":6699", "empty host"),
        ("[::1", "missing ']'"),
        ("[10.0.0.1]:80", "not an IPv6 address"),
        ("[::1]x", "unexpected"),
        ("::1::2", "not an address"),
        ("bad host", "not a host name"),
        ("-bad.example", "not a host name"),
        ("a..b", "not a host name"),
        ("10.0.0", "not a host name"),
        ("host:1:2", "not an address"),
    ],
)
def test_parse_address_rejects(entry: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        parse_address(entry, 6699)
    assert info.value.key == "pacemaker.servers"
    assert repr(entry) in str(info.value)


def test_parse_nameserver() -> None:
    assert parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    with pytest.raises(ConfigError, match="must be an IP") as info:
        parse_nameserver("dns.example")
    assert info.value.key == "pmcluster.dns.nameservers"


def test_seed_membership_rejects_bad_config() -> None:
    with pytest.raises(ConfigError, match="no servers"):
        SeedMembership([], 6699)
    with pytest.raises(ConfigError, match="'a b'"):
        SeedMembership(["10.0.0.1", "a b"], 6699)
    with pytest.raises(ConfigError, match=r"pmcluster\.dns\.nameservers"):
        SeedMembership(["x.example"], 6699, nameservers=["ns.example"])


# --- epochs -----------------------------------------------------------------------------------


def test_epoch_is_stable_for_a_set_and_differs_between_sets() -> None:
    a, b, c = (Member.at(f"10.0.0.{i}", 6699) for i in (1, 2, 3))
    one = MembershipSnapshot.of("static", [a, b, c])
    assert one == MembershipSnapshot.of("static", [c, a, b])
    assert one.members == (a, b, c)
    assert one.epoch.startswith("static-") and len(one.epoch) == len("static-") + 12
    assert MembershipSnapshot.of("static", [a, b]).epoch != one.epoch
    assert MembershipSnapshot.of("dns", [a, b, c]).epoch == "dns-" + one.epoch[len("static-") :]


async def test_static_seed_list() -> None:
    source = SeedMembership(["10.0.0.2:7000", "[::1]", "10.0.0.1"], 6699)
    other_order = SeedMembership(["[::1]:6699", "10.0.0.1", "10.0.0.2:7000", "10.0.0.1"], 6699)
    await source.start()
    await other_order.start()
    try:
        assert ids(source.current()) == ["10.0.0.1:6699", "10.0.0.2:7000", "[::1]:6699"]
        assert source.current() == other_order.current()
        snapshot = source.current()
        assert snapshot is not None and snapshot.epoch.startswith("static-")
        assert snapshot.members[2] == Member("[::1]:6699", "::1", 6699, None)
    finally:
        await source.stop()
        await other_order.stop()


async def test_localhost_is_127_0_0_1_and_makes_a_dns_epoch() -> None:
    source = SeedMembership(["localhost:7001"], 6699)
    await source.start()
    try:
        assert ids(source.current()) == ["127.0.0.1:7001"]
        snapshot = source.current()
        assert snapshot is not None and snapshot.epoch.startswith("dns-")
    finally:
        await source.stop()


# --- DNS --------------------------------------------------------------------------------------


def test_dns_server_answers_a_and_aaaa(dns_server: DnsServer) -> None:
    dns_server.set_records(NAME, ["127.0.0.1", "127.0.0.2", "::1"])
    answer = query(("127.0.0.1", dns_server.port), NAME + ".", "A")
    assert sorted(str(rr.rdata) for rr in answer.rr) == ["127.0.0.1", "127.0.0.2"]
    answer = query(("127.0.0.1", dns_server.port), NAME.upper(), "AAAA")
    assert [str(rr.rdata) for rr in answer.rr] == ["::1"]
    assert query(("127.0.0.1", dns_server.port), "unknown.test").header.rcode == 3  # NXDOMAIN
    assert dns_server.nameserver == f"127.0.0.1:{dns_server.port}"


async def test_dns_name_resolves_to_every_record(dns_server: DnsServer) -> None:
    dns_server.set_records(NAME, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    source = SeedMembership([NAME], 6700, nameservers=[dns_server.nameserver])
    await source.start()
    try:
        assert ids(source.current()) == ["127.0.0.1:6700", "127.0.0.2:6700", "127.0.0.3:6700"]
        snapshot = source.current()
        assert snapshot is not None and snapshot.epoch.startswith("dns-")
    finally:
        await source.stop()


async def test_dns_mixed_with_ip_literals_and_ipv6(dns_server: DnsServer) -> None:
    dns_server.set_records(NAME, ["127.0.0.2", "::1"])
    source = SeedMembership(
        [f"{NAME}:7000", "127.0.0.9"], 6699, nameservers=[dns_server.nameserver]
    )
    await source.start()
    try:
        assert ids(source.current()) == ["127.0.0.2:7000", "127.0.0.9:6699", "[::1]:7000"]
    finally:
        await source.stop()


async def test_record_change_is_delivered_within_refresh(dns_server: DnsServer) -> None:
    dns_server.set_records(NAME, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    source = SeedMembership([NAME], 6699, nameservers=[dns_server.nameserver], refresh_secs=0.2)
    seen: list[MembershipSnapshot] = []
    source.subscribe(seen.append)
    await source.start()
    try:
        assert len(seen) == 1 and len(seen[0].members) == 3
        first_epoch = seen[0].epoch

        # Unchanged records: re-resolution happens, but nothing new is published.
        queries = dns_server.query_count
        await wait_for(lambda: dns_server.query_count >= queries + 4, timeout=2.0)
        assert len(seen) == 1

        dns_server.set_records(NAME, ["127.0.0.1", "127.0.0.3", "127.0.0.4"])
        changed_at = time.monotonic()
        await wait_for(lambda: len(seen) == 2, timeout=2.0)
        assert time.monotonic() - changed_at < 0.2 + 1.0
        assert ids(seen[1]) == ["127.0.0.1:6699", "127.0.0.3:6699", "127.0.0.4:6699"]
        assert seen[1].epoch != first_epoch
        assert source.current() == seen[1]
    finally:
        await source.stop()


async def test_failed_resolution_keeps_the_last_snapshot(
    dns_server: DnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.set_records(NAME, ["127.0.0.1", "127.0.0.2"])
    source = SeedMembership([NAME], 6699, nameservers=[dns_server.nameserver], refresh_secs=0.1)
    seen: list[MembershipSnapshot] = []
    source.subscribe(seen.append)
    await source.start()
    try:
        before = source.current()
        dns_server.remove(NAME)  # NXDOMAIN
        assert await source.refresh() is False
        dns_server.set_records(NAME, [])  # the name exists but has no address
        assert await source.refresh() is False
        assert source.current() == before and len(seen) == 1
        assert "keeping membership" in caplog.text

        dns_server.set_records(NAME, ["127.0.0.5"])
        await wait_for(lambda: len(seen) == 2, timeout=2.0)
        assert ids(source.current()) == ["127.0.0.5:6699"]
    finally:
        await source.stop()


async def test_unreachable_nameserver_starts_empty_then_recovers(dns_server: DnsServer) -> None:
    # The name server is down at start: no snapshot yet, and start() does not hang.
    port = dns_server.port
    dns_server.stop()
    source = SeedMembership(
        [NAME],
        6699,
        nameservers=[f"127.0.0.1:{port}"],
        refresh_secs=0.2,
        resolve_timeout_secs=0.3,
    )
    started = time.monotonic()
    await source.start()
    try:
        assert time.monotonic() - started < 2.0
        assert source.current() is None
        revived = DnsServer(port=port)
        revived.set_records(NAME, ["127.0.0.7"])
        revived.start()
        try:
            await wait_for(lambda: source.current() is not None, timeout=3.0)
            assert ids(source.current()) == ["127.0.0.7:6699"]
        finally:
            revived.stop()
    finally:
        await source.stop()


async def test_stop_ends_refreshing(dns_server: DnsServer) -> None:
    dns_server.set_records(NAME, ["127.0.0.1"])
    source = SeedMembership([NAME], 6699, nameservers=[dns_server.nameserver], refresh_secs=0.05)
    await source.start()
    await source.stop()
    await source.stop()  # idempotent
    queries = dns_server.query_count
    await asyncio.sleep(0.2)  # several refresh periods: asserting that nothing happens
    assert dns_server.query_count == queries


# --- factory ----------------------------------------------------------------------------------


async def test_make_membership_from_seed_list(dns_server: DnsServer) -> None:
    dns_server.set_records(NAME, ["127.0.0.1", "127.0.0.2"])
    config = Config(
        servers=(NAME,), port=6800, dns_nameservers=(dns_server.nameserver,), dns_refresh_secs=5
    )
    source = make_membership(config, None)
    assert isinstance(source, SeedMembership)
    await source.start()
    try:
        assert ids(source.current()) == ["127.0.0.1:6800", "127.0.0.2:6800"]
    finally:
        await source.stop()


async def test_make_membership_alone_is_self() -> None:
    me = Member.at("127.0.0.1", 6699, zone="a")
    source = make_membership(Config(), me)
    assert isinstance(source, FixedMembership)
    seen: list[MembershipSnapshot] = []
    source.subscribe(seen.append)
    await source.start()
    assert source.current() == MembershipSnapshot.of("static", [me])
    assert seen == [source.current()]
    await source.stop()


def test_make_membership_without_anything_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"pacemaker\.servers"):
        make_membership(Config(), None)


def test_make_membership_picks_zookeeper_when_configured() -> None:
    from pmcluster.membership import zookeeper as zkmembership

    config = Config(zk_servers=("127.0.0.1",), zk_port=1)  # never contacted: not started
    source = make_membership(config, Member.at("127.0.0.1", 6699))
    assert isinstance(source, zkmembership.ZooKeeperMembership)


async def test_subscriber_error_does_not_stop_others() -> None:
    source = FixedMembership([Member.at("127.0.0.1", 1)])
    seen: list[MembershipSnapshot] = []

    def broken(snapshot: MembershipSnapshot) -> None:
        raise RuntimeError("boom")

    source.subscribe(broken)
    source.subscribe(seen.append)
    await source.start()
    assert len(seen) == 1


async def test_system_resolver_reads_the_hosts_file() -> None:
    # Without configured name servers, names go through getaddrinfo (/etc/hosts first).
    from pmcluster.membership.seeds import _SystemResolver

    assert "127.0.0.1" in await _SystemResolver(2.0).addresses("localhost")


async def test_a_refused_aaaa_query_does_not_hide_the_a_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pmcluster.membership import seeds as mod

    resolver = mod._DnsResolver([("127.0.0.1", 53)], timeout=1.0)

    async def query(name: str, rdtype: str) -> list[str]:
        if rdtype == "AAAA":
            raise mod._ResolutionFailed(f"{name} AAAA: REFUSED")
        return ["127.0.0.1", "127.0.0.2"]

    monkeypatch.setattr(resolver, "_query", query)
    assert await resolver.addresses("pm.test") == ["127.0.0.1", "127.0.0.2"]

    async def refuse_all(name: str, rdtype: str) -> list[str]:
        raise mod._ResolutionFailed(f"{name} {rdtype}: REFUSED")

    monkeypatch.setattr(resolver, "_query", refuse_all)
    with pytest.raises(mod._ResolutionFailed):
        await resolver.addresses("pm.test")
