"""SASL DIGEST-MD5 server (RFC 2831) and Storm's secret derivation: the RFC's worked example,
every refusal a server must make, and the directive parser on hostile input."""

from __future__ import annotations

import base64
import hashlib

import pytest

from pmcluster.errors import AuthError
from pmcluster.storm.sasl_digest import (
    MAX_RESPONSE_SIZE,
    DigestMD5Server,
    client_response,
    digest_response,
    parse_directives,
    storm_digest_password,
)

# RFC 2831 §4, the IMAP example.
RFC = {
    "username": "chris",
    "realm": "elwood.innosoft.com",
    "password": "secret",
    "nonce": "OA6MG9tEQGm2hh",
    "cnonce": "OA6MHXh6VqTrRk",
    "nc": "00000001",
    "qop": "auth",
    "digest_uri": "imap/elwood.innosoft.com",
}


def test_rfc2831_worked_example() -> None:
    assert digest_response(**RFC) == "d388dad90d4bbd760a152321f2143af7"  # type: ignore[arg-type]
    rspauth = digest_response(**RFC, for_rspauth=True)  # type: ignore[arg-type]
    assert rspauth == "ea40f60335c427b5527b84dbabcdfffd"


def rfc_server() -> DigestMD5Server:
    return DigestMD5Server(
        "secret", realm="elwood.innosoft.com", digest_uri="imap/elwood.innosoft.com",
        nonce="OA6MG9tEQGm2hh",
    )  # fmt: skip


RFC_RESPONSE = (
    b'charset=utf-8,username="chris",realm="elwood.innosoft.com",nonce="OA6MG9tEQGm2hh",'
    b'nc=00000001,cnonce="OA6MHXh6VqTrRk",digest-uri="imap/elwood.innosoft.com",'
    b"response=d388dad90d4bbd760a152321f2143af7,qop=auth"
)


def test_server_accepts_the_rfc_response_and_answers_rspauth() -> None:
    server = rfc_server()
    challenge = parse_directives(server.challenge().decode())
    assert challenge["realm"] == ["elwood.innosoft.com"]
    assert challenge["nonce"] == ["OA6MG9tEQGm2hh"]
    assert challenge["qop"] == ["auth"] and challenge["algorithm"] == ["md5-sess"]
    assert server.verify(RFC_RESPONSE) == b"rspauth=ea40f60335c427b5527b84dbabcdfffd"
    assert server.complete and server.username == "chris"


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        (
            b"d388dad90d4bbd760a152321f2143af7",
            b"d388dad90d4bbd760a152321f2143af8",
            "^wrong response: the client does not know the secret$",
        ),
        (b'nonce="OA6MG9tEQGm2hh"', b'nonce="OA6MG9tEQGm2hX"', "^nonce does not match"),
        (b"nc=00000001", b"nc=00000002", "^nonce count '00000002'"),
        (b"qop=auth", b"qop=auth-int", "^qop 'auth-int' was not offered"),
        (
            b'digest-uri="imap/elwood.innosoft.com"',
            b'digest-uri="imap/evil"',
            "^digest-uri 'imap/evil', expected 'imap/elwood.innosoft.com'$",
        ),
        (b'realm="elwood.innosoft.com"', b'realm="other"', "^realm 'other' was not offered$"),
        (b'username="chris",', b"", "^digest-response without username$"),
        (b'cnonce="OA6MHXh6VqTrRk",', b"", "^digest-response without cnonce$"),
        (b"charset=utf-8", b"charset=latin-2", "^charset must be utf-8$"),
        (b"qop=auth", b'qop=auth,authzid="root"', "^authzid differs from the user name$"),
        (b"qop=auth", b"qop=auth,nc=00000001", "^directive nc given more than once$"),
        (b'username="chris"', b'username="chris', "^(unterminated|garbage|malformed)"),
    ],
)
def test_server_refuses(old: bytes, new: bytes, why: str) -> None:
    """Each refusal for its own reason: a check that is gone shows up as another reason."""
    server = rfc_server()
    server.challenge()
    assert old in RFC_RESPONSE
    with pytest.raises(AuthError, match=why):
        server.verify(RFC_RESPONSE.replace(old, new))
    assert not server.complete


def _md5(data: str) -> str:
    return hashlib.md5(data.encode("latin-1"), usedforsecurity=False).hexdigest()


