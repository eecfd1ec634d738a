"""One exception tree for pmcluster: callers catch `PmclusterError` or one precise subclass.

The HTTP layer maps each class to a status code in one table (`pmcluster.protocol.http`), so the
mapping lives in exactly one place.
"""

from __future__ import annotations


class PmclusterError(Exception):
    """Base class of every error pmcluster raises on purpose."""


class ConfigError(PmclusterError):
    """A configuration value has the wrong type or value; names the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key {key!r}: {message}")
        self.key = key


class InvalidPath(PmclusterError):
    """A heartbeat path is empty, relative, or malformed (HTTP 400)."""


class InvalidRequest(PmclusterError):
    """A request is malformed in a way other than its path (HTTP 400)."""


class PayloadTooLarge(PmclusterError):
    """A body exceeds `pacemaker.thrift.message.size.max` (HTTP 413)."""


class InsufficientStorage(PmclusterError):
    """A write would take the node's store past `pmcluster.memory.max.bytes` (HTTP 507)."""


class AuthError(PmclusterError):
    """Authentication failed or is missing (HTTP 401)."""


class NotAuthorized(PmclusterError):
    """Authenticated but not allowed (HTTP 403)."""


class NodeUnavailable(PmclusterError):
    """A node could not be reached or did not answer in time."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"node {node} unavailable: {reason}")
        self.node = node
        self.reason = reason


class ClusterUnavailable(PmclusterError):
    """No owner of a path could serve a request (HTTP 503)."""


class HttpStatusError(PmclusterError):
    """A node answered outside 2xx where the caller needed success (operator tools)."""

    def __init__(self, what: str, status: int, detail: str = "") -> None:
        super().__init__(f"{what}: HTTP {status}" + (f": {detail}" if detail else ""))
        self.status = status


class ProtocolError(PmclusterError):
    """A peer sent something that breaks the wire contract."""
