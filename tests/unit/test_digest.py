"""RFC 7616 Digest (server and client side) and the signed tokens behind it."""

from __future__ import annotations

import hashlib

import pytest

from pmcluster.auth.digest import (
    DigestClient,
    DigestRejected,
    DigestServer,
    parse_auth_params,
    response_digest,
)
from pmcluster.auth.jaas import DigestCredentials
from pmcluster.auth.tokens import CookieSigner, NonceCheck, NonceSigner, ReplayCache

SECRET = b"digest-password:correct horse"
CREDS = DigestCredentials("storm", "correct horse")


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def server(clock: Clock | None = None, lifetime: float = 300.0) -> DigestServer:
    clock = clock or Clock()
    return DigestServer(CREDS, NonceSigner(SECRET, lifetime, clock=clock), ReplayCache(clock=clock))


def client_for(
    srv: DigestServer, user: str = "storm", password: str = "correct horse"
) -> DigestClient:
    client = DigestClient(user, password)
    assert client.take_challenge(srv.challenges())
    return client


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_example(algorithm: str, expected: str) -> None:
    assert (
        response_digest(
            algorithm,
            user="Mufasa",
            realm="http-auth@example.org",
            password="Circle of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            nc="00000001",
            cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
        == expected
    )


def test_challenges_offer_sha256_then_md5_with_one_nonce() -> None:
    first, second = server().challenges()
    a, b = parse_auth_params(first[len("Digest ") :]), parse_auth_params(second[len("Digest ") :])
    assert (a["algorithm"], b["algorithm"]) == ("SHA-256", "MD5")
    assert a["nonce"] == b["nonce"] and a["opaque"] == b["opaque"]
    assert a["qop"] == "auth" and a["realm"] == "pmcluster"


def test_client_prefers_sha256_and_counts_nc_without_new_challenges() -> None:
    srv = server()
    client = client_for(srv)
    for i in range(1, 4):
        header = client.authorization("GET", f"/v1/pulse/p{i}")
        assert header is not None
        params = parse_auth_params(header[len("Digest ") :])
        assert params["algorithm"] == "SHA-256" and params["nc"] == f"{i:08x}"
        assert srv.verify("GET", f"/v1/pulse/p{i}", header).user == "storm"


def test_md5_and_session_variants_are_accepted() -> None:
    srv = server()
    md5_only = [c for c in srv.challenges() if "MD5" in c]
    client = DigestClient("storm", "correct horse")
    assert client.take_challenge(md5_only)
    header = client.authorization("HEAD", "/v1/pulse/x")
    assert header is not None and "algorithm=MD5" in header
    srv.verify("HEAD", "/v1/pulse/x", header)
    nonce = client.nonce
    assert nonce is not None
    sess = response_digest(
        "SHA-256-SESS",
        user="storm",
        realm="pmcluster",
        password="correct horse",
        method="GET",
        uri="/v1/members",
        nonce=nonce,
        nc="00000009",
        cnonce="abc",
    )
    srv.verify(
        "GET",
        "/v1/members",
        f'Digest username="storm", realm="pmcluster", nonce="{nonce}", uri="/v1/members", '
        f'algorithm=SHA-256-sess, response="{sess}", qop=auth, nc=00000009, cnonce="abc"',
    )


def reject(srv: DigestServer, method: str, target: str, header: str) -> DigestRejected:
    with pytest.raises(DigestRejected) as caught:
        srv.verify(method, target, header)
    return caught.value


def test_wrong_password_and_unknown_user_are_rejected_and_named() -> None:
    srv = server()
    wrong = client_for(srv, password="battery staple").authorization("GET", "/v1/pulse/a")
    assert wrong is not None
    exc = reject(srv, "GET", "/v1/pulse/a", wrong)
    assert exc.user == "storm" and "password" in exc.reason and not exc.stale
    unknown = client_for(srv, user="mallory").authorization("GET", "/v1/pulse/a")
    assert unknown is not None
    exc = reject(srv, "GET", "/v1/pulse/a", unknown)
    assert exc.user == "mallory" and exc.reason == "unknown user"


def test_replayed_nonce_and_count_is_rejected() -> None:
    srv = server()
    header = client_for(srv).authorization("GET", "/v1/pulse/a")
    assert header is not None
    srv.verify("GET", "/v1/pulse/a", header)
    assert "replayed" in reject(srv, "GET", "/v1/pulse/a", header).reason


def test_counts_may_arrive_out_of_order_but_never_twice() -> None:
    srv = server()
    client = client_for(srv)
    headers = [client.authorization("GET", "/v1/members") for _ in range(3)]
    for header in reversed(headers):
        assert header is not None
        srv.verify("GET", "/v1/members", header)
    assert headers[1] is not None
    reject(srv, "GET", "/v1/members", headers[1])


def test_tampered_path_is_rejected() -> None:
    srv = server()
    header = client_for(srv).authorization("GET", "/v1/pulse/mine")
    assert header is not None
    # The same credentials for another path: the uri does not match the request target ...
    assert "uri" in reject(srv, "GET", "/v1/pulse/theirs", header).reason
    # ... and rewriting the uri inside the header breaks the response hash.
    forged = header.replace('uri="/v1/pulse/mine"', 'uri="/v1/pulse/theirs"')
    assert "mismatch" in reject(srv, "GET", "/v1/pulse/theirs", forged).reason
    # A different method with the same uri is another request too.
    assert "mismatch" in reject(srv, "DELETE", "/v1/pulse/mine", header).reason


def test_expired_nonce_is_stale_and_a_fresh_challenge_recovers() -> None:
    clock = Clock()
    srv = server(clock, lifetime=60.0)
    client = client_for(srv)
    clock.now += 61.0
    header = client.authorization("GET", "/v1/pulse/a")
    assert header is not None
    exc = reject(srv, "GET", "/v1/pulse/a", header)
    assert exc.stale and exc.reason == "nonce expired"
    assert all("stale=true" in c for c in srv.challenges(stale=True))
    assert client.take_challenge(srv.challenges(stale=True))
    header = client.authorization("GET", "/v1/pulse/a")
    assert header is not None
    srv.verify("GET", "/v1/pulse/a", header)


def test_expired_nonce_with_a_wrong_password_is_not_stale() -> None:
    clock = Clock()
    srv = server(clock, lifetime=60.0)
    header = client_for(srv, password="nope").authorization("GET", "/v1/pulse/a")
    clock.now += 61.0
    assert header is not None
    assert not reject(srv, "GET", "/v1/pulse/a", header).stale  # no retry loop for bad passwords


def test_nonce_of_another_cluster_or_tampered_is_invalid() -> None:
    other = DigestServer(
        CREDS,  # same user and password, nonces signed with another cluster's secret
        NonceSigner(b"another secret", 300.0),
        ReplayCache(),
    )
    srv = server()
    foreign = client_for(other).authorization("GET", "/v1/pulse/a")
    assert foreign is not None
    assert "not issued by this cluster" in reject(srv, "GET", "/v1/pulse/a", foreign).reason
    signer = NonceSigner(SECRET, 300.0)
    nonce = signer.issue()
    flipped = nonce[:5] + ("A" if nonce[5] != "A" else "B") + nonce[6:]
    assert signer.check(nonce) is NonceCheck.VALID
    assert signer.check(flipped) is NonceCheck.INVALID
    assert signer.check("not base64 at all!") is NonceCheck.INVALID


def test_any_node_accepts_any_nodes_nonce_with_its_own_replay_cache() -> None:
    node_a, node_b = server(), server()
    client = client_for(node_a)
    for srv in (node_a, node_b, node_a):
        header = client.authorization("GET", "/v1/children/")
        assert header is not None
        assert srv.verify("GET", "/v1/children/", header).user == "storm"


def test_malformed_headers_are_rejected_not_crashing() -> None:
    srv = server()
    for header in (
        "Basic c3Rvcm06eA==",
        "Digest",
        'Digest username="storm"',
        'Digest username="storm", realm="pmcluster", nonce="x", uri="/v1/members", '
        'response="0", qop=auth-int, nc=00000001, cnonce="c"',
        'Digest username="storm", realm="pmcluster", nonce="x", uri="/v1/members", '
        'response="0", qop=auth, nc=zz, cnonce="c"',
    ):
        reject(srv, "GET", "/v1/members", header)


def test_parse_auth_params_handles_quotes_commas_and_escapes() -> None:
    params = parse_auth_params('a=1, B="x, \\"y\\"", c=token, d=""')
    assert params == {"a": "1", "b": 'x, "y"', "c": "token", "d": ""}


def test_authentication_info_proves_the_server_knows_the_password() -> None:
    srv = server()
    header = client_for(srv).authorization("GET", "/v1/members")
    assert header is not None
    info = parse_auth_params(srv.verify("GET", "/v1/members", header).authentication_info)
    sent = parse_auth_params(header.removeprefix("Digest "))
    assert info["nc"] == sent["nc"] == "00000001" and info["cnonce"] == sent["cnonce"]
    assert info["qop"] == "auth"
    assert info["rspauth"] == _rfc7616_rspauth(sent, "correct horse")


def _rfc7616_rspauth(sent: dict[str, str], password: str) -> str:
    """RFC 7616 §3.5, computed here and not by the code under test: the response digest with
    A2 = ":" + uri (no method), over the client's own nonce, nc and cnonce."""

    def h(text: str) -> str:
        name = sent.get("algorithm", "MD5").upper().removesuffix("-SESS").replace("-", "")
        return hashlib.new(name.lower(), text.encode()).hexdigest()

    ha1 = h(f"{sent['username']}:{sent['realm']}:{password}")
    if sent.get("algorithm", "").upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{sent['nonce']}:{sent['cnonce']}")
    ha2 = h(f":{sent['uri']}")
    return h(f"{ha1}:{sent['nonce']}:{sent['nc']}:{sent['cnonce']}:auth:{ha2}")


def test_session_cookies_verify_expire_and_resist_tampering() -> None:
    clock = Clock()
    signer = CookieSigner(b"k" * 32, 600.0, clock=clock)
    cookie = signer.issue("nimbus/host@EXAMPLE.COM")
    session = signer.check(cookie)
    assert session is not None and session.principal == "nimbus/host@EXAMPLE.COM"
    assert CookieSigner(b"k" * 32, 600.0, clock=clock).check(cookie) is not None  # any node
    assert CookieSigner(b"x" * 32, 600.0, clock=clock).check(cookie) is None  # other cluster
    version, principal, expires, mac = cookie.split(".")
    evil = "bWFsbG9yeUBFWEFNUExFLkNPTQ"  # "mallory@EXAMPLE.COM"
    assert signer.check(f"{version}.{evil}.{expires}.{mac}") is None
    assert signer.check(f"{version}.{principal}.{int(expires) + 9999}.{mac}") is None
    clock.now += 600.0
    assert signer.check(cookie) is None
    # A nonce never verifies as a cookie: separate keys per purpose.
    assert signer.check(NonceSigner(b"k" * 32, 600.0).issue()) is None


def test_replay_cache_forgets_expired_nonces() -> None:
    clock = Clock()
    cache = ReplayCache(clock=clock)
    assert cache.first_use("n1", 1, clock.now + 10)
    assert not cache.first_use("n1", 1, clock.now + 10)
    clock.now += 11
    assert cache.first_use("n2", 1, clock.now + 10)
    assert len(cache) == 1


# --- each refusal for its own reason (mutation testing found these unchecked) --------------


def _valid_params(srv: DigestServer) -> dict[str, str]:
    header = client_for(srv).authorization("GET", "/v1/members")
    assert header is not None
    return parse_auth_params(header.removeprefix("Digest "))


def _header(params: dict[str, str]) -> str:
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "Digest " + ", ".join(f"{k}={quote(v)}" for k, v in params.items())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"algorithm": "FOO"}, "unsupported algorithm 'FOO'"),
        ({"qop": "auth-int"}, "unsupported qop 'auth-int'"),
        ({"realm": "elsewhere"}, "wrong realm 'elsewhere'"),
        ({"opaque": "forged"}, "wrong opaque value"),
        ({"nc": "zz"}, "malformed nonce count"),
        ({"nc": "000000001"}, "malformed nonce count"),
        ({"uri": "/v1/pulse/other"}, "Digest uri does not match the request target"),
        ({"nonce": "bm90LW91cnM="}, "nonce not issued by this cluster"),
        ({"username": "mallory"}, "unknown user"),
        ({"cnonce": "changed"}, "wrong password (response mismatch)"),
        *(({key: ""}, f"Digest parameter {key!r} missing") for key in
          ("realm", "nonce", "uri", "response", "qop", "nc", "cnonce", "username")),
    ],
)  # fmt: skip
def test_each_refusal_names_its_reason(change: dict[str, str], reason: str) -> None:
    srv = server()
    params = _valid_params(srv) | change
    assert reject(srv, "GET", "/v1/members", _header(params)).reason == reason