def _forged(**change: str) -> bytes:
    """The RFC example's digest-response with `change` applied and `response` recomputed by
    RFC 2831 §2.1.2.1 here (not by the code under test): it proves the password, so only the
    server's own check of the changed directive can refuse it."""
    f = {
        "username": "chris",
        "realm": "elwood.innosoft.com",
        "nonce": "OA6MG9tEQGm2hh",
        "cnonce": "OA6MHXh6VqTrRk",
        "nc": "00000001",
        "qop": "auth",
        "digest-uri": "imap/elwood.innosoft.com",
    } | change
    inner = hashlib.md5(
        f"{f['username']}:{f['realm']}:secret".encode(), usedforsecurity=False
    ).digest()
    a1 = inner + f":{f['nonce']}:{f['cnonce']}".encode()
    ha1 = hashlib.md5(a1, usedforsecurity=False).hexdigest()
    ha2 = _md5(f"AUTHENTICATE:{f['digest-uri']}")
    response = _md5(f"{ha1}:{f['nonce']}:{f['nc']}:{f['cnonce']}:{f['qop']}:{ha2}")
    return (
        f'charset=utf-8,username="{f["username"]}",realm="{f["realm"]}",nonce="{f["nonce"]}",'
        f'nc={f["nc"]},cnonce="{f["cnonce"]}",digest-uri="{f["digest-uri"]}",'
        f"response={response},qop={f['qop']}"
    ).encode()


def test_forged_response_helper_matches_the_rfc() -> None:
    assert _forged() == RFC_RESPONSE
    server = rfc_server()
    server.challenge()
    assert server.verify(_forged()) == b"rspauth=ea40f60335c427b5527b84dbabcdfffd"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"digest-uri": "imap/evil"}, "^digest-uri 'imap/evil'"),
        ({"nc": "00000002"}, "^nonce count '00000002'"),
        ({"realm": "other"}, "^realm 'other' was not offered$"),
        ({"qop": "auth-conf"}, "^qop 'auth-conf' was not offered"),
    ],
)
def test_server_refuses_a_right_password_for_the_wrong_session(
    change: dict[str, str], why: str
) -> None:
    """A response that proves the password but for another service, nonce count, realm or
    quality of protection is refused (without those checks it would be accepted)."""
    server = rfc_server()
    server.challenge()
    with pytest.raises(AuthError, match=why):
        server.verify(_forged(**change))
    assert not server.complete and server.username is None


def test_one_attempt_per_challenge_and_no_replay() -> None:
    server = rfc_server()
    with pytest.raises(AuthError, match="out of turn"):  # response before any challenge
        server.verify(RFC_RESPONSE)
    server.challenge()
    with pytest.raises(AuthError):
        server.verify(RFC_RESPONSE.replace(b"response=d", b"response=e"))
    with pytest.raises(AuthError, match="out of turn"):  # the right answer, too late
        server.verify(RFC_RESPONSE)
    with pytest.raises(AuthError):
        server.challenge()


def test_oversized_response_refused() -> None:
    server = rfc_server()
    server.challenge()
    with pytest.raises(AuthError, match="exceeds"):
        server.verify(RFC_RESPONSE + b"," + b"x=" + b"y" * MAX_RESPONSE_SIZE)


def test_nonces_are_fresh() -> None:
    assert DigestMD5Server("p").nonce != DigestMD5Server("p").nonce


def test_client_response_round_trip_with_non_ascii_user() -> None:
    server = DigestMD5Server("pw")
    token, rspauth = client_response(server.challenge(), 'tøpology "x"', "pw")
    assert server.verify(token) == rspauth
    assert server.username == 'tøpology "x"'
    other = DigestMD5Server("pw")
    token, _ = client_response(other.challenge(), "u", "not pw")
    with pytest.raises(AuthError, match="secret"):
        other.verify(token)


def test_storm_digest_password() -> None:
    # Storm: base64 of the lowercase hex SHA-512 of "user:password".
    hexdigest = hashlib.sha512(b"storm:s3cret").hexdigest()
    expected = base64.b64encode(hexdigest.encode()).decode()
    assert storm_digest_password("storm", "s3cret") == expected
    assert storm_digest_password("storm", "s3cret ") != expected


