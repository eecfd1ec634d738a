"""The server side of SASL DIGEST-MD5 (RFC 2831), as Storm's Pacemaker clients use it. No I/O.

Python's SASL libraries are client-only, so this is ours: `DigestMD5Server` issues one
challenge, verifies the client's digest-response against the shared password and answers
`rspauth=...` (mutual authentication). Only what Storm uses is offered: qop `auth` (no
integrity or confidentiality layer), algorithm `md5-sess`, charset utf-8, one realm, one
round (nonce count 1). Any user name that proves the password is accepted (Storm sends the
topology name, base64-encoded, and the secret is shared by every client).

`storm_digest_password(username, password)` derives the SASL password from the JAAS section
`PacemakerDigest` exactly as Storm does (`STORM-PROTOCOL.md` §4).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from pmcluster.errors import AuthError

__all__ = [
    "DEFAULT_DIGEST_URI",
    "DEFAULT_REALM",
    "DigestMD5Server",
    "client_response",
    "digest_response",
    "parse_directives",
    "storm_digest_password",
]

DEFAULT_REALM = "default"
DEFAULT_DIGEST_URI = "null/default"  # Storm: SASL protocol null, server name "default"
MAX_RESPONSE_SIZE = 4096  # RFC 2831 §2.1.2: a digest-response is at most 4096 bytes
_SINGLE = frozenset(
    {"username", "realm", "nonce", "cnonce", "nc", "qop", "digest-uri", "response", "charset"}
)


def storm_digest_password(username: str, password: str) -> str:
    """Storm's SASL password: base64 of the lowercase hex SHA-512 of `username:password`."""
    secret = hashlib.sha512(f"{username}:{password}".encode()).hexdigest()
    return base64.b64encode(secret.encode("ascii")).decode("ascii")


