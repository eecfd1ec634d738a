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
from pmcluster.errors import AuthError

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
    exc = reject(srv, "GET", "/v1/pulse/a", header)
    assert exc.reason == "replayed nonce and nonce count" and exc.user == "storm"


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
    assert exc.stale and exc.reason == "nonce expired" and exc.user == "storm"
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
    exc = reject(srv, "GET", "/v1/members", _header(params))
    assert exc.reason == reason
    # Once the header names a user, the refusal carries it for the log.
    assert exc.user == (params["username"] or None)


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
    exc = reject(srv, "GET", "/v1/members", wrong)
    assert exc.reason == "unknown user" and exc.user == "<hash>"  # not the hash itself
    srv = server()
    params = _valid_params(srv)
    odd = _header(params | {"username": hashed, "userhash": "true", "algorithm": "FOO"})
    assert reject(srv, "GET", "/v1/members", odd).reason == "unsupported algorithm"


# --- found by the second mutation run (issue 20) -------------------------------------------


def _rfc7616_response(sent: dict[str, str], password: str, method: str) -> str:
    """RFC 7616 §3.4.1 and §3.4.2, computed here from the values a header carries: H is the
    named algorithm, A1 gains `:nonce:cnonce` for the `-sess` variants, and the qop hashed is
    the one sent."""
    algorithm = sent.get("algorithm", "MD5").upper()

    def h(text: str) -> str:
        name = algorithm.removesuffix("-SESS").replace("-", "").lower()
        return hashlib.new(name, text.encode()).hexdigest()

    ha1 = h(f"{sent['username']}:{sent['realm']}:{password}")
    if algorithm.endswith("-SESS"):
        ha1 = h(f"{ha1}:{sent['nonce']}:{sent['cnonce']}")
    ha2 = h(f"{method}:{sent['uri']}")
    return h(f"{ha1}:{sent['nonce']}:{sent['nc']}:{sent['cnonce']}:{sent['qop']}:{ha2}")


