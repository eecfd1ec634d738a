"""The operator tools against a TLS cluster: `ops/status` and `ops/remove-node` speak https
with the cluster's CA (the same `pmcluster.tls.*` keys the nodes use) and verify certificates.

Three ZooKeeper-member nodes serve only https; the tools run as an operator runs them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from faultkit import NODE_KEYS

from pmcluster.testing.tls import start_https, write_tls
from pmcluster.tools.localcluster import NodeCluster, wait_until, zk_yaml

pytestmark = pytest.mark.integration

OPS = Path(__file__).resolve().parents[2] / "ops"


def ops(*argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(OPS / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout
    )


def status(config: Path) -> tuple[int, dict[str, Any]]:
    result = ops("status", "--config", str(config), "--json", timeout=30)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture
def tls_zk_cluster(zk_hosts: str, tmp_path: Path) -> Iterator[tuple[NodeCluster, Path]]:
    ca = trustme.CA()
    tls = write_tls(ca, tmp_path / "tls")
    keys = {**NODE_KEYS, **tls}
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({**keys, **zk_yaml(zk_hosts)}))
    cluster = NodeCluster(3, workdir=tmp_path, zk_hosts=zk_hosts, extra=keys)
    start_https(cluster, tls["pmcluster.tls.ca"])
    try:
        yield cluster, config
    finally:
        cluster.kill()


def test_status_and_remove_node_reach_a_tls_cluster(
    tls_zk_cluster: tuple[NodeCluster, Path], tmp_path: Path
) -> None:
    cluster, config = tls_zk_cluster
    wait_until(lambda: status(config)[0] == 0, timeout=15, what="3 TLS nodes to agree")
    code, doc = status(config)
    assert doc["verdict"] == "OK" and len(doc["nodes"]) == 3, doc
    assert all(n["up"] for n in doc["nodes"]), doc

    # A CA the nodes' certificates do not chain to: every node is unreachable, not trusted.
    other = write_tls(trustme.CA(), tmp_path / "other")
    wrong = tmp_path / "wrong-ca.yaml"
    keys = yaml.safe_load(config.read_text())
    keys = {k: v for k, v in keys.items() if k not in ("pmcluster.tls.cert", "pmcluster.tls.key")}
    wrong.write_text(yaml.safe_dump({**keys, "pmcluster.tls.ca": other["pmcluster.tls.ca"]}))
    code, doc = status(wrong)
    assert code != 0 and doc["verdict"] == "DOWN", doc

    victim = cluster[2]
    result = ops("remove-node", "--config", str(config), "--node", victim.node_id, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["drain"]["state"] == "done", out
    assert victim.wait_exit(timeout=10) == 0
    code, doc = status(config)
    assert code == 0 and sorted(n["node_id"] for n in doc["nodes"]) == sorted(
        n.node_id for n in cluster.nodes[:2]
    ), doc
