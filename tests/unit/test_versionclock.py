"""Versions of writes that come without one: a hybrid logical clock fed by the owners, so a
later write is never hidden by an earlier one from a coordinator whose clock ran ahead."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from pmcluster.client import ClusterClient
from pmcluster.client.versionclock import MAX_OBSERVED_AHEAD_NS, MAX_VERSION, VersionClock
from pmcluster.config import Config
from pmcluster.node.app import make_app
from pmcluster.node.appstate import STATE_KEY
from pmcluster.protocol.http import HELD_HEADER
from pmcluster.store import PulseStore
from pmcluster.tools.localcluster import free_port_on_all

HOSTS = ("127.0.0.1", "127.0.0.2")
SECOND = 10**9


def test_versions_strictly_increase_even_when_the_wall_clock_stalls() -> None:
    clock = VersionClock(lambda: 1000)
    assert [clock.now() for _ in range(3)] == [1000, 1001, 1002]


def test_observed_versions_push_later_ones_above_them() -> None:
    wall = [100 * SECOND]
    clock = VersionClock(lambda: wall[0])
    clock.observe(105 * SECOND)  # an owner held a version from a clock 5 s ahead
    assert clock.now() == 105 * SECOND + 1
    clock.observe(50 * SECOND)  # older ones change nothing
    assert clock.now() == 105 * SECOND + 2
    wall[0] = 200 * SECOND
    assert clock.now() == 200 * SECOND  # the wall clock takes over again


def test_absurd_versions_are_not_observed_but_can_still_be_passed() -> None:
    clock = VersionClock(lambda: 100 * SECOND)
    far = 100 * SECOND + MAX_OBSERVED_AHEAD_NS + 1
    clock.observe(far)
    assert clock.now() < far
    assert clock.above(far) == far + 1
    assert clock.now() < far  # still not poisoned
    assert clock.above(MAX_VERSION) == MAX_VERSION


@pytest.fixture
async def two_nodes() -> AsyncIterator[tuple[Config, list[PulseStore]]]:
    port = free_port_on_all(HOSTS)
    ids = tuple(f"{h}:{port}" for h in HOSTS)
    runners, stores = [], []
    for host in HOSTS:
        store = PulseStore()
        app = make_app(Config(host=host, port=port), store=store)
        app[STATE_KEY].epoch, app[STATE_KEY].members = "static-two", ids  # both are members
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
        stores.append(store)
    try:
        yield Config(servers=ids, port=port, request_timeout_secs=1.0), stores
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_an_ignored_write_reports_what_the_node_holds(
    two_nodes: tuple[Config, list[PulseStore]],
) -> None:
    config, _ = two_nodes
    async with ClusterClient(config) as client:
        assert client.ring is not None
        node = client.ring.owners("/wb/a")[0]
        transport = client._transport(node)  # the HTTP transport of one owner
        assert await transport.put_pulse("/wb/a", b"new", 500) == 0
        assert await transport.put_pulse("/wb/a", b"old", 400) == 500
        await transport.delete_pulse_id("/wb/a", 700)
        assert await transport.put_pulse("/wb/a", b"older", 600) == 700


async def test_a_later_unversioned_write_beats_one_from_a_clock_ahead(
    two_nodes: tuple[Config, list[PulseStore]],
) -> None:
    """Regression: the coordinator's time_ns() lost to a version from a clock 5 s ahead."""
    config, stores = two_nodes
    async with ClusterClient(config) as ahead, ClusterClient(config) as behind:
        ahead.clock = VersionClock(lambda: time.time_ns() + 5 * SECOND)
        await ahead.send_pulse("/wb/t/w-6700", b"first")
        await behind.send_pulse("/wb/t/w-6700", b"second")  # later, from a correct clock
        pulse = await behind.get_pulse("/wb/t/w-6700")
        assert pulse is not None and pulse.data == b"second"
        assert behind.stats["version_retries"] == 1
        # Both owners converged on the second write, and the behind client's clock moved on.
        assert [s.get_pulse("/wb/t/w-6700").data for s in stores] == [b"second", b"second"]  # type: ignore[union-attr]
        await behind.send_pulse("/wb/t/w-6700", b"third")
        assert behind.stats["version_retries"] == 1  # no retry needed any more
        third = await ahead.get_pulse("/wb/t/w-6700")
        assert third is not None and third.data == b"third"


async def test_client_supplied_versions_are_kept_as_given(
    two_nodes: tuple[Config, list[PulseStore]],
) -> None:
    config, _ = two_nodes
    async with ClusterClient(config) as client:
        await client.send_pulse("/wb/v", b"newer", 2000)
        await client.send_pulse("/wb/v", b"older", 1000)  # an older version is ignored
        pulse = await client.get_pulse("/wb/v")
        assert pulse is not None and (pulse.data, pulse.version) == (b"newer", 2000)
        assert client.stats["version_retries"] == 0


async def test_put_answers_carry_the_held_version_header_only_when_ignored(
    two_nodes: tuple[Config, list[PulseStore]],
) -> None:
    config, _ = two_nodes
    async with ClusterClient(config) as client:
        assert client._session is not None
        base = f"http://{config.servers[0]}/v1/pulse/wb/h"
        headers = {"X-Pmcluster-Forwarded": "1", "X-Pulse-Version": "10"}
        async with client._session.put(base, data=b"x", headers=headers) as resp:
            assert resp.status == 204 and HELD_HEADER not in resp.headers
        headers["X-Pulse-Version"] = "5"
        async with client._session.put(base, data=b"y", headers=headers) as resp:
            assert resp.status == 204 and resp.headers[HELD_HEADER] == "10"


def test_observing_exactly_the_plausibility_bound_is_accepted() -> None:
    """A version at wall + MAX_OBSERVED_AHEAD_NS is still plausible; one more ns is not."""
    clock = VersionClock(lambda: 1000)
    clock.observe(1000 + MAX_OBSERVED_AHEAD_NS)
    assert clock.now() == 1001 + MAX_OBSERVED_AHEAD_NS
    other = VersionClock(lambda: 1000)
    other.observe(1001 + MAX_OBSERVED_AHEAD_NS)
    assert other.now() == 1000


def test_a_wall_clock_at_zero_still_issues_positive_versions() -> None:
    clock = VersionClock(lambda: 0)
    assert [clock.now() for _ in range(3)] == [1, 2, 3]
