"""The node's DIGEST gate against the real app, with standard and pmcluster clients."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from pmcluster.auth.client import DigestAuth, make_request_auth
from pmcluster.auth.digest import DigestClient
from pmcluster.auth.middleware import cluster_secret, make_auth_middleware
from pmcluster.auth.tokens import NonceSigner
from pmcluster.client.transport import NodeTransport
from pmcluster.config import Config
from pmcluster.errors import AuthError, ConfigError
from pmcluster.node.app import make_app
from pmcluster.protocol import pulsecodec
from pmcluster.protocol.pulse import Pulse

Client = TestClient[web.Request, web.Application]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

USER, PASSWORD = "storm", "s3cret: with spaces"
READS = [
    ("GET", "/v1/pulse/wb/a"),
    ("HEAD", "/v1/pulse/wb/a"),
    ("GET", "/v1/children/wb"),
    ("GET", "/v1/pulses/wb"),
    ("GET", "/v1/members"),
]
WRITES = [
    ("PUT", "/v1/pulse/wb/w", b"data"),
    ("DELETE", "/v1/pulse/wb/w", b""),
    ("POST", "/v1/path/wb", b""),
    ("DELETE", "/v1/path/wb/gone", b""),
    ("POST", "/v1/batch", pulsecodec.encode([Pulse("/wb/b", b"x", 0)])),
]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    jaas = tmp_path / "jaas.conf"
    jaas.write_text(f'PacemakerDigest {{ username="{USER}" password="{PASSWORD}"; }};\n')
    return Config(port=6699, auth_method="DIGEST", jaas_path=str(jaas))


def counting_app(config: Config, statuses: Counter[int]) -> web.Application:
    """The node's app with an outermost middleware counting answered statuses."""
    app = make_app(config)

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        statuses[response.status] += 1
        return response

    app.middlewares.insert(0, count)
    return app


async def node(aiohttp_client: AiohttpClient, config: Config) -> Client:
    return await aiohttp_client(make_app(config))


def digest(user: str = USER, password: str = PASSWORD) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(middlewares=(aiohttp.DigestAuthMiddleware(user, password),))


