"""The node's Storm front end: which backend answers (resolved per request, read modes), the
counters in `/metrics`, and Storm traffic in the pulse metrics (`pmcluster_pulses_*`)."""

from __future__ import annotations

import pytest

from pmcluster.config import Config
from pmcluster.node.app import make_app
from pmcluster.node.appstate import METRICS_KEY, STATE_KEY, STORE_KEY
from pmcluster.node.local import LocalBackend
from pmcluster.node.stormfront import storm_factory
from pmcluster.store import PulseStore
from pmcluster.storm.codec import HBMessage, HBMessageData, HBPulse
from pmcluster.storm.codec import HBServerMessageType as T


def pulse(path: str, data: bytes) -> HBMessage:
    return HBMessage(T.SEND_PULSE, HBMessageData(pulse=HBPulse(path, data)), 1)


def get(path: str) -> HBMessage:
    return HBMessage(T.GET_PULSE, HBMessageData(path=path), 2)


@pytest.mark.parametrize("mode", ["cluster", "local"])
async def test_backend_is_resolved_per_request(mode: str) -> None:
    app = make_app(Config(storm_read_mode=mode))
    handler = storm_factory(app)().handler
    local = app[STORE_KEY]
    # Before the node joins the cluster: the local store answers everything.
    await handler.handle(pulse("/w/a", b"early"))
    assert local.key_count == 1
    # Once joined, the coordinator answers writes (and reads in cluster mode).
    cluster = PulseStore()
    app[STATE_KEY].coordinator = LocalBackend(cluster)
    await handler.handle(pulse("/w/b", b"coordinated"))
    assert cluster.key_count == 1 and local.key_count == 1
    reply = await handler.handle(get("/w/a"))
    assert reply.data is not None and reply.data.pulse is not None
    expected = {"cluster": None, "local": b"early"}[mode]
    assert reply.data.pulse.details == expected


async def test_metrics_render_storm_counters_and_pulse_sizes() -> None:
    app = make_app(Config())
    handler = storm_factory(app)().handler
    await handler.handle(pulse("/w/a", b"12345"))
    await handler.handle(get("/w/a"))
    await handler.handle(get("/w/missing"))
    await handler.handle(get("not-absolute"))
    rendered = app[METRICS_KEY].render()
    assert 'pmcluster_storm_requests_total{type="GET_PULSE"} 3' in rendered
    assert 'pmcluster_storm_requests_total{type="SEND_PULSE"} 1' in rendered
    assert 'pmcluster_storm_errors_total{kind="invalid_path"} 1' in rendered
    assert "pmcluster_storm_connections_open 0" in rendered
    assert "pmcluster_pulses_received_total 1" in rendered
    assert "pmcluster_received_bytes_total 5" in rendered
    assert "pmcluster_sent_bytes_total 5" in rendered
    assert rendered.endswith("\n") and "\n\n" not in rendered
