"""`pmcluster up` tells what to do next, and every step it prints works as printed: the page
URL, the `curl` line, the `pmcluster ls` line, the PID to kill (the page then shows that node
down), and Ctrl-C stopping every process it started."""

from __future__ import annotations

import json
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

STEP_LABELS = ("status page:", "read a heartbeat:", "list topologies:", "kill a node:", "Ctrl-C")


def read_lines(stream: object, into: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line.rstrip("\n"))
    into.put(None)


def next_line(lines: queue.Queue[str | None], deadline: float) -> str | None:
    try:
        return lines.get(timeout=max(deadline - time.monotonic(), 0.01))
    except queue.Empty:
        raise AssertionError("pmcluster up printed nothing more in time") from None


def node_state(url: str, node_id: str) -> str | None:
    with urllib.request.urlopen(f"{url}/v1/cluster", timeout=5) as response:
        doc = json.load(response)
    return next((m["state"] for m in doc["members"] if m["node_id"] == node_id), None)


def test_up_prints_next_steps_that_work(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "pmcluster", "up", "--workers", "20", "--period", "0.5"]
    argv += ["--read-period", "1", "--payload", "1024", "--port", "auto"]
    argv += ["--workdir", str(tmp_path / "up")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        head: list[str] = []
        while (line := next_line(lines, deadline)) is not None and not line.startswith("t="):
            head.append(line)
        assert line is not None, "\n".join(head)  # a status line came, after the steps
        assert head[0].startswith("pmcluster up: 3 nodes (127.0.0.1:"), head
        steps = [s.strip() for s in head[1:]]
        assert len(steps) == len(STEP_LABELS), steps
        for step, label in zip(steps, STEP_LABELS, strict=True):
            assert step.startswith(label), (step, label)
        page_url = steps[0].split()[2]
        curl_line = steps[1].removeprefix("read a heartbeat:").strip()
        ls_line = steps[2].removeprefix("list topologies:").strip()
        kill = re.fullmatch(r"kill a node:\s+kill -9 (\d+)\s+\(node (\S+)\); .*", steps[3])
        assert kill is not None, steps[3]
        pid, victim = int(kill.group(1)), kill.group(2)

        with urllib.request.urlopen(page_url, timeout=5) as response:
            assert response.status == 200
            assert "<title>pmcluster status</title>" in response.read().decode()
        curl = subprocess.run(
            shlex.split(curl_line), capture_output=True, text=True, timeout=15, check=False
        )
        assert curl.returncode == 0, curl.stderr
        assert curl.stdout.startswith("HTTP/1.1 200"), curl.stdout
        assert "x-pulse-version:" in curl.stdout.lower()
        listing = subprocess.run(
            shlex.split(ls_line), capture_output=True, text=True, timeout=30, check=False
        )
        assert listing.returncode == 0, listing.stderr
        assert "demo-topo-0-1700000000" in listing.stdout.split()

        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"node" in cmdline and any(b"pmcluster" in part for part in cmdline), cmdline
        base = page_url.rstrip("/")
        assert node_state(base, victim) == "up"
        signal_sent = time.monotonic()
        subprocess.run(shlex.split(f"kill -9 {pid}"), check=True, timeout=10)
        while (state := node_state(base, victim)) != "down":
            assert time.monotonic() - signal_sent < 5, f"{victim} still {state}"
            time.sleep(0.2)

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest: list[str] = []
        deadline = time.monotonic() + 40
        while (line := next_line(lines, deadline)) is not None:
            rest.append(line)
        assert proc.wait(timeout=10) in (0, 1)
        assert rest and rest[-1].startswith("pmcluster up: "), rest[-3:]
        port = int(victim.rsplit(":", 1)[1])
        for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):  # every node it started is gone
            with socket.socket() as sock:
                assert sock.connect_ex((host, port)) != 0, host
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
