"""Immutable consistent-hash ring snapshot: which members own a heartbeat path.

The continuum is built by uhashring (md5 ring, equal weights, `points` virtual nodes per
member) once per membership snapshot, then copied into plain tuples so a lookup is one
`bisect` plus a short walk over distinct members, and nothing a reader touches is ever
mutated (uhashring itself is not thread-safe) but a bounded cache of the owners already
looked up (single dict operations, atomic under the GIL). A new membership epoch means a new
`Ring`.

Owner selection (`owners`) walks clockwise from the key's position and picks the first
`replication` distinct members, zone-aware: a member whose zone is already represented among
the chosen owners is skipped while a member of a not-yet-chosen zone can still be found; the
skipped members fill the remaining slots, in clockwise order, once every zone is represented.
A member without a zone (`zone=None`) belongs to the shared "no zone" zone, so when no member
has a zone the walk is the plain distinct walk. As with any zone-aware placement, a small
zone carries a larger share of replicas: size zones evenly.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from hashlib import md5

from uhashring import HashRing

from pmcluster.errors import ClusterUnavailable

DEFAULT_POINTS = 160
MIN_POINTS = 100
OWNER_CACHE_SIZE = 1 << 17  # paths whose owners a ring remembers (about 30 MiB at most)


@dataclass(frozen=True, slots=True)
class Member:
    """One cluster node: its stable advertised id (`host:port`), address and zone."""

    node_id: str
    host: str
    port: int
    zone: str | None = None

    @classmethod
    def at(cls, host: str, port: int, zone: str | None = None) -> Member:
        """A member whose id is `host:port` (IPv6 literals bracketed: `[::1]:6699`)."""
        return cls(node_id=format_node_id(host, port), host=host, port=port, zone=zone)

    def describe(self) -> dict[str, object]:
        """JSON-ready form for `GET /v1/members` and the CLI."""
        return {"node_id": self.node_id, "host": self.host, "port": self.port, "zone": self.zone}


def format_node_id(host: str, port: int) -> str:
    """`host:port`, bracketing an IPv6 literal so the port stays unambiguous."""
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"[{host}]:{port}" if is_v6 else f"{host}:{port}"


def hash_key(key: str) -> int:
    """The ring position of a key: uhashring's default md5 hash (128-bit big-endian int)."""
    return int.from_bytes(md5(key.encode()).digest(), "big")


