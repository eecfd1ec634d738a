"""Limits that protect a node: the store's memory cap (507), the connection cap (503), and
the open-file limit raised at start."""

from __future__ import annotations

import asyncio
import json
import resource
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from pmcluster.config import Config, config_from_mapping
from pmcluster.errors import ConfigError, InsufficientStorage
from pmcluster.node.app import make_app
from pmcluster.node.appstate import STORE_KEY
from pmcluster.node.limits import (
    ConnectionCap,
    default_memory_limit,
    memory_limit,
    raise_open_file_limit,
)
from pmcluster.node.local import LocalBackend
from pmcluster.node.metrics import Metrics
from pmcluster.protocol import pulsecodec
from pmcluster.protocol.pulse import Pulse
from pmcluster.store import KEY_OVERHEAD_BYTES, PulseStore
from pmcluster.store.trie import index_entry_bytes

Client = TestClient[web.Request, web.Application]


def key_cost(path: str, data: bytes) -> int:
    return len(path) + len(data) + KEY_OVERHEAD_BYTES


# The interior node /wb that every key of these tests sits under, with its index entry.
WB = index_entry_bytes(len("/wb"), 2)


# --- the store's cap ---------------------------------------------------------------------


def test_footprint_follows_writes_deletes_and_clear() -> None:
    store = PulseStore()
    store.send_pulse("/wb/a", b"x" * 100)
    store.send_pulse("/wb/b/c", b"y" * 10)
    interior = WB + index_entry_bytes(len("/wb/b"), 3)
    both = key_cost("/wb/a", b"x" * 100) + key_cost("/wb/b/c", b"y" * 10)
    assert store.footprint_bytes == both + interior
    store.send_pulse("/wb/a", b"x" * 40)
    both = key_cost("/wb/a", b"x" * 40) + key_cost("/wb/b/c", b"y" * 10)
    assert store.footprint_bytes == both + interior
    store.delete_pulse_id("/wb/a")
    assert store.footprint_bytes == key_cost("/wb/b/c", b"y" * 10) + interior
    store.delete_path("/wb")
    assert store.footprint_bytes == 0
    store.send_pulse("/wb/z", b"z")
    store.clear()
    assert store.footprint_bytes == 0


def test_ttl_expiry_frees_footprint() -> None:
    now = [1_000_000_000_000]
    store = PulseStore(clock=lambda: now[0], ttl_secs=1.0)
    store.send_pulse("/wb/a", b"x" * 100)
    now[0] += 2_000_000_000
    store.expire()
    assert store.footprint_bytes == 0 and store.key_count == 0


def test_write_past_the_cap_is_refused_and_changes_nothing() -> None:
    cap = key_cost("/wb/a", b"a" * 100) + key_cost("/wb/b", b"b" * 100) + WB
    store = PulseStore(max_bytes=cap)
    assert store.send_pulse("/wb/a", b"a" * 100)
    assert store.send_pulse("/wb/b", b"b" * 100)
    with pytest.raises(InsufficientStorage, match=r"pmcluster\.memory\.max\.bytes"):
        store.send_pulse("/wb/c", b"c")
    with pytest.raises(InsufficientStorage):
        store.send_pulse("/wb/a", b"a" * 101, 10**19)  # a larger value for an existing key
    assert store.refused_writes == 2
    assert store.get_pulse("/wb/c") is None
    held = store.get_pulse("/wb/a")
    assert held is not None and held.data == b"a" * 100
    assert store.footprint_bytes == cap


def test_at_the_cap_rewrites_of_the_same_size_and_deletes_still_work() -> None:
    cap = key_cost("/wb/a", b"a" * 100) + WB
    store = PulseStore(max_bytes=cap)
    store.send_pulse("/wb/a", b"a" * 100, 1)
    assert store.send_pulse("/wb/a", b"b" * 100, 2)  # heartbeats keep flowing at the cap
    assert store.send_pulse("/wb/a", b"c" * 10, 3)  # smaller is always fine
    assert not store.send_pulse("/wb/a", b"d" * 200, 2)  # older: ignored, not refused
    assert store.refused_writes == 0
    store.delete_pulse_id("/wb/a")
    assert store.send_pulse("/wb/x", b"x" * 100)  # room again after the delete


