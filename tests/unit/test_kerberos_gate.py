"""The HTTP `KerberosGate` (SPNEGO, then a signed session cookie) and `kerberos_readers`, as
`make_auth_middleware` builds them for a KERBEROS node of the session realm
(tests/unit/conftest.py), in front of routes that answer with the authenticated principal:
who gets in (nimbus.daemon.user, pacemaker.kerberos.users, the cluster's nodes), who is
refused and how (401 with a Negotiate challenge, 403 for the authenticated but unauthorized),
and the cookie's contract."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from pmcluster.auth.jaas import load_jaas
from pmcluster.auth.kerberos import InitiatorContext, KerberosInitiator
from pmcluster.auth.middleware import (
    PRINCIPAL_KEY,
    KerberosGate,
    cluster_secret,
    kerberos_readers,
    make_auth_middleware,
)
from pmcluster.auth.tokens import COOKIE_NAME, CookieSigner
from pmcluster.config import Config
from pmcluster.testing.kdc import PacemakerRealm

Client = TestClient[web.Request, web.Application]
HOST = "127.0.0.1"  # the session realm's node (tests/unit/conftest.py)
COOKIE_SECS = 90.7
CHALLENGE = "Negotiate"
READ = "/v1/pulse/wb"


def node_config(realm: PacemakerRealm, **changes: object) -> Config:
    """nimbus (nimbus.daemon.user) and bob (pacemaker.kerberos.users) read; alice does not."""
    return realm.node_config(
        kerberos_users=("bob",), host=HOST, auth_cookie_secs=COOKIE_SECS, **changes
    )


async def whoami(request: web.Request) -> web.Response:
    return web.Response(text=request.get(PRINCIPAL_KEY, "-"))


async def gated(aiohttp_client: AiohttpClient, config: Config) -> Client:
    """The gate in front of a read, a write and an open route; cookies only as sent by hand."""
    middleware = make_auth_middleware(config)
    assert middleware is not None
    app = web.Application(middlewares=[middleware])
    app.router.add_get("/v1/pulse/{path}", whoami)
    app.router.add_put("/v1/pulse/{path}", whoami)
    app.router.add_get("/health", whoami)
    return await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, krb_realm: PacemakerRealm) -> Client:
    return await gated(aiohttp_client, node_config(krb_realm))


def start(realm: PacemakerRealm, who: str) -> tuple[KerberosInitiator, InitiatorContext]:
    initiator = KerberosInitiator(
        keytab=realm.keytab(who), principal=realm.principal(who), service_name="pacemaker"
    )
    return initiator, initiator.start(HOST)


def negotiate(realm: PacemakerRealm, who: str) -> dict[str, str]:
    _, started = start(realm, who)
    return {"Authorization": "Negotiate " + base64.b64encode(started.token).decode()}


def signer(realm: PacemakerRealm, clock: Callable[[], float] = time.time) -> CookieSigner:
    """Cookies as the node signs them (its cluster secret), with `clock` as now."""
    return CookieSigner(cluster_secret(node_config(realm)), COOKIE_SECS, clock=clock)


def cookie_header(value: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE_NAME}={value}"}


async def assert_challenged(resp: aiohttp.ClientResponse, detail: str) -> None:
    assert resp.status == 401
    assert resp.headers.getall("WWW-Authenticate") == [CHALLENGE]
    assert await resp.json() == {"error": "unauthorized", "detail": detail}


def rejections(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pmcluster.auth"]


# --- kerberos_readers --------------------------------------------------------------------------


def test_readers_are_nimbus_and_the_kerberos_users() -> None:
    both = Config(nimbus_daemon_user="nimbus", kerberos_users=("bob", "carol"))
    assert kerberos_readers(both) == frozenset({"nimbus", "bob", "carol"})
    assert kerberos_readers(Config(kerberos_users=("bob",))) == frozenset({"bob"})
    assert kerberos_readers(Config(nimbus_daemon_user="nimbus")) == frozenset({"nimbus"})
    assert kerberos_readers(Config()) == frozenset()


# --- SPNEGO ------------------------------------------------------------------------------------


async def test_a_reader_gets_in_with_mutual_authentication_and_a_session_cookie(
    client: Client, krb_realm: PacemakerRealm
) -> None:
    initiator, started = start(krb_realm, "nimbus")
    token = base64.b64encode(started.token).decode()
    resp = await client.get(READ, headers={"Authorization": f"Negotiate {token}"})
    assert resp.status == 200 and await resp.text() == krb_realm.principal("nimbus")
    scheme, _, reply = resp.headers["WWW-Authenticate"].partition(" ")
    assert scheme == "Negotiate"
    initiator.finish(started, base64.b64decode(reply))  # the node proved it is the node
    morsel = resp.cookies[COOKIE_NAME]
    assert morsel["max-age"] == str(int(COOKIE_SECS))
    assert morsel["httponly"] is True and morsel["samesite"] == "Strict"
    assert morsel["path"] == "/" and not morsel["secure"]
    session = signer(krb_realm).check(morsel.value)
    assert session is not None and session.principal == krb_realm.principal("nimbus")


async def test_kerberos_users_and_peer_nodes_read_others_are_forbidden(
    client: Client, krb_realm: PacemakerRealm, caplog: pytest.LogCaptureFixture
) -> None:
    bob = await client.get(READ, headers=negotiate(krb_realm, "bob"))
    assert bob.status == 200 and await bob.text() == krb_realm.principal("bob")
    node = KerberosInitiator.from_server(load_jaas(krb_realm.server_jaas).kerberos_server(HOST))
    token = base64.b64encode(node.start(HOST).token).decode()
    peer = await client.get(READ, headers={"Authorization": f"Negotiate {token}"})
    assert peer.status == 200 and await peer.text() == f"pacemaker/{HOST}@{krb_realm.kdc.realm}"
    caplog.set_level(logging.INFO, "pmcluster.auth")
    alice = await client.get(READ, headers=negotiate(krb_realm, "alice"))
    assert alice.status == 403
    assert await alice.json() == {
        "error": "forbidden",
        "detail": f"{krb_realm.principal('alice')} is not authorized for this operation",
    }
    assert COOKIE_NAME not in alice.cookies and "WWW-Authenticate" not in alice.headers
    [(level, line)] = rejections(caplog)
    assert level == logging.WARNING
    assert f"user={krb_realm.principal('alice')}: not an authorized reader" in line


async def test_no_credentials_get_the_challenge_and_open_routes_stay_open(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pmcluster.auth")
    resp = await client.get(READ)
    await assert_challenged(resp, "authentication required (Negotiate)")
    assert COOKIE_NAME not in resp.cookies
    [(level, line)] = rejections(caplog)
    assert level == logging.INFO and line.endswith("user=-: no credentials")
    health = await client.get("/health")
    assert health.status == 200 and await health.text() == "-"
    # Writes are open unless pmcluster.auth.writes.
    assert (await client.put(READ, data=b"x")).status == 200


async def test_auth_writes_gates_writes(
    aiohttp_client: AiohttpClient, krb_realm: PacemakerRealm
) -> None:
    client = await gated(aiohttp_client, node_config(krb_realm, auth_writes=True))
    await assert_challenged(
        await client.put(READ, data=b"x"), "authentication required (Negotiate)"
    )
    nimbus = await client.put(READ, data=b"x", headers=negotiate(krb_realm, "nimbus"))
    assert nimbus.status == 200 and await nimbus.text() == krb_realm.principal("nimbus")


async def test_with_tls_the_cookie_is_secure(
    aiohttp_client: AiohttpClient, krb_realm: PacemakerRealm
) -> None:
    client = await gated(aiohttp_client, node_config(krb_realm, tls_cert="/unused/cert.pem"))
    resp = await client.get(READ, headers=negotiate(krb_realm, "nimbus"))
    assert resp.status == 200 and resp.cookies[COOKIE_NAME]["secure"] is True


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Basic eA==", "Basic credentials where Negotiate is required"),
        ("X" * 30 + " eA==", "X" * 20 + " credentials where Negotiate is required"),
        ("Negotiate", "empty or malformed Negotiate token"),
        ("Negotiate !!!", "empty or malformed Negotiate token"),
        ("Negotiate " + base64.b64encode(b"\x60\x82garbage" * 4).decode(), "Invalid token"),
    ],
    ids=["basic", "long-scheme", "no-token", "not-base64", "garbage"],
)
async def test_bad_credentials_are_challenged_with_the_reason_logged(
    client: Client, caplog: pytest.LogCaptureFixture, header: str, reason: str
) -> None:
    caplog.set_level(logging.INFO, "pmcluster.auth")
    resp = await client.get(READ, headers={"Authorization": header})
    negotiated = header.startswith("Negotiate")
    detail = "authentication failed" if negotiated else "authentication required (Negotiate)"
    await assert_challenged(resp, detail)
    [(level, line)] = rejections(caplog)
    assert level == logging.WARNING and reason in line
    assert "X" * 21 not in line


async def test_a_replayed_or_mangled_token_is_refused(
    client: Client, krb_realm: PacemakerRealm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pmcluster.auth")
    headers = negotiate(krb_realm, "nimbus")
    assert (await client.get(READ, headers=headers)).status == 200
    await assert_challenged(await client.get(READ, headers=headers), "authentication failed")
    assert "Request is a replay" in rejections(caplog)[-1][1]
    # Base64 with a character outside the alphabet is malformed, not silently repaired.
    token = negotiate(krb_realm, "nimbus")["Authorization"].removeprefix("Negotiate ")
    mangled = {"Authorization": f"Negotiate {token[:40]}*{token[40:]}"}
    await assert_challenged(await client.get(READ, headers=mangled), "authentication failed")
    assert rejections(caplog)[-1][1].endswith("empty or malformed Negotiate token")


async def test_the_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored(
    client: Client, krb_realm: PacemakerRealm
) -> None:
    for template in ("negotiate {}", "NEGOTIATE   {}"):
        token = negotiate(krb_realm, "nimbus")["Authorization"].removeprefix("Negotiate ")
        resp = await client.get(READ, headers={"Authorization": template.format(token)})
        assert resp.status == 200, template


# --- the session cookie ------------------------------------------------------------------------


async def test_a_valid_cookie_is_enough_for_a_reader(
    client: Client, krb_realm: PacemakerRealm
) -> None:
    resp = await client.get(
        READ, headers=cookie_header(signer(krb_realm).issue("bob@PMCLUSTER.TEST"))
    )
    assert resp.status == 200 and await resp.text() == "bob@PMCLUSTER.TEST"
    assert COOKIE_NAME not in resp.cookies  # no new cookie for a cookie


@pytest.mark.parametrize(
    "principal", ["alice@PMCLUSTER.TEST", "nimbus@OTHER.TEST", "pacemaker/elsewhere@PMCLUSTER.TEST"]
)
async def test_a_genuine_cookie_of_a_non_reader_is_forbidden(
    client: Client, krb_realm: PacemakerRealm, principal: str
) -> None:
    resp = await client.get(READ, headers=cookie_header(signer(krb_realm).issue(principal)))
    assert resp.status == 403
    assert (await resp.json())["detail"] == f"{principal} is not authorized for this operation"


async def test_a_forged_or_expired_cookie_is_challenged_and_cleared(
    client: Client, krb_realm: PacemakerRealm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pmcluster.auth")
    good = signer(krb_realm).issue(krb_realm.principal("nimbus"))
    expired = signer(krb_realm, clock=lambda: 1_000_000.0).issue(krb_realm.principal("nimbus"))
    other_key = CookieSigner(b"another cluster's secret", COOKIE_SECS).issue(
        "nimbus@PMCLUSTER.TEST"
    )
    for cookie in (good[:-2] + ("AA" if good[-2:] != "AA" else "BB"), expired, other_key):
        resp = await client.get(READ, headers=cookie_header(cookie))
        await assert_challenged(resp, "authentication required (Negotiate)")
        assert resp.cookies[COOKIE_NAME].value == "" and resp.cookies[COOKIE_NAME]["max-age"] == "0"
        assert rejections(caplog)[-1][1].endswith("session cookie invalid or expired")


async def test_credentials_sent_with_a_cookie_are_what_counts(
    client: Client, krb_realm: PacemakerRealm
) -> None:
    good = signer(krb_realm).issue(krb_realm.principal("nimbus"))
    # A bad cookie does not spoil a good Negotiate: a new cookie replaces it.
    stale = {**cookie_header("v1.bad.0.bad"), **negotiate(krb_realm, "bob")}
    resp = await client.get(READ, headers=stale)
    assert resp.status == 200 and await resp.text() == krb_realm.principal("bob")
    assert COOKIE_NAME in resp.cookies
    # A good cookie does not rescue bad credentials.
    both = {**cookie_header(good), "Authorization": "Negotiate !!!"}
    await assert_challenged(await client.get(READ, headers=both), "authentication failed")


async def test_without_a_realm_readers_are_short_names_in_any_realm(
    aiohttp_client: AiohttpClient, krb_realm: PacemakerRealm
) -> None:
    """A gate built without the node's realm (and no peers): any realm, peers none."""
    readers = kerberos_readers(node_config(krb_realm))
    gate = KerberosGate(
        acceptor=None,  # type: ignore[arg-type]  # never reached: cookies only
        cookies=signer(krb_realm),
        readers=readers,
        writes=False,
    )
    assert gate.realm is None and gate.peers == frozenset()
    assert gate.authorized("nimbus@OTHER.TEST") and gate.authorized("bob")
    assert not gate.authorized("alice@PMCLUSTER.TEST")
    assert not gate.authorized(f"pacemaker/{HOST}@PMCLUSTER.TEST")
    in_realm = KerberosGate(None, signer(krb_realm), readers, False, realm="PMCLUSTER.TEST")  # type: ignore[arg-type]
    assert not in_realm.authorized("bob") and in_realm.authorized("bob@PMCLUSTER.TEST")
    app = web.Application(middlewares=[web.middleware(gate)])
    app.router.add_get("/v1/pulse/{path}", whoami)
    client = await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())
    cookie = cookie_header(signer(krb_realm).issue("nimbus@OTHER.TEST"))
    resp = await client.get(READ, headers=cookie)
    assert resp.status == 200 and await resp.text() == "nimbus@OTHER.TEST"


async def test_a_gate_built_with_defaults_issues_a_plain_http_cookie(
    aiohttp_client: AiohttpClient, krb_realm: PacemakerRealm
) -> None:
    """Secure cookies only when asked for (a node with TLS): over plain HTTP a Secure cookie
    would never come back."""
    from pmcluster.auth.kerberos import KerberosAcceptor

    acceptor = KerberosAcceptor(load_jaas(krb_realm.server_jaas).kerberos_server(HOST))
    gate = KerberosGate(acceptor, signer(krb_realm), frozenset({"nimbus"}), False)
    app = web.Application(middlewares=[web.middleware(gate)])
    app.router.add_get("/v1/pulse/{path}", whoami)
    client = await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())
    resp = await client.get(READ, headers=negotiate(krb_realm, "nimbus"))
    assert resp.status == 200 and await resp.text() == krb_realm.principal("nimbus")
    assert not resp.cookies[COOKIE_NAME]["secure"]
