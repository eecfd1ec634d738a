"""Signed, expiring tokens that any node of a cluster accepts: Digest nonces, session cookies.

Nothing is stored per token: each carries its issue (nonce) or expiry (cookie) time and an
HMAC-SHA256 under a key derived from the cluster secret, which every node derives from the
same configuration (the secret file, or a secret derived from the JAAS file). A cookie issued
by one node is accepted by all; a nonce only by the node that issued it (`NonceSigner`).
Separate keys per purpose keep a nonce from ever
verifying as a cookie. The only state is `ReplayCache`, per node and bounded by the nonce
lifetime.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COOKIE_NAME", "CookieSigner", "NonceCheck", "NonceSigner", "ReplayCache", "derive_key"]

COOKIE_NAME = "pmcluster-session"  # the Kerberos session cookie
_MAC_BYTES = 16
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
Clock = Callable[[], float]


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose (e.g. "digest-nonce") from the cluster secret."""
    return hmac.new(secret, b"pmcluster-auth-v1:" + purpose.encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    if not _B64URL.fullmatch(text):
        return None  # the decoder would skip stray characters: a token has exactly one form
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES]


class NonceCheck(enum.Enum):
    VALID = "valid"
    STALE = "stale"  # genuine but expired: the client should retry with a fresh nonce
    OTHER_NODE = "other-node"  # genuine, issued by another node: retry with this node's
    INVALID = "invalid"  # not issued by this cluster (forged, tampered, garbage)


class NonceSigner:
    """Digest nonces: `b64url(issued_ms u64 | 8 random bytes | node tag | mac)`, valid for
    `lifetime` on the node that issued them (`node`: its id; the tag is 4 bytes of its hash).

    Bound to one node because the replay cache is per node: a nonce every node accepted would
    let one captured request replay once on each node."""

    def __init__(
        self, secret: bytes, lifetime_secs: float, *, clock: Clock = time.time, node: str = ""
    ) -> None:
        self._key = derive_key(secret, "digest-nonce")
        self.key_material = derive_key(secret, "digest-material")
        self._tag = hashlib.sha256(node.encode()).digest()[:4]
        self.lifetime_secs = lifetime_secs
        self._clock = clock

    def issue(self) -> str:
        body = struct.pack(">Q", int(self._clock() * 1000)) + os.urandom(8) + self._tag
        return _b64(body + _mac(self._key, body))

    def check(self, nonce: str) -> NonceCheck:
        raw = _unb64(nonce) if len(nonce) < 64 else None
        if raw is None or len(raw) != 20 + _MAC_BYTES:
            return NonceCheck.INVALID
        body, mac = raw[:20], raw[20:]
        if not hmac.compare_digest(mac, _mac(self._key, body)):
            return NonceCheck.INVALID
        if body[16:20] != self._tag:
            return NonceCheck.OTHER_NODE
        (issued_ms,) = struct.unpack(">Q", body[:8])
        age = self._clock() - issued_ms / 1000
        # A nonce from a node whose clock runs a little ahead is fine; far ahead is not.
        if age > self.lifetime_secs or age < -self.lifetime_secs:
            return NonceCheck.STALE
        return NonceCheck.VALID

    def expires_at(self, nonce: str) -> float:
        """When a (valid) nonce expires, in `clock` seconds."""
        raw = _unb64(nonce) or bytes(8)
        issued_ms: int = struct.unpack(">Q", raw[:8])[0]
        return issued_ms / 1000 + self.lifetime_secs


@dataclass(frozen=True, slots=True)
class Session:
    principal: str
    expires: float


class CookieSigner:
    """Session cookies: `v1.b64url(principal).expiry_secs.b64url(mac)`."""

    def __init__(self, secret: bytes, lifetime_secs: float, *, clock: Clock = time.time) -> None:
        self._key = derive_key(secret, "session-cookie")
        self.lifetime_secs = lifetime_secs
        self._clock = clock

    def issue(self, principal: str) -> str:
        expires = int(self._clock() + self.lifetime_secs)
        body = f"v1.{_b64(principal.encode())}.{expires}"
        return f"{body}.{_b64(_mac(self._key, body.encode()))}"

    def check(self, cookie: str) -> Session | None:
        """The session a cookie names, or None when forged, tampered or expired."""
        if len(cookie) > 4096:
            return None
        body, _, mac_text = cookie.rpartition(".")
        mac = _unb64(mac_text)
        if mac is None or not hmac.compare_digest(mac, _mac(self._key, body.encode())):
            return None
        parts = body.split(".")
        if len(parts) != 3 or parts[0] != "v1" or not parts[2].isdigit():
            return None
        principal = _unb64(parts[1])
        expires = float(parts[2])
        if principal is None or self._clock() >= expires:
            return None
        try:
            return Session(principal.decode("utf-8"), expires)
        except UnicodeDecodeError:
            return None


class ReplayCache:
    """The (nonce, nonce-count) pairs this node has accepted, each kept until its nonce
    expires: a second request with the same pair is a replay. Counts may arrive out of order
    (a client's concurrent requests), so the check is membership, not monotonicity."""

    def __init__(self, *, clock: Clock = time.time, max_nonces: int = 100_000) -> None:
        self._seen: dict[str, tuple[float, set[int]]] = {}
        self._clock = clock
        self._max_nonces = max_nonces
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, nonce: str, count: int, expires: float) -> bool:
        """Record (nonce, count); False if it was recorded before (a replay)."""
        now = self._clock()
        if now >= self._next_sweep or len(self._seen) >= self._max_nonces:
            self._sweep(now)
        entry = self._seen.get(nonce)
        if entry is None:
            if len(self._seen) >= self._max_nonces:
                return False  # full of live nonces: refuse rather than forget (fail closed)
            self._seen[nonce] = (expires, {count})
            return True
        if count in entry[1]:
            return False
        entry[1].add(count)
        return True

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + 1.0
        for nonce in [n for n, (exp, _) in self._seen.items() if exp <= now]:
            del self._seen[nonce]
