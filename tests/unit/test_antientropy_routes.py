"""Anti-entropy's peer routes against the real app, and its config key.

The loop's ClusterClient is replaced by a stand-in holding a fixed two-member ring (what the
routes read from it); everything else is the real app and store.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from pmcluster.config import Config, config_from_mapping
from pmcluster.errors import ConfigError
from pmcluster.node.antientropy import AE_KEY, AntiEntropy, AntiEntropyMetrics
from pmcluster.node.app import make_app
from pmcluster.node.appstate import METRICS_KEY, STORE_KEY
from pmcluster.ring import Member, Ring
from pmcluster.store.digest import bucket_of, digests

Client = TestClient[web.Request, web.Application]
CONFIG = Config(host="127.0.0.1", port=6699)
ME, PEER = "127.0.0.1:6699", "127.0.0.2:6699"
RING = Ring([Member(ME, "127.0.0.1", 6699), Member(PEER, "127.0.0.2", 6699)], "e7", replication=2)
FWD = {"X-Pmcluster-Forwarded": "1"}


class _RingOnly:
    """Stands in for the node's ClusterClient: the routes only read its ring."""

    ring = RING


async def _app_client(aiohttp_client: AiohttpClient, *, loop: bool = True) -> Client:
    app = make_app(CONFIG)
    if loop:
        app[AE_KEY].loop = AntiEntropy(
            app[STORE_KEY],
            _RingOnly(),  # type: ignore[arg-type]
            ME,
            period=1.0,
            timeout=1.0,
            metrics=AntiEntropyMetrics(app[METRICS_KEY]),
        )
    return await aiohttp_client(app)


def _doc(**extra: Any) -> dict[str, Any]:
    return {"epoch": "e7", "from": PEER, **extra}


async def test_only_peers_may_call_the_internal_routes(aiohttp_client: AiohttpClient) -> None:
    client = await _app_client(aiohttp_client)
    for route in ("digest", "sync"):
        resp = await client.post(f"/v1/internal/{route}", json=_doc(buckets={}))
        assert resp.status == 403
        assert (await resp.json())["error"] == "forbidden"


async def test_a_node_outside_a_cluster_answers_503(aiohttp_client: AiohttpClient) -> None:
    client = await _app_client(aiohttp_client, loop=False)
    resp = await client.post("/v1/internal/digest", json=_doc(buckets={}), headers=FWD)
    assert resp.status == 503


async def test_bad_requests_get_a_4xx_with_a_reason(aiohttp_client: AiohttpClient) -> None:
    client = await _app_client(aiohttp_client)
    cases: list[tuple[str, Any, int]] = [
        ("digest", "not json", 400),
        ("digest", [1, 2], 400),
        ("digest", _doc(buckets={"x": "zz"}), 400),
        ("digest", {**_doc(buckets={}), "epoch": "e6"}, 409),
        ("digest", {**_doc(buckets={}), "before": "soon"}, 400),
        ("digest", {**_doc(buckets={}), "before": -1}, 400),
        ("sync", _doc(buckets=[1], values=[["/a", "!!", 5]], key_tombs=[], tree_tombs=[]), 400),
        ("sync", _doc(buckets=[1], values=[["rel", "", 5]], key_tombs=[], tree_tombs=[]), 400),
        ("sync", _doc(buckets=[1]), 400),
    ]
    for route, body, status in cases:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
        resp = await client.post(f"/v1/internal/{route}", headers=FWD, **kwargs)
        assert resp.status == status, (route, body)
        assert (await resp.json())["detail"]


async def test_digest_names_the_buckets_that_differ(aiohttp_client: AiohttpClient) -> None:
    client = await _app_client(aiohttp_client)
    store = client.app[STORE_KEY]
    for i in range(20):
        store.send_pulse(f"/w/t/{i}", b"x", 100 + i)
    same = digests(store, lambda _: [PEER])[PEER]
    theirs = {str(b): f"{h:016x}" for b, h in same.items()}
    resp = await client.post("/v1/internal/digest", json=_doc(buckets=theirs), headers=FWD)
    assert (await resp.json()) == {"differ": []}
    del theirs[str(bucket_of("/w/t/3"))]
    resp = await client.post("/v1/internal/digest", json=_doc(buckets=theirs), headers=FWD)
    assert (await resp.json()) == {"differ": [bucket_of("/w/t/3")]}


async def test_digest_leaves_out_what_the_peer_wrote_after_its_bound(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await _app_client(aiohttp_client)
    store = client.app[STORE_KEY]
    store.send_pulse("/w/t/old", b"x", 100)
    store.send_pulse("/w/t/new", b"x", 500)  # the peer digested before this write reached it
    peer_view = digests(store, lambda _: [PEER], before=200)[PEER]  # what the peer holds
    theirs = {str(b): f"{h:016x}" for b, h in peer_view.items()}
    assert bucket_of("/w/t/new") != bucket_of("/w/t/old")
    bounded = _doc(buckets=theirs, before=200)
    resp = await client.post("/v1/internal/digest", json=bounded, headers=FWD)
    assert (await resp.json()) == {"differ": []}
    resp = await client.post("/v1/internal/digest", json=_doc(buckets=theirs), headers=FWD)
    assert (await resp.json()) == {"differ": [bucket_of("/w/t/new")]}


async def test_sync_applies_versioned_entries_and_answers_what_the_peer_lacks(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await _app_client(aiohttp_client)
    store = client.app[STORE_KEY]
    store.send_pulse("/w/old", b"old", 10)
    store.send_pulse("/w/gone", b"old", 10)
    store.send_pulse("/w/mine", b"only here", 50)
    buckets = sorted({bucket_of(p) for p in ("/w/old", "/w/gone", "/w/mine", "/w/new")})
    body = _doc(
        buckets=buckets,
        values=[
            ["/w/old", base64.b64encode(b"newer").decode(), 20],
            ["/w/new", base64.b64encode(b"fresh").decode(), 30],
        ],
        key_tombs=[["/w/gone", 15]],
        tree_tombs=[],
    )
    resp = await client.post("/v1/internal/sync", json=body, headers=FWD)
    assert resp.status == 200
    answer = await resp.json()
    old, new = store.get_pulse("/w/old"), store.get_pulse("/w/new")
    assert old is not None and (old.data, old.version) == (b"newer", 20)
    assert new is not None and new.version == 30
    assert store.get_pulse("/w/gone") is None
    assert [v[0] for v in answer["values"]] == ["/w/mine"]  # not what the peer already has
    assert answer["differ_keys"] == 4
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    assert 'pmcluster_antientropy_keys_repaired_total{kind="value"} 2' in metrics
    assert 'pmcluster_antientropy_keys_repaired_total{kind="delete"} 1' in metrics


def test_the_period_key() -> None:
    assert Config().antientropy_secs == 5.0
    assert config_from_mapping({"pmcluster.antientropy.secs": 0}).antientropy_secs == 0.0
    assert config_from_mapping({"pmcluster.antientropy.secs": "2.5"}).antientropy_secs == 2.5
    for bad in (0.05, -1, "often", True):
        with pytest.raises(ConfigError, match=r"pmcluster\.antientropy\.secs"):
            config_from_mapping({"pmcluster.antientropy.secs": bad})