def test_batch_past_the_cap_is_refused_whole() -> None:
    cap = key_cost("/wb/a", b"a" * 100) * 2 + WB
    store = PulseStore(max_bytes=cap)
    store.send_pulse("/wb/a", b"a" * 100)
    batch: list[tuple[str, bytes, int | None]] = [
        ("/wb/b", b"b" * 100, None),
        ("/wb/c", b"c" * 100, None),
    ]
    with pytest.raises(InsufficientStorage):
        store.send_pulses(batch)
    assert store.key_count == 1 and store.get_pulse("/wb/b") is None
    assert store.send_pulses(batch[:1]) == 1


def test_batch_of_rewrites_at_the_cap_is_judged_exactly() -> None:
    # Sizes alone say the batch might not fit (as new keys it would not); rewrites of keys
    # the store holds, no larger than before, must still be accepted at the cap.
    cap = key_cost("/wb/a", b"a" * 100) + key_cost("/wb/b", b"b" * 100) + WB
    store = PulseStore(max_bytes=cap)
    store.send_pulses([("/wb/a", b"a" * 100, 1), ("/wb/b", b"b" * 100, 1)])
    rewrite: list[tuple[str, bytes, int | None]] = [
        ("/wb/a", b"A" * 100, 2),
        ("/wb/b", b"B" * 90, 2),
    ]
    assert store.send_pulses(rewrite) == 2
    assert store.send_pulses([("/wb/a", b"z" * 100, 3)], trusted=True) == 1
    with pytest.raises(InsufficientStorage):
        store.send_pulses([("/wb/a", b"a" * 100, 4), ("/wb/b", b"b" * 111, 4)], trusted=True)
    assert store.refused_writes == 1
    held = store.get_pulse("/wb/a")
    assert held is not None and held.data == b"z" * 100


def test_default_memory_limit_is_half_of_memtotal(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       2048 kB\nMemFree:        1024 kB\n")
    assert default_memory_limit(meminfo) == 1024 * 1024
    assert default_memory_limit(tmp_path / "missing") == 1 << 30
    assert memory_limit(Config()) == default_memory_limit()
    assert memory_limit(Config(memory_max_bytes=4096)) == 4096


def test_limit_keys_are_validated() -> None:
    config = config_from_mapping(
        {"pmcluster.memory.max.bytes": 1 << 20, "pmcluster.max.connections": 50}
    )
    assert (config.memory_max_bytes, config.max_connections) == (1 << 20, 50)
    with pytest.raises(ConfigError, match=r"pmcluster\.max\.connections"):
        config_from_mapping({"pmcluster.max.connections": 0})
    with pytest.raises(ConfigError, match=r"pmcluster\.memory\.max\.bytes"):
        config_from_mapping({"pmcluster.memory.max.bytes": "lots"})


# --- the HTTP side -----------------------------------------------------------------------


async def test_node_answers_507_with_a_reason_and_counts_it(aiohttp_client: AiohttpClient) -> None:
    cap = key_cost("/wb/a", b"a" * 200) + WB
    client: Client = await aiohttp_client(make_app(Config(memory_max_bytes=cap)))
    assert (await client.put("/v1/pulse/wb/a", data=b"a" * 200)).status == 204
    resp = await client.put("/v1/pulse/wb/b", data=b"b" * 10)
    assert resp.status == 507
    doc = await resp.json()
    assert doc["error"] == "insufficient_storage" and "memory.max.bytes" in doc["detail"]
    body = pulsecodec.encode([Pulse("/wb/c", b"c", 0), Pulse("/wb/d", b"d", 0)])
    resp = await client.post(
        "/v1/batch", data=body, headers={"Content-Type": pulsecodec.MEDIA_TYPE}
    )
    assert resp.status == 507
    get = await client.get("/v1/pulse/wb/a")
    assert get.status == 200 and await get.read() == b"a" * 200
    assert (await client.get("/v1/pulse/wb/c")).status == 404
    metrics = await (await client.get("/metrics")).text()
    assert 'pmcluster_errors_total{op="send_pulse",status="507"} 1' in metrics
    assert 'pmcluster_errors_total{op="batch",status="507"} 1' in metrics
    assert f"pmcluster_memory_limit_bytes {cap}" in metrics
    assert f"pmcluster_memory_used_bytes {cap}" in metrics
    assert client.app is not None and client.app[STORE_KEY].refused_writes == 2


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


async def exchange(conn: Conn, request: bytes = GET) -> bytes:
    """Send one request on `conn` and read one whole response (Content-Length framed)."""
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def test_connection_past_the_cap_gets_503_and_others_keep_working() -> None:
    metrics = Metrics()
    runner = web.AppRunner(make_app(Config(), metrics=metrics))
    await runner.setup()
    assert runner.server is not None
    cap = ConnectionCap(2, metrics)
    cap.install(runner.server)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        first = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.open_connection("127.0.0.1", port)
        assert (await exchange(first)).startswith(b"HTTP/1.1 200")
        assert (await exchange(second)).startswith(b"HTTP/1.1 200")
        third = await asyncio.open_connection("127.0.0.1", port)
        answer = await exchange(third)
        assert answer.startswith(b"HTTP/1.1 503")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "service_unavailable"
        assert await third[0].read() == b""  # and closed
        assert cap.refused == 1
        assert "pmcluster_connections_refused_total 1" in metrics.render()
        # The admitted keep-alive connections are still served.
        assert (await exchange(first)).startswith(b"HTTP/1.1 200")
        for _, writer in (first, second, third):
            writer.close()
        for _ in range(200):  # the server sees the closes
            if cap.open == 0:
                break
            await asyncio.sleep(0.01)
        fourth = await asyncio.open_connection("127.0.0.1", port)
        assert (await exchange(fourth)).startswith(b"HTTP/1.1 200")
        fourth[1].close()
    finally:
        await runner.cleanup()


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 256) if hard == resource.RLIM_INFINITY else min(soft, hard, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        before, after = raise_open_file_limit()
        assert before == lowered
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == after
        assert after == hard or hard == resource.RLIM_INFINITY
        assert ConnectionCap.for_config(Config(max_connections=10**6)).limit <= after
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class SlowBackend(LocalBackend):
    """Reads take a while; records how many run at once."""

    def __init__(self, store: PulseStore) -> None:
        super().__init__(store)
        self.running = 0
        self.most = 0

    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.05)
            return await super().get_pulse(path)
        finally:
            self.running -= 1


