"""ZooKeeper membership against a real ZooKeeper: registration, departures, session expiry,
and a ZooKeeper restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from pmcluster.config import Config
from pmcluster.errors import ClusterUnavailable
from pmcluster.membership import MembershipSnapshot
from pmcluster.membership.zookeeper import (
    ZooKeeperMembership,
    kazoo_hosts,
    members_path,
    parse_member,
)
from pmcluster.ring import Member
from pmcluster.testing.proxy import TcpProxy
from pmcluster.tools.localcluster import ManagedZooKeeper, free_port, split_zk_hosts

LONG_SESSION = 10.0  # seconds: long enough that only an explicit leave removes a member


def zk_config(zk_hosts: str, *, session: float = LONG_SESSION, zone: str | None = None) -> Config:
    servers, chroot = split_zk_hosts(zk_hosts)
    return Config(
        zk_servers=servers,
        zk_root=f"{chroot}/storm",
        zk_session_timeout_secs=session,
        zone=zone,
    )


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll until `predicate()` holds; the seconds it took. Fails the test after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def ids(source: ZooKeeperMembership) -> set[str]:
    snap = source.current()
    return set() if snap is None else {m.node_id for m in snap.members}


@asynccontextmanager
async def membership(
    config: Config, member: Member | None, **kwargs: Callable[[], None]
) -> AsyncIterator[ZooKeeperMembership]:
    source = ZooKeeperMembership(config, member, **kwargs)
    await source.start()
    try:
        yield source
    finally:
        await source.stop()


@contextmanager
def raw_client(zk_hosts: str) -> Iterator[KazooClient]:
    """A plain kazoo client of the test's own, stopped and closed on the way out."""
    servers, _ = split_zk_hosts(zk_hosts)
    client = KazooClient(hosts=",".join(servers), timeout=LONG_SESSION)
    client.start(timeout=10.0)
    try:
        yield client
    finally:
        client.stop()
        client.close()


A = Member.at("127.0.0.1", 7001, zone="z1")
B = Member.at("127.0.0.2", 7001)
C = Member.at("127.0.0.3", 7001)


# --- pure parts (no ZooKeeper) ---------------------------------------------------------------


def test_hosts_and_members_path_follow_storm_keys() -> None:
    config = Config(zk_servers=("zk1", "zk2:2182", "[::1]:2183", "::1"), zk_port=2181)
    assert kazoo_hosts(config) == "zk1:2181,zk2:2182,[::1]:2183,[::1]:2181"
    assert members_path(Config(zk_root="/storm")) == "/storm/pmcluster/members"
    assert members_path(Config(zk_root="/")) == "/pmcluster/members"


def test_member_znode_parsing_tolerates_bad_data() -> None:
    assert parse_member("10.0.0.1:6699", b'{"zone": "a", "pid": 1}') == Member(
        "10.0.0.1:6699", "10.0.0.1", 6699, "a"
    )
    assert parse_member("10.0.0.1:6699", b"not json") == Member("10.0.0.1:6699", "10.0.0.1", 6699)
    assert parse_member("10.0.0.1:6699", b'{"zone": 5}') == Member(
        "10.0.0.1:6699", "10.0.0.1", 6699
    )
    assert parse_member("[::1]:6699", b"") == Member("[::1]:6699", "::1", 6699)
    assert parse_member("no-port", b"{}") is None


# --- against ZooKeeper -----------------------------------------------------------------------


@pytest.mark.integration
async def test_two_nodes_see_each_other_with_the_same_epoch(zk_hosts: str) -> None:
    config = zk_config(zk_hosts)
    async with (
        membership(config, A) as a,
        membership(config, B) as b,
        membership(config, None) as watcher,
    ):
        both = {A.node_id, B.node_id}
        await wait_for(lambda: ids(a) == ids(b) == ids(watcher) == both)
        snap = a.current()
        assert snap is not None and snap.epoch.startswith("zk-")
        assert b.current() == snap and watcher.current() == snap
        assert snap.members == (A, B)  # sorted by node_id, zone from A's registration

        with raw_client(zk_hosts) as client:
            data, stat = client.get(f"{members_path(config)}/{A.node_id}")
            assert stat.ephemeralOwner != 0
            assert set(json.loads(data)) == {"zone", "start_time", "api_version", "pid"}
            assert json.loads(data)["pid"] == os.getpid()
            # The epoch is the parent's child version: it names this member list.
            assert snap.epoch == f"zk-{client.exists(members_path(config)).cversion}"


