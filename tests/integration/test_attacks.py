"""Issue 17's attack suite: a real 3-node cluster under DIGEST and under KERBEROS, attacked
from an unauthenticated address (127.0.0.77) while honest heartbeats flow through every node.

Each attack must be refused (4xx, never 5xx) or absorbed; during and after them every honest
heartbeat is stored, `/health` answers within 500 ms, each node's RSS stays within 60 MB of its
start, every node stays a member, and no log line is forged.
"""

from __future__ import annotations

import http.client
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pmcluster.auth.digest import DigestClient
from pmcluster.client import SyncClusterClient
from pmcluster.config import Config, config_from_mapping
from pmcluster.protocol import pulsecodec
from pmcluster.protocol.pulse import Pulse
from pmcluster.storm.codec import TType
from pmcluster.tools.bench.procstats import rss_bytes
from pmcluster.tools.localcluster import NodeCluster

pytestmark = pytest.mark.integration

ATTACKER = "127.0.0.77"  # no member's address: subject to every per-address limit
USER, PASSWORD = "storm", "attack-suite s3cret"
MAX_VERSION = str(2**63 - 1)
LIMITS: dict[str, Any] = {
    "pmcluster.request.timeout.secs": 1.0,
    "pmcluster.connect.timeout.secs": 0.3,
    "pmcluster.max.connections": 300,
    "pmcluster.max.connections.per.address": 40,
    "pmcluster.header.timeout.secs": 1.0,
    "pmcluster.handshake.timeout.secs": 1.0,
    "pmcluster.frame.timeout.secs": 1.0,
    "pmcluster.storm.idle.secs": 2.0,
    "pmcluster.http.idle.secs": 2.0,
    "pmcluster.buffer.max.bytes": 32 * 1024 * 1024,
    "pmcluster.log.level": "INFO",
}


@dataclass
class Attacked:
    cluster: NodeCluster
    reader: Config  # an authorized reader's client config
    method: str
    rss_start: list[int] = field(default_factory=list)


def _digest_cluster(tmp_path: Path, zk_hosts: str) -> Iterator[Attacked]:
    jaas = tmp_path / "jaas.conf"
    jaas.write_text(f'PacemakerDigest {{\n  username="{USER}"\n  password="{PASSWORD}";\n}};\n')
    keys = {
        **LIMITS,
        "pacemaker.auth.method": "DIGEST",
        "java.security.auth.login.config": str(jaas),
    }
    with NodeCluster(3, workdir=tmp_path, zk_hosts=zk_hosts, extra=keys) as cluster:
        reader = config_from_mapping(
            {**keys, "pacemaker.servers": cluster.node_ids, "pacemaker.port": cluster.port}
        )
        yield Attacked(cluster, reader, "DIGEST")


def _kerberos_cluster(tmp_path: Path, zk_hosts: str) -> Iterator[Attacked]:
    from pmcluster.testing.kdc import pacemaker_realm

    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    with pacemaker_realm(
        tmp_path, hosts, ("nimbus",), ccache="MEMORY:attacks", server_client_user="nimbus"
    ) as realm:
        keys = {
            **LIMITS,
            "pacemaker.auth.method": "KERBEROS",
            "java.security.auth.login.config": str(realm.server_jaas),
            "nimbus.daemon.user": "nimbus",
            "pmcluster.auth.secret.file": str(realm.secret),
        }
        env = {**os.environ, **realm.kdc.env, "KRB5CCNAME": "MEMORY:node"}
        with NodeCluster(3, workdir=tmp_path, zk_hosts=zk_hosts, extra=keys, env=env) as cluster:
            reader = config_from_mapping(
                {
                    **keys,
                    "java.security.auth.login.config": str(realm.client_jaas("nimbus")),
                    "pacemaker.servers": cluster.node_ids,
                    "pacemaker.port": cluster.port,
                }
            )
            yield Attacked(cluster, reader, "KERBEROS")


@pytest.fixture(params=["DIGEST", "KERBEROS"])
def attacked(request: pytest.FixtureRequest, tmp_path: Path, zk_hosts: str) -> Iterator[Attacked]:
    if request.param == "KERBEROS":
        request.getfixturevalue("kdc_tools")
        make = _kerberos_cluster
    else:
        make = _digest_cluster
    for setup in make(tmp_path, zk_hosts):
        setup.rss_start = [rss_bytes(node.pid) for node in setup.cluster.nodes]
        yield setup


# --- raw traffic from the attacker's address -----------------------------------------------------


def attacker_socket(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5.0)
    sock.bind((ATTACKER, 0))
    sock.connect((host, port))
    return sock


