"""The ring-aware client: who owns a path, and how to talk to its owners.

Faces: `ClusterClient` (async) and `SyncClusterClient` (blocking). Behind them, one job per
module: `transport` (HTTP to one node), `fanout` (parallel requests, deadlines), `failures`
(skip, back off and probe failing nodes), `readmerge` (newest of replica answers wins),
`versionclock` (the writer's versions), `coalesce` (concurrent writes as one batch per owner).
"""

from pmcluster.client.cluster import ClusterClient
from pmcluster.client.sync import SyncClusterClient

__all__ = ["ClusterClient", "SyncClusterClient"]