@pytest.mark.parametrize("algorithm", ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess"])
def test_response_digest_follows_rfc7616_for_every_algorithm(algorithm: str) -> None:
    sent = {
        "username": "Mufasa",
        "realm": "http-auth@example.org",
        "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "uri": "/dir/index.html",
        "nc": "00000001",
        "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        "qop": "auth",
        "algorithm": algorithm,
    }
    got = response_digest(
        algorithm,
        user=sent["username"],
        realm=sent["realm"],
        password="Circle of Life",
        method="GET",
        uri=sent["uri"],
        nonce=sent["nonce"],
        nc=sent["nc"],
        cnonce=sent["cnonce"],
    )
    assert got == _rfc7616_response(sent, "Circle of Life", "GET")


def test_parse_auth_params_stops_at_garbage_and_keeps_the_first_of_a_repeat() -> None:
    assert parse_auth_params("a=1, =x, b=2") == {"a": "1"}
    assert parse_auth_params('a=1, A="2"') == {"a": "1"}
    srv = server()
    exc = reject(srv, "GET", "/v1/members", 'Digest username="storm", =x')
    assert exc.reason == "Digest parameter 'realm' missing" and exc.user == "storm"


def test_quotes_and_backslashes_in_a_user_name_survive_the_header() -> None:
    name = 'ops "on call", team\\a'  # a quote followed by a comma: only escaping keeps it
    clock = Clock()
    srv = DigestServer(
        DigestCredentials(name, "pw"), NonceSigner(SECRET, 300.0, clock=clock), ReplayCache()
    )
    header = client_for(srv, user=name, password="pw").authorization("GET", "/v1/members")
    assert header is not None
    assert parse_auth_params(header.removeprefix("Digest "))["username"] == name
    assert srv.verify("GET", "/v1/members", header).user == name


def test_a_refusal_is_an_auth_error_whose_message_is_its_reason() -> None:
    exc = reject(server(), "GET", "/", "Basic eDp5")
    assert isinstance(exc, AuthError) and str(exc) == exc.reason


def test_a_sha256_only_server_offers_and_accepts_sha256_alone() -> None:
    clock = Clock()
    srv = DigestServer(CREDS, NonceSigner(SECRET, 300.0, clock=clock), ReplayCache(), md5=False)
    (only,) = srv.challenges()
    assert parse_auth_params(only.removeprefix("Digest "))["algorithm"] == "SHA-256"
    header = client_for(srv).authorization("GET", "/v1/members")
    assert header is not None and "algorithm=SHA-256" in header
    assert srv.verify("GET", "/v1/members", header).user == "storm"
    md5 = DigestClient("storm", "correct horse")
    assert md5.take_challenge([only.replace("algorithm=SHA-256", "algorithm=MD5")])
    md5_header = md5.authorization("GET", "/v1/members")
    assert md5_header is not None
    assert reject(srv, "GET", "/v1/members", md5_header).reason == "unsupported algorithm 'MD5'"


def test_the_opaque_derives_from_the_opaque_secret_not_the_nonce_key() -> None:
    def opaque(nonce_secret: bytes, opaque_secret: bytes) -> str:
        srv = DigestServer(
            CREDS, NonceSigner(nonce_secret, 300.0), ReplayCache(), opaque_secret=opaque_secret
        )
        return parse_auth_params(srv.challenges()[0].removeprefix("Digest "))["opaque"]

    assert opaque(b"nonce key 1", b"cluster") == opaque(b"nonce key 2", b"cluster")
    assert opaque(b"nonce key 1", b"cluster") != opaque(b"nonce key 1", b"another cluster")


def test_challenge_parameters_parse_as_sent() -> None:
    srv = server()
    for challenge in srv.challenges():
        params = parse_auth_params(challenge.removeprefix("Digest "))
        assert params["charset"] == "UTF-8" and "stale" not in params
    for challenge in srv.challenges(stale=True):
        params = parse_auth_params(challenge.removeprefix("Digest "))
        assert params["charset"] == "UTF-8" and params["stale"] == "true"


def test_an_unparseable_absolute_uri_is_a_named_refusal() -> None:
    srv = server()
    params = _valid_params(srv) | {"uri": "http://[::1/v1/members"}
    exc = reject(srv, "GET", "/v1/members", _header(params))
    assert exc.reason == "malformed Digest header (ValueError)"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"algorithm": "A" * 30}, f"unsupported algorithm {'A' * 20!r}"),
        ({"qop": "q" * 30}, f"unsupported qop {'q' * 20!r}"),
        ({"realm": "r" * 50}, f"wrong realm {'r' * 40!r}"),
    ],
)
def test_refusal_reasons_quote_a_bounded_prefix_of_client_text(
    change: dict[str, str], reason: str
) -> None:
    """The reason goes to the log: a client's text in it is cut to 20 (40 for a realm)."""
    srv = server()
    assert reject(srv, "GET", "/v1/members", _header(_valid_params(srv) | change)).reason == reason


def test_another_nodes_nonce_is_a_stale_refusal_naming_the_user() -> None:
    clock = Clock()
    node_a, node_b = (
        DigestServer(CREDS, NonceSigner(SECRET, 300.0, clock=clock, node=n), ReplayCache())
        for n in ("a:6699", "b:6699")
    )
    header = client_for(node_a).authorization("GET", "/v1/members")
    assert header is not None
    exc = reject(node_b, "GET", "/v1/members", header)
    assert exc.reason == "nonce issued by another node"
    assert exc.stale is True and exc.user == "storm"
    assert node_a.verify("GET", "/v1/members", header).user == "storm"


def _md5_header_without_algorithm(srv: DigestServer, **change: str) -> str:
    """An MD5 answer with no `algorithm` parameter (RFC 7616 §3.4: it then means MD5)."""
    md5 = DigestClient("storm", "correct horse")
    assert md5.take_challenge([c for c in srv.challenges() if "algorithm=MD5" in c])
    header = md5.authorization("GET", "/v1/members")
    assert header is not None
    params = parse_auth_params(header.removeprefix("Digest ")) | change
    del params["algorithm"]
    return _header(params)


