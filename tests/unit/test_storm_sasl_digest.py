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
            "wrong response",
        ),
        (b'nonce="OA6MG9tEQGm2hh"', b'nonce="OA6MG9tEQGm2hX"', "nonce"),
        (b"nc=00000001", b"nc=00000002", "nonce count"),
        (b"qop=auth", b"qop=auth-int", "qop"),
        (b'digest-uri="imap/elwood.innosoft.com"', b'digest-uri="imap/evil"', "digest-uri"),
        (b'realm="elwood.innosoft.com"', b'realm="other"', "realm"),
        (b'username="chris",', b"", "without username"),
        (b'cnonce="OA6MHXh6VqTrRk",', b"", "without cnonce"),
        (b"charset=utf-8", b"charset=latin-2", "charset"),
        (b"qop=auth", b'qop=auth,authzid="root"', "authzid"),
        (b"qop=auth", b"qop=auth,nc=00000001", "more than once"),
        (b'username="chris"', b'username="chris', "malformed"),
    ],
)
def test_server_refuses(old: bytes, new: bytes, why: str) -> None:
    server = rfc_server()
    server.challenge()
    assert old in RFC_RESPONSE
    with pytest.raises(AuthError):
        server.verify(RFC_RESPONSE.replace(old, new))
    assert not server.complete


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
    assert hexdigest == hexdigest.lower()
    expected = base64.b64encode(hexdigest.encode()).decode()
    assert storm_digest_password("storm", "s3cret") == expected
    assert storm_digest_password("storm", "s3cret ") != expected


def test_parse_directives() -> None:
    parsed = parse_directives(' a=1 , b="x,\\"y\\"" ,,C=" q " ,d=')
    assert parsed == {"a": ["1"], "b": ['x,"y"'], "c": [" q "], "d": [""]}
    for bad in ("novalue", "=x", 'a="x" junk', 'a="x'):
        with pytest.raises(AuthError):
            parse_directives(bad)
