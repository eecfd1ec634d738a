"""DIGEST and TLS on a real three-node cluster: curl and pmcluster's client, node-to-node
authentication of coordinated requests, cross-node nonces, certificate verification."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from pmcluster.auth.digest import DigestClient
from pmcluster.client import SyncClusterClient
from pmcluster.config import Config, config_from_mapping
from pmcluster.errors import AuthError, ClusterUnavailable
from pmcluster.testing.tls import https_url, start_https, write_tls
from pmcluster.tools.localcluster import NodeCluster

pytestmark = pytest.mark.integration

USER, PASSWORD = "storm", "cluster-wide s3cret"
BASE_KEYS: dict[str, Any] = {
    "pmcluster.request.timeout.secs": 1.0,
    "pmcluster.connect.timeout.secs": 0.3,
    "pmcluster.log.level": "INFO",
    "pacemaker.auth.method": "DIGEST",
}


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    return subprocess.run(
        ["curl", "-sS", "--max-time", "5", *args], capture_output=True, text=True, timeout=10
    )


def curl_status(*args: str) -> tuple[int, str]:
    done = curl("-o", "-", "-w", "\n%{http_code}", *args)
    body, _, status = done.stdout.rpartition("\n")
    return int(status or 0), body


@pytest.fixture
def jaas(tmp_path: Path) -> Path:
    path = tmp_path / "jaas.conf"
    path.write_text(f'PacemakerDigest {{\n  username="{USER}"\n  password="{PASSWORD}";\n}};\n')
    return path


def client_config(cluster: NodeCluster, jaas: Path, **extra: Any) -> Config:
    keys = {**BASE_KEYS, "java.security.auth.login.config": str(jaas)}
    keys.update({"pacemaker.servers": cluster.node_ids, "pacemaker.port": cluster.port})
    keys.update(extra)
    return config_from_mapping(keys)


@pytest.fixture
def digest_cluster(tmp_path: Path, jaas: Path) -> Iterator[NodeCluster]:
    keys = {**BASE_KEYS, "java.security.auth.login.config": str(jaas)}
    with NodeCluster(3, workdir=tmp_path, extra=keys) as cluster:
        yield cluster


def test_digest_cluster_with_pmcluster_client_and_curl(
    digest_cluster: NodeCluster, jaas: Path
) -> None:
    cluster = digest_cluster
    paths = [f"/workerbeats/topo-1/node-{i}" for i in range(12)]
    with SyncClusterClient(client_config(cluster, jaas)) as client:
        for path in paths:
            client.send_pulse(path, path.encode())
        for path in paths:
            pulse = client.get_pulse(path)
            assert pulse is not None and pulse.data == path.encode()
        assert client.get_all_nodes_for_path("/workerbeats/topo-1") == sorted(
            p.rsplit("/", 1)[1] for p in paths
        )
    # A plain read on any node is coordinated: that node authenticates to the owners with
    # its own credentials (they refuse unauthenticated forwarded reads, see below).
    for node in cluster.nodes:
        status, body = curl_status(
            "--digest", "-u", f"{USER}:{PASSWORD}", node.url + "/v1/children/workerbeats/topo-1"
        )
        assert status == 200 and len(body.split(",")) == len(paths)
        status, _ = curl_status("--digest", "-u", f"{USER}:wrong", node.url + "/v1/children/")
        assert status == 401
        status, _ = curl_status(
            "-H", "X-Pmcluster-Forwarded: 1", node.url + "/v1/pulse/" + paths[0][1:]
        )
        assert status == 401  # a claimed forward is no bypass
    # Writes are open by default, as in Storm.
    status, _ = curl_status("-X", "PUT", "--data-binary", "x", cluster[0].url + "/v1/pulse/open/w")
    assert status == 204


def test_digest_nonce_of_one_node_is_refused_by_the_others(digest_cluster: NodeCluster) -> None:
    # Replay caches are per node, so a nonce is good on the node that issued it only: a header
    # captured on one node cannot be replayed once on each of the others (issue 17).
    cluster = digest_cluster
    try:
        urllib.request.urlopen(cluster[0].url + "/v1/members", timeout=2)
        pytest.fail("an unauthenticated read succeeded")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
        challenges = exc.headers.get_all("WWW-Authenticate") or []
    client = DigestClient(USER, PASSWORD)
    assert client.take_challenge(challenges)
    for node in (cluster[1], cluster[2]):
        header = client.authorization("GET", "/v1/members")
        assert header is not None
        request = urllib.request.Request(
            node.url + "/v1/members", headers={"Authorization": header}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=2)
        assert refused.value.code == 401
    header = client.authorization("GET", "/v1/members")
    assert header is not None
    request = urllib.request.Request(
        cluster[0].url + "/v1/members", headers={"Authorization": header}
    )
    with urllib.request.urlopen(request, timeout=2) as resp:
        assert resp.status == 200
    # The same (nonce, nc) again on the node that saw it last: a replay.
    request = urllib.request.Request(
        cluster[0].url + "/v1/members", headers={"Authorization": header}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=2)
    assert caught.value.code == 401
    assert "replayed" in cluster[0].log_text()


def test_digest_wrong_password_client_fails_and_auth_writes_closes_writes(
    tmp_path: Path, jaas: Path
) -> None:
    keys = {
        **BASE_KEYS,
        "java.security.auth.login.config": str(jaas),
        "pmcluster.auth.writes": True,
    }
    with NodeCluster(2, workdir=tmp_path, extra=keys) as cluster:
        status, _ = curl_status("-X", "PUT", "--data-binary", "x", cluster[0].url + "/v1/pulse/w")
        assert status == 401
        status, _ = curl_status(
            "-X",
            "PUT",
            "--digest",
            "-u",
            f"{USER}:{PASSWORD}",
            "--data-binary",
            "x",
            cluster[1].url + "/v1/pulse/w",
        )
        assert status == 204
        wrong = tmp_path / "wrong.conf"
        wrong.write_text(f'PacemakerDigest {{ username="{USER}" password="nope"; }};')
        wrong_config = client_config(cluster, wrong)
        with pytest.raises((AuthError, ClusterUnavailable)), SyncClusterClient(wrong_config) as c:
            c.get_pulse("/w")
        with SyncClusterClient(
            client_config(cluster, jaas, **{"pmcluster.auth.writes": True})
        ) as client:
            client.send_pulse("/w2", b"ok")
            pulse = client.get_pulse("/w2")
            assert pulse is not None and pulse.data == b"ok"


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_cluster(
    tmp_path: Path, jaas: Path, ca: trustme.CA
) -> Iterator[tuple[NodeCluster, dict[str, str]]]:
    tls = write_tls(ca, tmp_path / "tls")
    keys = {**BASE_KEYS, "java.security.auth.login.config": str(jaas), **tls}
    cluster = NodeCluster(3, workdir=tmp_path, extra=keys)
    start_https(cluster, tls["pmcluster.tls.ca"])
    try:
        yield cluster, tls
    finally:
        cluster.kill()


def test_tls_cluster_verifies_certificates(
    tls_cluster: tuple[NodeCluster, dict[str, str]], jaas: Path, tmp_path: Path
) -> None:
    cluster, tls = tls_cluster
    config = client_config(cluster, jaas, **tls)
    with SyncClusterClient(config) as client:
        client.send_pulse("/tls/a", b"secret heartbeat")
        pulse = client.get_pulse("/tls/a")
        assert pulse is not None and pulse.data == b"secret heartbeat"
    # Coordinated reads: node-to-node over TLS with the nodes' own credentials.
    for node in cluster.nodes:
        status, body = curl_status(
            "--cacert",
            tls["pmcluster.tls.ca"],
            "--digest",
            "-u",
            f"{USER}:{PASSWORD}",
            https_url(node) + "/v1/pulse/tls/a",
        )
        assert (status, body) == (200, "secret heartbeat")
    # curl without the CA refuses the certificate (exit 60); plain HTTP gets no answer.
    assert (
        curl("--digest", "-u", f"{USER}:{PASSWORD}", https_url(cluster[0]) + "/health").returncode
        == 60
    )
    assert curl(cluster[0].url + "/health").returncode != 0
    # A client trusting another CA refuses the nodes' certificates.
    other = write_tls(trustme.CA(), tmp_path / "other")
    wrong_ca = dataclasses.replace(
        config, tls_ca=other["pmcluster.tls.ca"], request_timeout_secs=1.0
    )
    with (
        pytest.raises(ClusterUnavailable, match="CERTIFICATE_VERIFY_FAILED"),
        SyncClusterClient(wrong_ca) as client,
    ):
        client.get_pulse("/tls/a")  # the reason reaches the operator, not just "unavailable"
    # Verification off (explicitly) accepts any certificate.
    unverified = dataclasses.replace(config, tls_ca=other["pmcluster.tls.ca"], tls_verify=False)
    with SyncClusterClient(unverified) as client:
        pulse = client.get_pulse("/tls/a")
        assert pulse is not None and pulse.data == b"secret heartbeat"