def test_an_answer_without_algorithm_is_md5() -> None:
    srv = server()
    assert srv.verify("GET", "/v1/members", _md5_header_without_algorithm(srv)).user == "storm"


def test_a_hashed_user_name_without_algorithm_is_an_md5_hash() -> None:
    srv = server()
    hashed = hashlib.md5(f"storm:{srv.realm}".encode()).hexdigest()
    header = _md5_header_without_algorithm(srv, username=hashed, userhash="true")
    assert srv.verify("GET", "/v1/members", header).user == "storm"


def test_a_hashed_user_name_with_a_session_algorithm() -> None:
    srv = server()
    nonce = parse_auth_params(srv.challenges()[0].removeprefix("Digest "))["nonce"]
    sent = {
        "username": "storm",
        "realm": "pmcluster",
        "nonce": nonce,
        "uri": "/v1/members",
        "algorithm": "SHA-256-sess",
        "qop": "auth",
        "nc": "00000001",
        "cnonce": "c0ffee",
    }
    sent["response"] = _rfc7616_response(sent, "correct horse", "GET")
    hashed = hashlib.sha256(b"storm:pmcluster").hexdigest()
    header = _header(sent | {"username": hashed, "userhash": "true"})
    assert srv.verify("GET", "/v1/members", header).user == "storm"


def test_nonce_count_hex_in_either_case_is_one_count() -> None:
    """An upper-case nc is accepted, and is the same count as its lower-case spelling: a
    case change must not make a captured request replayable."""
    srv = server()
    sent = _valid_params(srv) | {"nc": "0000000A"}
    sent["response"] = _rfc7616_response(sent, "correct horse", "GET")
    assert srv.verify("GET", "/v1/members", _header(sent)).user == "storm"
    again = sent | {"nc": "0000000a"}
    again["response"] = _rfc7616_response(again, "correct horse", "GET")
    assert reject(srv, "GET", "/v1/members", _header(again)).reason == (
        "replayed nonce and nonce count"
    )


def test_each_nonce_has_its_own_counts_and_is_forgotten_when_it_expires() -> None:
    clock = Clock()
    replays = ReplayCache(clock=clock)
    srv = DigestServer(CREDS, NonceSigner(SECRET, 60.0, clock=clock), replays)
    first, second = client_for(srv), client_for(srv)
    assert first.nonce != second.nonce
    for client in (first, second):  # both at nc=00000001
        header = client.authorization("GET", "/v1/members")
        assert header is not None
        srv.verify("GET", "/v1/members", header)
    assert len(replays) == 2
    clock.now += 61.0  # both nonces have expired: their counts go at the next sweep
    header = client_for(srv).authorization("GET", "/v1/members")
    assert header is not None
    srv.verify("GET", "/v1/members", header)
    assert len(replays) == 1


@pytest.mark.parametrize(
    ("uri", "target"),
    [
        ("http://node-a:6699/v1/members", "/v1/members"),
        ("https://node-a:6699/v1/pulse/a?fields=all", "/v1/pulse/a?fields=all"),
    ],
)
def test_an_absolute_uri_names_its_path_and_query(uri: str, target: str) -> None:
    """RFC 7616 §3.4: `uri` may be the absolute form of the request target."""
    srv = server()
    header = client_for(srv).authorization("GET", uri)
    assert header is not None
    assert srv.verify("GET", target, header).user == "storm"


@pytest.mark.parametrize(
    ("uri", "target"),
    [
        ("http://node-a:6699/v1/members", "/v1/pulse/a"),
        ("http://node-a:6699/v1/members", "/v1/members?x=1"),
        ("http://node-a:6699/v1/members?x=1", "/v1/members"),
    ],
)
def test_an_absolute_uri_of_another_target_is_refused(uri: str, target: str) -> None:
    srv = server()
    header = client_for(srv).authorization("GET", uri)
    assert header is not None
    assert reject(srv, "GET", target, header).reason == (
        "Digest uri does not match the request target"
    )


