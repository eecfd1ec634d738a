"""What every membership source shares: the immutable snapshot, the source protocol, and the
publisher that hands snapshots to subscribers (used by the seed, fixed and ZooKeeper sources)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from pmcluster.ring import Member

log = logging.getLogger(__name__)

Subscriber = Callable[["MembershipSnapshot"], None]


@dataclass(frozen=True, slots=True)
class MembershipSnapshot:
    """One view of the cluster: an epoch name and the members sorted by `node_id`."""

    epoch: str
    members: tuple[Member, ...]

    @classmethod
    def of(cls, prefix: str, members: Iterable[Member]) -> MembershipSnapshot:
        """A snapshot whose epoch is `<prefix>-<sha1 of the sorted member ids, 12 hex>`.

        The same member set always gives the same epoch, whatever the order it came in, so
        every node and client that sees the same set agrees on the epoch.
        """
        ordered = tuple(sorted(members, key=lambda m: m.node_id))
        digest = hashlib.sha1("\n".join(m.node_id for m in ordered).encode()).hexdigest()
        return cls(epoch=f"{prefix}-{digest[:12]}", members=ordered)

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(m.node_id for m in self.members)


class MembershipSource(Protocol):
    """Publishes `MembershipSnapshot`s; subscribers are called on the event loop."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def current(self) -> MembershipSnapshot | None: ...
    def subscribe(self, callback: Callable[[MembershipSnapshot], None]) -> None: ...


class SnapshotPublisher:
    """The snapshot-and-subscribers half shared by the membership sources (`SeedMembership`,
    `FixedMembership`, `ZooKeeperMembership`)."""

    def __init__(self) -> None:
        self._current: MembershipSnapshot | None = None
        self._subscribers: list[Subscriber] = []

    def current(self) -> MembershipSnapshot | None:
        """The latest snapshot, None before the first one."""
        return self._current

    def subscribe(self, callback: Subscriber) -> None:
        """Call `callback(snapshot)` on the event loop for every snapshot published later."""
        self._subscribers.append(callback)

    def publish(self, snapshot: MembershipSnapshot) -> bool:
        """Make `snapshot` current and tell subscribers; False (nothing done) if unchanged."""
        if snapshot == self._current:
            return False
        self._current = snapshot
        log.info(
            "membership %s: %d members %s",
            snapshot.epoch,
            len(snapshot.members),
            ", ".join(snapshot.node_ids),
        )
        for callback in list(self._subscribers):
            try:
                callback(snapshot)
            except Exception:  # one broken subscriber must not starve the others
                log.exception("membership subscriber %r failed", callback)
        return True
