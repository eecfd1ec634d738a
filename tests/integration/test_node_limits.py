"""Limits on a real node process: the TTL safety net, the memory cap, the connection cap, and
the open-file limit the node raises (and logs) at start."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pmcluster.tools.localcluster import NodeProcess, free_port, wait_until

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


def start_node(tmp_path: Path, **keys: Any) -> NodeProcess:
    port = free_port(HOST)
    config = {
        "pacemaker.host": HOST,
        "pacemaker.port": port,
        "pacemaker.servers": [f"{HOST}:{port}"],
        "pmcluster.request.timeout.secs": 1.0,
        **keys,
    }
    return NodeProcess(config, workdir=tmp_path)


def request(
    node: NodeProcess, method: str, target: str, body: bytes | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(node.host, node.port, timeout=5)
    try:
        conn.request(method, target, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def ttl_node(tmp_path: Path) -> Iterator[NodeProcess]:
    with start_node(tmp_path, **{"pmcluster.ttl.secs": 1.0}) as node:
        yield node


def test_ttl_drops_a_heartbeat_that_is_not_rewritten(ttl_node: NodeProcess) -> None:
    """STORM-3772: a worker killed with -9 never deletes its heartbeat; the TTL does."""
    put_start = time.monotonic()
    assert request(ttl_node, "PUT", "/v1/pulse/wb/t1/dead-6700", b"last words")[0] == 204
    put_end = time.monotonic()
    assert request(ttl_node, "GET", "/v1/pulse/wb/t1/dead-6700") == (200, b"last words")
    last_seen = put_end  # start of the last GET that still found the dead heartbeat
    while True:
        # A live worker keeps rewriting its own heartbeat: it never expires.
        assert request(ttl_node, "PUT", "/v1/pulse/wb/t1/live-6701", b"alive")[0] == 204
        began = time.monotonic()
        status = request(ttl_node, "GET", "/v1/pulse/wb/t1/dead-6700")[0]
        gone_at = time.monotonic()
        if status != 200:
            break
        last_seen = began
        assert began - put_start < 10.0, "the TTL never dropped the dead heartbeat"  # loop bound
        time.sleep(0.05)
    assert status == 404
    # The node stored it between put_start and put_end and drops it 1.0 s later (it sweeps
    # on every request): no GET begun after put_end + TTL finds it, none ended before
    # put_start + TTL misses it.
    assert last_seen < put_end + 1.0
    assert gone_at >= put_start + 1.0
    assert request(ttl_node, "GET", "/v1/pulse/wb/t1/live-6701") == (200, b"alive")
    status, body = request(ttl_node, "GET", "/v1/children/wb/t1")
    assert status == 200 and json.loads(body) == ["live-6701"]


def test_memory_cap_refuses_with_507_and_keeps_what_is_stored(tmp_path: Path) -> None:
    with start_node(tmp_path, **{"pmcluster.memory.max.bytes": 64 * 1024}) as node:
        stored: list[str] = []
        status = 204
        for i in range(200):
            status, body = request(node, "PUT", f"/v1/pulse/wb/t1/n-{i}", b"x" * 1024)
            if status != 204:
                break
            stored.append(f"/v1/pulse/wb/t1/n-{i}")
        assert status == 507, "the cap never refused a write"
        assert json.loads(body)["error"] == "insufficient_storage"
        assert 10 < len(stored) < 64
        for target in stored:
            assert request(node, "GET", target) == (200, b"x" * 1024)
        # Rewrites of existing heartbeats still work at the cap.
        assert request(node, "PUT", stored[0], b"y" * 1024)[0] == 204
        metrics = request(node, "GET", "/metrics")[1].decode()
        assert 'pmcluster_errors_total{op="send_pulse",status="507"}' in metrics
        assert "pmcluster_memory_limit_bytes 65536" in metrics
        node.check_alive()
        assert "Traceback" not in node.log_text()


def test_connection_cap_and_open_file_limit(tmp_path: Path) -> None:
    with start_node(tmp_path, **{"pmcluster.max.connections": 20}) as node:
        assert "open-file limit" in node.log_text()
        socks: list[socket.socket] = []
        answers: list[bytes] = []
        try:
            for _ in range(25):
                sock = socket.create_connection((node.host, node.port), timeout=5)
                socks.append(sock)
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                answers.append(sock.recv(200)[:12])
        finally:
            for sock in socks:
                sock.close()
        admitted = answers.count(b"HTTP/1.1 200")
        # 20 open connections (one may still be the harness's health poll, closing).
        assert 19 <= admitted <= 20 and answers[:admitted] == [b"HTTP/1.1 200"] * admitted
        assert answers[admitted:] == [b"HTTP/1.1 503"] * (25 - admitted)
        wait_until(lambda: node.health_status() == 200, timeout=5, what="node serving again")
        node.check_alive()
