"""The status page's parts without other processes: the page and its CSP, `/v1/cluster` of
one node (the real app), the merge of replicas' versions, the bounded history, the ring's
exact ownership, the read rules for the page, and `pmcluster up`'s next steps."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import sys
import time
import webbrowser
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from pmcluster.config import Config
from pmcluster.node import events
from pmcluster.node.app import make_app
from pmcluster.node.appstate import HISTORY_KEY, STATE_KEY, STORE_KEY
from pmcluster.node.clusterview import merge_children
from pmcluster.node.events import ClusterHistory
from pmcluster.node.statuspage import content_security_policy, page
from pmcluster.ring import Member, Ring, balance_estimate
from pmcluster.tools import demo

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_app(Config(host="127.0.0.1", port=6699)))


# --- the page ----------------------------------------------------------------------------------


async def test_page_is_served_with_a_csp_naming_its_inline_blocks(client: Client) -> None:
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    body = await response.text()
    assert "<title>pmcluster status</title>" in body and "/v1/cluster" in body
    csp = response.headers["Content-Security-Policy"]
    assert csp == content_security_policy()
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for tag in ("script", "style"):
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", body, re.S)
        assert len(blocks) == 1
        digest = base64.b64encode(hashlib.sha256(blocks[0].encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in csp
    assert "innerHTML" not in page().decode()  # values go in as text, never as markup


def test_page_is_package_data() -> None:
    import pmcluster.node

    shipped = Path(pmcluster.node.__file__).parent / "static" / "index.html"
    assert shipped.read_bytes() == page()
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert '"pmcluster.node" = ["static/*.html"]' in pyproject.read_text()


# --- /v1/cluster of a node alone -----------------------------------------------------------------


async def test_cluster_view_of_one_node(client: Client) -> None:
    store = client.app[STORE_KEY]
    now = time.time_ns()
    store.send_pulse("/workerbeats/topo-a/w1", b"x" * 10, now - 40 * 10**9)
    store.send_pulse("/workerbeats/topo-a/w2", b"x" * 10, now - 1 * 10**9)
    store.send_pulse("/workerbeats/topo-b/w1", b"y", now)
    store.send_pulse("/elsewhere/k", b"z")
    response = await client.get("/v1/cluster")
    assert response.status == 200
    doc = await response.json()
    node_id = client.app[STATE_KEY].node_id
    [member] = doc["members"]
    assert member["node_id"] == node_id and member["self"] is True
    assert (member["state"], member["keys"], member["bytes"]) == ("up", 4, 22)
    assert member["writes_per_sec"] is None  # one sample: no rate yet
    assert doc["summary"] == {"members": 1, "up": 1, "in_ring": 1, "heartbeats": 3}
    assert doc["ring"]["shares"] == [{"node_id": node_id, "primary": 1.0, "owner": 1.0}]
    items = {i["topology"]: i for i in doc["topologies"]["items"]}
    assert items["topo-a"]["workers"] == 2 and items["topo-a"]["oldest_worker"] == "w1"
    assert 39 < items["topo-a"]["oldest_age_secs"] < 60
    assert items["topo-b"]["workers"] == 1
    assert [i["topology"] for i in doc["topologies"]["items"]] == ["topo-a", "topo-b"]
    assert doc["replication_health"]["available"] is False
    assert "not available" in doc["replication_health"]["detail"]
    assert doc["events"][-1]["kind"] == "node" and "started" in doc["events"][-1]["text"]


async def test_cluster_view_is_cached_briefly_then_rebuilt_with_rates(client: Client) -> None:
    first = await (await client.get("/v1/cluster")).json()
    again = await (await client.get("/v1/cluster")).json()
    assert again["time"] == first["time"]  # within CACHE_SECS: the same answer
    await client.put("/v1/pulse/wb/a", data=b"1")
    await client.put("/v1/pulse/wb/b", data=b"2")
    await asyncio.sleep(1.05)  # past CACHE_SECS
    later = await (await client.get("/v1/cluster")).json()
    assert later["time"] > first["time"]
    [member] = later["members"]
    assert member["writes_per_sec"] is not None and member["writes_per_sec"] > 0


async def test_a_member_out_of_the_ring_is_listed_down_not_missing(client: Client) -> None:
    state = client.app[STATE_KEY]
    gone = Member("127.0.0.9:1", "127.0.0.9", 1)  # nothing listens on port 1
    me = Member(state.node_id, "127.0.0.1", 6699)
    state.epoch, state.member_docs = "zk-1", [me.describe(), gone.describe()]
    client.app[HISTORY_KEY].ring_changed("zk-1", [me, gone])
    doc = await (await client.get("/v1/cluster")).json()
    rows = {m["node_id"]: m for m in doc["members"]}
    assert rows[gone.node_id]["state"] == "down"
    assert rows[gone.node_id]["problem"] == "connection refused"
    state.epoch, state.member_docs = "zk-2", [me.describe()]
    client.app[HISTORY_KEY].ring_changed("zk-2", [me])
    await asyncio.sleep(1.05)  # past CACHE_SECS
    doc = await (await client.get("/v1/cluster")).json()
    rows = {m["node_id"]: m for m in doc["members"]}
    assert rows[gone.node_id]["state"] == "down" and rows[gone.node_id]["in_ring"] is False
    texts = [e["text"] for e in doc["events"]]
    assert any(t.startswith(f"{gone.node_id} down") for t in texts)
    assert any(f"-{gone.node_id}" in t for t in texts)


def test_merge_children_takes_the_newest_version_and_drops_deleted() -> None:
    a = ({"w1": 10, "w2": 5, "w3": 7}, {})
    b = ({"w1": 12, "w2": 4}, {"w3": 8})  # b saw w3 deleted after a's version
    c = ({"w4": 3}, {"w4": 2})  # a tombstone older than the value: the value stays
    assert merge_children([a, b, c]) == {"w1": 12, "w2": 5, "w4": 3}
    assert merge_children([]) == {}


# --- history ------------------------------------------------------------------------------------


def test_history_logs_ring_changes_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    history = ClusterHistory(clock=lambda: clock[0])
    a, b, c = (Member.at(f"127.0.0.{i}", 6699) for i in (1, 2, 3))
    history.ring_changed("e1", [a, b])
    history.ring_changed("e1", [a, b])  # the same view again: nothing new
    history.ring_changed("e2", [a, c])
    texts = [e.text for e in history.events()]
    assert texts[0] == f"epoch e2: +{c.node_id} -{b.node_id} (2 member(s))"
    assert texts[1].startswith("epoch e1: 2 member(s)")
    assert len(texts) == 2
    known = {k.member.node_id: k for k in history.known()}
    assert known[b.node_id].in_ring is False and known[b.node_id].was_in_ring is True
    clock[0] += events.FORGET_SECS + 1
    assert b.node_id not in {k.member.node_id for k in history.known()}  # forgotten at last
    assert {a.node_id, c.node_id} <= {k.member.node_id for k in history.known()}
    for i in range(events.MAX_EVENTS + 10):
        history.record("fault", f"f{i}")
    assert len(history.events()) == events.MAX_EVENTS
    assert history.events(1)[0].text == f"f{events.MAX_EVENTS + 9}"
    monkeypatch.setattr(events, "MAX_MEMBERS", 5)
    history.heard_of(Member.at("10.0.0.1", p) for p in range(1, 20))
    assert len(history.known()) == 5
    assert {a.node_id, c.node_id} <= {k.member.node_id for k in history.known()}


# --- ring ownership -----------------------------------------------------------------------------


@pytest.mark.parametrize("zones", [False, True])
def test_ring_ownership_is_exact_and_agrees_with_sampling(zones: bool) -> None:
    members = [Member.at(f"127.0.0.{i}", 6699, f"z{i % 2}" if zones else None) for i in range(1, 6)]
    ring = Ring(members, "e", replication=2)
    shares = ring.ownership()
    assert set(shares) == {m.node_id for m in members}
    assert sum(p for p, _ in shares.values()) == pytest.approx(1.0)
    assert sum(o for _, o in shares.values()) == pytest.approx(2.0)
    sampled = balance_estimate(ring, 20_000)
    for node_id, (primary, _) in shares.items():
        assert sampled[node_id] / 20_000 == pytest.approx(primary, abs=0.015)


# --- read rules ---------------------------------------------------------------------------------


async def test_page_and_view_need_digest_credentials(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    jaas = tmp_path / "jaas.conf"
    jaas.write_text('PacemakerDigest { username="storm" password="pw-for-tests"; };\n')
    app = make_app(Config(port=6699, auth_method="DIGEST", jaas_path=str(jaas)))
    client = await aiohttp_client(app)
    for route in ("/", "/v1/cluster"):
        response = await client.get(route)
        assert response.status == 401, route
        assert response.headers["WWW-Authenticate"].startswith("Digest ")
    assert (await client.get("/health")).status == 200


# --- pmcluster up's next steps -------------------------------------------------------------------


class FakeNode:
    def __init__(self, host: str, pid: int) -> None:
        self.node_id, self.url, self.pid = f"{host}:6699", f"http://{host}:6699", pid


def test_next_steps_name_the_page_curl_ls_and_the_pid_to_kill() -> None:
    nodes: Any = [FakeNode("127.0.0.1", 11), FakeNode("127.0.0.2", 12)]
    steps = demo.next_steps(nodes, "/workerbeats/t(1)/w", "pmcluster")
    assert steps[0].split()[2] == "http://127.0.0.1:6699/"
    assert (
        "curl -sS -D - -o /dev/null http://127.0.0.1:6699/v1/pulse/workerbeats/t%281%29/w"
        in steps[1]
    )
    assert "pmcluster ls --servers 127.0.0.1:6699,127.0.0.2:6699 /workerbeats" in steps[2]
    assert "kill -9 12" in steps[3] and "127.0.0.2:6699" in steps[3]
    assert "Ctrl-C" in steps[4]


def test_cli_command_repeats_how_pmcluster_was_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [".venv/bin/pmcluster", "up"])
    assert demo.cli_command() == ".venv/bin/pmcluster"
    monkeypatch.setattr(sys, "argv", ["/x/pmcluster/__main__.py", "up"])
    assert demo.cli_command().endswith(" -m pmcluster")


def test_open_page_only_with_a_graphical_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    class Controller:
        def open(self, url: str) -> bool:
            opened.append(url)
            return True

    def no_browser() -> Any:
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(webbrowser, "get", lambda: Controller())
    assert "no graphical display" in demo.open_page("http://h:1/") and opened == []
    monkeypatch.setenv("DISPLAY", ":0")
    assert demo.open_page("http://h:1/") == "  --open: opened http://h:1/"
    assert opened == ["http://h:1/"]
    monkeypatch.setattr(webbrowser, "get", no_browser)
    assert "no browser found" in demo.open_page("http://h:1/")


def test_replication_health_sums_the_members_anti_entropy_figures() -> None:
    from pmcluster.node.clusterview import replication_health

    assert replication_health([{}, {"pmcluster_stored_keys": 3.0}], 100.0)["available"] is False
    members = [
        {
            "pmcluster_antientropy_rounds_total": 4.0,
            "pmcluster_antientropy_under_replicated_keys": 2.0,
            "pmcluster_antientropy_keys_repaired_total": 5.0,
            "pmcluster_antientropy_last_round_end_timestamp_seconds": 98.0,
        },
        {
            "pmcluster_antientropy_rounds_total": 3.0,
            "pmcluster_antientropy_under_replicated_keys": 1.0,
            "pmcluster_antientropy_last_round_end_timestamp_seconds": 90.0,
        },
    ]
    health = replication_health(members, 100.0)
    assert health["available"] is True and health["under_replicated_keys"] == 3
    assert health["anti_entropy"] == {
        "members": 2,
        "rounds": 7,
        "keys_repaired": 5,
        "last_round_secs_ago": 10.0,
    }
    # A member that has not finished a round yet: no "last round" figure for the cluster.
    members[1].pop("pmcluster_antientropy_last_round_end_timestamp_seconds")
    assert replication_health(members, 100.0)["anti_entropy"]["last_round_secs_ago"] is None
