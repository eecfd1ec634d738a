"""Signed tokens (`pmcluster.auth.tokens`): the boundaries and refusals a node relies on.

Written against the survivors of mutation testing (docs/testing.md, "Mutation testing"); the
round trips and tampering cases are in test_digest.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from pmcluster.auth.tokens import CookieSigner, NonceCheck, NonceSigner, ReplayCache, derive_key

SECRET = b"k" * 32
T0 = 1_700_000_000.0  # a whole number of milliseconds, so issue times are exact


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_nonce_is_valid_for_exactly_its_lifetime_and_then_stale() -> None:
    clock = Clock()
    signer = NonceSigner(SECRET, 300.0, clock=clock, node="n1")
    nonce = signer.issue()
    assert signer.expires_at(nonce) == T0 + 300.0
    clock.now = T0 + 300.0
    assert signer.check(nonce) is NonceCheck.VALID  # the last instant of its lifetime
    clock.now = T0 + 300.001
    assert signer.check(nonce) is NonceCheck.STALE


def test_a_nonce_from_a_clock_ahead_by_more_than_the_lifetime_is_stale() -> None:
    ahead = Clock(T0 + 300.0)
    signer_ahead = NonceSigner(SECRET, 300.0, clock=ahead, node="n1")
    nonce = signer_ahead.issue()
    here = NonceSigner(SECRET, 300.0, clock=Clock(T0), node="n1")
    assert here.check(nonce) is NonceCheck.VALID  # a clock ahead by the lifetime is tolerated
    ahead.now = T0 + 300.001
    assert here.check(signer_ahead.issue()) is NonceCheck.STALE


def test_a_nonce_of_another_node_is_named_so_not_invalid() -> None:
    clock = Clock()
    other = NonceSigner(SECRET, 300.0, clock=clock, node="n2").issue()
    assert NonceSigner(SECRET, 300.0, clock=clock, node="n1").check(other) is NonceCheck.OTHER_NODE


def test_a_nonce_with_stray_characters_or_padding_is_invalid() -> None:
    signer = NonceSigner(SECRET, 300.0, clock=Clock())
    nonce = signer.issue()
    for variant in (nonce + "=", nonce + "==", " " + nonce, nonce[:10] + "\n" + nonce[10:], ""):
        assert signer.check(variant) is NonceCheck.INVALID, repr(variant)


def test_a_cookie_is_refused_from_its_expiry_on() -> None:
    clock = Clock()
    signer = CookieSigner(SECRET, 600.0, clock=clock)
    cookie = signer.issue("storm@EXAMPLE.COM")
    clock.now = T0 + 599.999
    session = signer.check(cookie)
    assert session is not None and session.expires == T0 + 600.0
    clock.now = T0 + 600.0
    assert signer.check(cookie) is None


def test_cookie_size_bound_is_inclusive() -> None:
    signer = CookieSigner(SECRET, 600.0, clock=Clock())
    by_length = {len(c): c for c in (signer.issue("p" * n) for n in range(3000, 3100))}
    session = signer.check(by_length[4096])
    assert session is not None and session.principal.startswith("ppp")
    assert signer.check(by_length[4097]) is None


def test_every_principal_length_round_trips() -> None:
    # base64 without padding: each length mod 4 needs its own padding back when decoding.
    signer = CookieSigner(SECRET, 600.0, clock=Clock())
    for n in range(41):
        session = signer.check(signer.issue("u" * n))
        assert session is not None and session.principal == "u" * n, n


def test_every_issued_nonce_verifies() -> None:
    # 1000 random nonces: the last base64 character takes each of its 64 values.
    signer = NonceSigner(SECRET, 300.0, clock=Clock())
    nonces = [signer.issue() for _ in range(1000)]
    assert {n[-1] for n in nonces} >= {"A", "X", "_", "-", "9"}
    assert all(signer.check(n) is NonceCheck.VALID for n in nonces)


def _signed(body: str) -> str:
    """A cookie with a genuine MAC over any body: what a node of another release could issue
    (the documented format `body.b64url(mac)`, the key from `derive_key`)."""
    mac = hmac.new(derive_key(SECRET, "session-cookie"), body.encode(), hashlib.sha256)
    return f"{body}.{base64.urlsafe_b64encode(mac.digest()[:16]).rstrip(b'=').decode()}"


def test_keys_are_derived_per_purpose_and_stable_across_releases() -> None:
    # Every node, old or new release, must derive the same keys from the same secret.
    expected = hmac.new(SECRET, b"pmcluster-auth-v1:session-cookie", hashlib.sha256).digest()
    assert derive_key(SECRET, "session-cookie") == expected
    assert derive_key(SECRET, "digest-nonce") != expected
    clock = Clock()
    principal = base64.urlsafe_b64encode(b"storm").rstrip(b"=").decode()
    cookie = _signed(f"v1.{principal}.{int(T0) + 600}")
    assert CookieSigner(SECRET, 600.0, clock=clock).issue("storm") == cookie


def test_a_genuinely_signed_cookie_of_another_form_is_refused() -> None:
    signer = CookieSigner(SECRET, 600.0, clock=Clock())
    principal = base64.urlsafe_b64encode(b"storm").rstrip(b"=").decode()
    expires = int(T0) + 600
    assert signer.check(_signed(f"v1.{principal}.{expires}")) is not None
    for body in (
        f"v2.{principal}.{expires}",  # a later format version
        f"v1.{principal}.{expires}.extra",
        f"v1.{principal}",
        f"v1.{principal}.-{expires}",
        f"v1.{principal}.{expires}.5",
        f"v1.{principal}!.{expires}",
        f"v1.{base64.urlsafe_b64encode(bytes([0xFF])).rstrip(b'=').decode()}.{expires}",
    ):
        assert signer.check(_signed(body)) is None, body


def test_replay_cache_accepts_each_count_once_in_any_order() -> None:
    clock = Clock()
    cache = ReplayCache(clock=clock)
    exp = T0 + 10
    assert cache.first_use("n", 3, exp)
    assert cache.first_use("n", 1, exp)  # out of order: a client's concurrent requests
    assert not cache.first_use("n", 3, exp)
    assert not cache.first_use("n", 1, exp)
    assert cache.first_use("n", 2, exp)


def test_a_full_replay_cache_refuses_new_nonces_until_old_ones_expire() -> None:
    clock = Clock()
    cache = ReplayCache(clock=clock, max_nonces=2)
    assert cache.first_use("a", 1, T0 + 10)
    assert cache.first_use("b", 1, T0 + 20)
    assert not cache.first_use("c", 1, T0 + 30)  # full of live nonces: fail closed
    assert cache.first_use("a", 2, T0 + 10)  # a known nonce's next count still works
    clock.now = T0 + 10  # "a" expires at its expiry instant
    assert cache.first_use("c", 1, T0 + 30)
    assert len(cache) == 2


def test_a_full_replay_cache_sweeps_at_once_rather_than_refusing() -> None:
    clock = Clock()
    cache = ReplayCache(clock=clock, max_nonces=2)
    assert cache.first_use("a", 1, T0 + 0.5)
    assert cache.first_use("b", 1, T0 + 20)
    clock.now = T0 + 0.6  # "a" expired; the last sweep (at T0) was under a second ago
    assert cache.first_use("c", 1, T0 + 30)


def test_replay_cache_sweeps_expired_nonces_at_most_once_a_second() -> None:
    clock = Clock()
    cache = ReplayCache(clock=clock)
    assert cache.first_use("a", 1, T0 + 0.5)
    clock.now = T0 + 0.6  # "a" expired, but the last sweep (at T0) was under a second ago
    assert cache.first_use("b", 1, T0 + 10)
    assert len(cache) == 2
    clock.now = T0 + 1.0
    assert cache.first_use("c", 1, T0 + 10)
    assert len(cache) == 2  # swept: "a" gone