def raw_http(
    port: int, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> int:
    """One request from the attacker's address; the status (0: closed without an answer)."""
    with attacker_socket(port) as sock:
        lines = [f"{method} {target} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                return 0
            answer += chunk
        return int(answer.split(b" ", 2)[1])


def storm_frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


# --- honest traffic ------------------------------------------------------------------------------


class Honest(threading.Thread):
    """Heartbeats through every node (plain PUTs, as a Storm-less writer sends them) and
    /health probes, until stopped; counts failures and the slowest /health."""

    def __init__(self, cluster: NodeCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop = threading.Event()
        self.sent: dict[str, bytes] = {}
        self.failures: list[str] = []
        self.slowest_health = 0.0

    def run(self) -> None:
        rounds = 0
        while not self.stop.is_set() and rounds < 2000:
            rounds += 1
            for i, host in enumerate(self.cluster.hosts):
                path, value = f"/workerbeats/honest/w{i}", f"beat {rounds}".encode()
                try:
                    conn = http.client.HTTPConnection(host, self.cluster.port, timeout=5)
                    conn.request("PUT", f"/v1/pulse{path}", body=value)
                    answer = conn.getresponse()
                    answer.read()
                    status = answer.status
                    began = time.monotonic()
                    conn.request("GET", "/health")
                    health = conn.getresponse()
                    health.read()
                    self.slowest_health = max(self.slowest_health, time.monotonic() - began)
                    conn.close()
                except OSError as exc:
                    self.failures.append(f"{host}: {exc}")
                    continue
                if status != 204:
                    self.failures.append(f"{host}: PUT {status}")
                else:
                    self.sent[path] = value
            self.stop.wait(0.1)


# --- the attacks ---------------------------------------------------------------------------------


def versions_attack(port: int) -> list[int]:
    """1: a root tombstone or a pinned key at the largest version; a forged tombstone within
    the allowed skew must be absorbed by the coordinators' retry above it."""
    statuses = [
        raw_http(port, "DELETE", "/v1/path/", {"X-Pulse-Version": MAX_VERSION}),
        raw_http(
            port, "PUT", "/v1/pulse/workerbeats/honest/w0", {"X-Pulse-Version": MAX_VERSION}, b"x"
        ),
        raw_http(port, "DELETE", "/v1/path/workerbeats", {"X-Pulse-Version": MAX_VERSION}),
    ]
    near = str(time.time_ns() + 20 * 10**9)
    raw_http(port, "DELETE", "/v1/path/", {"X-Pulse-Version": near})  # absorbed, not refused
    return statuses


def paths_attack(port: int) -> list[int]:
    """2: deep and long paths."""
    deep = "/".join(["a"] * 3900)
    return [
        raw_http(port, "PUT", f"/v1/pulse/{deep}", body=b"x"),
        raw_http(port, "PUT", f"/v1/pulse/{'x' * 7000}", body=b"x"),
        raw_http(port, "POST", "/v1/batch", body=pulsecodec.encode([Pulse("/a" * 100, b"x", 0)])),
    ]


def sizes_attack(port: int) -> list[int]:
    """8: a batch of 200k entries."""
    body = pulsecodec.encode([Pulse(f"/b/{i}", b"", 0) for i in range(200_000)])
    return [raw_http(port, "POST", "/v1/batch", body=body)]


def digest_attack(port: int, other_port_host: str) -> list[int]:
    """5: malformed headers, a replayed header on another node, a forged log line."""
    forged = 'Digest username*=UTF-8\'\'x%0aFORGED-LINE, realm="pmcluster", nonce="x"'
    statuses = [
        raw_http(port, "GET", "/v1/pulse/a", {"Authorization": h})
        for h in (
            'Digest username="storm", realm="pmcluster", nonce="x", uri="/v1/pulse/a", '
            'response="r", qop=auth, nc=00000001, cnonce="c", opaque="\udcc3\udca9"',
            "Digest username*=UTF-8''%ff, realm=\"pmcluster\"",
            'Digest username="\udcc3\udca9", userhash=true, realm="pmcluster"',
            forged + ', uri="/v1/pulse/a", response="r", qop=auth, nc=00000001, cnonce="c"',
        )
    ]
    return statuses


def captured_replay(cluster: NodeCluster) -> list[int]:
    """5: a genuine header, captured on node 1, replayed on node 2 and on node 1."""
    conn = http.client.HTTPConnection(cluster.hosts[0], cluster.port, timeout=5)
    conn.request("GET", "/v1/members")
    challenge = conn.getresponse()
    challenge.read()
    client = DigestClient(USER, PASSWORD)
    assert client.take_challenge(challenge.headers.get_all("WWW-Authenticate") or [])
    header = client.authorization("GET", "/v1/members")
    assert header is not None
    conn.request("GET", "/v1/members", headers={"Authorization": header})
    first = conn.getresponse()
    first.read()
    conn.close()
    assert first.status == 200
    out = []
    for host in (cluster.hosts[1], cluster.hosts[0]):
        with socket.create_connection((host, cluster.port), timeout=5) as sock:
            sock.sendall(
                f"GET /v1/members HTTP/1.1\r\nHost: x\r\nAuthorization: {header}\r\n\r\n".encode()
            )
            out.append(int(sock.recv(4096).split(b" ", 2)[1]))
    return out


def authenticated_drain(cluster: NodeCluster) -> int:
    """6: a reader with valid DIGEST credentials, from another host, asks for a forced drain."""
    conn = http.client.HTTPConnection(
        cluster.hosts[0], cluster.port, timeout=5, source_address=(ATTACKER, 0)
    )
    conn.request("POST", "/v1/admin/drain", body=b'{"force": true}')
    challenge = conn.getresponse()
    challenge.read()
    client = DigestClient(USER, PASSWORD)
    assert client.take_challenge(challenge.headers.get_all("WWW-Authenticate") or [])
    header = client.authorization("POST", "/v1/admin/drain")
    assert header is not None
    conn.request(
        "POST", "/v1/admin/drain", body=b'{"force": true}', headers={"Authorization": header}
    )
    answer = conn.getresponse()
    answer.read()
    conn.close()
    return answer.status


def admin_attack(port: int) -> list[int]:
    """6: a forced drain from another host, without and with a wrong admin secret."""
    return [
        raw_http(port, "POST", "/v1/admin/drain", body=b'{"force": true}'),
        raw_http(port, "POST", "/v1/admin/drain", {"X-Pmcluster-Admin-Secret": "guess"}, b"{}"),
    ]


def connections_attack(port: int) -> int:
    """3: hundreds of idle sockets, half-sent heads, a 10 MiB frame that never completes.
    Returns how many of the idle sockets the node still held after its deadlines."""
    held: list[socket.socket] = []
    try:
        for _ in range(330):
            try:
                held.append(attacker_socket(port))
            except OSError:
                break
        for i, sock in enumerate(held):
            try:
                if i % 3 == 0:
                    sock.sendall(b"PUT /v1/pulse/x HTTP/1.1\r\nHost: x\r\nX-Pad")  # half a head
                elif i % 3 == 1:
                    sock.sendall(struct.pack(">i", 10 * 1024 * 1024) + b"\x08" * 65536)
                else:
                    sock.sendall(b"G")
            except OSError:
                pass
        time.sleep(3.0)  # past the head, frame, handshake and idle deadlines
        alive = 0
        for sock in held:
            sock.settimeout(0.05)
            try:
                if sock.recv(65536) == b"":
                    continue
                # an answer (503 or 408): read to the end
                sock.settimeout(1.0)
                while sock.recv(65536):
                    pass
            except TimeoutError:
                alive += 1
            except OSError:
                continue
        return alive
    finally:
        for sock in held:
            sock.close()


def thrift_attack(port: int) -> float:
    """4: a 10 MB Storm frame of a list<bool> in an unknown field; how long until closed."""
    head = struct.pack(">bhi", TType.I32, 1, 0)
    count = 10 * 1000 * 1000 - 20
    body = head + struct.pack(">bhbi", TType.LIST, 9, TType.BOOL, count) + b"\x01" * count + b"\x00"
    with attacker_socket(port) as sock:
        began = time.monotonic()
        sock.sendall(storm_frame(body))
        sock.settimeout(5.0)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        return time.monotonic() - began


def test_attacks_are_refused_or_absorbed_and_heartbeats_keep_flowing(attacked: Attacked) -> None:
    cluster = attacked.cluster
    port = cluster.port
    honest = Honest(cluster)
    honest.start()
    try:
        time.sleep(0.5)
        statuses = versions_attack(port) + paths_attack(port) + sizes_attack(port)
        if attacked.method == "DIGEST":
            statuses += digest_attack(port, cluster.hosts[1])
            assert captured_replay(cluster) == [401, 401]
            assert authenticated_drain(cluster) == 403
        statuses += admin_attack(port)
        print(f"{attacked.method}: attack statuses {statuses}")
        assert all(400 <= s < 500 for s in statuses), statuses
        assert connections_attack(port) == 0
        closed_after = thrift_attack(port)
        print(f"{attacked.method}: 10 MB list<bool> frame closed after {closed_after:.2f}s")
        assert closed_after < 3.0
        time.sleep(1.0)  # honest heartbeats after every attack
    finally:
        honest.stop.set()
        honest.join(30)
    assert not honest.failures, honest.failures[:5]
    print(f"{attacked.method}: slowest /health {honest.slowest_health * 1e3:.0f} ms")
    assert honest.slowest_health < 0.5, honest.slowest_health
    assert len(honest.sent) == 3
    with SyncClusterClient(attacked.reader) as reader:
        for path, value in honest.sent.items():
            got = reader.get_pulse(path)
            assert got is not None and got.data == value, path
        members = reader.members_view()["members"]
        ids = {m["node_id"] if isinstance(m, dict) else m for m in members}
        assert set(cluster.node_ids) <= ids, members
    for node, start in zip(cluster.nodes, attacked.rss_start, strict=True):
        node.check_alive()
        grown = rss_bytes(node.pid) - start
        print(f"{attacked.method}: {node.node_id} RSS grew {grown / 2**20:.1f} MiB")
        assert grown < 60 * 1024 * 1024
        log = node.log_text()
        assert not any(line.startswith("FORGED") for line in log.splitlines())
        assert "Traceback" not in log