async def test_requests_beyond_max_threads_wait_their_turn(aiohttp_client: AiohttpClient) -> None:
    store = PulseStore()
    backend = SlowBackend(store)
    client: Client = await aiohttp_client(
        make_app(Config(max_threads=2), store=store, backend=backend)
    )
    statuses = await asyncio.gather(*(client.get(f"/v1/pulse/wb/{i}") for i in range(8)))
    assert [r.status for r in statuses] == [404] * 8  # all served, none refused
    assert backend.most == 2


# Found by mutation testing: a batch of new keys is judged first by a bound from sizes alone
# (no trie walk), then, near the cap, exactly. The bound must never be below the exact growth
# (or a batch past the cap slips through), and the exact figure must be what the footprint
# then becomes: compared here with the footprint an uncapped store reaches.


def _footprint_after(batch: list[tuple[str, bytes, int | None]]) -> int:
    store = PulseStore()
    store.send_pulses(batch)
    return store.footprint_bytes


@pytest.mark.parametrize(
    "batch",
    [
        [("/wb/deep/er/key", b"x" * 50, None)],  # interior nodes are most of its cost
        [("/wb/a/x", b"a" * 10, None), ("/wb/b/y", b"b" * 10, None)],  # two subtrees
        [("/wb/t/x", b"a" * 10, None), ("/wb/t/y", b"b" * 10, None)],  # sharing /wb/t
        [("/wb/t/x", b"a" * 10, None), ("/wb/t/u/v", b"b" * 10, None)],  # and one below it
    ],
)
def test_a_batch_of_new_keys_fits_a_cap_of_exactly_its_footprint(
    batch: list[tuple[str, bytes, int | None]],
) -> None:
    needed = _footprint_after(batch)
    full = PulseStore(max_bytes=needed - 1)
    with pytest.raises(InsufficientStorage):
        full.send_pulses(batch)
    assert full.footprint_bytes == 0 and full.key_count == 0 and full.refused_writes == 1
    exact = PulseStore(max_bytes=needed)
    assert exact.send_pulses(batch) == len(batch)
    assert exact.footprint_bytes == needed


def test_a_new_key_costs_payload_path_and_320_bytes() -> None:
    # docs/configuration.md and docs/operations.md give ~320 B per key for sizing the cap.
    store = PulseStore()
    store.send_pulse("/key", b"x" * 50)
    assert store.footprint_bytes == 50 + len("/key") + 320


