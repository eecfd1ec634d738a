"""The fuzzer's CI slice: 10^4 seeded cases against a real node process (HTTP routes, the
batch encoding, Storm frames on the same port, raw bytes). Afterwards the node answers
correctly, every value stored before the run is intact, and its log holds no unhandled
exception. The full run is `pmcluster fuzz --requests 100000` (docs/reliability.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pmcluster.tools.fuzz import fuzz
from pmcluster.tools.localcluster import NodeProcess, free_port

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024  # small, so the just-too-large bodies are cheap to send


def test_fuzz_slice_leaves_the_node_intact(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    config = {
        "pacemaker.host": "127.0.0.1",
        "pacemaker.port": port,
        "pacemaker.servers": [f"127.0.0.1:{port}"],
        "pacemaker.thrift.message.size.max": MAX_BODY,
        "pmcluster.request.timeout.secs": 1.0,
    }
    with NodeProcess(config, workdir=tmp_path) as node:
        report = asyncio.run(
            fuzz(
                node.host,
                node.port,
                requests=10_000,
                seed=20261125,
                max_body=MAX_BODY,
                log_path=node.log_path,
            )
        )
        print(report.summary())
        node.check_alive()
    assert report.requests == 10_000
    assert report.ok, "\n".join([report.summary(), *report.findings[:20]])
    # The run exercised the node: requests were parsed and answered, not just dropped.
    assert report.outcomes["HTTP 200"] + report.outcomes["HTTP 204"] > 500
    assert report.outcomes["HTTP 400"] > 1000 and report.outcomes["storm-reply"] > 100