@pytest.mark.integration
async def test_stopped_member_leaves_at_once_and_subscribers_hear_it(zk_hosts: str) -> None:
    config = zk_config(zk_hosts)
    seen: list[MembershipSnapshot] = []
    async with membership(config, A) as a:
        a.subscribe(seen.append)
        b = ZooKeeperMembership(config, B)
        await b.start()
        await wait_for(lambda: ids(a) == {A.node_id, B.node_id})
        joined = a.current()
        await b.stop()
        took = await wait_for(lambda: ids(a) == {A.node_id})
        assert took < LONG_SESSION / 5  # not the session timeout: the znode was deleted
        left = a.current()
        assert joined is not None and left is not None and left.epoch != joined.epoch
        assert seen[-2:] == [joined, left]


@pytest.mark.integration
async def test_leave_keeps_watching_and_never_reregisters(zk_hosts: str) -> None:
    config = zk_config(zk_hosts)
    async with membership(config, A) as a, membership(config, B) as b:
        await wait_for(lambda: ids(b) == {A.node_id, B.node_id})
        await a.leave()
        assert not a.registered
        await wait_for(lambda: ids(b) == {B.node_id})
        async with membership(config, C):
            await wait_for(lambda: ids(a) == {B.node_id, C.node_id})
        await wait_for(lambda: ids(a) == {B.node_id})


@pytest.mark.integration
async def test_stale_registration_of_the_same_address_is_replaced(zk_hosts: str) -> None:
    config = zk_config(zk_hosts)
    own = f"{members_path(config)}/{A.node_id}"
    # `previous` stands in for the previous process, its session still alive.
    with raw_client(zk_hosts) as previous:
        previous.create(own, b'{"zone": "old", "pid": 1}', ephemeral=True, makepath=True)
        async with membership(config, A) as a:
            snap = a.current()
            assert snap is not None and snap.members == (A,)  # our data, not the stale one
            stat = previous.exists(own)
            assert stat.ephemeralOwner == a.session_id
            previous.stop()  # the old session's end must not take our registration with it
            await asyncio.sleep(0.3)
            with raw_client(zk_hosts) as checker:
                assert checker.exists(own) is not None


@pytest.mark.integration
async def test_bad_member_znodes_do_not_break_the_snapshot(zk_hosts: str) -> None:
    config = zk_config(zk_hosts)
    with raw_client(zk_hosts) as client:
        client.create(f"{members_path(config)}/127.0.0.9:7009", b"\xff garbage", makepath=True)
        client.create(f"{members_path(config)}/not-an-address", b"{}")
        async with membership(config, A) as a:
            snap = a.current()
            assert snap is not None
            assert snap.members == (A, Member("127.0.0.9:7009", "127.0.0.9", 7009))


@pytest.mark.integration
async def test_start_without_zookeeper_fails_clearly() -> None:
    config = Config(zk_servers=(f"127.0.0.1:{free_port()}",), zk_session_timeout_secs=2.0)
    source = ZooKeeperMembership(config, A, start_timeout_secs=1.0)
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="not reachable"):
        await source.start()
    assert time.monotonic() - started < 5.0
    await source.stop()  # nothing left to stop; must not raise