async def test_reads_need_credentials_and_get_both_challenges(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    client = await node(aiohttp_client, config)
    for method, target in READS:
        resp = await client.request(method, target)
        assert resp.status == 401, (method, target)
        challenges = resp.headers.getall("WWW-Authenticate")
        assert [c.split(",")[2].strip() for c in challenges] == [
            "algorithm=SHA-256",
            "algorithm=MD5",
        ]
        assert resp.headers["X-Pmcluster-Node"] == "127.0.0.1:6699"  # node middleware ran
        if method == "GET":
            assert (await resp.json())["error"] == "unauthorized"
    for target in ("/health", "/metrics"):
        assert (await client.get(target)).status == 200


async def test_aiohttp_digest_client_reads(aiohttp_client: AiohttpClient, config: Config) -> None:
    client = await node(aiohttp_client, config)
    assert (await client.put("/v1/pulse/wb/a", data=b"beat")).status == 204
    async with digest() as session:
        async with session.get(client.make_url("/v1/pulse/wb/a")) as resp:
            assert resp.status == 200 and await resp.read() == b"beat"
            assert "rspauth=" in resp.headers["Authentication-Info"]
        async with session.get(client.make_url("/v1/children/wb")) as resp:
            assert await resp.json() == ["a"]
    for user, password in ((USER, "wrong"), ("mallory", PASSWORD)):
        async with digest(user, password) as session:
            resp = await session.get(client.make_url("/v1/pulse/wb/a"))
            assert resp.status == 401


async def test_writes_are_open_by_default(aiohttp_client: AiohttpClient, config: Config) -> None:
    client = await node(aiohttp_client, config)
    for method, target, body in WRITES:
        resp = await client.request(method, target, data=body)
        assert resp.status in (200, 204), (method, target, resp.status)


async def test_auth_writes_closes_writes(aiohttp_client: AiohttpClient, config: Config) -> None:
    client = await node(aiohttp_client, dataclasses.replace(config, auth_writes=True))
    for method, target, body in WRITES:
        resp = await client.request(method, target, data=body)
        assert resp.status == 401, (method, target)
    async with digest() as session:
        for method, target, body in WRITES:
            async with session.request(method, client.make_url(target), data=body) as resp:
                assert resp.status in (200, 204), (method, target, resp.status)


async def test_forged_forwarded_request_gets_no_bypass(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    client = await node(aiohttp_client, config)
    for method, target in READS:
        resp = await client.request(method, target, headers={"X-Pmcluster-Forwarded": "1"})
        assert resp.status == 401, (method, target)


async def _authorization(client: Client, method: str, target: str) -> tuple[DigestClient, str]:
    challenge = await client.get("/v1/members")
    digest_client = DigestClient(USER, PASSWORD)
    assert digest_client.take_challenge(challenge.headers.getall("WWW-Authenticate"))
    header = digest_client.authorization(method, target)
    assert header is not None
    return digest_client, header


async def test_replayed_request_is_rejected(aiohttp_client: AiohttpClient, config: Config) -> None:
    client = await node(aiohttp_client, config)
    _, header = await _authorization(client, "GET", "/v1/children/wb")
    assert (await client.get("/v1/children/wb", headers={"Authorization": header})).status == 200
    again = await client.get("/v1/children/wb", headers={"Authorization": header})
    assert again.status == 401 and "stale" not in again.headers["WWW-Authenticate"]


async def test_tampered_path_is_rejected(aiohttp_client: AiohttpClient, config: Config) -> None:
    client = await node(aiohttp_client, config)
    _, header = await _authorization(client, "GET", "/v1/pulse/wb/mine")
    assert (await client.get("/v1/pulse/wb/other", headers={"Authorization": header})).status == 401
    forged = header.replace("/v1/pulse/wb/mine", "/v1/pulse/wb/other")
    assert (await client.get("/v1/pulse/wb/other", headers={"Authorization": forged})).status == 401


async def test_expired_nonce_asks_for_a_retry_with_stale(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    secret = Path(config.jaas_path or "").with_name("secret")
    secret.write_bytes(b"s" * 32)
    config = dataclasses.replace(config, auth_secret_file=str(secret))
    client = await node(aiohttp_client, config)
    # A genuine nonce of this node, issued longer ago than pmcluster.auth.nonce.secs.
    old = NonceSigner(
        cluster_secret(config),
        config.auth_nonce_secs,
        clock=lambda: 1_000_000.0,
        node=config.node_id,
    )
    digest_client, _ = await _authorization(client, "GET", "/v1/members")
    assert digest_client.take_challenge(
        [f'Digest realm="pmcluster", qop="auth", algorithm=SHA-256, nonce="{old.issue()}"']
    )
    header = digest_client.authorization("GET", "/v1/members")
    assert header is not None
    resp = await client.get("/v1/members", headers={"Authorization": header})
    assert resp.status == 401
    assert all("stale=true" in c for c in resp.headers.getall("WWW-Authenticate"))


async def test_a_nonce_works_on_its_own_node_only_so_a_capture_cannot_replay_elsewhere(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    # Replay caches are per node: a header captured on A must not be good once more on B.
    node_a = await node(aiohttp_client, config)
    node_b = await node(aiohttp_client, dataclasses.replace(config, port=6700))
    digest_client, _ = await _authorization(node_a, "GET", "/v1/members")  # nonce from A
    header = digest_client.authorization("GET", "/v1/members")
    assert header is not None
    assert (await node_a.get("/v1/members", headers={"Authorization": header})).status == 200
    assert (await node_a.get("/v1/members", headers={"Authorization": header})).status == 401
    resp = await node_b.get("/v1/members", headers={"Authorization": header})
    assert resp.status == 401  # and challenges with a nonce of its own
    assert resp.headers.getall("WWW-Authenticate")


async def test_pmcluster_client_needs_one_challenge_for_many_requests(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    statuses_a: Counter[int] = Counter()
    statuses_b: Counter[int] = Counter()
    node_a = await aiohttp_client(counting_app(config, statuses_a))
    node_b = await aiohttp_client(counting_app(dataclasses.replace(config, port=6700), statuses_b))
    auth = make_request_auth(config)
    assert isinstance(auth, DigestAuth)
    async with aiohttp.ClientSession() as session:
        transports = [
            NodeTransport(
                f"n{i}",
                str(client.host),
                client.port,
                session,
                connect_timeout_secs=1.0,
                request_timeout_secs=2.0,
                forwarded=True,
                auth=auth,
            )
            for i, client in enumerate((node_a, node_b))
        ]
        for i in range(10):
            transport = transports[i % 2]
            await transport.put_pulse(f"/wb/p{i}", b"x", i + 1)
            pulse, _ = await transport.get_pulse(f"/wb/p{i}")
            assert pulse is not None and pulse.data == b"x"
            assert await transport.children("/wb")
    assert (statuses_a[401], statuses_b[401]) == (1, 1)  # one challenge per node, then none
    assert statuses_a[200] + statuses_b[200] == 20


async def test_pmcluster_client_with_a_wrong_password_raises_auth_error(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    client = await node(aiohttp_client, config)
    async with aiohttp.ClientSession() as session:
        transport = NodeTransport(
            "n",
            str(client.host),
            client.port,
            session,
            connect_timeout_secs=1.0,
            request_timeout_secs=2.0,
            auth=DigestAuth(USER, "wrong"),
        )
        with pytest.raises(AuthError):
            await transport.get_pulse("/wb/a")


async def test_rejections_are_logged_with_user_and_path_never_secrets(
    aiohttp_client: AiohttpClient, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    client = await node(aiohttp_client, config)
    caplog.set_level(logging.INFO, logger="pmcluster.auth")
    async with digest(password="not-the-password") as session:
        resp = await session.get(client.make_url("/v1/pulse/wb/secretpath"))
        assert resp.status == 401
        header = resp.request_info.headers.get("Authorization", "")
    rejected = [r.getMessage() for r in caplog.records if "auth 401" in r.getMessage()]
    assert any(f"user={USER}" in m and "/v1/pulse/wb/secretpath" in m for m in rejected)
    text = caplog.text
    assert PASSWORD not in text and "not-the-password" not in text
    nonce = header.split('nonce="', 1)[1].split('"', 1)[0]
    response = header.split('response="', 1)[1].split('"', 1)[0]
    assert nonce not in text and response not in text


def test_none_has_no_gate_and_a_bad_jaas_fails_at_start(tmp_path: Path, config: Config) -> None:
    assert make_auth_middleware(Config()) is None
    jaas = tmp_path / "server-only.conf"
    jaas.write_text('PacemakerServer { x.Y required keyTab="/k" principal="p"; };')
    with pytest.raises(ConfigError, match="PacemakerDigest"):
        make_app(dataclasses.replace(config, jaas_path=str(jaas)))


def test_digest_never_imports_gssapi(config: Config) -> None:
    code = (
        "import sys\n"
        "from pmcluster.config import Config\n"
        "from pmcluster.node.app import make_app\n"
        "from pmcluster.client.cluster import ClusterClient\n"
        f"make_app(Config(auth_method='DIGEST', jaas_path={config.jaas_path!r}))\n"
        "assert 'gssapi' not in sys.modules, 'gssapi imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_admin_routes_always_need_credentials(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    from pmcluster.node.admin import install_admin

    app = make_app(config)
    install_admin(app, lambda: None)
    client = await aiohttp_client(app)
    for method in ("GET", "POST"):
        resp = await client.request(method, "/v1/admin/drain")
        assert resp.status == 401, method
