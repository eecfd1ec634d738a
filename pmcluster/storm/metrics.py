"""Plain counters for the Storm protocol listener, read by the node's `/metrics` renderer.

Updated from the event loop thread only (no locks); `snapshot()` copies them into a dict so a
renderer never sees a half-updated set.
"""

from __future__ import annotations

from typing import TypedDict

__all__ = ["StormMetrics", "StormMetricsSnapshot"]


class StormMetricsSnapshot(TypedDict):
    """A copy of the counters; `requests` is keyed by Storm's request type name."""

    connections_open: int
    connections_total: int
    in_flight: int
    requests: dict[str, int]
    not_authorized: int
    invalid_paths: int
    protocol_errors: int
    backend_errors: int


class StormMetrics:
    """Counters of one Storm listener: connections, requests by type, errors."""

    def __init__(self) -> None:
        self.connections_open = 0
        self.connections_total = 0
        self.in_flight = 0
        self.requests: dict[str, int] = {}
        self.not_authorized = 0  # reads refused on an unauthenticated connection
        self.invalid_paths = 0  # requests answered "empty" because their path is invalid
        self.protocol_errors = 0  # connections closed for breaking the wire contract
        self.backend_errors = 0  # connections closed because the store could not answer

    def count_request(self, type_name: str) -> None:
        self.requests[type_name] = self.requests.get(type_name, 0) + 1

    def snapshot(self) -> StormMetricsSnapshot:
        return StormMetricsSnapshot(
            connections_open=self.connections_open,
            connections_total=self.connections_total,
            in_flight=self.in_flight,
            requests=dict(self.requests),
            not_authorized=self.not_authorized,
            invalid_paths=self.invalid_paths,
            protocol_errors=self.protocol_errors,
            backend_errors=self.backend_errors,
        )
