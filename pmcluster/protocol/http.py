"""Names of the HTTP contract that both sides use: the node (server) and the transport (client).

Headers, the pulse-list media type, the largest version, and the one table between the
exception tree and HTTP statuses: the node maps an exception to a status with it, the
transport maps a node's error answer back to the exception.
"""

from __future__ import annotations

from pmcluster.errors import (
    AuthError,
    ClusterUnavailable,
    InsufficientStorage,
    InvalidPath,
    InvalidRequest,
    NodeFenced,
    NodeUnavailable,
    NotAuthorized,
    PayloadTooLarge,
    PmclusterError,
    ProtocolError,
)
from pmcluster.protocol import pulsecodec

VERSION_HEADER = "X-Pulse-Version"
TOMBSTONE_HEADER = "X-Pulse-Tombstone"
HELD_HEADER = "X-Pulse-Held"  # on a PUT the store ignored: the newer version (or tombstone) held
NODE_HEADER = "X-Pmcluster-Node"
EPOCH_HEADER = "X-Pmcluster-Epoch"
FORWARDED_HEADER = "X-Pmcluster-Forwarded"
ADMIN_SECRET_HEADER = "X-Pmcluster-Admin-Secret"  # the admin routes' secret (node/admin.py)
# On a forwarded 404: the node joined or restarted empty recently, so its "absent" is no answer.
FRESH_HEADER = "X-Pmcluster-Fresh"
PULSES_MEDIA_TYPE = pulsecodec.MEDIA_TYPE

MAX_VERSION = pulsecodec.MAX_VERSION  # versions travel as i64 in the pulse-list encoding

# (class, status, short error name). The node answers with the first class that matches;
# a client maps (status, name) back, or the status alone (first row with it) for other names.
ERROR_STATUS: tuple[tuple[type[PmclusterError], int, str], ...] = (
    (InvalidRequest, 400, "invalid_request"),
    (InvalidPath, 400, "invalid_path"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (InsufficientStorage, 507, "insufficient_storage"),
    (AuthError, 401, "unauthorized"),
    (NotAuthorized, 403, "forbidden"),
    (NodeFenced, 503, "fenced"),
    (ClusterUnavailable, 503, "cluster_unavailable"),
    (NodeUnavailable, 503, "node_unavailable"),
    (ProtocolError, 502, "bad_gateway"),
)


def status_for(exc: PmclusterError) -> tuple[int, str]:
    """The status and short name a node answers `exc` with."""
    for cls, status, name in ERROR_STATUS:
        if isinstance(exc, cls):
            return status, name
    return 500, "internal_error"


def caller_error(status: int, name: str) -> type[PmclusterError] | None:
    """The caller's error a node's answer stands for, or None when the answer means the node
    itself failed (a 5xx other than 507, the memory cap) or names no error of the table."""
    if status >= 500 and status != 507:
        return None
    by_status = None
    for cls, row_status, row_name in ERROR_STATUS:
        if row_status != status:
            continue
        if row_name == name:
            return cls
        by_status = by_status or cls
    return by_status
