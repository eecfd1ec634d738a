"""The contracts between the node's front ends (HTTP, Storm) and what answers them.

`Backend`: the eight Storm operations behind one async interface. The node's `LocalBackend`
answers from its own store; its `CoordinatingBackend` forwards to a path's ring owners and
merges their answers; the HTTP and Storm layers never know which one they talk to. Paths
arrive already normalised by the caller (`paths.normalize` / `normalize_key`). Reads return
the covering tombstone version next to "absent" so a coordinator can tell "never written" from
"deleted at version v" and never resurrect a deleted value from a replica that missed it.

`NowBackend`: the same reads and unversioned writes answered without waiting when they can
be (`NOT_NOW` otherwise, before any side effect), so a Storm connection answers a whole read
of frames in one pass.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final, Literal, Protocol

from pmcluster.protocol.pulse import Pulse

__all__ = ["NOT_NOW", "Backend", "NotNow", "NotNowType", "NowBackend", "PulseEntry"]

PulseEntry = tuple[str, bytes, int | None]


class Backend(Protocol):
    """The store operations as the node's HTTP handlers see them (all async)."""

    async def send_pulse(self, path: str, data: bytes, version: int | None = None) -> bool:
        """Store one pulse; False when an equal-or-newer value or tombstone wins."""
        ...

    async def send_pulses(
        self, pulses: Sequence[PulseEntry], *, trusted: bool = False
    ) -> tuple[int, int]:
        """Store many pulses, all-or-nothing validation; returns (stored, ignored).
        `trusted`: the entries are `pulsecodec.decode`'s output, already validated."""
        ...

    def held_version(self, path: str) -> int:
        """After `send_pulse` returned False: the newer version that won (so a coordinator
        can retry above it), or 0 when the backend already dealt with it."""
        ...

    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]:
        """The pulse (or None) and, when absent, the newest tombstone version covering path."""
        ...

    async def exists(self, path: str) -> tuple[bool, int]:
        """Whether exactly `path` holds a pulse; when not, the covering tombstone version."""
        ...

    async def get_all_nodes_for_path(self, path: str) -> list[str]:
        """Sorted names of the direct children of `path`."""
        ...

    async def children_versions(self, path: str) -> tuple[dict[str, int], dict[str, int]]:
        """({child: newest version under it}, {child: tombstone version covering it})."""
        ...

    async def get_all_pulse_for_path(self, path: str) -> list[Pulse]:
        """Every pulse at or under `path`."""
        ...

    async def delete_path(self, path: str, version: int | None = None) -> int:
        """Delete `path` and everything under it; returns keys removed (here)."""
        ...

    async def delete_pulse_id(self, path: str, version: int | None = None) -> bool:
        """Delete exactly `path`; True when a value was removed."""
        ...

    def held_after_delete(self, path: str, version: int, *, tree: bool) -> int:
        """After a delete of `path` (`tree`: and everything under it) at `version`: the
        newest version of a value it left standing, newer than `version` (so a coordinator
        can delete again above it), or 0 when none or the backend already dealt with it."""
        ...

    async def create_path(self, path: str) -> None:
        """Validate `path`; no effect on stored pulses (Storm's create_path is a no-op)."""
        ...


class NotNow(enum.Enum):
    """The answer needs waiting (other nodes): take the async path."""

    NOT_NOW = 0


NOT_NOW: Final = NotNow.NOT_NOW
NotNowType = Literal[NotNow.NOT_NOW]


class NowBackend(Protocol):
    """Answers without waiting when it can (paths as sent; `NOT_NOW`: use the async path).

    Errors are those of the async `Backend` call (`InvalidPath`, ...)."""

    def send_pulse_now(self, path: str, data: bytes) -> bool:
        """An unversioned write; False: not now."""
        ...

    def send_pulses_now(self, pulses: Sequence[tuple[str, bytes]]) -> int:
        """Unversioned writes, in order, each exactly as `send_pulse_now`; how many from the
        start were done (the rest: one by one, `send_pulse_now` or the async path). Stops
        before an entry with an invalid path or one the store refuses, doing nothing for it."""
        ...

    def get_pulse_now(self, path: str) -> Pulse | NotNowType | None: ...

    def exists_now(self, path: str) -> bool | NotNowType: ...

    def get_all_nodes_for_path_now(self, path: str) -> list[str] | NotNowType: ...

    def get_all_pulse_for_path_now(self, path: str) -> list[Pulse] | NotNowType: ...