def test_parse_directives() -> None:
    parsed = parse_directives(' a=1 , b="x,\\"y\\"" ,,C=" q " ,d=')
    assert parsed == {"a": ["1"], "b": ['x,"y"'], "c": [" q "], "d": [""]}
    for bad in ("novalue", "=x", 'a="x" junk', 'a="x'):
        with pytest.raises(AuthError):
            parse_directives(bad)


# --- found by mutation testing (docs/testing.md) ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("novalue", "^malformed directive: no '='$"),
        ("=x", "^malformed directive name$"),
        ("a b=1", "^malformed directive name$"),
        ('a="x" junk', "^garbage after a quoted value$"),
        ('a="x"X', "^garbage after a quoted value$"),
        ('a="x', "^unterminated quoted string$"),
        ('a="x\\', "^unterminated quoted string$"),
    ],
)
def test_parse_directives_refuses_for_its_reason(text: str, why: str) -> None:
    with pytest.raises(AuthError, match=why):
        parse_directives(text)


def test_parse_directives_whitespace_and_escapes() -> None:
    assert parse_directives('\r\n\ta = 1 ,\tb=\t"x"\t, ,') == {"a": ["1"], "b": ["x"]}
    assert parse_directives('a="\\\\"') == {"a": ["\\"]}
    assert parse_directives("a=1,a=2") == {"a": ["1", "2"]}
    assert parse_directives("x=,y=2") == {"x": [""], "y": ["2"]}
    assert parse_directives("") == {}
    # Only blanks are skipped before a value, never its first characters.
    assert parse_directives('a=Xy, b=X"') == {"a": ["Xy"], "b": ['X"']}


def test_non_latin1_values_are_utf8_only_with_the_charset() -> None:
    """RFC 2831 §2.1.2.1: a user name outside ISO 8859-1 is hashed as UTF-8, and only when the
    client announced charset=utf-8."""
    server = DigestMD5Server("pw", nonce="n0nce")
    token, rspauth = client_response(server.challenge(), "топология-€", "pw", cnonce="c")
    assert server.verify(token) == rspauth and server.username == "топология-€"
    # The value independently: MD5 over the UTF-8 bytes of user:realm:password.
    inner = hashlib.md5("топология-€:default:pw".encode(), usedforsecurity=False).digest()
    ha1 = hashlib.md5(inner + b":n0nce:c", usedforsecurity=False).hexdigest()
    ha2 = hashlib.md5(b"AUTHENTICATE:null/default", usedforsecurity=False).hexdigest()
    kd = f"{ha1}:n0nce:00000001:c:auth:{ha2}"
    assert f"response={hashlib.md5(kd.encode(), usedforsecurity=False).hexdigest()}" in (
        token.decode()
    )
    with pytest.raises(AuthError, match=r"^non-Latin-1 value without charset=utf-8$"):
        digest_response(
            username="€", realm="r", password="p", nonce="n", cnonce="c", nc="00000001",
            qop="auth", digest_uri="u", utf8=False,
        )  # fmt: skip
    other = DigestMD5Server("pw")
    other.challenge()
    bad = token.replace(b"charset=utf-8,", b"") + b"\xff"
    with pytest.raises(AuthError):
        other.verify(bad)


def test_an_authzid_equal_to_the_user_is_part_of_the_digest() -> None:
    with_authzid = digest_response(**RFC, authzid="chris")  # type: ignore[arg-type]
    assert with_authzid != digest_response(**RFC)  # type: ignore[arg-type]
    # RFC 2831: A1 = H(user:realm:pass) ":" nonce ":" cnonce ":" authzid
    inner = hashlib.md5(b"chris:elwood.innosoft.com:secret", usedforsecurity=False).digest()
    a1 = inner + b":OA6MG9tEQGm2hh:OA6MHXh6VqTrRk:chris"
    ha1 = hashlib.md5(a1, usedforsecurity=False).hexdigest()
    ha2 = hashlib.md5(b"AUTHENTICATE:imap/elwood.innosoft.com", usedforsecurity=False).hexdigest()
    kd = f"{ha1}:OA6MG9tEQGm2hh:00000001:OA6MHXh6VqTrRk:auth:{ha2}"
    assert with_authzid == hashlib.md5(kd.encode(), usedforsecurity=False).hexdigest()
    server = rfc_server()
    server.challenge()
    token = RFC_RESPONSE.replace(b"d388dad90d4bbd760a152321f2143af7", with_authzid.encode())
    assert server.verify(token + b',authzid="chris"').startswith(b"rspauth=")


