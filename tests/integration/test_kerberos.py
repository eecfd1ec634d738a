"""KERBEROS against a real KDC (Debian's krb5-kdc, a throwaway realm on 127.0.0.1): SPNEGO,
authorization by short name, session cookies across nodes, curl --negotiate, and a cluster
whose nodes authenticate to each other with their own keys."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from pmcluster.auth.client import KerberosAuth, RequestAuth, make_request_auth
from pmcluster.auth.middleware import cluster_secret
from pmcluster.auth.tokens import COOKIE_NAME, CookieSigner
from pmcluster.client import SyncClusterClient
from pmcluster.client.transport import NodeTransport
from pmcluster.config import Config, config_from_mapping
from pmcluster.errors import NotAuthorized
from pmcluster.node.app import make_app
from pmcluster.testing.kdc import PacemakerRealm, pacemaker_realm
from pmcluster.tools.localcluster import NodeCluster

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@pytest.fixture(scope="module")
def realm(kdc_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacemakerRealm]:
    users = ("nimbus", "alice", "bob")
    workdir = tmp_path_factory.mktemp("krb")
    # The nodes' JAAS also logs in as nimbus (PacemakerClient): what a node uses to read.
    with pacemaker_realm(
        workdir, HOSTS, users, ccache="MEMORY:pmcluster-tests", server_client_user="nimbus"
    ) as realm:
        yield realm


def node_config(realm: PacemakerRealm, **changes: Any) -> Config:
    """A node of the realm where bob (pacemaker.kerberos.users) reads too, alice does not."""
    return realm.node_config(kerberos_users=("bob",), **changes)


def negotiate(realm: PacemakerRealm, who: str, host: str = "127.0.0.1") -> str:
    from pmcluster.auth.kerberos import KerberosInitiator

    initiator = KerberosInitiator(
        keytab=realm.keytab(who), principal=realm.principal(who), service_name="pacemaker"
    )
    return "Negotiate " + base64.b64encode(initiator.start(host).token).decode()


async def test_spnego_matrix(aiohttp_client: AiohttpClient, realm: PacemakerRealm) -> None:
    client = await aiohttp_client(make_app(node_config(realm)), cookie_jar=aiohttp.DummyCookieJar())
    assert (await client.put("/v1/pulse/wb/a", data=b"beat")).status == 204  # writes open
    # No credentials, or a forged forward: a Negotiate challenge.
    for headers in ({}, {"X-Pmcluster-Forwarded": "1"}):
        resp = await client.get("/v1/pulse/wb/a", headers=headers)
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Negotiate"
    # nimbus.daemon.user reads, gets a mutual-authentication token and a session cookie.
    token = negotiate(realm, "nimbus")
    resp = await client.get("/v1/pulse/wb/a", headers={"Authorization": token})
    assert resp.status == 200 and await resp.read() == b"beat"
    assert resp.headers["WWW-Authenticate"].startswith("Negotiate ")
    cookie = resp.cookies[COOKIE_NAME].value
    # The same token again: the replay cache refuses it.
    assert (await client.get("/v1/pulse/wb/a", headers={"Authorization": token})).status == 401
    # pacemaker.kerberos.users may read; another principal is authenticated, not authorized.
    bob = await client.get("/v1/children/wb", headers={"Authorization": negotiate(realm, "bob")})
    assert bob.status == 200 and await bob.json() == ["a"]
    alice = await client.get("/v1/pulse/wb/a", headers={"Authorization": negotiate(realm, "alice")})
    assert alice.status == 403
    # Garbage and non-Negotiate credentials.
    for header in (
        "Negotiate !!!",
        "Negotiate " + base64.b64encode(b"x" * 40).decode(),
        "Basic eA==",
    ):
        assert (await client.get("/v1/members", headers={"Authorization": header})).status == 401
    # The cookie alone is enough ...
    cookies = {"Cookie": f"{COOKIE_NAME}={cookie}"}
    assert (await client.get("/v1/pulse/wb/a", headers=cookies)).status == 200
    # ... a tampered or expired one is not.
    tampered = {"Cookie": f"{COOKIE_NAME}={cookie[:-2]}{'AA' if cookie[-2:] != 'AA' else 'BB'}"}
    assert (await client.get("/v1/pulse/wb/a", headers=tampered)).status == 401
    secret = cluster_secret(node_config(realm))
    old = CookieSigner(secret, 60.0, clock=lambda: 1_000_000.0)
    expired = {"Cookie": f"{COOKIE_NAME}={old.issue(realm.principal('nimbus'))}"}
    assert (await client.get("/v1/pulse/wb/a", headers=expired)).status == 401
    # A genuine cookie of an unauthorized principal is still a 403.
    signer = CookieSigner(secret, 60.0)
    alice_cookie = {"Cookie": f"{COOKIE_NAME}={signer.issue(realm.principal('alice'))}"}
    assert (await client.get("/v1/pulse/wb/a", headers=alice_cookie)).status == 403


async def test_cookie_from_one_node_is_accepted_by_another(
    aiohttp_client: AiohttpClient, realm: PacemakerRealm
) -> None:
    node_a = await aiohttp_client(make_app(node_config(realm)), cookie_jar=aiohttp.DummyCookieJar())
    node_b = await aiohttp_client(
        make_app(node_config(realm, port=6700)), cookie_jar=aiohttp.DummyCookieJar()
    )
    resp = await node_a.get("/v1/members", headers={"Authorization": negotiate(realm, "nimbus")})
    assert resp.status == 200
    cookie = {"Cookie": f"{COOKIE_NAME}={resp.cookies[COOKIE_NAME].value}"}
    assert (await node_b.get("/v1/members", headers=cookie)).status == 200


async def test_auth_writes_gates_writes(
    aiohttp_client: AiohttpClient, realm: PacemakerRealm
) -> None:
    client = await aiohttp_client(
        make_app(node_config(realm, auth_writes=True)), cookie_jar=aiohttp.DummyCookieJar()
    )
    assert (await client.put("/v1/pulse/wb/w", data=b"x")).status == 401
    alice = {"Authorization": negotiate(realm, "alice")}
    assert (await client.put("/v1/pulse/wb/w", data=b"x", headers=alice)).status == 403
    nimbus = {"Authorization": negotiate(realm, "nimbus")}
    assert (await client.put("/v1/pulse/wb/w", data=b"x", headers=nimbus)).status == 204


async def test_pmcluster_client_negotiates_once_then_uses_the_cookie(
    aiohttp_client: AiohttpClient, realm: PacemakerRealm
) -> None:
    statuses: Counter[int] = Counter()
    app = make_app(node_config(realm))

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        statuses[response.status] += 1
        return response

    app.middlewares.insert(0, count)
    client = await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())

    def transport(session: aiohttp.ClientSession, auth: RequestAuth | None) -> NodeTransport:
        return NodeTransport(
            "n",
            "127.0.0.1",
            client.port,
            session,
            connect_timeout_secs=1.0,
            request_timeout_secs=5.0,
            auth=auth,
        )

    reader_config = node_config(realm, jaas_path=str(realm.client_jaas("nimbus")))
    auth = make_request_auth(reader_config)
    assert isinstance(auth, KerberosAuth)
    async with aiohttp.ClientSession() as session:
        nimbus = transport(session, auth)
        for i in range(5):
            await nimbus.put_pulse(f"/wb/{i}", b"v", i + 1)
            pulse, _ = await nimbus.get_pulse(f"/wb/{i}")
            assert pulse is not None
    assert statuses[401] == 1 and auth.cookie is not None
    # alice authenticates fine but may not read: NotAuthorized, not a retry loop.
    alice = make_request_auth(node_config(realm, jaas_path=str(realm.client_jaas("alice"))))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(NotAuthorized):
            await transport(session, alice).get_pulse("/wb/0")


async def test_curl_negotiate_with_a_kinit_ticket(
    aiohttp_client: AiohttpClient, realm: PacemakerRealm, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    client = await aiohttp_client(
        make_app(node_config(realm, nimbus_daemon_user="carol")),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    realm.kdc.add_user("carol", "carol-password")
    ccache = tmp_path / "ccache"
    realm.kdc.kinit("carol", "carol-password", ccache)
    url = f"http://127.0.0.1:{client.port}/v1/members"

    async def curl_negotiate(tickets: Path) -> subprocess.CompletedProcess[str]:
        """curl --negotiate with the credential cache `tickets`; stdout is the HTTP status."""
        args = "curl -sS --negotiate -u : --service-name pacemaker -o /dev/null -w %{http_code}"
        return await asyncio.to_thread(
            subprocess.run,
            [*args.split(), url],
            capture_output=True,
            text=True,
            env={**os.environ, "KRB5CCNAME": f"FILE:{tickets}"},
            timeout=20,
        )

    done = await curl_negotiate(ccache)
    assert done.stdout == "200", done.stderr
    assert (await curl_negotiate(tmp_path / "empty")).stdout == "401"


def test_kerberos_cluster_nodes_authenticate_to_each_other(
    realm: PacemakerRealm, tmp_path: Path
) -> None:
    # Nodes with PacemakerServer only: towards peers they use their own service key, and
    # peers authorize them by the service's short name ("pacemaker").
    server_only = tmp_path / "server-only.jaas"
    server_only.write_text(realm.server_jaas.read_text().split("PacemakerClient")[0])
    keys = {
        "pacemaker.auth.method": "KERBEROS",
        "java.security.auth.login.config": str(server_only),
        "nimbus.daemon.user": "nimbus",
        "pmcluster.auth.secret.file": str(realm.secret),
        "pmcluster.request.timeout.secs": 2.0,
        "pmcluster.log.level": "INFO",
    }
    env = {**os.environ, **realm.kdc.env, "KRB5CCNAME": "MEMORY:node"}
    with NodeCluster(3, workdir=tmp_path, extra=keys, env=env) as cluster:
        reader = config_from_mapping(
            {
                **keys,
                "java.security.auth.login.config": str(realm.client_jaas("nimbus")),
                "pacemaker.servers": cluster.node_ids,
                "pacemaker.port": cluster.port,
            }
        )
        paths = [f"/workerbeats/k/{i}" for i in range(9)]
        with SyncClusterClient(reader) as client:
            for path in paths:
                client.send_pulse(path, path.encode())
            for path in paths:
                pulse = client.get_pulse(path)
                assert pulse is not None and pulse.data == path.encode()
        # Coordinated reads: the answering node reads from its peers with its own key.
        for node in cluster.nodes:
            done = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-H",
                    f"Authorization: {negotiate(realm, 'nimbus', node.host)}",
                    f"{node.url}/v1/children/workerbeats/k",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert sorted(json.loads(done.stdout)) == sorted(p.rsplit("/", 1)[1] for p in paths)