# The member process of the session-expiry test: prints its events, one per line.
_MEMBER_SCRIPT = """
import asyncio, sys
from pmcluster.config import Config
from pmcluster.ring import Member
from pmcluster.membership.zookeeper import ZooKeeperMembership

async def main() -> None:
    servers, root, port = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
    config = Config(zk_servers=tuple(servers), zk_root=root, zk_session_timeout_secs=0.8)
    source = None

    def wiped() -> None:
        own = f"{source.path}/127.0.0.5:{port}"
        print("NEW_SESSION registered_now=%s" % bool(source._client.exists(own)), flush=True)

    source = ZooKeeperMembership(config, Member.at("127.0.0.5", port), on_new_session=wiped)
    source.add_state_listener(lambda state: print("STATE", state, flush=True))
    await source.start()
    print("READY", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


@pytest.mark.integration
async def test_expired_session_wipes_then_reregisters(zk_hosts: str, tmp_path: Path) -> None:
    config = zk_config(zk_hosts)
    servers, _ = split_zk_hosts(zk_hosts)
    port = free_port()
    member_id = f"127.0.0.5:{port}"
    out_path = tmp_path / "member.out"
    with out_path.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", _MEMBER_SCRIPT, ",".join(servers), config.zk_root, str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with membership(config, None) as watcher:
            await wait_for(lambda: member_id in ids(watcher), timeout=15.0)
            before_stop = len(out_path.read_text().splitlines())
            os.kill(child.pid, signal.SIGSTOP)  # frozen past its 0.8 s session timeout
            gone = await wait_for(lambda: member_id not in ids(watcher), timeout=10.0)
            assert gone < 5.0
            os.kill(child.pid, signal.SIGCONT)
            await wait_for(lambda: member_id in ids(watcher), timeout=10.0)
        lines = out_path.read_text().splitlines()
        after = lines[before_stop:]
        assert "STATE LOST" in after and "NEW_SESSION registered_now=False" in after
        assert after.index("STATE LOST") < after.index("NEW_SESSION registered_now=False")
        # Every new session wiped the store before the znode was created again.
        assert {line for line in lines if line.startswith("NEW_SESSION")} == {
            "NEW_SESSION registered_now=False"
        }
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.kill()
        child.wait(10)


@pytest.mark.integration
async def test_zookeeper_restart_keeps_members_and_epoch(
    private_zookeeper: ManagedZooKeeper,
) -> None:
    _, chroot = split_zk_hosts(private_zookeeper.new_chroot())
    wipes: list[str] = []
    states: list[str] = []
    # The members reach ZooKeeper through a proxy that holds them off while the server starts:
    # ZooKeeper 3.8.0 listens before it has loaded its data, and a connection that lands in
    # that window can be left hanging until its session expires (a server bug, not ours).
    with TcpProxy(("127.0.0.1", private_zookeeper.port)) as proxy:
        config = Config(
            zk_servers=(proxy.address,),
            zk_root=f"{chroot}/storm",
            zk_session_timeout_secs=LONG_SESSION,
        )
        async with (
            membership(config, A, on_new_session=lambda: wipes.append("a")) as a,
            membership(config, B, on_new_session=lambda: wipes.append("b")) as b,
        ):
            a.add_state_listener(states.append)
            await wait_for(lambda: ids(a) == ids(b) == {A.node_id, B.node_id})
            before = a.current()

            # Stopped and started from this (the main) thread: the JVM's parent-death signal
            # follows the thread that starts it, so never from a short-lived executor thread.
            private_zookeeper.stop()
            proxy.set_mode("refuse")
            await wait_for(lambda: a.state == b.state == "SUSPENDED")
            assert a.current() == b.current() == before  # suspended: last snapshot in force
            private_zookeeper.start()
            proxy.set_mode("forward")
            await wait_for(lambda: a.state == b.state == "CONNECTED")
            assert a.current() == b.current() == before
            assert wipes == []  # same sessions: nothing to wipe
            assert states == ["SUSPENDED", "CONNECTED"]

            # Watches were re-armed after the reconnect: a newcomer is seen.
            async with membership(config, C):
                await wait_for(lambda: ids(a) == ids(b) == {A.node_id, B.node_id, C.node_id})
