"""Coordination between nodes in-process: two node apps, each coordinating plain requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from pmcluster.client import ClusterClient
from pmcluster.config import Config
from pmcluster.membership import FixedMembership
from pmcluster.node.app import make_app, members_doc
from pmcluster.node.appstate import LOCAL_BACKEND_KEY, STATE_KEY
from pmcluster.node.coordinator import CoordinatingBackend, LocalTransport
from pmcluster.ring import Member
from pmcluster.tools.localcluster import free_port


@dataclass
class Pair:
    configs: list[Config]
    clients: list[ClusterClient]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """Two nodes, R=1, max_threads=2: every key lives on exactly one of them."""
    configs = [
        Config(
            host="127.0.0.1",
            port=free_port(),
            max_threads=2,
            replication=1,
            request_timeout_secs=1.0,
        )
        for _ in range(2)
    ]
    members = [Member(c.node_id, c.host, c.port) for c in configs]
    runners, clients = [], []
    try:
        for config in configs:
            app = make_app(config)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, config.host, config.port).start()
            runners.append(runner)
            membership = FixedMembership(members)
            await membership.start()
            local = LocalTransport(
                config.node_id, app[LOCAL_BACKEND_KEY], lambda a=app: members_doc(a)
            )
            client = ClusterClient(config, membership=membership, local=local)
            await client.start()
            clients.append(client)
            app[STATE_KEY].coordinator = CoordinatingBackend(app[LOCAL_BACKEND_KEY], client)
        yield Pair(configs, clients)
    finally:
        for client in clients:
            await client.close()
        for runner in runners:
            await runner.cleanup()


async def test_coordinated_requests_filling_every_slot_do_not_deadlock(pair: Pair) -> None:
    """Each node gets max_threads plain reads for keys the other owns: the forwarded halves
    must not wait for the slots their coordinators hold."""
    ring = pair.clients[0].ring
    assert ring is not None
    a, b = pair.configs
    owned_by = {
        c.port: next(f"/k/{i}" for i in range(1000) if ring.owners(f"/k/{i}")[0].port == c.port)
        for c in pair.configs
    }
    async with aiohttp.ClientSession() as session:
        for config in pair.configs:
            url = f"http://{config.node_id}/v1/pulse{owned_by[config.port]}"
            async with session.put(url, data=b"v") as resp:
                assert resp.status == 204

        async def get(node: Config, key: str) -> int:
            async with session.get(f"http://{node.node_id}/v1/pulse{key}") as resp:
                return resp.status

        statuses = await asyncio.wait_for(
            asyncio.gather(
                *(get(a, owned_by[b.port]) for _ in range(4)),
                *(get(b, owned_by[a.port]) for _ in range(4)),
            ),
            timeout=5,
        )
    assert statuses == [200] * 8
    assert not pair.clients[0].failures.looks_down(b.node_id)
