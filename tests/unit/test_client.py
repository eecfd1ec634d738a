"""ClusterClient against three real node apps served in-process on 127.0.0.1/.2/.3.

Static membership: the client asks the seeds' `GET /v1/members`; each node's answer (and its
epoch header) is set through the node's `NodeState`, which is what a membership source would
update. Each node's own `PulseStore` is checked directly to see where values landed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from pmcluster.client import ClusterClient, SyncClusterClient
from pmcluster.client.coalesce import MAX_BATCH_BYTES
from pmcluster.client.failures import FailureTracker
from pmcluster.client.transport import NodeTransport
from pmcluster.config import Config
from pmcluster.errors import (
    ClusterUnavailable,
    InsufficientStorage,
    InvalidPath,
    NodeUnavailable,
    PayloadTooLarge,
)
from pmcluster.membership import FixedMembership
from pmcluster.node.app import make_app
from pmcluster.node.appstate import METRICS_KEY, STATE_KEY
from pmcluster.protocol.pulse import Pulse
from pmcluster.ring import Member
from pmcluster.store import PulseStore
from pmcluster.tools.localcluster import free_port_on_all

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
TIMEOUT = 0.5
MARGIN = 0.25
P = "/workerbeats/word count-1-1718000000/9c1de2-10.0.0.5-6700"


@dataclass
class Node:
    config: Config
    store: PulseStore
    app: web.Application
    runner: web.AppRunner | None = None
    hung: asyncio.Server | None = None
    held: list[asyncio.StreamWriter] = dataclasses.field(default_factory=list)

    @property
    def node_id(self) -> str:
        return self.config.node_id

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.config.host, self.config.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.hung is not None:
            for writer in self.held:
                writer.close()
            self.held.clear()
            self.hung.close()
            await self.hung.wait_closed()
            self.hung = None

    async def hang(self) -> None:
        """Replace the node by a TCP server that accepts connections and never answers."""
        await self.stop()

        async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.held.append(writer)  # keep the connection open, say nothing

        self.hung = await asyncio.start_server(accept, self.config.host, self.config.port)

    def set_membership(self, epoch: str, members: tuple[str, ...]) -> None:
        state = self.app[STATE_KEY]
        state.epoch = epoch
        state.members = members


class Cluster:
    def __init__(self, nodes: list[Node], client_config: Config) -> None:
        self.nodes = nodes
        self.client_config = client_config
        self.by_id = {n.node_id: n for n in nodes}

    def owners(self, client: ClusterClient, path: str) -> list[Node]:
        assert client.ring is not None
        return [self.by_id[m.node_id] for m in client.ring.owners(path)]

    def non_owner(self, client: ClusterClient, path: str) -> Node:
        owners = self.owners(client, path)
        (other,) = [n for n in self.nodes if n not in owners]
        return other

    async def on_owners(self, client: ClusterClient, data: bytes, version: int) -> list[Node]:
        """`data` written at P (at `version`) through `client`, once both owners hold it;
        the owners."""
        await client.send_pulse(P, data, version=version)
        owners = self.owners(client, P)
        await poll(functools.partial(on_all, owners, P))
        return owners

    async def third_node_leaves(self, client: ClusterClient, data: bytes) -> str:
        """A key the third node owns, holding `data` (version 5) there alone; then every node
        drops the third from its membership (epoch "static-test-2") and `client` has seen
        it. Returns the key."""
        leaving = self.nodes[2]
        path = next(
            f"/workerbeats/g/n{i}"
            for i in range(100)
            if leaving in self.owners(client, f"/workerbeats/g/n{i}")
        )
        leaving.store.send_pulse(path, data, 5)
        for node in self.nodes:
            node.set_membership("static-test-2", tuple(n.node_id for n in self.nodes[:2]))
        await client.exists("/workerbeats/anything")  # any response carries the new epoch
        await poll(lambda: client.ring is not None and client.ring.epoch == "static-test-2")
        return path


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    port = free_port_on_all(HOSTS)
    timeouts = {"request_timeout_secs": TIMEOUT, "connect_timeout_secs": 0.2}
    nodes = []
    for host in HOSTS:
        config = Config(host=host, port=port, **timeouts)  # type: ignore[arg-type]
        store = PulseStore()
        nodes.append(Node(config, store, make_app(config, store=store)))
    ids = tuple(n.node_id for n in nodes)
    for node in nodes:
        node.set_membership("static-test-1", ids)
        await node.start()
    client_config = Config(servers=ids, port=port, grace_secs=5.0, **timeouts)  # type: ignore[arg-type]
    try:
        yield Cluster(nodes, client_config)
    finally:
        for node in nodes:
            await node.stop()


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[ClusterClient]:
    async with ClusterClient(cluster.client_config) as c:
        yield c


async def poll(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def on_all(nodes: list[Node], path: str) -> bool:
    return all(n.store.exists(path) for n in nodes)


async def timed(call: Awaitable[object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = await call
    return result, time.perf_counter() - start


async def test_client_learns_members_from_seeds(cluster: Cluster, client: ClusterClient) -> None:
    snapshot = await client.members()
    assert snapshot.epoch == "static-test-1"
    assert [m.node_id for m in snapshot.members] == sorted(n.node_id for n in cluster.nodes)


async def test_send_then_get(client: ClusterClient) -> None:
    await client.send_pulse(P, b"\x00beat\xff", version=1234)
    assert await client.get_pulse(P) == Pulse(P, b"\x00beat\xff", 1234)
    assert await client.exists(P)
    assert await client.get_pulse(P + "-other") is None
    assert not await client.exists(P + "-other")


async def test_default_version_is_the_same_on_every_owner(
    cluster: Cluster, client: ClusterClient
) -> None:
    before = time.time_ns()
    await client.send_pulse(P, b"x")
    owners = cluster.owners(client, P)
    await poll(lambda: all(o.store.get_pulse(P) is not None for o in owners))
    versions = {o.store.get_pulse(P).version for o in owners}  # type: ignore[union-attr]
    assert len(versions) == 1 and versions.pop() >= before


async def test_value_lands_on_exactly_the_owners(cluster: Cluster, client: ClusterClient) -> None:
    paths = [f"/workerbeats/t{i}/n-{i}" for i in range(30)]
    for path in paths:
        await client.send_pulse(path, path.encode())
    for path in paths:
        owners = cluster.owners(client, path)
        assert len(owners) == 2
        await poll(functools.partial(on_all, owners, path))
        assert not cluster.non_owner(client, path).store.exists(path)


async def test_send_pulses_batches_to_owners(cluster: Cluster, client: ClusterClient) -> None:
    batch = [(f"/workerbeats/b/n{i}", f"v{i}".encode()) for i in range(40)]
    await client.send_pulses(batch)
    for path, data in batch:
        owners = cluster.owners(client, path)
        await poll(functools.partial(on_all, owners, path))
        assert {o.store.get_pulse(path).data for o in owners} == {data}  # type: ignore[union-attr]
        assert not cluster.non_owner(client, path).store.exists(path)
    got = await client.get_all_pulse_for_path("/workerbeats/b")
    assert [(p.path, p.data) for p in got] == sorted(batch)


async def test_newest_version_wins_when_an_owner_is_stale(
    cluster: Cluster, client: ClusterClient
) -> None:
    first, second = cluster.owners(client, P)
    first.store.send_pulse(P, b"old", 100)
    second.store.send_pulse(P, b"new", 200)
    assert await client.get_pulse(P) == Pulse(P, b"new", 200)
    first.store.send_pulse(P, b"newest", 300)
    assert await client.get_pulse(P) == Pulse(P, b"newest", 300)


async def test_delete_is_not_undone_by_a_stale_replica(
    cluster: Cluster, client: ClusterClient
) -> None:
    await client.send_pulse(P, b"alive", version=1_000)
    await client.delete_pulse_id(P)
    assert await client.get_pulse(P) is None
    # One owner loses its tombstone (restarted) and re-gains the old copy from somewhere.
    owners = cluster.owners(client, P)
    await poll(lambda: all(o.store.tombstone_version(P) > 0 for o in owners))
    stale = owners[1]
    stale.store.clear()
    assert stale.store.send_pulse(P, b"alive", 1_000)
    assert await client.get_pulse(P) is None
    assert not await client.exists(P)
    # A later write is visible again.
    await client.send_pulse(P, b"back")
    assert (await client.get_pulse(P)).data == b"back"  # type: ignore[union-attr]


async def test_reads_repair_replicas_that_are_behind(
    cluster: Cluster, client: ClusterClient
) -> None:
    owners = await cluster.on_owners(client, b"v1", 1_000)
    # An owner that lost its copy (restarted empty) gets it back from a read.
    owners[0].store.clear()
    assert await client.get_pulse(P) == Pulse(P, b"v1", 1_000)
    await poll(lambda: owners[0].store.get_pulse(P) == Pulse(P, b"v1", 1_000))
    # A replica that missed a delete gets the tombstone from a read, so its stale copy is
    # gone for good even after the other owner forgets the tombstone.
    await client.delete_pulse_id(P, version=2_000)
    await poll(lambda: all(o.store.tombstone_version(P) == 2_000 for o in owners))
    owners[1].store.clear()
    owners[1].store.send_pulse(P, b"v1", 1_000)
    assert await client.get_pulse(P) is None
    await poll(lambda: owners[1].store.get_pulse(P) is None)
    assert owners[1].store.tombstone_version(P) == 2_000
    assert client.stats["read_repairs"] == 2


async def test_recursive_delete_is_not_undone_by_a_stale_node(
    cluster: Cluster, client: ClusterClient
) -> None:
    for i in range(10):
        await client.send_pulse(f"/workerbeats/doomed/n{i}", b"x", version=1_000)
        await client.send_pulse(f"/workerbeats/kept/n{i}", b"y")
    await client.delete_path("/workerbeats/doomed")
    assert await client.get_all_nodes_for_path("/workerbeats") == ["kept"]
    for node in cluster.nodes:
        assert node.store.get_all_nodes_for_path("/workerbeats/doomed") == []
    stale = cluster.nodes[0]
    stale.store.clear()
    stale.store.send_pulse("/workerbeats/doomed/n0", b"x", 1_000)
    assert await client.get_all_nodes_for_path("/workerbeats") == ["kept"]
    assert await client.get_all_pulse_for_path("/workerbeats/doomed") == []
    everything = await client.get_all_pulse_for_path("/workerbeats")
    assert sorted({p.path.split("/")[2] for p in everything}) == ["kept"]
    assert len(everything) == 10


async def test_an_unversioned_delete_goes_above_values_written_by_a_clock_ahead(
    cluster: Cluster, client: ClusterClient
) -> None:
    """A writer whose clock is ahead (5 s) wrote under the subtree and the key; a delete
    without a version from this client's slower clock must still remove them (a later
    acknowledged delete wins), as an unversioned write retries above what owners held."""
    ahead = time.time_ns() + 5 * 10**9
    await client.send_pulse(P, b"x", version=ahead)
    await client.send_pulse("/workerbeats/gone/n0", b"x", version=ahead + 10)
    await client.send_pulse("/workerbeats/gone/n1", b"x", version=ahead + 11)
    await client.delete_pulse_id(P)
    assert client.stats["version_retries"] == 1
    await client.delete_path("/workerbeats/gone")
    assert client.stats["version_retries"] == 2
    assert await client.get_all_nodes_for_path("/workerbeats/gone") == []
    assert await client.get_pulse(P) is None
    for node in cluster.nodes:
        assert node.store.get_all_nodes_for_path("/workerbeats/gone") == []
        assert node.store.get_pulse(P) is None
    # With the caller's own version the delete is what it asked for: older values only.
    await client.send_pulse(P, b"y", version=ahead + 10)
    await client.delete_pulse_id(P, version=ahead + 5)
    pulse = await client.get_pulse(P)
    assert pulse is not None and pulse.version == ahead + 10


async def test_listing_merges_across_nodes(cluster: Cluster, client: ClusterClient) -> None:
    topologies = [f"topo-{i}(x)+$[" for i in range(12)]
    for topo in topologies:
        await client.send_pulse(f"/workerbeats/{topo}/node-6700", topo.encode())
    await client.send_pulse("/workerbeats/t1/n", b"1")
    await client.send_pulse("/workerbeats/t10/n", b"10")
    expected = sorted([*topologies, "t1", "t10"])
    assert await client.get_all_nodes_for_path("/workerbeats") == expected
    assert await client.get_all_nodes_for_path("/workerbeats/") == expected
    assert await client.get_all_nodes_for_path("/workerbeats/t1") == ["n"]
    assert await client.get_all_nodes_for_path("/") == ["workerbeats"]
    assert all(len(n.store.get_all_nodes_for_path("/workerbeats")) < 14 for n in cluster.nodes)
    pulses = await client.get_all_pulse_for_path("/workerbeats/t1")
    assert [(p.path, p.data) for p in pulses] == [("/workerbeats/t1/n", b"1")]
    everything = await client.get_all_pulse_for_path("/")
    assert len(everything) == 14
    assert {p.path.split("/")[2] for p in everything} == set(expected)
    await client.create_path("/workerbeats/new-topology")
    await client.create_path("/")
    assert await client.get_all_nodes_for_path("/workerbeats") == expected


async def test_read_survives_a_stopped_owner_within_timeout(
    cluster: Cluster, client: ClusterClient
) -> None:
    owners = await cluster.on_owners(client, b"v", 7)
    await owners[0].stop()
    for _ in range(3):
        result, elapsed = await timed(client.get_pulse(P))
        assert result == Pulse(P, b"v", 7)
        assert elapsed <= TIMEOUT + MARGIN
    assert await client.get_all_nodes_for_path("/workerbeats") == [P.split("/")[2]]
    await client.send_pulse(P, b"w", version=8)  # a write still needs just one ack
    assert owners[1].store.get_pulse(P) == Pulse(P, b"w", 8)


async def test_read_with_a_hung_owner_takes_at_most_one_timeout(cluster: Cluster) -> None:
    # A long back-off makes "skipped after the first failure" deterministic.
    failures = FailureTracker(base_delay=5.0, max_delay=10.0)
    async with ClusterClient(cluster.client_config, failures=failures) as client:
        await _hung_owner_reads(cluster, client)


async def _hung_owner_reads(cluster: Cluster, client: ClusterClient) -> None:
    owners = await cluster.on_owners(client, b"v", 7)
    await owners[0].hang()
    latencies = []
    for _ in range(5):
        result, elapsed = await timed(client.get_pulse(P))
        assert result == Pulse(P, b"v", 7)
        latencies.append(elapsed)
    print(f"read latencies with one owner hung: {[round(x, 3) for x in latencies]}")
    assert max(latencies) <= TIMEOUT + MARGIN
    assert latencies[0] >= TIMEOUT * 0.8  # the first read did wait for the hung owner
    assert max(latencies[1:]) < TIMEOUT / 2  # then it is skipped while backing off
    assert client.stats["node_failures"] >= 1
    _, elapsed = await timed(client.send_pulse(P, b"w"))
    assert elapsed <= TIMEOUT + MARGIN


async def test_probes_of_a_hung_owner_do_not_delay_reads(cluster: Cluster) -> None:
    """With a short back-off the hung owner is probed again and again; reads never wait for
    a probe once the healthy owner has answered."""
    failures = FailureTracker(base_delay=0.05, max_delay=0.1, jitter=0.0)
    async with ClusterClient(cluster.client_config, failures=failures) as client:
        owners = await cluster.on_owners(client, b"v", 7)
        await owners[0].hang()
        first, elapsed = await timed(client.get_pulse(P))
        assert first == Pulse(P, b"v", 7) and elapsed >= TIMEOUT * 0.8
        started = asyncio.get_running_loop().time()
        latencies = []
        while asyncio.get_running_loop().time() - started < 3 * TIMEOUT:
            result, elapsed = await timed(client.get_pulse(P))
            assert result == Pulse(P, b"v", 7)
            latencies.append(elapsed)
            await asyncio.sleep(0.02)
        assert max(latencies) < TIMEOUT / 2, latencies
        assert client.stats["node_failures"] >= 2  # it was probed again, and failed again


async def test_all_owners_down_is_cluster_unavailable(
    cluster: Cluster, client: ClusterClient
) -> None:
    for owner in cluster.owners(client, P):
        await owner.stop()
    with pytest.raises(ClusterUnavailable):
        await client.get_pulse(P)
    with pytest.raises(ClusterUnavailable):
        await client.send_pulse(P, b"x")


async def test_bad_path_is_rejected_before_any_request(client: ClusterClient) -> None:
    for bad in ("relative", "/a//b", "/a/../b", "/"):
        with pytest.raises(InvalidPath):
            await client.get_pulse(bad)
        with pytest.raises(InvalidPath):
            await client.send_pulse(bad, b"x")


async def test_epoch_change_is_picked_up_and_old_owners_read_during_grace(
    cluster: Cluster, client: ClusterClient
) -> None:
    path = await cluster.third_node_leaves(client, b"only-on-the-leaving-node")
    assert client.ring is not None
    assert [m.node_id for m in client.ring.members] == sorted(n.node_id for n in cluster.nodes[:2])
    # Within the grace window the previous ring's owners are still asked.
    assert await client.get_pulse(path) == Pulse(path, b"only-on-the-leaving-node", 5)
    assert client.stats["ring_changes"] == 1


async def test_every_ring_replaced_within_the_grace_window_is_read(
    cluster: Cluster, client: ClusterClient
) -> None:
    """Two ring changes inside one window: a key only the ring from two changes back put on
    a node (a writer still on that ring wrote there) is still read."""
    path = await cluster.third_node_leaves(client, b"two-rings-back")
    for node in cluster.nodes:
        node.set_membership("static-test-3", (cluster.nodes[0].node_id,))
    for _ in range(100):  # any response carries the new epoch; refreshes are rate-limited
        await client.exists("/workerbeats/anything")
        if client.ring is not None and client.ring.epoch == "static-test-3":
            break
        await asyncio.sleep(0.05)
    assert client.ring is not None and client.ring.epoch == "static-test-3"
    assert client.stats["ring_changes"] == 2
    assert await client.get_pulse(path) == Pulse(path, b"two-rings-back", 5)


async def test_grace_window_ends(cluster: Cluster) -> None:
    config = dataclasses.replace(cluster.client_config, grace_secs=0.05)
    async with ClusterClient(config) as client:
        path = await cluster.third_node_leaves(client, b"stale")
        await asyncio.sleep(0.1)  # let the 50 ms grace window lapse (a time bound, not a sync)
        assert await client.get_pulse(path) is None


async def test_sync_client_from_threads(cluster: Cluster) -> None:
    def work() -> list[Pulse | None]:
        with SyncClusterClient(cluster.client_config) as sync:
            sync.send_pulse(P, b"sync", version=42)
            sync.send_pulses([("/workerbeats/s/a", b"a"), ("/workerbeats/s/b", b"b", 9)])
            return [sync.get_pulse(P), sync.get_pulse("/workerbeats/s/b")]

    got = await asyncio.gather(*(asyncio.to_thread(work) for _ in range(3)))
    for result in got:
        assert result == [Pulse(P, b"sync", 42), Pulse("/workerbeats/s/b", b"b", 9)]


async def test_close_awaits_background_writes(cluster: Cluster) -> None:
    client = ClusterClient(cluster.client_config)
    await client.start()
    await client.send_pulse(P, b"x", version=3)
    await client.close()
    assert all(o.store.exists(P) for o in cluster.owners(client, P))


async def test_no_seed_answering_is_cluster_unavailable(cluster: Cluster) -> None:
    for node in cluster.nodes:
        await node.stop()
    start = time.perf_counter()
    with pytest.raises(ClusterUnavailable):
        async with ClusterClient(cluster.client_config):
            pass
    assert time.perf_counter() - start <= TIMEOUT + MARGIN

    def make_sync() -> None:
        SyncClusterClient(cluster.client_config)

    with pytest.raises(ClusterUnavailable):
        await asyncio.to_thread(make_sync)
    # The private loop thread was stopped and joined, not leaked.
    assert not [t for t in threading.enumerate() if t.name == "pmcluster-client"]


async def test_injected_membership_defines_the_ring(cluster: Cluster) -> None:
    members = [Member.at(n.config.host, n.config.port) for n in cluster.nodes]
    source = FixedMembership(members, prefix="injected")
    await source.start()
    try:
        async with ClusterClient(cluster.client_config, membership=source) as client:
            assert client.ring is not None and client.ring.epoch.startswith("injected")
            await client.send_pulse(P, b"via-injected", version=11)
            assert await client.get_pulse(P) == Pulse(P, b"via-injected", 11)
            # Node epochs differ from the injected source's: they must not replace the ring.
            assert client.ring.epoch.startswith("injected")
    finally:
        await source.stop()


async def test_odd_paths_round_trip_byte_for_byte(cluster: Cluster, client: ClusterClient) -> None:
    odd = "/workerbeats/t(1)+$[x]%25?#~, é/9c1de2-10.0.0.5-6700"
    await client.send_pulse(odd, b"odd", version=5)
    assert await client.get_pulse(odd) == Pulse(odd, b"odd", 5)
    owner = cluster.owners(client, odd)[0]
    await poll(lambda: owner.store.exists(odd))
    assert await client.get_all_nodes_for_path("/workerbeats") == ["t(1)+$[x]%25?#~, é"]


async def test_node_errors_map_to_the_error_tree() -> None:
    port = free_port_on_all(["127.0.0.1"])
    config = Config(host="127.0.0.1", port=port, max_message_size=1000)
    node = Node(config, PulseStore(), make_app(config))
    await node.start()
    epochs: list[tuple[str, str]] = []
    try:
        async with aiohttp.ClientSession() as session:
            transport = NodeTransport(
                config.node_id,
                "127.0.0.1",
                port,
                session,
                connect_timeout_secs=0.2,
                request_timeout_secs=TIMEOUT,
                on_epoch=lambda node_id, epoch: epochs.append((node_id, epoch)),
                forwarded=True,
            )
            with pytest.raises(PayloadTooLarge):
                await transport.put_pulse("/a/b", b"x" * 2000, 1)
            await transport.put_pulse("/a/b", b"small", 1)
            assert await transport.get_pulse("/a/b") == (Pulse("/a/b", b"small", 1), 0)
            await transport.delete_pulse_id("/a/b", 2)
            assert await transport.get_pulse("/a/b") == (None, 2)
            assert await transport.exists("/a/b") == (False, 2)
            assert await transport.batch([("/a/c", b"1", 3), ("/a/d", b"2", 0)]) == (2, 0)
            assert await transport.children("/a") == ["c", "d"]
            assert [p.path for p in await transport.pulses("/a")] == ["/a/c", "/a/d"]
            assert (await transport.members())["epoch"] == node.app[STATE_KEY].epoch
        assert epochs and all(e == (config.node_id, node.app[STATE_KEY].epoch) for e in epochs)
    finally:
        await node.stop()
    async with aiohttp.ClientSession() as session:
        dead = NodeTransport(
            "gone", "127.0.0.1", port, session, connect_timeout_secs=0.2, request_timeout_secs=0.5
        )
        with pytest.raises(NodeUnavailable):
            await dead.get_pulse("/a/b")


# --- write coalescing (pmcluster.client.coalesce) ----------------------------------------


@pytest.fixture
async def coalescing(cluster: Cluster) -> AsyncIterator[ClusterClient]:
    async with ClusterClient(cluster.client_config, coalesce=True) as c:
        yield c


def op_count(node: Node, op: str) -> float:
    """Requests of `op` a node has handled, from its own metrics."""
    samples = node.app[METRICS_KEY].render().splitlines()
    line = f'pmcluster_requests_total{{op="{op}"}} '
    return sum(float(s[len(line) :]) for s in samples if s.startswith(line))


async def test_concurrent_writes_share_few_batch_requests(
    cluster: Cluster, coalescing: ClusterClient
) -> None:
    client = coalescing
    paths = [f"/workerbeats/c/n{i}" for i in range(200)]
    await asyncio.gather(*(client.send_pulse(p, p.encode()) for p in paths))
    later = time.time_ns() + 5 * 10**9  # ahead of every write of the first round
    await asyncio.gather(*(client.send_pulse(p, b"v" + p.encode(), later) for p in paths))
    for path in paths:
        owners = cluster.owners(client, path)
        await poll(functools.partial(on_all, owners, path))
        assert {o.store.get_pulse(path) for o in owners} == {
            Pulse(path, b"v" + path.encode(), later)
        }
        assert not cluster.non_owner(client, path).store.exists(path)
    for node in cluster.nodes:
        assert op_count(node, "send_pulse") == 0
        assert 1 <= op_count(node, "batch") <= 4  # 2 rounds of 200 writes, 500 per batch max
    assert client.stats["coalesced_writes"] == 400


async def test_a_lone_write_travels_alone(cluster: Cluster, coalescing: ClusterClient) -> None:
    client = coalescing
    await client.send_pulse(P, b"x")
    owners = cluster.owners(client, P)
    await poll(functools.partial(on_all, owners, P))
    assert sum(op_count(n, "send_pulse") for n in cluster.nodes) == 2
    assert sum(op_count(n, "batch") for n in cluster.nodes) == 0


async def test_coalesced_unversioned_write_still_lands_above_a_newer_owner_version(
    cluster: Cluster, coalescing: ClusterClient
) -> None:
    client = coalescing
    # Both owners hold a version from the future: the batch reports the write ignored, so its
    # caller asks again alone and retries above the held version (the version clock).
    future = time.time_ns() + 10 * 10**9  # within pmcluster.version.max.skew.secs
    for owner in cluster.owners(client, P):
        owner.store.send_pulse(P, b"from the future", future)
    others = [f"/workerbeats/d/n{i}" for i in range(20)]
    await asyncio.gather(
        client.send_pulse(P, b"now"), *(client.send_pulse(p, b"o") for p in others)
    )
    assert client.stats["coalesced_writes"] == 21
    got = await client.get_pulse(P)
    assert got is not None and got.data == b"now" and got.version > future
    assert all([await client.get_pulse(p) for p in others])


async def test_each_coalesced_caller_gets_its_own_outcome(
    cluster: Cluster, coalescing: ClusterClient
) -> None:
    client = coalescing
    full = cluster.nodes[0]
    full.store.max_bytes = 1  # this node refuses every new key (507)
    paths = [f"/workerbeats/e/n{i}" for i in range(40)]
    results = await asyncio.gather(
        *(client.send_pulse(p, b"x") for p in paths), return_exceptions=True
    )
    assert client.stats["coalesced_batches"] >= 1
    for path, result in zip(paths, results, strict=True):
        if full in cluster.owners(client, path):
            assert isinstance(result, InsufficientStorage), (path, result)
        else:
            assert result is None, (path, result)
            assert on_all(cluster.owners(client, path), path)
    assert any(isinstance(r, InsufficientStorage) for r in results)
    assert any(r is None for r in results)


async def outcomes_of(
    client: ClusterClient, writes: Sequence[tuple[str, bytes]]
) -> list[BaseException | None]:
    """`send_pulse_then` of each write (all taken), awaited through their callbacks."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[BaseException | None]] = []
    for path, data in writes:
        future: asyncio.Future[BaseException | None] = loop.create_future()
        futures.append(future)
        assert client.send_pulse_then(path, data, future.set_result)
    return list(await asyncio.wait_for(asyncio.gather(*futures), 10))


