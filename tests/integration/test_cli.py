"""The `pmcluster` client commands against real node processes: output and exit codes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pmcluster.tools.localcluster import NodeCluster

pytestmark = pytest.mark.integration

EXIT_OK, EXIT_ABSENT, EXIT_ERROR = 0, 1, 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with NodeCluster(3, workdir=tmp_path_factory.mktemp("cli")) as nodes:
        yield nodes


def pm(cluster: NodeCluster, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    servers = ",".join(cluster.node_ids[:1])  # one seed is enough: it names the others
    return subprocess.run(
        [sys.executable, "-m", "pmcluster", *args, "--servers", servers],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_put_get_exists_ls_rm(cluster: NodeCluster, tmp_path: Path) -> None:
    path = "/workerbeats/cli(1)+$/node é-6700"
    assert pm(cluster, "put", path, stdin=b"\x00beat\xff").returncode == EXIT_OK
    got = pm(cluster, "get", path)
    assert (got.returncode, got.stdout) == (EXIT_OK, b"\x00beat\xff")
    value = tmp_path / "value.bin"
    value.write_bytes(b"from a file")
    assert pm(cluster, "put", "/workerbeats/cli(1)+$/other-6701", str(value)).returncode == 0

    exists = pm(cluster, "exists", path)
    assert (exists.returncode, exists.stdout.strip()) == (EXIT_OK, b"true")
    listing = pm(cluster, "ls", "/workerbeats/cli(1)+$")
    assert listing.returncode == EXIT_OK
    assert listing.stdout.decode().split("\n")[:2] == ["node é-6700", "other-6701"]

    assert pm(cluster, "rm", path).returncode == EXIT_OK
    assert pm(cluster, "get", path).returncode == EXIT_ABSENT
    assert pm(cluster, "exists", path).returncode == EXIT_ABSENT
    assert pm(cluster, "rm", "-r", "/workerbeats/cli(1)+$").returncode == EXIT_OK
    assert pm(cluster, "ls", "/workerbeats/cli(1)+$").returncode == EXIT_ABSENT


def test_errors_exit_2_with_a_reason(cluster: NodeCluster) -> None:
    relative = pm(cluster, "get", "workerbeats/x")
    assert relative.returncode == EXIT_ERROR
    assert b"must start with '/'" in relative.stderr
    dead = subprocess.run(
        [sys.executable, "-m", "pmcluster", "get", "/a", "--servers", "127.0.0.1:1"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert dead.returncode == EXIT_ERROR
    assert dead.stderr.strip()


def test_config_file_and_bad_config(cluster: NodeCluster, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"pacemaker.servers": cluster.node_ids}))
    run = subprocess.run(
        [sys.executable, "-m", "pmcluster", "put", "/workerbeats/cfg/n-1", "--config", str(good)],
        input=b"x",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == EXIT_OK
    bad = tmp_path / "bad.yaml"
    bad.write_text("pacemaker.port: seventy\n")
    run = subprocess.run(
        [sys.executable, "-m", "pmcluster", "node", "--config", str(bad)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == EXIT_ERROR
    assert b"pacemaker.port" in run.stderr


def test_members_and_ring(cluster: NodeCluster) -> None:
    members = pm(cluster, "members")
    assert members.returncode == EXIT_OK
    text = members.stdout.decode()
    assert all(node_id in text for node_id in cluster.node_ids)
    assert "epoch:" in text and "answered:" in text
    owners = pm(cluster, "ring", "/workerbeats/t1/n-6700")
    lines = owners.stdout.decode().splitlines()
    assert owners.returncode == EXIT_OK
    assert sum("primary" in line for line in lines) == 1
    assert sum("replica" in line for line in lines) == 1
    balance = pm(cluster, "ring", "--keys", "20000")
    assert balance.returncode == EXIT_OK
    assert "max/mean" in balance.stdout.decode()