class Ring:
    """An immutable consistent-hash ring over one membership snapshot."""

    __slots__ = (
        "_by_id",
        "_cache",
        "_keys",
        "_next_other",
        "_owner_index",
        "_wanted",
        "_zone_count",
        "_zone_index",
        "epoch",
        "members",
        "points",
        "replication",
    )

    epoch: str
    members: tuple[Member, ...]
    replication: int
    points: int

    def __init__(
        self,
        members: Sequence[Member],
        epoch: str,
        *,
        points: int = DEFAULT_POINTS,
        replication: int = 2,
    ) -> None:
        if points < MIN_POINTS:
            raise ValueError(f"ring points per member must be >= {MIN_POINTS}, got {points}")
        if replication < 1:
            raise ValueError(f"replication must be >= 1, got {replication}")
        ordered = tuple(sorted(members, key=lambda m: m.node_id))
        by_id = {m.node_id: m for m in ordered}
        if len(by_id) != len(ordered):
            raise ValueError("duplicate member node_id in ring membership")
        self.epoch = epoch
        self.members = ordered
        self.points = points
        self.replication = replication
        self._by_id = by_id

        index_of = {m.node_id: i for i, m in enumerate(ordered)}
        zones: dict[str | None, int] = {}
        self._zone_index = tuple(zones.setdefault(m.zone, len(zones)) for m in ordered)
        self._zone_count = len(zones)

        # uhashring builds the continuum; we keep a private copy as plain tuples.
        continuum: list[tuple[int, str]] = []
        if ordered:
            built = HashRing(nodes=[m.node_id for m in ordered], vnodes=points)
            continuum = built.get_points()
        self._keys: tuple[int, ...] = tuple(point for point, _ in continuum)
        self._owner_index: tuple[int, ...] = tuple(index_of[name] for _, name in continuum)
        self._wanted = min(replication, len(set(self._owner_index)))
        # The common case (R=2, no zones) is then one bisect and two tuple reads.
        self._next_other = _next_other_member(self._owner_index) if self._wanted > 1 else ()
        # Heartbeat paths repeat (a worker writes its own every few seconds): owners already
        # computed on this ring are a dict read, not an md5 and a bisect.
        self._cache: dict[str, tuple[Member, ...]] = {}

    # --- lookups ---------------------------------------------------------------------------

    def owners(self, path: str) -> tuple[Member, ...]:
        """The first `replication` distinct members clockwise from `path`, zone-aware.

        Capped at the number of members; empty for an empty ring. The first is the primary.
        """
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        if not self._keys:
            return ()
        pos = self._position(path)
        members = self.members
        wanted = self._wanted
        if wanted == 1:
            owners: tuple[Member, ...] = (members[self._owner_index[pos]],)
        elif wanted == 2 and self._zone_count == 1:
            owner_index = self._owner_index
            owners = (members[owner_index[pos]], members[owner_index[self._next_other[pos]]])
        else:
            owners = tuple([members[i] for i in self._walk(pos)])
        cache = self._cache
        if len(cache) >= OWNER_CACHE_SIZE:
            cache.clear()  # a bound, not an LRU: a steady set of paths refills it at once
        cache[path] = owners
        return owners

    def primary(self, path: str) -> Member:
        """The first owner of `path`; `ClusterUnavailable` when the ring has no members."""
        if not self._keys:
            raise ClusterUnavailable(f"ring {self.epoch} has no members")
        return self.members[self._owner_index[self._position(path)]]

    def _position(self, path: str) -> int:
        """Index of the first point clockwise from `path`'s hash (the ring is not empty)."""
        pos = bisect_right(self._keys, hash_key(str(path)))
        return 0 if pos == len(self._keys) else pos

    def member(self, node_id: str) -> Member | None:
        """The member with this id, or None when it is not in this ring."""
        return self._by_id.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_id

    def __len__(self) -> int:
        return len(self.members)

    def _walk(self, pos: int) -> list[int]:
        """Member indexes of the owners of a key whose first point is at `pos`.

        Terminates: `_wanted` never exceeds the number of distinct members on the continuum.
        """
        wanted = self._wanted
        owner_index = self._owner_index
        count = len(owner_index)
        chosen = [owner_index[pos]]
        j = pos
        if self._zone_count == 1:
            next_other = self._next_other
            while True:
                j = next_other[j]
                i = owner_index[j]
                if i not in chosen:
                    chosen.append(i)
                    if len(chosen) == wanted:
                        return chosen
        zone_index = self._zone_index
        zones_seen = {zone_index[chosen[0]]}
        zones_left = self._zone_count - 1
        deferred: list[int] = []  # members of already-represented zones, clockwise order
        for _ in range(count - 1):
            j += 1
            if j == count:
                j = 0
            i = owner_index[j]
            if i in chosen or i in deferred:
                continue
            if not zones_left:
                chosen.append(i)
            elif zone_index[i] in zones_seen:
                deferred.append(i)
                continue
            else:
                zones_seen.add(zone_index[i])
                zones_left -= 1
                chosen.append(i)
                if not zones_left:
                    # Every zone is represented: the skipped members come next, being
                    # earlier clockwise than anything the walk has not reached yet.
                    chosen.extend(deferred[: wanted - len(chosen)])
                    deferred.clear()
            if len(chosen) >= wanted:
                return chosen[:wanted]
        chosen.extend(deferred[: wanted - len(chosen)])
        return chosen

    # --- figures -----------------------------------------------------------------------------

    @property
    def point_count(self) -> int:
        """Points on the continuum (members × points, less any md5 collisions)."""
        return len(self._keys)

    def balance(self, keys: Iterable[str]) -> dict[str, int]:
        """Keys per member as primary (every member listed, 0 included)."""
        counts = dict.fromkeys(self._by_id, 0)
        if not self._keys:
            return counts
        for key in keys:
            counts[self.primary(key).node_id] += 1
        return counts

    def ownership(self) -> dict[str, tuple[float, float]]:
        """Each member's exact share of the hash space: (as primary, as any of the owners).

        A key at position h belongs to the first point above h (`owners`), so point i owns the
        arc from point i-1 up to it. Primary shares sum to 1, owner shares to the number of
        owners per key. Every member is listed (0.0 for one with no points)."""
        primary = dict.fromkeys(self._by_id, 0)
        held = dict.fromkeys(self._by_id, 0)
        keys = self._keys
        if not keys:
            return {node_id: (0.0, 0.0) for node_id in self._by_id}
        space = 1 << 128
        members = self.members
        previous = keys[-1] - space  # the arc of point 0 wraps around the top
        for pos, point in enumerate(keys):
            arc = point - previous
            previous = point
            owners = self._owner_indexes(pos)
            primary[members[owners[0]].node_id] += arc
            for i in owners:
                held[members[i].node_id] += arc
        return {n: (primary[n] / space, held[n] / space) for n in self._by_id}

    def _owner_indexes(self, pos: int) -> list[int]:
        """Member indexes of the owners of a key whose first point is at `pos` (as `owners`)."""
        if self._wanted == 1:
            return [self._owner_index[pos]]
        return self._walk(pos)

    def describe(self) -> dict[str, object]:
        """JSON-ready view for `GET /v1/members` and `pmcluster members`."""
        return {
            "epoch": self.epoch,
            "replication": self.replication,
            "points": self.points,
            "point_count": self.point_count,
            "zones": sorted({m.zone for m in self.members if m.zone is not None}),
            "members": [m.describe() for m in self.members],
        }

    def __repr__(self) -> str:
        return (
            f"Ring(epoch={self.epoch!r}, members={len(self.members)}, "
            f"replication={self.replication}, points={self.points})"
        )


