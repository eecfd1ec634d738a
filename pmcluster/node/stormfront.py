"""The Storm front end of a node: what `daemon.serve` hands to `SharedSite`.

`storm_factory(app)` builds one `StormHandler` for the node's app and returns the factory of
its per-connection protocol. Requests reach the same backends as the HTTP API's plain requests,
looked up per request: the node's coordinating backend (`NodeState.coordinator`, installed when
the node has joined the cluster) so a write on any node goes to the path's owners and a read
answers for the whole cluster; before that, the app's backend (the local store).
`pmcluster.storm.read.mode: local` answers reads from the local store only (for Storm clusters
whose `pacemaker.servers` lists every node: Storm reads every server and keeps the newest).
The front end's counters join the node's `/metrics`; pulse sizes feed the pulse
metrics like HTTP traffic does. Authentication per connection follows `pacemaker.auth.method`
(`pmcluster.storm.auth`); with `pmcluster.auth.writes` unauthenticated writes are refused too.
Requests that need no waiting are answered inside the connection's read (`resolve_now`).
"""

from __future__ import annotations

from aiohttp import web

from pmcluster.node.appstate import (
    BACKEND_KEY,
    CONFIG_KEY,
    LOCAL_BACKEND_KEY,
    METRICS_KEY,
    STATE_KEY,
)
from pmcluster.node.coordinator import CoordinatingBackend, LocalNow
from pmcluster.node.local import LocalBackend
from pmcluster.protocol.backend import Backend, NowBackend
from pmcluster.protocol.budget import BufferBudget
from pmcluster.storm.auth import make_auth_factory
from pmcluster.storm.handler import StormHandler
from pmcluster.storm.metrics import StormMetrics
from pmcluster.storm.server import StormConnection, StormDeadlines, StormFactory

__all__ = ["storm_factory"]


def storm_factory(app: web.Application, budget: BufferBudget | None = None) -> StormFactory:
    """The per-connection Storm protocol factory of a node's app (raises `ConfigError` when
    the authentication method cannot be set up); `budget`: the node's partial-frame budget."""
    config, state = app[CONFIG_KEY], app[STATE_KEY]
    local, default = app[LOCAL_BACKEND_KEY], app[BACKEND_KEY]
    reads_local = config.storm_read_mode == "local"

    def resolve(is_read: bool) -> Backend:
        if is_read and reads_local:
            return local
        coordinator = state.coordinator
        return coordinator if coordinator is not None else default

    local_now = LocalNow(local)
    default_now = LocalNow(default) if isinstance(default, LocalBackend) else None

    def resolve_now(is_read: bool) -> NowBackend | None:
        # The same choice as `resolve`, for answers that need no waiting.
        if is_read and reads_local:
            return local_now
        coordinator = state.coordinator
        if coordinator is None:
            return default_now
        return coordinator if isinstance(coordinator, CoordinatingBackend) else None

    metrics = StormMetrics()
    node_metrics = app[METRICS_KEY]
    node_metrics.add_collector(metrics.prometheus_lines)
    handler = StormHandler(
        resolve=resolve,
        resolve_now=resolve_now,
        writes_need_auth=config.auth_writes,
        metrics=metrics,
        pulse_sizes=node_metrics,
    )
    make_auth = make_auth_factory(config, metrics)
    max_frame = config.max_message_size
    deadlines = StormDeadlines(
        idle_secs=config.storm_idle_secs,
        frame_secs=config.frame_timeout_secs,
        handshake_secs=config.handshake_timeout_secs,
    )
    elements = config.thrift_max_elements

    def make() -> StormConnection:
        return StormConnection(
            handler,
            max_frame,
            auth=make_auth(),
            metrics=metrics,
            deadlines=deadlines,
            budget=budget,
            max_elements=elements,
        )

    return make
