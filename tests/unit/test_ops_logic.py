"""Ops logic without processes: the status verdict, epoch agreement, `up`'s port choice, the
node command line and the admin drain route's refusals (on the real app)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from pmcluster.client import ClusterClient
from pmcluster.config import Config
from pmcluster.node.admin import DRAIN_ROUTE, install_admin
from pmcluster.node.app import make_app
from pmcluster.node.appstate import LOCAL_BACKEND_KEY, STATE_KEY
from pmcluster.node.coordinator import CoordinatingBackend
from pmcluster.tools.demo import choose_port
from pmcluster.tools.launch import node_argv
from pmcluster.tools.ops import NodeView, agreed_epoch, systemd_commands
from pmcluster.tools.status import NodeStatus, parse_metrics, render, verdict


def up(node_id: str, epoch: str = "zk-3", members: tuple[str, ...] = ("a:1", "b:1")) -> NodeStatus:
    return NodeStatus(node_id, up=True, epoch=epoch, members=list(members))


def test_verdict_ok_degraded_down() -> None:
    assert verdict([up("a:1"), up("b:1")], replication=2)[0] == "OK"
    state, reason = verdict([up("a:1"), NodeStatus("b:1")], replication=2)
    assert (state, reason) == ("DEGRADED", "b:1 does not answer")
    assert verdict([up("a:1"), up("b:1", epoch="zk-4")])[0] == "DEGRADED"
    assert verdict([NodeStatus("a:1"), NodeStatus("b:1")])[0] == "DOWN"


def test_verdict_degraded_below_replication_or_expected_size() -> None:
    one = [up("a:1", members=("a:1",))]
    assert verdict(one, replication=2)[0] == "DEGRADED"
    assert verdict(one, replication=1)[0] == "OK"
    two = [up("a:1"), up("b:1")]
    state, reason = verdict(two, replication=2, expect=3)
    assert state == "DEGRADED" and "3 expected" in reason


def view(node: str, epoch: str, members: tuple[str, ...]) -> NodeView:
    return NodeView(node, epoch, members, {m: f"http://{m}" for m in members}, 2)


def test_agreed_epoch_needs_every_node_same_epoch_and_members() -> None:
    members = ("a:1", "b:1")
    views = {m: view(m, "zk-5", members) for m in members}
    assert agreed_epoch(views, ["b:1"]) == "zk-5"
    assert agreed_epoch(views, ["c:1"]) is None  # the new node is not in the ring yet
    assert agreed_epoch({**views, "b:1": None}) is None  # one did not answer
    assert agreed_epoch({**views, "b:1": view("b:1", "zk-6", members)}) is None
    # Views that agree but list a node nobody asked is not convergence either.
    assert agreed_epoch({"a:1": view("a:1", "zk-5", members)}) is None


def test_up_port_choice() -> None:
    hosts = ["127.0.0.1", "127.0.0.2"]
    assert choose_port("7000", hosts) == 7000
    with socket.socket() as sock:  # 6699 busy on one address: auto picks another port
        with contextlib.suppress(OSError):  # already busy: the same situation
            sock.bind(("127.0.0.2", 6699))
        port = choose_port("auto", hosts)
        assert port != 6699
        for host in hosts:
            with socket.socket() as probe:
                probe.bind((host, port))


def test_node_command_applies_childopts(tmp_path: Path) -> None:
    config = Config(childopts="-X faulthandler -O")
    argv = node_argv(tmp_path / "n.yaml", config.childopts, "/usr/bin/python3")
    head = ["/usr/bin/python3", "-X", "faulthandler", "-O", "-m", "pmcluster", "node"]
    assert argv == [*head, "--config", str(tmp_path / "n.yaml")]
    commands = systemd_commands(Path("/srv/pm4.yaml"), config)
    assert commands[-1] == "sudo systemctl enable --now pmcluster@pm4.service"
    assert "PMCLUSTER_CHILDOPTS=-X faulthandler -O" in commands[1]


async def drain_client(
    aiohttp_client: AiohttpClient, config: Config
) -> tuple[TestClient, list[int]]:
    stops: list[int] = []
    app = make_app(config)
    install_admin(app, lambda: stops.append(1))
    return await aiohttp_client(app), stops


async def test_drain_refused_without_a_membership_to_leave(aiohttp_client: AiohttpClient) -> None:
    client, stops = await drain_client(aiohttp_client, Config(port=7001))
    resp = await client.post(DRAIN_ROUTE)
    assert resp.status == 409
    assert "static or DNS" in (await resp.json())["detail"]
    progress = await (await client.get(DRAIN_ROUTE)).json()
    assert progress["state"] == "idle" and stops == []


async def test_drain_refused_below_replication(aiohttp_client: AiohttpClient) -> None:
    config = Config(port=7001, replication=2)
    client, stops = await drain_client(aiohttp_client, config)
    app = client.app
    assert app is not None
    state = app[STATE_KEY]
    state.members = ("127.0.0.1:7001", "127.0.0.2:7001")
    left: list[int] = []

    async def leave() -> None:
        left.append(1)

    state.leave = leave
    state.coordinator = CoordinatingBackend(app[LOCAL_BACKEND_KEY], ClusterClient(config))
    resp = await client.post(DRAIN_ROUTE, json={})
    assert resp.status == 409
    assert "fewer than the replication factor 2" in (await resp.json())["detail"]
    bad = await client.post(DRAIN_ROUTE, data=b"[1]")
    assert bad.status == 400
    assert stops == [] and left == []  # refused before anything happened


def test_status_shows_anti_entropy_progress() -> None:
    metrics = parse_metrics(
        'pmcluster_antientropy_keys_repaired_total{kind="value"} 7\n'
        'pmcluster_antientropy_keys_repaired_total{kind="delete"} 3\n'
        "pmcluster_antientropy_under_replicated_keys 2\n"
    )
    assert metrics["pmcluster_antientropy_keys_repaired_total"] == 10
    node = up("a:1")
    node.behind, node.repaired = 2, 10
    header, row, _ = render([node], "OK", "fine").splitlines()
    assert header.split()[-2:] == ["behind", "repaired"]
    assert row.split()[-2:] == ["2", "10"]