async def test_send_pulse_then_calls_back_once_every_owner_has_it(
    cluster: Cluster, coalescing: ClusterClient
) -> None:
    client = coalescing
    paths = [f"/workerbeats/g/n{i}" for i in range(50)]
    # Both owners hold a newer version of the first path: its batch entry is ignored, and the
    # write goes on alone (retried above it) before its callback says it is stored.
    future = time.time_ns() + 10 * 10**9
    for owner in cluster.owners(client, paths[0]):
        owner.store.send_pulse(paths[0], b"from the future", future)
    assert await outcomes_of(client, [(p, b"then") for p in paths]) == [None] * len(paths)
    assert client.stats["coalesced_writes"] == len(paths)
    for path in paths:  # called back only once every owner holds it: no polling needed
        stored = {o.store.get_pulse(path) for o in cluster.owners(client, path)}
        assert {s.data if s else None for s in stored} == {b"then"}, path
    # A caller's error reaches its own callback only: the others are stored.
    full = cluster.nodes[0]
    full.store.max_bytes = 1
    more = [f"/workerbeats/h/n{i}" for i in range(40)]
    results = await outcomes_of(client, [(p, b"x") for p in more])
    for path, result in zip(more, results, strict=True):
        if full in cluster.owners(client, path):
            assert isinstance(result, InsufficientStorage), (path, result)
        else:
            assert result is None and on_all(cluster.owners(client, path), path), path


