"""HTTP Digest access authentication (RFC 7616), server and client side, without I/O.

Server: `DigestServer.challenges()` gives the `WWW-Authenticate` values (SHA-256 first, then
MD5, sharing one nonce so a client that merges the two headers still answers correctly);
`DigestServer.verify()` checks an `Authorization: Digest ...` value against the one JAAS user
(`PacemakerDigest`) and returns the user name or raises `DigestRejected` with a reason fit for
the log (never a secret); a malformed header is a rejection too (401), never an exception.
Nonces are stateless and signed (`tokens.NonceSigner`) and bound to the node that issued them:
the replay cache, which rejects a second use of one (nonce, nc) pair, is per node, so a nonce
good on every node would let a captured header replay once on each of them. The nonce and
`opaque` keys derive from the cluster secret, never from the password alone: a challenge must
not be an offline password-guessing oracle. `md5=False` offers and accepts SHA-256 only.

Client: `DigestClient` caches the last challenge and counts `nc`, so pmcluster's own client
answers without a challenge round trip on every request. `qop=auth` only; `-sess` variants
are accepted from clients.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pmcluster.auth.jaas import DigestCredentials
from pmcluster.auth.tokens import NonceCheck, NonceSigner, ReplayCache, derive_key
from pmcluster.errors import AuthError

__all__ = [
    "ALGORITHMS",
    "DEFAULT_REALM",
    "DigestClient",
    "DigestRejected",
    "DigestServer",
    "parse_auth_params",
]

DEFAULT_REALM = "pmcluster"
_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}
ALGORITHMS = ("SHA-256", "MD5")  # offered in this order
_PARAM = re.compile(
    r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)"""
)


def parse_auth_params(text: str) -> dict[str, str]:
    """`k=v, k="quoted, with \\" escapes"` (RFC 7235 auth-param list) -> {lowercase k: v}."""
    params: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _PARAM.match(text, pos)
        if match is None or match.end() == pos:
            break
        key, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.setdefault(key, value)
        pos = match.end()
    return params


def _split_scheme(header: str) -> tuple[str, str]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), rest


def _hash(algorithm: str, text: str) -> str:
    base = algorithm.upper().removesuffix("-SESS")
    return _HASHES[base](text.encode("utf-8")).hexdigest()