def test_response_size_limit_is_inclusive() -> None:
    server = rfc_server()
    server.challenge()
    padded = RFC_RESPONSE + b",x=" + b"y" * (MAX_RESPONSE_SIZE - len(RFC_RESPONSE) - 3)
    assert len(padded) == MAX_RESPONSE_SIZE
    assert server.verify(padded).startswith(b"rspauth=")


def test_state_and_challenge_errors_are_named() -> None:
    server = DigestMD5Server("p")
    assert not server.complete and server.username is None
    with pytest.raises(AuthError, match=r"^digest-response out of turn$"):
        server.verify(b"x=1")
    server.challenge()
    with pytest.raises(AuthError, match=r"^challenge already sent$"):
        server.challenge()
    assert len(base64.b64decode(server.nonce)) == 30  # 240 bits of nonce


@pytest.mark.parametrize(
    ("challenge", "why"),
    [
        (b'realm="r",qop="auth"', "^challenge without a nonce$"),
        (b'realm="r",nonce="n",qop="auth-int,auth-conf"', "^server does not offer qop auth$"),
    ],
)
def test_client_refuses_a_challenge_it_cannot_answer(challenge: bytes, why: str) -> None:
    with pytest.raises(AuthError, match=why):
        client_response(challenge, "u", "p")


def test_client_response_token_fields() -> None:
    token, rspauth = client_response(
        b'realm="r",nonce="n",qop="auth-int,auth"', 'a\\b"c', "p", digest_uri="x/y", cnonce="c"
    )
    fields = parse_directives(token.decode())
    assert fields["username"] == ['a\\b"c'] and fields["realm"] == ["r"]
    assert fields["digest-uri"] == ["x/y"] and fields["nc"] == ["00000001"]
    assert fields["qop"] == ["auth"] and fields["charset"] == ["utf-8"]
    assert fields["cnonce"] == ["c"] and fields["nonce"] == ["n"]
    no_realm, _ = client_response(b'nonce="n"', "u", "p", cnonce="c")
    assert parse_directives(no_realm.decode())["realm"] == [""]
    fresh = {parse_directives(client_response(b'nonce="n"', "u", "p")[0].decode())["cnonce"][0]
             for _ in range(3)}  # fmt: skip
    assert len(fresh) == 3 and all(len(base64.b64decode(c)) == 30 for c in fresh)
    assert rspauth.startswith(b"rspauth=") and len(rspauth) == len(b"rspauth=") + 32


def test_parse_directives_separators_are_exactly_the_rfcs() -> None:
    assert parse_directives("X=X") == {"x": ["X"]}
    with pytest.raises(AuthError, match=r"^unterminated quoted string$"):
        parse_directives('a="\\"')  # the escaped quote does not close the string


def _rfc_server_token(drop: bytes) -> tuple[DigestMD5Server, bytes]:
    server = rfc_server()
    server.challenge()
    assert drop in RFC_RESPONSE
    return server, RFC_RESPONSE.replace(drop, b"")


def test_optional_directives_take_the_rfc_defaults() -> None:
    """RFC 2831 §2.1.2: without qop the client means "auth"; without charset, ISO 8859-1."""
    server, token = _rfc_server_token(b",qop=auth")
    assert server.verify(token) == b"rspauth=ea40f60335c427b5527b84dbabcdfffd"
    server, token = _rfc_server_token(b"charset=utf-8,")
    assert server.verify(token) == b"rspauth=ea40f60335c427b5527b84dbabcdfffd"


def test_a_response_without_realm_matches_an_empty_realm() -> None:
    server = DigestMD5Server("secret", realm="", nonce="n")
    token, rspauth = client_response(server.challenge(), "u", "secret", cnonce="c")
    assert b'realm=""' in token
    assert server.verify(token.replace(b'realm="",', b"")) == rspauth


def test_a_response_announcing_utf8_must_be_utf8() -> None:
    server = rfc_server()
    server.challenge()
    with pytest.raises(AuthError, match=r"^digest-response is not UTF-8$"):
        server.verify(RFC_RESPONSE.replace(b'username="chris"', b'username="chr\xffs"'))