async def test_send_pulse_then_is_refused_when_it_cannot_coalesce(cluster: Cluster) -> None:
    async with ClusterClient(cluster.client_config, coalesce=False) as plain:
        called: list[BaseException | None] = []
        assert not plain.send_pulse_then(P, b"x", called.append)
    async with ClusterClient(cluster.client_config, coalesce=True) as client:
        # Over a quarter of the largest batch: it would travel alone (`send_pulse`).
        too_big = b"x" * (
            min(MAX_BATCH_BYTES, cluster.client_config.max_message_size // 2) // 4 + 1
        )
        assert not client.send_pulse_then(P, too_big, called.append)
        await asyncio.sleep(0.05)
    assert called == []  # nothing was done for the refused writes
    assert not any(n.store.exists(P) for n in cluster.nodes)


async def test_a_hung_owner_costs_coalesced_writes_at_most_one_timeout(cluster: Cluster) -> None:
    failures = FailureTracker(base_delay=5.0, max_delay=10.0)
    async with ClusterClient(cluster.client_config, failures=failures, coalesce=True) as client:
        hung = cluster.nodes[0]
        await hung.hang()
        paths = [f"/workerbeats/f/n{i}" for i in range(100)]
        _, first = await timed(asyncio.gather(*(client.send_pulse(p, b"x", 5) for p in paths)))
        # Every owner that is not failing must ack, and the hung one was not known to be
        # failing yet: one timeout for all 100, not one each.
        assert first <= TIMEOUT + MARGIN
        _, versioned = await timed(asyncio.gather(*(client.send_pulse(p, b"y", 6) for p in paths)))
        assert versioned < TIMEOUT / 2  # backed off now: sent a probe, not waited for
        _, unversioned = await timed(asyncio.gather(*(client.send_pulse(p, b"z") for p in paths)))
        # Unversioned writes wait for a backed-off owner too (the clock argument), once.
        assert unversioned <= TIMEOUT + MARGIN
        live = [n for n in cluster.nodes if n is not hung]
        for path in paths:
            stored = [n.store.get_pulse(path) for n in live if n in cluster.owners(client, path)]
            assert stored and all(s is not None and s.data == b"z" for s in stored)