def _next_other_member(owner_index: tuple[int, ...]) -> tuple[int, ...]:
    """For each point, the next point clockwise that belongs to a different member.

    Needs at least two distinct members. One backward pass over the ring laid out twice.
    """
    count = len(owner_index)
    following = [0] * (2 * count)
    for q in range(2 * count - 2, -1, -1):
        after = (q + 1) % count
        following[q] = after if owner_index[after] != owner_index[q % count] else following[q + 1]
    return tuple(following[:count])


def heartbeat_like_paths(count: int, *, nodes_per_topology: int = 20) -> Iterator[str]:
    """Synthetic keys shaped like Storm worker heartbeats, for balance estimates and tests."""
    for i in range(count):
        topology, worker = divmod(i, nodes_per_topology)
        yield f"/workerbeats/topo-{topology}/node{worker}-{6700 + i % 4}"


def balance_estimate(ring: Ring, count: int = 100_000) -> dict[str, int]:
    """Primaries per member over `count` synthetic heartbeat paths (`pmcluster ring`)."""
    return ring.balance(heartbeat_like_paths(count))


def balance_summary(counts: dict[str, int]) -> dict[str, float]:
    """`max/mean` and `min/mean` of a `Ring.balance` result (1.0 = perfectly even)."""
    if not counts:
        return {"max_over_mean": 0.0, "min_over_mean": 0.0}
    mean = sum(counts.values()) / len(counts)
    if mean == 0:
        return {"max_over_mean": 0.0, "min_over_mean": 0.0}
    return {
        "max_over_mean": max(counts.values()) / mean,
        "min_over_mean": min(counts.values()) / mean,
    }
