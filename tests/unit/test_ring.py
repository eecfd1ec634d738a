"""Ring: uhashring-compatible placement, balance, minimal movement, zone-aware owners."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import pytest
from uhashring import HashRing

from pmcluster import ring as ring_module
from pmcluster.errors import ClusterUnavailable
from pmcluster.ring import (
    Member,
    Ring,
    balance_estimate,
    balance_summary,
    format_node_id,
    hash_key,
    heartbeat_like_paths,
)

KEYS = tuple(heartbeat_like_paths(100_000))


def members(n: int, *, zones: int = 0, start: int = 0) -> list[Member]:
    """`n` members on distinct loopback addresses, zones z0..z{zones-1} round robin."""
    return [
        Member.at(f"127.0.{i // 250}.{i % 250 + 1}", 6699, zone=f"z{i % zones}" if zones else None)
        for i in range(start, start + n)
    ]


def primaries(ring: Ring, keys: tuple[str, ...] = KEYS) -> list[str]:
    return [ring.primary(k).node_id for k in keys]


def test_primary_matches_uhashring_get_node() -> None:
    ms = members(10)
    ring = Ring(ms, "e1")
    reference = HashRing(nodes=[m.node_id for m in ms], vnodes=160)
    for key in KEYS[:20_000]:
        assert ring.primary(key).node_id == reference.get_node(key)
        assert ring.owners(key)[0].node_id == reference.get_node(key)


@pytest.mark.parametrize(("n", "replication"), [(2, 2), (7, 2), (7, 3), (7, 7)])
def test_owners_match_uhashring_distinct_walk(n: int, replication: int) -> None:
    ms = members(n)
    ring = Ring(ms, "e1", replication=replication, points=100)
    reference = HashRing(nodes=[m.node_id for m in ms], vnodes=100)
    for key in KEYS[:2_000]:
        expected = list(reference.iterate_nodes(key))[:replication]
        assert [m.node_id for m in ring.owners(key)] == expected


@pytest.mark.parametrize(("n", "replication", "zones"), [(3, 2, 0), (7, 3, 0), (6, 2, 3)])
def test_remembered_owners_stay_right_past_the_cache_bound(
    n: int, replication: int, zones: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ring_module, "OWNER_CACHE_SIZE", 50)
    ms = members(n, zones=zones)
    ring = Ring(ms, "e1", replication=replication)
    keys = KEYS[:400]
    first = [ring.owners(k) for k in keys]
    # A second and third pass (from the cache while it holds them, recomputed after it was
    # emptied at its bound) answer exactly what a ring that never saw the keys answers.
    for _ in range(2):
        assert [ring.owners(k) for k in keys] == first
        assert len(ring._cache) <= 50
    fresh = Ring(ms, "e1", replication=replication)
    assert [fresh.owners(k) for k in reversed(keys)] == first[::-1]
    # Each ring remembers its own owners: a ring without a member never answers with it.
    smaller = Ring(ms[1:], "e2", replication=replication)
    assert all(ms[0] not in smaller.owners(k) for k in keys)


def test_hash_key_is_uhashring_hash() -> None:
    reference = HashRing(nodes=["a:1"])
    for key in ("/workerbeats/t/n-1", "/ü/(x)+$[", "/"):
        assert hash_key(key) == reference.get_key(key)


def test_points_below_minimum_rejected() -> None:
    with pytest.raises(ValueError, match="100"):
        Ring(members(3), "e", points=99)
    assert Ring(members(3), "e", points=100).point_count == 300


def test_replication_below_one_rejected() -> None:
    with pytest.raises(ValueError, match="replication"):
        Ring(members(3), "e", replication=0)


def test_duplicate_member_rejected() -> None:
    m = Member.at("127.0.0.1", 6699)
    with pytest.raises(ValueError, match="duplicate"):
        Ring([m, m], "e")


def test_members_sorted_and_lookup_by_id() -> None:
    ms = members(5)
    ring = Ring(list(reversed(ms)), "e")
    assert ring.members == tuple(sorted(ms, key=lambda m: m.node_id))
    assert ring.member(ms[2].node_id) == ms[2]
    assert ms[2].node_id in ring
    assert ring.member("127.9.9.9:1") is None
    assert len(ring) == 5


def test_build_order_does_not_matter() -> None:
    ms = members(8)
    a, b = Ring(ms, "e"), Ring(list(reversed(ms)), "e")
    assert [a.owners(k) for k in KEYS[:5_000]] == [b.owners(k) for k in KEYS[:5_000]]


def test_empty_ring() -> None:
    ring = Ring([], "empty")
    assert ring.owners("/a") == ()
    with pytest.raises(ClusterUnavailable):
        ring.primary("/a")
    assert ring.balance(KEYS[:10]) == {}


def test_keys_normalised_to_str() -> None:
    ring = Ring(members(4), "e")
    assert ring.owners(123) == ring.owners("123")  # type: ignore[arg-type]


@pytest.mark.parametrize("replication", [1, 2, 3, 5])
def test_owners_distinct_and_capped(replication: int) -> None:
    ring = Ring(members(5), "e", replication=replication)
    for key in KEYS[:5_000]:
        owners = ring.owners(key)
        assert len(owners) == min(replication, 5)
        assert len({m.node_id for m in owners}) == len(owners)


def test_replication_larger_than_members() -> None:
    ring = Ring(members(2), "e", replication=3)
    owners = ring.owners("/workerbeats/t/a")
    assert len(owners) == 2
    assert {m.node_id for m in owners} == {m.node_id for m in members(2)}
    single = Ring(members(1), "e", replication=3)
    assert single.owners("/x") == tuple(members(1))


def test_balance_at_ten_nodes() -> None:
    ring = Ring(members(10), "e")
    counts = ring.balance(KEYS)
    assert sum(counts.values()) == len(KEYS)
    assert len(counts) == 10
    assert balance_summary(counts)["max_over_mean"] <= 1.15


def test_balance_estimate_counts_every_synthetic_key() -> None:
    ring = Ring(members(3), "e")
    counts = balance_estimate(ring, 3_000)
    assert sum(counts.values()) == 3_000
    assert counts == ring.balance(KEYS[:3_000])
    assert min(counts.values()) > 0


@pytest.mark.parametrize("n", [3, 5, 10])
def test_join_moves_about_one_share_and_only_to_the_new_node(n: int) -> None:
    old_members = members(n)
    new_member = members(1, start=n)[0]
    before = primaries(Ring(old_members, "e1"))
    after = primaries(Ring([*old_members, new_member], "e2"))
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    # A key only ever moves to the newcomer, never between two nodes present in both rings.
    assert all(a == new_member.node_id for _, a in moved)
    fraction = len(moved) / len(KEYS)
    expected = 1 / (n + 1)
    assert expected * 0.75 <= fraction <= expected * 1.25, (fraction, expected)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_leave_moves_only_the_leavers_keys(n: int) -> None:
    ms = members(n)
    leaver = ms[n // 2]
    before = primaries(Ring(ms, "e1"))
    after = primaries(Ring([m for m in ms if m != leaver], "e2"))
    for b, a in zip(before, after, strict=True):
        assert b == a or b == leaver.node_id


def _owner_sets(ring: Ring, keys: tuple[str, ...]) -> list[set[str]]:
    return [{m.node_id for m in ring.owners(k)} for k in keys]


@pytest.mark.parametrize("zones", [0, 3])
def test_one_join_or_leave_keeps_an_old_owner(zones: int) -> None:
    keys = KEYS[:30_000]
    ms = members(6, zones=zones)
    base = _owner_sets(Ring(ms, "e1", replication=2), keys)
    joined = _owner_sets(Ring(members(7, zones=zones), "e2", replication=2), keys)
    left = _owner_sets(Ring(ms[1:], "e3", replication=2), keys)
    for old, new in zip(base, joined, strict=True):
        assert old & new, (old, new)
    for old, new in zip(base, left, strict=True):
        assert old & new, (old, new)


def test_zone_aware_owners_in_distinct_zones() -> None:
    ring = Ring(members(9, zones=3), "e", replication=3)
    for key in KEYS[:10_000]:
        owners = ring.owners(key)
        assert len({m.zone for m in owners}) == 3


def test_zone_aware_fills_from_skipped_members_when_zones_run_out() -> None:
    # Two zones, R=3: two owners are in distinct zones, the third comes from the
    # skipped members, first in clockwise order.
    ms = members(6, zones=2)
    ring = Ring(ms, "e", replication=3)
    plain = HashRing(nodes=[m.node_id for m in ms], vnodes=160)
    by_id = {m.node_id: m for m in ms}
    for key in KEYS[:3_000]:
        owners = ring.owners(key)
        assert len({m.node_id for m in owners}) == 3
        assert {m.zone for m in owners[:2]} == {"z0", "z1"}
        walk = [by_id[n] for n in plain.iterate_nodes(key)]
        assert owners[0] == walk[0]
        second = next(m for m in walk if m.zone != walk[0].zone)
        assert owners[1] == second
        third = next(m for m in walk if m not in owners[:2])
        assert owners[2] == third


def test_no_zone_members_count_as_one_zone() -> None:
    zoned = members(4, zones=2)
    unzoned = members(2, start=4)
    ring = Ring([*zoned, *unzoned], "e", replication=3)
    for key in KEYS[:3_000]:
        zones = [m.zone for m in ring.owners(key)]
        assert len(set(zones)) == 3  # z0, z1 and "no zone"


def test_without_zones_owners_are_the_plain_walk() -> None:
    ms = members(6)
    ring = Ring(ms, "e", replication=3)
    plain = HashRing(nodes=[m.node_id for m in ms], vnodes=160)
    for key in KEYS[:3_000]:
        assert [m.node_id for m in ring.owners(key)] == list(plain.iterate_nodes(key))[:3]


def test_describe_for_members_route() -> None:
    ring = Ring(members(2, zones=1), "zk-7", points=120, replication=2)
    described = ring.describe()
    assert described["epoch"] == "zk-7"
    assert described["replication"] == 2
    assert described["points"] == 120
    assert described["point_count"] == 240
    assert described["zones"] == ["z0"]
    assert described["members"] == [
        {"node_id": "127.0.0.1:6699", "host": "127.0.0.1", "port": 6699, "zone": "z0"},
        {"node_id": "127.0.0.2:6699", "host": "127.0.0.2", "port": 6699, "zone": "z0"},
    ]


def test_format_node_id_brackets_ipv6() -> None:
    assert format_node_id("::1", 6699) == "[::1]:6699"
    assert format_node_id("10.0.0.1", 6699) == "10.0.0.1:6699"
    assert format_node_id("node-a.example", 1) == "node-a.example:1"
    assert Member.at("::1", 7).node_id == "[::1]:7"


def test_heartbeat_like_paths_shape() -> None:
    assert len(set(KEYS)) == len(KEYS)
    assert KEYS[0].startswith("/workerbeats/topo-0/node0-")


# --- owners against an independent model (gaps found by mutation testing) ---------------------


def _model_owners(ms: list[Member], key: str, replication: int) -> list[str]:
    """The placement rule written out from uhashring's continuum: the distinct members clockwise
    from the key's point; the first member of each zone (clockwise) come first, then the others
    in clockwise order; the first `replication` of those."""
    continuum = sorted(HashRing(nodes=[m.node_id for m in ms], vnodes=160).get_points())
    position = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")
    start = next((n for n, (point, _) in enumerate(continuum) if point > position), 0)
    clockwise: list[str] = []
    for n in range(len(continuum)):
        name = continuum[(start + n) % len(continuum)][1]
        if name not in clockwise:
            clockwise.append(name)
    zone_of = {m.node_id: m.zone for m in ms}
    firsts: list[str] = []
    for name in clockwise:
        if all(zone_of[name] != zone_of[other] for other in firsts):
            firsts.append(name)
    rest = [name for name in clockwise if name not in firsts]
    return (firsts + rest)[:replication]


@pytest.mark.parametrize("zones", [0, 1, 2, 3])
@pytest.mark.parametrize("replication", [1, 2, 3, 4, 7, 8])
def test_owners_match_the_model(zones: int, replication: int) -> None:
    ms = members(7, zones=zones)
    ring = Ring(ms, "e", replication=replication)
    for key in KEYS[:300]:
        got = [m.node_id for m in ring.owners(key)]
        assert got == _model_owners(ms, key, replication), key


def test_uneven_zones_match_the_model() -> None:
    """One big zone and two single-member zones: the walk must defer big-zone members."""
    ms = [*members(5), *members(1, zones=1, start=5), *members(1, zones=1, start=6)]
    ms = [Member.at(m.host, m.port, zone=z) for m, z in zip(ms, "aaaaabc", strict=True)]
    for replication in (2, 3, 4, 6):
        ring = Ring(ms, "e", replication=replication)
        for key in KEYS[:300]:
            got = [m.node_id for m in ring.owners(key)]
            assert got == _model_owners(ms, key, replication), (replication, key)


def test_default_replication_is_two_and_errors_are_named() -> None:
    ring = Ring(members(4), "e7")
    assert ring.replication == 2 and len(ring.owners("/k")) == 2
    with pytest.raises(ValueError, match=r"^duplicate member node_id in ring membership$"):
        Ring([*members(2), *members(1)], "e")
    with pytest.raises(ClusterUnavailable, match=r"^ring e0 has no members$"):
        Ring([], "e0").primary("/k")


def test_balance_summary_exact_figures() -> None:
    assert balance_summary({}) == {"max_over_mean": 0.0, "min_over_mean": 0.0}
    assert balance_summary({"a": 0, "b": 0}) == {"max_over_mean": 0.0, "min_over_mean": 0.0}
    assert balance_summary({"a": 1, "b": 1}) == {"max_over_mean": 1.0, "min_over_mean": 1.0}
    # mean 4: max 6 / 4, min 1 / 4.
    assert balance_summary({"a": 6, "b": 5, "c": 1, "d": 4}) == {
        "max_over_mean": 1.5,
        "min_over_mean": 0.25,
    }


# --- exact shares against the model (second mutation run, issue 20) ----------------------------


def _model_shares(ms: list[Member], replication: int) -> dict[str, tuple[Fraction, Fraction]]:
    """Each member's share of the 2**128 hash space, exactly: point i owns the arc above the point
    before it, and that arc's owners are the model's walk (`_model_owners`'s rule) from point i,
    so every point of the continuum, the first and the last included, is a starting point."""
    continuum = sorted(HashRing(nodes=[m.node_id for m in ms], vnodes=160).get_points())
    zone_of = {m.node_id: m.zone for m in ms}
    primary = dict.fromkeys(zone_of, 0)
    held = dict.fromkeys(zone_of, 0)
    for start, (point, _) in enumerate(continuum):
        arc = (point - continuum[start - 1][0]) % (1 << 128)
        clockwise: list[str] = []
        for n in range(len(continuum)):
            name = continuum[(start + n) % len(continuum)][1]
            if name not in clockwise:
                clockwise.append(name)
        firsts: list[str] = []
        for name in clockwise:
            if all(zone_of[name] != zone_of[other] for other in firsts):
                firsts.append(name)
        owners = (firsts + [name for name in clockwise if name not in firsts])[:replication]
        primary[owners[0]] += arc
        for name in owners:
            held[name] += arc
    space = 1 << 128
    return {n: (Fraction(primary[n], space), Fraction(held[n], space)) for n in zone_of}


@pytest.mark.parametrize(("zones", "replication"), [(0, 1), (0, 2), (0, 3), (2, 2), (2, 3)])
def test_ownership_is_the_exact_model_share(zones: int, replication: int) -> None:
    ms = members(5, zones=zones)
    shares = Ring(ms, "e", replication=replication).ownership()
    model = _model_shares(ms, replication)
    assert shares == {n: (float(p), float(h)) for n, (p, h) in model.items()}
    assert sum(p for p, _ in model.values()) == 1
    assert sum(h for _, h in model.values()) == min(replication, 5)


def test_ownership_of_an_empty_ring_is_empty() -> None:
    assert Ring([], "e").ownership() == {}