def test_non_digest_credentials_are_named() -> None:
    srv = server()
    assert reject(srv, "GET", "/", "Basic eDp5").reason == (
        "basic credentials where Digest is required"
    )
    assert reject(srv, "GET", "/", "").reason == "empty credentials where Digest is required"


def test_extended_username_is_accepted_in_utf8_only() -> None:
    """RFC 7616 §3.4.4 username* (RFC 5987 encoding) instead of username."""
    srv = server()
    params = _valid_params(srv)
    del params["username"]
    assert (
        srv.verify("GET", "/v1/members", _header(params | {"username*": "UTF-8''storm"})).user
        == "storm"
    )
    srv = server()
    latin = _valid_params(srv)
    del latin["username"]
    bad = _header(latin | {"username*": "ISO-8859-1''storm"})
    assert reject(srv, "GET", "/v1/members", bad).reason == "username* must be UTF-8"
    srv = server()
    broken = _valid_params(srv)
    del broken["username"]
    exc = reject(srv, "GET", "/v1/members", _header(broken | {"username*": "UTF-8''%ff"}))
    assert exc.reason == "username* is not UTF-8"


def test_hashed_username_is_accepted_and_a_wrong_hash_is_unknown() -> None:
    """RFC 7616 §3.4.4 userhash=true: username is H(user:realm), the response uses the user."""
    srv = server()
    params = _valid_params(srv)
    algorithm = params.get("algorithm", "MD5").upper().replace("-", "")
    hashed = hashlib.new(algorithm.lower(), f"storm:{srv.realm}".encode()).hexdigest()
    ok = _header(params | {"username": hashed, "userhash": "true"})
    assert srv.verify("GET", "/v1/members", ok).user == "storm"
    srv = server()
    params = _valid_params(srv)
    wrong = _header(params | {"username": "0" * len(hashed), "userhash": "true"})
    assert reject(srv, "GET", "/v1/members", wrong).reason == "unknown user"
    srv = server()
    params = _valid_params(srv)
    odd = _header(params | {"username": hashed, "userhash": "true", "algorithm": "FOO"})
    assert reject(srv, "GET", "/v1/members", odd).reason == "unsupported algorithm"