def parse_directives(text: str) -> dict[str, list[str]]:
    """`name=value, name="quoted \\"value\\""` pairs (RFC 2831 §7.1 lists); names lowercased.

    Raises `AuthError` on a malformed list (unterminated quote, missing `=`, empty name).
    """
    out: dict[str, list[str]] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise AuthError("malformed directive: no '='")
        name = text[i:eq].strip().lower()
        if not name or any(c in name for c in ' \t,"'):
            raise AuthError("malformed directive name")
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise AuthError("unterminated quoted string")
                c = text[i]
                if c == "\\" and i + 1 < n:
                    chars.append(text[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            value = "".join(chars)
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] != ",":
                raise AuthError("garbage after a quoted value")
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        out.setdefault(name, []).append(value)
    return out


def _bytes(value: str, utf8: bool) -> bytes:
    """RFC 2831 §2.1.2.1: ISO 8859-1 when every character fits, else UTF-8 (if announced)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        if not utf8:
            raise AuthError("non-Latin-1 value without charset=utf-8") from None
        return value.encode("utf-8")


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def digest_response(
    *,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    cnonce: str,
    nc: str,
    qop: str,
    digest_uri: str,
    authzid: str | None = None,
    utf8: bool = True,
    for_rspauth: bool = False,
) -> str:
    """The `response` value of RFC 2831 §2.1.2.1 (or, with `for_rspauth`, §2.1.3's rspauth)."""
    user_realm_pass = b":".join(_bytes(v, utf8) for v in (username, realm, password))
    a1 = hashlib.md5(user_realm_pass, usedforsecurity=False).digest()
    a1 += b":" + _bytes(nonce, utf8) + b":" + _bytes(cnonce, utf8)
    if authzid is not None:
        a1 += b":" + _bytes(authzid, utf8)
    a2 = (b":" if for_rspauth else b"AUTHENTICATE:") + _bytes(digest_uri, utf8)
    kd = ":".join((_md5_hex(a1), nonce, nc, cnonce, qop, _md5_hex(a2)))
    return _md5_hex(_bytes(kd, utf8))


class DigestMD5Server:
    """One DIGEST-MD5 authentication: `challenge()`, then `verify(response)` → rspauth token.

    After a successful `verify`, `username` is the (wire) user name the client proved.
    """

    def __init__(
        self,
        password: str,
        *,
        realm: str = DEFAULT_REALM,
        digest_uri: str = DEFAULT_DIGEST_URI,
        nonce: str | None = None,
    ) -> None:
        self._password = password
        self.realm = realm
        self.digest_uri = digest_uri
        self.nonce = (
            nonce if nonce is not None else base64.b64encode(secrets.token_bytes(30)).decode()
        )
        self.username: str | None = None
        self._challenged = False  # the one challenge was sent
        self._answered = False  # the one digest-response was checked
        self._done = False

    @property
    def complete(self) -> bool:
        return self._done

    def challenge(self) -> bytes:
        """The digest-challenge (RFC 2831 §2.1.1); only one per authentication."""
        if self._challenged:
            raise AuthError("challenge already sent")
        self._challenged = True
        return (
            f'realm="{self.realm}",nonce="{self.nonce}",qop="auth",charset=utf-8,algorithm=md5-sess'
        ).encode("ascii")

    def verify(self, token: bytes) -> bytes:
        """Check a digest-response; the `rspauth=...` token for the client, or `AuthError`."""
        if not self._challenged or self._answered:
            raise AuthError("digest-response out of turn")
        self._answered = True  # one attempt per challenge, one challenge per server
        if len(token) > MAX_RESPONSE_SIZE:
            raise AuthError(f"digest-response of {len(token)} bytes exceeds {MAX_RESPONSE_SIZE}")
        fields = parse_directives(token.decode("latin-1"))
        charset = fields.get("charset", [None])[0]
        utf8 = charset is not None and charset.lower() == "utf-8"
        if utf8:  # values are UTF-8 on the wire: parse again with the right decoding
            try:
                fields = parse_directives(token.decode("utf-8"))
            except UnicodeDecodeError:
                raise AuthError("digest-response is not UTF-8") from None
        for name in _SINGLE:
            if len(fields.get(name, ())) > 1:
                raise AuthError(f"directive {name} given more than once")
        one = {name: values[0] for name, values in fields.items()}
        for name in ("username", "nonce", "cnonce", "nc", "digest-uri", "response"):
            if not one.get(name):
                raise AuthError(f"digest-response without {name}")
        if one.get("charset", "utf-8").lower() != "utf-8":
            raise AuthError("charset must be utf-8")
        realm = one.get("realm", "")
        if realm != self.realm:
            raise AuthError(f"realm {realm!r} was not offered")
        if not hmac.compare_digest(one["nonce"].encode(), self.nonce.encode()):
            raise AuthError("nonce does not match the challenge")
        if one["nc"].lower() != "00000001":
            raise AuthError(f"nonce count {one['nc']!r}: one authentication per challenge")
        qop = one.get("qop", "auth")
        if qop != "auth":
            raise AuthError(f"qop {qop!r} was not offered (auth only)")
        if one["digest-uri"] != self.digest_uri:
            raise AuthError(f"digest-uri {one['digest-uri']!r}, expected {self.digest_uri!r}")
        authzid = one.get("authzid")
        if authzid is not None and authzid != one["username"]:
            raise AuthError("authzid differs from the user name")

        def compute(for_rspauth: bool) -> str:
            return digest_response(
                username=one["username"],
                realm=realm,
                password=self._password,
                nonce=self.nonce,
                cnonce=one["cnonce"],
                nc=one["nc"],
                qop=qop,
                digest_uri=one["digest-uri"],
                authzid=authzid,
                utf8=utf8,
                for_rspauth=for_rspauth,
            )

        if not hmac.compare_digest(one["response"].lower().encode(), compute(False).encode()):
            raise AuthError("wrong response: the client does not know the secret")
        self.username = one["username"]
        self._done = True
        return f"rspauth={compute(True)}".encode("ascii")


def client_response(
    challenge: bytes,
    username: str,
    password: str,
    *,
    digest_uri: str = DEFAULT_DIGEST_URI,
    cnonce: str | None = None,
) -> tuple[bytes, bytes]:
    """The client side, for tools and tests: (digest-response token, expected rspauth token).

    Takes the challenge's first realm, qop `auth`, charset utf-8, nonce count 1.
    """
    fields = parse_directives(challenge.decode("utf-8"))
    nonce = fields.get("nonce", [""])[0]
    if not nonce:
        raise AuthError("challenge without a nonce")
    if "auth" not in fields.get("qop", ["auth"])[0].split(","):
        raise AuthError("server does not offer qop auth")
    realm = fields.get("realm", [""])[0]
    cnonce = cnonce if cnonce is not None else base64.b64encode(secrets.token_bytes(30)).decode()
    response, rspauth = (
        digest_response(
            username=username,
            realm=realm,
            password=password,
            nonce=nonce,
            cnonce=cnonce,
            nc="00000001",
            qop="auth",
            digest_uri=digest_uri,
            for_rspauth=for_rspauth,
        )
        for for_rspauth in (False, True)
    )

    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    token = (
        f"charset=utf-8,username={quoted(username)},realm={quoted(realm)},"
        f"nonce={quoted(nonce)},nc=00000001,cnonce={quoted(cnonce)},"
        f"digest-uri={quoted(digest_uri)},maxbuf=65536,response={response},qop=auth"
    )
    return token.encode("utf-8"), f"rspauth={rspauth}".encode("ascii")
