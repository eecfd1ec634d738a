"""The value type every layer shares: one heartbeat with its path, bytes and version.

It lives here, not in the store, so the client, transport, read merge and Storm codec get a
three-field value without importing the storage engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Pulse", "make_pulse"]


@dataclass(frozen=True, slots=True)
class Pulse:
    """One stored heartbeat: its path, opaque bytes, and version (ns, writer clock)."""

    path: str
    data: bytes
    version: int


_new_object = object.__new__
_set_path: Any = vars(Pulse)["path"].__set__
_set_data: Any = vars(Pulse)["data"].__set__
_set_version: Any = vars(Pulse)["version"].__set__


def make_pulse(path: str, data: bytes, version: int) -> Pulse:
    """`Pulse(path, data, version)` at half the cost: fills the slots directly, skipping the
    frozen dataclass's `__init__` (`object.__setattr__` per field); reads build one per key."""
    pulse = _new_object(Pulse)
    _set_path(pulse, path)
    _set_data(pulse, data)
    _set_version(pulse, version)
    return pulse
