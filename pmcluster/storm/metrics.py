"""Plain counters for the Storm protocol listener, read by the node's `/metrics` renderer.

Updated from the event loop thread only (no locks); `snapshot()` copies them into a dict so a
renderer never sees a half-updated set; `prometheus_lines()` renders them as
`pmcluster_storm_*` families (Prometheus text format 0.0.4).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypedDict

__all__ = ["StormMetrics", "StormMetricsSnapshot", "prometheus_lines"]


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
    abandoned: int
    auth_ok: int
    auth_failed: int


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
        self.abandoned = 0  # writes dropped: their client closed before they ran
        self.auth_ok = 0  # SASL handshakes completed
        self.auth_failed = 0  # SASL handshakes refused (the connection is closed)

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
            abandoned=self.abandoned,
            auth_ok=self.auth_ok,
            auth_failed=self.auth_failed,
        )

    def prometheus_lines(self) -> list[str]:
        return list(prometheus_lines(self.snapshot()))


def _family(name: str, kind: str, help_text: str) -> Iterator[str]:
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"


def prometheus_lines(snap: StormMetricsSnapshot) -> Iterator[str]:
    """The Storm front end's counters as Prometheus text lines (no trailing newline)."""
    yield from _family(
        "pmcluster_storm_requests_total", "counter", "Storm protocol requests, by message type."
    )
    for name, count in sorted(snap["requests"].items()):
        yield f'pmcluster_storm_requests_total{{type="{name}"}} {count}'
    yield from _family(
        "pmcluster_storm_errors_total",
        "counter",
        "Storm protocol errors: protocol (connection closed for a bad frame), backend "
        "(closed: the store could not answer), abandoned (a write dropped: its client "
        "closed before it ran), invalid_path (answered empty), "
        "not_authorized (read refused), auth_failed (SASL handshake refused).",
    )
    for kind, count in (
        ("protocol", snap["protocol_errors"]),
        ("backend", snap["backend_errors"]),
        ("abandoned", snap["abandoned"]),
        ("invalid_path", snap["invalid_paths"]),
        ("not_authorized", snap["not_authorized"]),
        ("auth_failed", snap["auth_failed"]),
    ):
        yield f'pmcluster_storm_errors_total{{kind="{kind}"}} {count}'
    gauges = (
        ("pmcluster_storm_connections_open", "gauge", "Open Storm protocol connections."),
        ("pmcluster_storm_connections_total", "counter", "Storm protocol connections accepted."),
        ("pmcluster_storm_in_flight", "gauge", "Storm requests being answered now."),
        ("pmcluster_storm_auth_total", "counter", "SASL handshakes completed."),
    )
    values = (
        snap["connections_open"],
        snap["connections_total"],
        snap["in_flight"],
        snap["auth_ok"],
    )
    for (name, kind, help_text), value in zip(gauges, values, strict=True):
        yield from _family(name, kind, help_text)
        yield f"{name} {value}"