def test_removals_free_the_interior_they_prune() -> None:
    now = [1_000_000_000_000]
    keys = ["/wb/a/b/c", "/wb/a/d", "/wb/e/f/g", "/wb/h"]
    store = PulseStore(clock=lambda: now[0], tombstone_ttl_secs=1.0)
    for key in keys:
        store.send_pulse(key, b"x" * 10, 5)
    assert store.discard("/wb/e/f/g", 5)  # prunes /wb/e/f and /wb/e
    assert store.discard("/wb/a/b/c", 5)  # prunes /wb/a/b, keeps /wb/a
    left = PulseStore()
    for key in ["/wb/a/d", "/wb/h"]:
        left.send_pulse(key, b"x" * 10, 5)
    assert store.footprint_bytes == left.footprint_bytes
    store.delete_path("/wb/a")
    store.delete_pulse_id("/wb/h")
    now[0] += 1_000_000_000  # the tombstones expire, and the paths they held go
    store.expire()
    assert store.footprint_bytes == 0


def test_past_the_cap_rewrites_no_larger_still_work() -> None:
    # Deletes are never refused, and a tombstone on a path never written holds interior
    # nodes, which the footprint counts: it can then pass the cap. Heartbeats that do not
    # grow must still be taken, alone or batched.
    cap = key_cost("/wb/a", b"a" * 100) + WB
    store = PulseStore(max_bytes=cap)
    store.send_pulse("/wb/a", b"a" * 100, 1)
    store.delete_pulse_id("/wb/gone/key", 1)
    assert store.footprint_bytes > cap
    assert store.send_pulses([("/wb/a", b"b" * 100, 2)]) == 1
    assert store.send_pulses([("/wb/a", b"c" * 90, 3)], trusted=True) == 1
    assert store.send_pulse("/wb/a/", b"d" * 90, 4)  # not the stored spelling: the full walk
    assert store.refused_writes == 0
    with pytest.raises(InsufficientStorage):
        store.send_pulse("/wb/a", b"e" * 91, 5)


def test_a_refused_write_says_by_how_much_and_names_the_limit() -> None:
    cap = key_cost("/wb/a", b"a" * 100) + WB
    store = PulseStore(max_bytes=cap)
    store.send_pulse("/wb/a", b"a" * 100, 1)
    with pytest.raises(InsufficientStorage) as refused:
        store.send_pulse("/wb/a", b"a" * 150, 2)
    assert str(refused.value) == (
        f"write of 50 more bytes refused: the store holds {cap} of its {cap}-byte limit "
        "(pmcluster.memory.max.bytes)"
    )


@pytest.mark.parametrize("key", ["/wb", "/wb/a", "/wb/deep/er/key"])
def test_a_new_key_fits_a_cap_of_exactly_its_footprint(key: str) -> None:
    needed = _footprint_after([(key, b"x" * 50, None)])
    full = PulseStore(max_bytes=needed - 1)
    with pytest.raises(InsufficientStorage):
        full.send_pulse(key, b"x" * 50)
    assert full.footprint_bytes == 0 and full.key_count == 0 and full.refused_writes == 1
    exact = PulseStore(max_bytes=needed)
    assert exact.send_pulse(key, b"x" * 50)
    assert exact.footprint_bytes == needed


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/wb/a", "/wb/a/b"),  # a new key below a key: /wb/a's value is not the new key's
        ("/wb/t/x", "/wb/t"),  # a value at a node that exists already, interior to /wb/t/x
    ],
)
def test_a_key_next_to_another_fits_a_cap_of_exactly_its_footprint(first: str, second: str) -> None:
    needed = _footprint_after([(first, b"x" * 50, None), (second, b"y" * 20, None)])
    for cap, fits in [(needed - 1, False), (needed, True)]:
        store = PulseStore(max_bytes=cap)
        assert store.send_pulse(first, b"x" * 50)
        if fits:
            assert store.send_pulse(second, b"y" * 20)
            assert store.footprint_bytes == needed
        else:
            with pytest.raises(InsufficientStorage):
                store.send_pulse(second, b"y" * 20)
            assert store.key_count == 1


def test_at_the_cap_another_spelling_of_a_key_is_judged_like_the_key() -> None:
    cap = key_cost("/wb/a", b"a" * 100) + WB
    store = PulseStore(max_bytes=cap)
    store.send_pulse("/wb/a", b"a" * 100, 5)
    assert not store.send_pulse("/wb/a/", b"b" * 200, 4)  # older: ignored, not refused
    assert not store.send_pulse("/wb/a/", b"0" * 200, 5)  # same version, smaller: ignored
    for version in (5, 6):  # larger data at the same or a newer version: past the cap
        with pytest.raises(InsufficientStorage):
            store.send_pulse("/wb/a/", b"b" * 101, version)
    assert store.refused_writes == 2
    held = store.get_pulse("/wb/a")
    assert held is not None and (held.data, held.version) == (b"a" * 100, 5)
