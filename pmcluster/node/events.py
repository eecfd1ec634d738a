"""What a node remembers of its cluster for the status page: recent events and past members.

`ClusterHistory` keeps, in memory and bounded:

- the last `MAX_EVENTS` events with their times: ring changes (members joined or left, with
  the epoch), faults and recoveries the status view saw (a member that stopped answering or
  answers again), and the node's own (started, new membership session);
- every member the node's ring has listed (at most `MAX_MEMBERS`), so a member that dropped
  out of the ring (its ZooKeeper session expired) is still shown, as down, for
  `FORGET_SECS`, instead of vanishing from the page.

Everything here runs on the event loop; nothing is persisted (a restarted node starts empty).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pmcluster.ring import Member

__all__ = ["FORGET_SECS", "MAX_EVENTS", "MAX_MEMBERS", "ClusterHistory", "Event", "KnownMember"]

MAX_EVENTS = 200  # events kept (the page shows the newest)
MAX_MEMBERS = 256  # members remembered, in the ring or not
FORGET_SECS = 3600.0  # a member out of the ring this long (and not answering) is forgotten


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened: `kind` is ring, fault, recovery or node; `time` unix seconds."""

    time: float
    kind: str
    text: str

    def describe(self) -> dict[str, object]:
        return {"time": self.time, "kind": self.kind, "text": self.text}


@dataclass(slots=True)
class KnownMember:
    """A member this node has heard of: from its own ring, or from a peer's view."""

    member: Member
    in_ring: bool  # listed by this node's current ring
    was_in_ring: bool  # listed by this node's ring at some point
    last_seen: float  # last time it was in the ring or answered the status view (unix s)


class ClusterHistory:
    """Bounded recent events and remembered members (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._members: dict[str, KnownMember] = {}
        self._ring: frozenset[str] | None = None
        self.epoch: str | None = None

    # --- events ------------------------------------------------------------------------------

    def record(self, kind: str, text: str) -> None:
        self._events.append(Event(self._clock(), kind, text))

    def events(self, limit: int = MAX_EVENTS) -> list[Event]:
        """The newest `limit` events, newest first."""
        newest = list(self._events)[-limit:] if limit > 0 else []
        return newest[::-1]

    # --- members -----------------------------------------------------------------------------

    def ring_changed(self, epoch: str, members: Sequence[Member]) -> None:
        """The node's ring is now `members` at `epoch`: log who joined and left, remember all."""
        ids = frozenset(m.node_id for m in members)
        if epoch == self.epoch and ids == self._ring:
            return
        if self._ring is None:
            self.record("ring", f"epoch {epoch}: {len(ids)} member(s): {', '.join(sorted(ids))}")
        else:
            joined, left = sorted(ids - self._ring), sorted(self._ring - ids)
            change = [f"+{n}" for n in joined] + [f"-{n}" for n in left]
            what = " ".join(change) if change else "same members"
            self.record("ring", f"epoch {epoch}: {what} ({len(ids)} member(s))")
        self.epoch, self._ring = epoch, ids
        now = self._clock()
        for entry in self._members.values():
            entry.in_ring = entry.member.node_id in ids
        for member in members:
            known = self._members.get(member.node_id)
            if known is None:
                self._members[member.node_id] = KnownMember(member, True, True, now)
            else:
                known.member, known.in_ring, known.was_in_ring = member, True, True
                known.last_seen = now
        self._trim(now)

    def heard_of(self, members: Iterable[Member]) -> None:
        """Members some peer lists (joining, or a ring this node has not caught up with)."""
        now = self._clock()
        for member in members:
            if member.node_id not in self._members:
                self._members[member.node_id] = KnownMember(member, False, False, now)
        self._trim(now)

    def answered(self, node_id: str) -> None:
        """`node_id` answered just now: it is not to be forgotten yet."""
        known = self._members.get(node_id)
        if known is not None:
            known.last_seen = self._clock()

    def known(self) -> list[KnownMember]:
        """Every remembered member (forgetting those out of the ring for `FORGET_SECS`)."""
        self._trim(self._clock())
        return sorted(self._members.values(), key=lambda k: k.member.node_id)

    def _trim(self, now: float) -> None:
        stale = [
            node_id
            for node_id, known in self._members.items()
            if not known.in_ring and now - known.last_seen > FORGET_SECS
        ]
        for node_id in stale:
            del self._members[node_id]
        if len(self._members) > MAX_MEMBERS:
            # Drop the members out of the ring seen longest ago; ring members always stay.
            spare = sorted(
                (k for k in self._members.values() if not k.in_ring), key=lambda k: k.last_seen
            )
            for known in spare[: len(self._members) - MAX_MEMBERS]:
                del self._members[known.member.node_id]
