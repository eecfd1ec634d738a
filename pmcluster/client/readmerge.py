"""Read merge policy: among the answers of several replicas, the newest version wins.

Values and tombstones compete on version: a replica that missed a delete still holds the old
value, but the tombstone another replica returns is newer, so the value is not resurrected.
Ties between values are broken like the store breaks them (the larger data bytes win), so the
merge picks the value every replica converges to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pmcluster.protocol.pulse import Pulse

__all__ = [
    "covering_tombstone",
    "merge_children",
    "merge_pulse",
    "merge_pulses",
    "newer",
    "subtree_tombstones",
]


def newer(a: Pulse, b: Pulse) -> bool:
    """True when `a` beats `b`: higher version, or equal version and larger data."""
    return (a.version, a.data) > (b.version, b.data)


def merge_pulse(answers: Sequence[tuple[Pulse | None, int]]) -> Pulse | None:
    """Merge `(value or None, newest tombstone version or 0)` answers of one key's replicas.

    Absent when no replica holds a value, or when the newest tombstone is at least as new as
    the newest value (a delete at version v removes writes with version <= v).
    """
    best: Pulse | None = None
    tombstone = 0
    for value, tomb in answers:
        tombstone = max(tombstone, tomb)
        if value is not None and (best is None or newer(value, best)):
            best = value
    if best is None or tombstone >= best.version:
        return None
    return best


def merge_children(answers: Sequence[tuple[Mapping[str, int], Mapping[str, int]]]) -> list[str]:
    """Merge `({child: newest version under it}, {child: tombstone version})` answers.

    A child is listed when its newest value version across answers is newer than its newest
    tombstone across answers, including a tombstone that covers every child (name `""`: a
    recursive delete of the listed path or an ancestor, as one replica saw it — another
    replica that missed it may still hold the children). Sorted, like a single store's.
    """
    versions: dict[str, int] = {}
    tombstones: dict[str, int] = {}
    for children, tombs in answers:
        for name, version in children.items():
            versions[name] = max(version, versions.get(name, 0))
        for name, version in tombs.items():
            tombstones[name] = max(version, tombstones.get(name, 0))
    every = tombstones.get("", 0)
    return sorted(name for name, v in versions.items() if v > max(tombstones.get(name, 0), every))


def subtree_tombstones(path: str, child_tombs: Mapping[str, int], own_tomb: int) -> dict[str, int]:
    """One node's tombstones that bear on a listing of `path` (path -> version): those of its
    children (`children_versions`' second half; `""`, a delete covering every child, is left
    to the ancestors' entry) and `own_tomb`, the tombstone of `path` itself (0: none). They
    keep a node that missed a recursive delete from resurrecting what it still holds."""
    prefix = path.rstrip("/")
    tombs = {f"{prefix}/{name}": v for name, v in child_tombs.items() if name}
    if own_tomb and path != "/":
        tombs[path] = own_tomb
    return tombs


def covering_tombstone(path: str, tombstones: Mapping[str, int]) -> int:
    """Newest version among `tombstones` (path -> version) at `path` or any ancestor of it."""
    best = tombstones.get(path, 0)
    cut = path.rfind("/")
    while cut > 0:
        best = max(best, tombstones.get(path[:cut], 0))
        cut = path.rfind("/", 0, cut)
    return max(best, tombstones.get("/", 0))


def merge_pulses(
    lists: Iterable[Iterable[Pulse]], tombstones: Mapping[str, int] | None = None
) -> list[Pulse]:
    """Merge pulse lists from several nodes: the newest per path, sorted by path.

    `tombstones` (path -> version, merged across nodes) drops any pulse whose path is at or
    under a tombstoned path with a version at least as new: what a stale node still returns
    after a recursive delete it missed.
    """
    best: dict[str, Pulse] = {}
    for pulses in lists:
        for pulse in pulses:
            held = best.get(pulse.path)
            if held is None or newer(pulse, held):
                best[pulse.path] = pulse
    merged = [best[path] for path in sorted(best)]
    if tombstones:
        merged = [p for p in merged if covering_tombstone(p.path, tombstones) < p.version]
    return merged