def _challenge(**params: str) -> str:
    return "Digest " + ", ".join(f'{k}="{v}"' for k, v in params.items())


UNUSABLE = [
    _challenge(realm="r", qop="auth", algorithm="SHA-512-256", nonce="n1"),  # unknown algorithm
    _challenge(realm="r", qop="auth-int", algorithm="MD5", nonce="n2"),  # no qop=auth
    _challenge(realm="r", algorithm="MD5", nonce="n3"),  # no qop at all (RFC 2069)
    _challenge(realm="r", qop="auth", algorithm="MD5"),  # no nonce
    'Basic realm="r"',
]


@pytest.mark.parametrize("unusable", UNUSABLE)
def test_the_client_ignores_a_challenge_it_cannot_answer(unusable: str) -> None:
    client = DigestClient("storm", "correct horse")
    assert not client.take_challenge([unusable])
    assert client.nonce is None and client.authorization("GET", "/") is None
    # ... and looks on to the next one.
    good = _challenge(realm="r", qop="auth", algorithm="MD5", nonce="good")
    assert client.take_challenge([unusable, good]) and client.nonce == "good"


def test_the_client_takes_the_strongest_challenge_in_any_order() -> None:
    md5, sha = (
        _challenge(realm="r", qop="auth", algorithm=a, nonce=n)
        for a, n in (("MD5", "m"), ("SHA-256", "s"))
    )
    no_algorithm = _challenge(realm="r", qop="auth", nonce="plain")  # MD5 by default
    for headers in ([md5, sha], [sha, md5], [no_algorithm, sha]):
        client = DigestClient("storm", "correct horse")
        assert client.take_challenge(headers) and client.nonce == "s", headers
    # Of two equally strong challenges the first, the server's order of preference, is kept.
    client = DigestClient("storm", "correct horse")
    other = sha.replace('nonce="s"', 'nonce="t"')
    assert client.take_challenge([sha, other]) and client.nonce == "s"
    # A qop list is comma-separated, with or without spaces.
    listed = _challenge(realm="r", qop="auth-int,auth", algorithm="MD5", nonce="q")
    assert client.take_challenge([listed]) and client.nonce == "q"


def test_a_challenge_without_algorithm_is_answered_with_md5() -> None:
    srv = server()
    md5 = next(c for c in srv.challenges() if "algorithm=MD5" in c)
    client = DigestClient("storm", "correct horse")
    assert client.take_challenge([md5.replace("algorithm=MD5, ", "")])
    header = client.authorization("GET", "/v1/members")
    assert header is not None
    assert parse_auth_params(header.removeprefix("Digest "))["algorithm"] == "MD5"
    assert srv.verify("GET", "/v1/members", header).user == "storm"


def test_the_client_answer_is_rfc7616_over_what_it_sends_and_echoes_opaque() -> None:
    srv = server()
    challenge = parse_auth_params(srv.challenges()[0].removeprefix("Digest "))
    header = client_for(srv).authorization("PUT", "/v1/pulse/a")
    assert header is not None
    sent = parse_auth_params(header.removeprefix("Digest "))
    assert sent["qop"] == "auth" and sent["opaque"] == challenge["opaque"]
    assert sent["response"] == _rfc7616_response(sent, "correct horse", "PUT")
    # A challenge without realm (or opaque) is answered for the empty realm, without opaque.
    client = DigestClient("storm", "correct horse")
    assert client.take_challenge([_challenge(qop="auth", algorithm="SHA-256", nonce="n")])
    header = client.authorization("GET", "/")
    assert header is not None
    sent = parse_auth_params(header.removeprefix("Digest "))
    assert sent["realm"] == "" and "opaque" not in sent
    assert sent["response"] == _rfc7616_response(sent, "correct horse", "GET")