def response_digest(
    algorithm: str,
    *,
    user: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str = "auth",
) -> str:
    """The `response` of RFC 7616 §3.4.1 for qop=auth (with `method` "": §3.5's rspauth)."""
    ha1 = _hash(algorithm, f"{user}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestRejected(AuthError):
    """Credentials were missing or wrong; `reason` and `user` are safe to log."""

    def __init__(self, reason: str, *, user: str | None = None, stale: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user = user
        self.stale = stale


@dataclass(frozen=True, slots=True)
class DigestSuccess:
    user: str
    authentication_info: str  # the `Authentication-Info` header value (rspauth)


class DigestServer:
    """Verifies Digest credentials against the JAAS user; see the module docstring."""

    def __init__(
        self,
        credentials: DigestCredentials,
        nonces: NonceSigner,
        replays: ReplayCache,
        *,
        realm: str = DEFAULT_REALM,
        opaque_secret: bytes | None = None,
        md5: bool = True,
    ) -> None:
        """`opaque_secret`: the cluster secret (the same on every node); `md5`: whether MD5
        is offered and accepted besides SHA-256 (`pmcluster.auth.digest.md5`)."""
        self._creds = credentials
        self._nonces = nonces
        self._replays = replays
        self.realm = realm
        self._algorithms = ALGORITHMS if md5 else ("SHA-256",)
        # The same on every node (from the cluster secret), so any node's opaque works.
        key = opaque_secret if opaque_secret is not None else nonces.key_material
        self._opaque = derive_key(key, "digest-opaque")[:12].hex()

    def challenges(self, *, stale: bool = False) -> list[str]:
        """`WWW-Authenticate` values: one per algorithm, one fresh nonce for all."""
        nonce = self._nonces.issue()
        tail = ", stale=true" if stale else ""
        return [
            f'Digest realm="{self.realm}", qop="auth", algorithm={algorithm}, '
            f'nonce="{nonce}", opaque="{self._opaque}", charset=UTF-8{tail}'
            for algorithm in self._algorithms
        ]

    def verify(self, method: str, target: str, authorization: str) -> DigestSuccess:
        """Check one `Authorization` value for a request `method target` (raw target);
        anything malformed (bad escapes, non-ASCII where hex belongs) is a `DigestRejected`."""
        try:
            return self._verify(method, target, authorization)
        except DigestRejected:
            raise
        except (ValueError, TypeError, UnicodeError, KeyError) as exc:
            raise DigestRejected(f"malformed Digest header ({type(exc).__name__})") from None

    def _verify(self, method: str, target: str, authorization: str) -> DigestSuccess:
        scheme, rest = _split_scheme(authorization)
        if scheme != "digest":
            raise DigestRejected(f"{scheme or 'empty'} credentials where Digest is required")
        p = parse_auth_params(rest)
        user = self._user(p)
        for key in ("realm", "nonce", "uri", "response", "qop", "nc", "cnonce"):
            if not p.get(key):
                raise DigestRejected(f"Digest parameter {key!r} missing", user=user)
        algorithm = p.get("algorithm", "MD5").upper()
        if algorithm.removesuffix("-SESS") not in self._algorithms:
            raise DigestRejected(f"unsupported algorithm {algorithm[:20]!r}", user=user)
        if p["qop"].lower() != "auth":
            raise DigestRejected(f"unsupported qop {p['qop'][:20]!r}", user=user)
        if p["realm"] != self.realm:
            raise DigestRejected(f"wrong realm {p['realm'][:40]!r}", user=user)
        if not _same_target(p["uri"], target):
            raise DigestRejected("Digest uri does not match the request target", user=user)
        if not re.fullmatch(r"[0-9a-fA-F]{8}", p["nc"]):
            raise DigestRejected("malformed nonce count", user=user)
        check = self._nonces.check(p["nonce"])
        if check is NonceCheck.INVALID:
            raise DigestRejected("nonce not issued by this cluster", user=user)
        if check is NonceCheck.OTHER_NODE:
            # Genuine, but another node's: its replay cache is not ours. Ask for a fresh one.
            raise DigestRejected("nonce issued by another node", user=user, stale=True)
        if "opaque" in p and not hmac.compare_digest(p["opaque"].encode(), self._opaque.encode()):
            raise DigestRejected("wrong opaque value", user=user)
        if user != self._creds.username:
            raise DigestRejected("unknown user", user=user)
        expected = response_digest(
            algorithm,
            user=user,
            realm=self.realm,
            password=self._creds.password,
            method=method,
            uri=p["uri"],
            nonce=p["nonce"],
            nc=p["nc"],
            cnonce=p["cnonce"],
        )
        if not hmac.compare_digest(expected.encode(), p["response"].lower().encode()):
            raise DigestRejected("wrong password (response mismatch)", user=user)
        if check is NonceCheck.STALE:
            raise DigestRejected("nonce expired", user=user, stale=True)
        expires = self._nonces.expires_at(p["nonce"])
        if not self._replays.first_use(p["nonce"], int(p["nc"], 16), expires):
            raise DigestRejected("replayed nonce and nonce count", user=user)
        return DigestSuccess(user, self._rspauth(algorithm, user, p))

    def _user(self, p: Mapping[str, str]) -> str:
        extended = p.get("username*")
        if extended is not None:  # RFC 5987: UTF-8''percent-encoded
            charset, _, rest = extended.partition("'")
            _, _, encoded = rest.partition("'")
            if charset.upper() != "UTF-8":
                raise DigestRejected("username* must be UTF-8")
            try:
                return unquote(encoded, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                raise DigestRejected("username* is not UTF-8") from None
        user = p.get("username")
        if not user:
            raise DigestRejected("Digest parameter 'username' missing")
        if p.get("userhash", "false").lower() == "true":
            algorithm = p.get("algorithm", "MD5")
            if algorithm.upper().removesuffix("-SESS") not in _HASHES:
                raise DigestRejected("unsupported algorithm")
            mine = _hash(algorithm, f"{self._creds.username}:{self.realm}")
            same = hmac.compare_digest(mine.encode(), user.lower().encode())
            return self._creds.username if same else "<hash>"
        return user

    def _rspauth(self, algorithm: str, user: str, p: Mapping[str, str]) -> str:
        # RFC 7616 §3.5: the response digest with an empty method.
        rspauth = response_digest(
            algorithm,
            user=user,
            realm=self.realm,
            password=self._creds.password,
            method="",
            uri=p["uri"],
            nonce=p["nonce"],
            nc=p["nc"],
            cnonce=p["cnonce"],
        )
        return f'rspauth="{rspauth}", qop=auth, nc={p["nc"]}, cnonce={_quote(p["cnonce"])}'


def _same_target(uri: str, target: str) -> bool:
    """The Digest `uri` names the request target (origin form, or absolute form's path)."""
    if hmac.compare_digest(uri.encode(), target.encode()):
        return True
    if "://" in uri:
        parts = urlsplit(uri)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return path == target
    return False


@dataclass
class DigestClient:
    """Client-side Digest: remembers the cluster's last challenge and counts `nc` per nonce.

    Any node accepts the cluster's nonces, so one cached challenge serves every node."""

    username: str
    password: str = field(repr=False)
    _challenge: dict[str, str] | None = field(default=None, repr=False)
    _nc: int = 0

    @property
    def nonce(self) -> str | None:
        return None if self._challenge is None else self._challenge.get("nonce")

    def take_challenge(self, headers: Iterable[str]) -> bool:
        """Adopt the best Digest challenge among `WWW-Authenticate` values; False if none."""
        best: dict[str, str] | None = None
        for header in headers:
            scheme, rest = _split_scheme(header)
            if scheme != "digest":
                continue
            params = parse_auth_params(rest)
            algorithm = params.get("algorithm", "MD5").upper()
            qops = {q.strip().lower() for q in params.get("qop", "").split(",")}
            if algorithm not in _HASHES or "auth" not in qops or not params.get("nonce"):
                continue
            if best is None or ALGORITHMS.index(algorithm) < ALGORITHMS.index(
                best.get("algorithm", "MD5").upper()
            ):
                best = params
        if best is None:
            return False
        self._challenge, self._nc = best, 0
        return True

    def authorization(self, method: str, uri: str) -> str | None:
        """The next `Authorization` value for `method uri`, or None before any challenge."""
        ch = self._challenge
        if ch is None:
            return None
        self._nc += 1
        nc = f"{self._nc:08x}"
        cnonce = os.urandom(12).hex()
        algorithm = ch.get("algorithm", "MD5").upper()
        realm, nonce = ch.get("realm", ""), ch["nonce"]
        digest = response_digest(
            algorithm,
            user=self.username,
            realm=realm,
            password=self.password,
            method=method,
            uri=uri,
            nonce=nonce,
            nc=nc,
            cnonce=cnonce,
        )
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(realm)}",
            f"nonce={_quote(nonce)}",
            f"uri={_quote(uri)}",
            f"algorithm={algorithm}",
            f"response={_quote(digest)}",
            "qop=auth",
            f"nc={nc}",
            f"cnonce={_quote(cnonce)}",
        ]
        if "opaque" in ch:
            parts.append(f"opaque={_quote(ch['opaque'])}")
        return "Digest " + ", ".join(parts)
