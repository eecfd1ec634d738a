"""One exception tree for pmcluster: callers catch `PmclusterError` or one precise subclass.

The HTTP layer maps each class to a status code in one table (`pmcluster.protocol.http`), so the
mapping lives in exactly one place.
"""

from __future__ import annotations


class PmclusterError(Exception):
    """Base class of every error pmcluster raises on purpose.

    `retriable`: the error is one node's failure, so another node may answer (aiokafka's
    rule: the class says it, no tuple of types in the fan-out). `suspect`: for a retriable
    error, whether the node should be backed off (a node that is only not ready yet is not).
    """

    retriable = False
    suspect = True


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

    retriable = True

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


class NodeNotReady(NodeUnavailable):
    """A node answered "absent" while it is still being filled (it joined or restarted empty
    less than two grace windows ago): its absent is no answer, yet it is not failing."""

    suspect = False

    def __init__(self, node: str) -> None:
        super().__init__(node, "not ready: joined or restarted empty recently")


class NodeFenced(ClusterUnavailable):
    """This node lost its ZooKeeper session while its peers moved on (HTTP 503): it answers
    no data request until it is registered again (Curator's rule, narrowed: see
    docs/reliability.md)."""


class ProtocolError(PmclusterError):
    """A peer sent something that breaks the wire contract."""

    retriable = True
