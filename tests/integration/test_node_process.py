"""The node daemon as a real process: `python -m pmcluster node --config FILE`.

It serves HTTP on its configured address, and on SIGTERM/SIGINT stops accepting connections,
lets in-flight requests finish, and exits 0.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pmcluster.tools.localcluster import free_port, process_alive, wait_until

pytestmark = pytest.mark.integration

HOST = "127.0.0.2"


class Node:
    """One node process started from a temp YAML config, always stopped by PID."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.port = port
        self.config = tmp_path / "node.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "pacemaker.host": HOST,
                    "pacemaker.port": port,
                    "pmcluster.request.timeout.secs": 1.0,  # body allowance 5 s, drain 6 s
                    "pmcluster.log.level": "INFO",
                }
            )
        )
        self.log = tmp_path / "node.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pmcluster", "node", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            conn.request(method, target, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/health")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path, free_port(HOST))
    try:
        wait_until(lambda: node.healthy() or node.proc.poll() is not None, 15, what="node /health")
        assert node.proc.poll() is None, node.log.read_text()
        yield node
    finally:
        node.stop()
    assert not process_alive(node.proc.pid)


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
    except OSError:
        return True
    return False


def test_serves_http_and_drains_in_flight_request_on_sigterm(node: Node) -> None:
    assert node.request("PUT", "/v1/pulse/wb/t%281%29/n-1", b"beat") == (204, b"")
    assert node.request("GET", "/v1/pulse/wb/t%281%29/n-1") == (200, b"beat")
    assert f"listening on {HOST}:{node.port}" in node.log.read_text()

    with socket.create_connection((HOST, node.port), timeout=5) as garbage:
        garbage.sendall(b"GET /v1/pulse/\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n")
        assert garbage.recv(4096).split(b" ", 2)[1] == b"400"

    slow = socket.create_connection((HOST, node.port), timeout=10)
    try:
        slow.sendall(
            b"PUT /v1/pulse/slow HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"s" * 10
        )
        # The node handles connections in order on one loop: once a later request has been
        # answered, the slow request's headers have been read and its handler is running.
        assert node.request("GET", "/health")[0] == 200
        node.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refuses_connections(node.port), 5, what="listener closed")
        assert node.proc.poll() is None  # still draining the slow request
        slow.sendall(b"s" * 990)
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 204"), answer
    finally:
        slow.close()
    assert node.proc.wait(timeout=10) == 0
    log = node.log.read_text()
    assert "draining" in log and "stopped" in log, log
    assert "ERROR" not in log and "Traceback" not in log, log  # garbage is not a server fault


def test_sigint_also_exits_cleanly(node: Node) -> None:
    started = time.monotonic()
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5  # no in-flight work: no drain wait


def test_port_in_use_fails_fast_with_nonzero_exit(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        node = Node(tmp_path, taken.getsockname()[1])
        try:
            assert node.proc.wait(timeout=15) != 0
        finally:
            node.stop()
    assert "cannot serve" in node.log.read_text()


def test_launchers_apply_childopts_as_interpreter_options(tmp_path: Path) -> None:
    """`pacemaker.childopts` reach the node's Python interpreter (here: -X faulthandler)."""
    from pmcluster.tools.localcluster import NodeProcess

    conf = {
        "pacemaker.host": "127.0.0.2",
        "pacemaker.port": free_port("127.0.0.2"),
        "pacemaker.childopts": "-X faulthandler",
    }
    with NodeProcess(conf, workdir=tmp_path) as proc:
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[1:4] == [b"-X", b"faulthandler", b"-m"]
        assert proc.health_status() == 200
    assert not process_alive(proc.pid)
