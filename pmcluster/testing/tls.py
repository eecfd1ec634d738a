"""TLS for tests: node certificates from a throwaway CA (trustme), and waiting for an
HTTPS node to answer `/health` (the harness's own readiness check speaks plain HTTP)."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import trustme

from pmcluster.tools.localcluster import HarnessError, NodeCluster, NodeProcess

__all__ = ["https_url", "start_https", "wait_https_ready", "write_tls"]


def write_tls(ca: trustme.CA, workdir: Path) -> dict[str, str]:
    """A certificate for 127.0.0.1-3 and localhost; the `pmcluster.tls.*` keys naming it."""
    cert = ca.issue_cert("127.0.0.1", "127.0.0.2", "127.0.0.3", "localhost")
    workdir.mkdir(parents=True, exist_ok=True)
    chain, key, ca_file = workdir / "node.pem", workdir / "node.key", workdir / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_file))
    return {
        "pmcluster.tls.cert": str(chain),
        "pmcluster.tls.key": str(key),
        "pmcluster.tls.ca": str(ca_file),
    }


def https_url(node: NodeProcess) -> str:
    return f"https://{node.host}:{node.port}"


def wait_https_ready(node: NodeProcess, context: ssl.SSLContext, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        node.check_alive()
        try:
            with urllib.request.urlopen(
                https_url(node) + "/health", timeout=1, context=context
            ) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise HarnessError(
                f"node {node.node_id} not ready over TLS:\n{node.log_text()[-2000:]}"
            )
        time.sleep(0.05)


def start_https(cluster: NodeCluster, ca_file: str) -> NodeCluster:
    """Start every node of `cluster` and wait until each answers `/health` over TLS, verified
    against `ca_file`; on failure every node is killed (by PID) before the error is raised."""
    context = ssl.create_default_context(cafile=ca_file)
    try:
        for node in cluster.nodes:
            node.start()
        for node in cluster.nodes:
            wait_https_ready(node, context)
    except BaseException:
        cluster.kill()
        raise
    return cluster
