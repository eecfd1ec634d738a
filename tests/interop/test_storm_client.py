"""Storm's own Java client (storm-client's `PacemakerClient`, `PacemakerClientPool` and
`PaceMakerStateStorage`, fetched by Maven from tests/interop/storm/pom.xml) against real pmcluster
nodes, driven by `java/StormDriver.java`: one JVM per client configuration, one command per stdin
line, one JSON line back per command.

Where pmcluster intentionally differs from Storm's own server (and from Storm's PacemakerTest):
GET_ALL_PULSE_FOR_PATH answers the pulses under the path (Storm answers no data), and listing is
by path component (Storm's `/a/b` also lists `/a/bc`'s children)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

from pmcluster.testing.drivers import json_reply
from pmcluster.testing.kdc import pacemaker_realm
from pmcluster.testing.proxy import TcpProxy
from pmcluster.tools.localcluster import NodeCluster, NodeProcess, free_port

pytestmark = pytest.mark.integration

NODE_KEYS: dict[str, Any] = {
    "pmcluster.request.timeout.secs": 1.0,
    "pmcluster.connect.timeout.secs": 0.3,
    "task.heartbeat.frequency.secs": 0.5,
}
CALL_TIMEOUT = 30.0  # a call with one dead server takes ~11 s in Storm's client (10 tries of 1 s)
NOW = 1_700_000_000


class Driver:
    """One StormDriver JVM with its own Storm config (servers, port, auth method)."""

    def __init__(
        self,
        storm: Sequence[str],
        port: int,
        hosts: Sequence[str],
        auth: str = "NONE",
        jaas: Path | None = None,
        jvm: Sequence[str] = (),
    ) -> None:
        self.proc = subprocess.Popen(
            [
                *storm[:1],  # java
                *jvm,
                *storm[1:],  # -cp CLASSPATH
                "StormDriver",
                str(port),
                ",".join(hosts),
                auth,
                *([] if jaas is None else [str(jaas)]),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )

    def send(self, *words: str | int) -> None:
        """Send one command without waiting for its reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        """The next JSON reply (bounded wait)."""
        return json_reply(self.proc, timeout)

    def __call__(self, *words: str | int, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        """Send one command; its JSON reply (bounded wait)."""
        self.send(*words)
        return self.receive(timeout)

    def ok(self, *words: str | int, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        reply = self(*words, timeout=timeout)
        assert reply["ok"], reply
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NodeCluster]:
    """Three nodes, static membership, one port shared by HTTP and Storm's protocol."""
    with NodeCluster(3, workdir=tmp_path, extra=NODE_KEYS) as nodes:
        yield nodes


def wait_copies(nodes: Sequence[NodeProcess], path: str, want: int, timeout: float = 10.0) -> None:
    """Bounded poll until `path` is stored on exactly `want` nodes."""
    deadline = time.monotonic() + timeout
    while True:
        have = sum(node.local_pulse(path) is not None for node in nodes if node.running())
        if have == want or time.monotonic() > deadline:
            assert have == want, f"{path}: {have} copies, want {want}"
            return
        time.sleep(0.05)


def pmcluster(*args: str) -> str:
    """Run the CLI; its stdout (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-m", "pmcluster", *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pacemaker_test_cases_over_the_wire(storm_java: list[str], cluster: NodeCluster) -> None:
    """Every case of Storm's PacemakerTest, sent by Storm's PacemakerClient to node 1; the
    authorized replies (the unauthorized ones are in the DIGEST test)."""
    host = cluster.hosts[0]
    with Driver(storm_java, cluster.port, cluster.hosts) as storm:

        def raw(*words: str) -> dict[str, Any]:
            reply = storm.ok("raw", host, *words)
            assert reply["reply_id"] == reply["sent_id"]  # the message id is echoed
            return reply

        reply = raw("CREATE_PATH", "/testpath")
        assert (reply["type"], reply["data"]) == ("CREATE_PATH_RESPONSE", None)
        reply = raw("EXISTS", "/testpath")
        assert (reply["type"], reply["boolval"]) == ("EXISTS_RESPONSE", False)
        reply = raw("SEND_PULSE", "/exists_path", "pulse-data")
        assert (reply["type"], reply["data"]) == ("SEND_PULSE_RESPONSE", None)
        assert raw("EXISTS", "/exists_path")["boolval"] is True
        reply = raw("GET_PULSE", "/exists_path")
        assert (reply["type"], reply["pulse_id"], reply["details"]) == (
            "GET_PULSE_RESPONSE",
            "/exists_path",
            "pulse-data",
        )
        reply = raw("GET_PULSE", "/no/such/pulse")  # a miss: the id, no details
        assert (reply["pulse_id"], reply["details"]) == ("/no/such/pulse", None)

        for name in ("foo", "bar", "baz", "boo"):
            raw("SEND_PULSE", f"/some-root-path/{name}", "nothing")
        raw("SEND_PULSE", "/some-root-path-x/other", "nothing")  # Storm's prefix match lists it
        reply = raw("GET_ALL_NODES_FOR_PATH", "/some-root-path")
        assert reply["type"] == "GET_ALL_NODES_FOR_PATH_RESPONSE"
        assert sorted(reply["nodes"]) == ["bar", "baz", "boo", "foo"]
        for name in ("foo", "bar", "baz"):
            raw("SEND_PULSE", f"/some/deeper/path/{name}", "nothing")
        assert sorted(raw("GET_ALL_NODES_FOR_PATH", "/some/deeper/path")["nodes"]) == [
            "bar",
            "baz",
            "foo",
        ]

        reply = raw("GET_ALL_PULSE_FOR_PATH", "/some/deeper/path")  # Storm: no data
        assert reply["type"] == "GET_ALL_PULSE_FOR_PATH_RESPONSE"
        assert sorted(reply["records"]) == [
            f"/some/deeper/path/{n}=nothing" for n in ("bar", "baz", "foo")
        ]

        for name in ("foo", "bar", "baz", "boo"):
            raw("SEND_PULSE", f"/some-root/DELETE_PATH/{name}", "nothing")
            raw("SEND_PULSE", f"/some-root/DELETE_PULSE_ID/{name}", "nothing")
        reply = raw("DELETE_PATH", "/some-root/DELETE_PATH")
        assert (reply["type"], reply["data"]) == ("DELETE_PATH_RESPONSE", None)
        assert raw("GET_ALL_NODES_FOR_PATH", "/some-root/DELETE_PATH")["nodes"] == []
        reply = raw("DELETE_PULSE_ID", "/some-root/DELETE_PULSE_ID/foo")
        assert (reply["type"], reply["data"]) == ("DELETE_PULSE_ID_RESPONSE", None)
        assert sorted(raw("GET_ALL_NODES_FOR_PATH", "/some-root/DELETE_PULSE_ID")["nodes"]) == [
            "bar",
            "baz",
            "boo",
        ]
        # every node answers for the cluster, not only the one written to
        for other in cluster.hosts[1:]:
            reply = storm.ok("raw", other, "GET_PULSE", "/exists_path")
            assert reply["details"] == "pulse-data"


def test_state_storage_heartbeats_survive_the_writers_node(
    storm_java: list[str], cluster: NodeCluster
) -> None:
    """PaceMakerStateStorage's four heartbeat calls with real ClusterWorkerHeartbeat payloads:
    written through node 1 only, read through each other node, then node 1 is killed (-9) and
    every heartbeat is still read; a delete reaches every copy."""
    topo = "wordcount-1-1700000000"
    paths = [f"/workerbeats/{topo}/node{i}-670{i}" for i in range(4)]
    a, b, c = cluster.hosts
    with Driver(storm_java, cluster.port, [a]) as worker:
        for i, path in enumerate(paths):
            worker.ok("hb_set", path, topo, NOW + i)
    for path in paths:
        wait_copies(cluster.nodes, path, 2)
    # Storm's bytes decoded by `pmcluster ls --decode` / `get --decode`
    servers = ["--servers", f"{b}:{cluster.port}"]
    listing = sorted(pmcluster("ls", "--decode", f"/workerbeats/{topo}", *servers).splitlines())
    assert len(listing) == len(paths)
    for i, (path, line) in enumerate(zip(paths, listing, strict=True)):
        name, rest = line.split("  ", 1)
        assert name == path.rsplit("/", 1)[1]
        fields = dict(word.split("=", 1) for word in rest.split() if "=" in word)
        assert fields["topology"] == topo and fields["time_secs"] == str(NOW + i)
        assert abs(int(fields["age"].rstrip("s")) - (time.time() - NOW - i)) < 60
        assert (fields["uptime"], fields["executors"]) == ("7s", "2")
        assert rest.endswith(" [1],[2-3]")
    shown = pmcluster("get", "--decode", paths[0], *servers)
    assert shown.startswith(f"topology={topo} time_secs={NOW} age=")
    assert pmcluster("ls", "--decode", "/workerbeats", *servers) == f"{topo}/\n"
    for host in (b, c):
        with Driver(storm_java, cluster.port, [host]) as nimbus:
            names = nimbus.ok("hb_children", f"/workerbeats/{topo}")["names"]
            assert sorted(names) == sorted(p.rsplit("/", 1)[1] for p in paths)
            for i, path in enumerate(paths):
                got = nimbus.ok("hb_get", path)
                assert (got["found"], got["storm_id"], got["time_secs"], got["executors"]) == (
                    True,
                    topo,
                    NOW + i,
                    2,
                )

    cluster[0].kill()
    # Nimbus listing every server, the dead one included: one call pays Storm's ~11 s for it
    with Driver(storm_java, cluster.port, cluster.hosts) as nimbus:
        names = nimbus.ok("hb_children", f"/workerbeats/{topo}")["names"]
        assert len(names) == len(paths)
    with Driver(storm_java, cluster.port, [b, c]) as nimbus:
        for i, path in enumerate(paths):
            assert nimbus.ok("hb_get", path)["time_secs"] == NOW + i
        nimbus.ok("hb_delete", f"/workerbeats/{topo}")
        assert nimbus.ok("hb_children", f"/workerbeats/{topo}")["names"] == []
        for path in paths:
            assert nimbus.ok("hb_get", path)["found"] is False
    for path in paths:
        wait_copies(cluster.nodes, path, 0)
    for node in cluster.nodes[1:]:
        node.check_alive()


def test_hundred_requests_in_flight(storm_java: list[str], cluster: NodeCluster) -> None:
    """100 threads on one Storm PacemakerClient (its 100 reply slots all taken at once): 100
    SEND_PULSE in flight on one connection to node 1, then 100 GET_PULSE; every reply carries its
    own request's message id and pulse, and the other nodes list all 100."""
    a, b, _ = cluster.hosts
    with Driver(storm_java, cluster.port, cluster.hosts) as storm:
        reply = storm.ok("inflight", a, 100, "/inflight/t-1")
    assert reply["errors"] == []
    assert (reply["writes"], reply["reads"], reply["distinct_ids"]) == (100, 100, 100)
    listing = pmcluster("ls", "/inflight/t-1", "--servers", f"{b}:{cluster.port}").split()
    assert sorted(listing) == sorted(f"p{i}" for i in range(100))


def storm_requests(node: NodeProcess, kind: str) -> int:
    """The node's count of Storm requests of one message type (its /metrics)."""
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    prefix = f'pmcluster_storm_requests_total{{type="{kind}"}} '
    counts = [int(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return counts[0] if counts else 0


def test_duplicated_message_ids_are_idempotent(storm_java: list[str], tmp_path: Path) -> None:
    """Replies held 1.5 s by a proxy: Storm's client re-sends each unanswered request after 1 s
    with the same message id, so the node gets every request twice. The write is applied once
    (the value is the one sent), the read answers the right pulse, and the client takes the
    first reply for its id (the late duplicate finds no waiter and is dropped by Storm)."""
    config = {"pacemaker.host": "127.0.0.1", "pacemaker.port": free_port()}
    with (
        NodeProcess(config, workdir=tmp_path) as node,
        TcpProxy((node.host, node.port)) as proxy,
        Driver(storm_java, proxy.port, [proxy.host]) as storm,
    ):
        storm.ok("raw", proxy.host, "SEND_PULSE", "/dup/t-1/n-1", "first")  # connect, prompt
        assert storm_requests(node, "SEND_PULSE") == 1
        proxy.reply_delay = 1.5
        sent = storm.ok("raw", proxy.host, "SEND_PULSE", "/dup/t-1/n-1", "second")
        assert sent["type"] == "SEND_PULSE_RESPONSE" and sent["reply_id"] == sent["sent_id"]
        assert sent["ms"] >= 1000
        # at least one re-send reached the node (more if its reply took over 2 s under load)
        assert storm_requests(node, "SEND_PULSE") >= 3
        got = storm.ok("raw", proxy.host, "GET_PULSE", "/dup/t-1/n-1")  # re-sent too
        assert (got["pulse_id"], got["details"], got["reply_id"]) == (
            "/dup/t-1/n-1",
            "second",
            got["sent_id"],
        )
        assert storm_requests(node, "GET_PULSE") >= 2
        proxy.reply_delay = 0.0
        time.sleep(3.5)  # every late duplicate reply delivered (and dropped by Storm)
        for _ in range(3):  # the slots those duplicates came back to still match
            got = storm.ok("raw", proxy.host, "GET_PULSE", "/dup/t-1/n-1")
            assert got["details"] == "second" and got["reply_id"] == got["sent_id"]
            assert got["ms"] < 1000
        assert node.local_pulse("/dup/t-1/n-1") == b"second"
        node.check_alive()


DIGEST_SERVER_JAAS = """\
PacemakerDigest {
    username="storm"
    password="s3cret-pw";
};
"""
DIGEST_CLIENT_JAAS = """\
PacemakerDigest {
    org.apache.zookeeper.server.auth.DigestLoginModule required
    username="storm"
    password="%s";
};
"""


def test_digest_with_storms_sasl_client(storm_java: list[str], tmp_path: Path) -> None:
    """Storm's own DIGEST client against a DIGEST node. A NONE client writes but its reads get
    NOT_AUTHORIZED (PacemakerTest's unauthorized cases). The right password completes the SASL
    exchange (the node counts it); the wrong one is refused.

    Storm 2.8.3's client then closes its own connection: after the server's `rspauth` token it
    calls `channelReady` and again on SASL_COMPLETE (-203), and the second call closes the
    channel it was given (PacemakerClient.channelReady -> close_channel), so the request is never
    written and `send` gives up after 10 tries. Storm's own Pacemaker 2.8.3 sends the same
    frames and its client fails the same way (checked by hand, docs/storm-compatibility.md)."""
    server_jaas = tmp_path / "server.jaas"
    server_jaas.write_text(DIGEST_SERVER_JAAS)
    config = {
        "pacemaker.host": "127.0.0.1",
        "pacemaker.port": free_port(),
        "pacemaker.auth.method": "DIGEST",
        "java.security.auth.login.config": str(server_jaas),
    }
    with NodeProcess(config, workdir=tmp_path) as node:
        hosts = [node.host]
        with Driver(storm_java, node.port, hosts) as worker:
            worker.ok("raw", node.host, "SEND_PULSE", "/workerbeats/t-1/n-1", "beat")  # open
            for op, path in [
                ("EXISTS", "/workerbeats/t-1/n-1"),
                ("GET_PULSE", "/workerbeats/t-1/n-1"),
                ("GET_ALL_PULSE_FOR_PATH", "/workerbeats/t-1"),
                ("GET_ALL_NODES_FOR_PATH", "/workerbeats/t-1"),
            ]:
                reply = worker.ok("raw", node.host, op, path)
                assert (reply["type"], reply["data"]) == ("NOT_AUTHORIZED", None)
                assert reply["reply_id"] == reply["sent_id"]

        drivers = []
        for name, password in [("right", "s3cret-pw"), ("wrong", "wrong")]:
            jaas = tmp_path / f"{name}.jaas"
            jaas.write_text(DIGEST_CLIENT_JAAS % password)
            drivers.append(Driver(storm_java, node.port, hosts, "DIGEST", jaas))
        try:
            for driver in drivers:  # both at once: each pays Storm's ~11 s of retries
                driver.send("raw", node.host, "GET_PULSE", "/workerbeats/t-1/n-1")
            for driver in drivers:
                reply = driver.receive()
                assert reply["ok"] is False
                assert "PacemakerConnectionException" in reply["error"]
        finally:
            for driver in drivers:
                driver.close()
        node.check_alive()
        with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert "pmcluster_storm_auth_total 1" in metrics  # the right password: authenticated
        assert 'pmcluster_storm_errors_total{kind="auth_failed"} 1' in metrics  # the wrong one


def test_kerberos_with_storms_sasl_client(
    storm_java: list[str], kdc_tools: None, tmp_path: Path
) -> None:
    """Storm's own KERBEROS client (KerberosSaslClientHandler, JAAS `PacemakerClient`) on a
    throwaway MIT realm: `nimbus` (nimbus.daemon.user) reads what a NONE worker wrote;
    `alice` authenticates to the KDC but is not authorized, so she reads nothing."""
    host = "127.0.0.1"
    workdir = tmp_path / "krb"
    workdir.mkdir()
    with pacemaker_realm(workdir, [host], ["nimbus", "alice"], ccache="MEMORY:storm-krb") as realm:
        config = {
            "pacemaker.host": host,
            "pacemaker.port": free_port(),
            "pacemaker.auth.method": "KERBEROS",
            "java.security.auth.login.config": str(realm.server_jaas),
            "nimbus.daemon.user": "nimbus",
            "pmcluster.auth.secret.file": str(realm.secret),
        }
        with NodeProcess(config, workdir=tmp_path) as node:
            with Driver(storm_java, node.port, [host]) as worker:
                worker.ok("raw", host, "SEND_PULSE", "/workerbeats/t-9/n-1", "beat")
                assert worker.ok("raw", host, "GET_PULSE", "/workerbeats/t-9/n-1")["type"] == (
                    "NOT_AUTHORIZED"
                )
            jvm = [f"-Djava.security.krb5.conf={realm.kdc.env['KRB5_CONFIG']}"]
            drivers = [
                Driver(storm_java, node.port, [host], "KERBEROS", realm.client_jaas(who), jvm)
                for who in ("nimbus", "alice")
            ]
            try:
                for driver in drivers:
                    driver.send("raw", host, "GET_PULSE", "/workerbeats/t-9/n-1")
                nimbus, alice = (driver.receive() for driver in drivers)
            finally:
                for driver in drivers:
                    driver.close()
            assert nimbus["ok"], nimbus
            assert (nimbus["type"], nimbus["details"]) == ("GET_PULSE_RESPONSE", "beat")
            assert alice["ok"] is False
            assert "PacemakerConnectionException" in alice["error"]
            node.check_alive()
            with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
                metrics = response.read().decode()
            assert "pmcluster_storm_auth_total 1" in metrics  # nimbus
            assert 'pmcluster_storm_errors_total{kind="auth_failed"} 1' in metrics  # alice, once
