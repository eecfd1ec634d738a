"""SASL GSSAPI (RFC 4752) message handling, server and client side, around a GSS-API context.

No I/O and no `import gssapi`: a context is anything shaped like python-gssapi's
`SecurityContext` (`GssContext`), created by `pmcluster.auth.kerberos` only when
`pacemaker.auth.method` is KERBEROS.

The exchange (the server side as the JDK's `GssKrb5Server`, which Storm uses):

    C→S first context token
    S→C final context token (AP-REP)   } only when the client asked for mutual authentication
    C→S empty token                    } (Storm's JDK client does not: SERVER_AUTH false)
    S→C wrap(layers | max buffer)      4 bytes: bit mask of offered layers, 3-byte size
    C→S wrap(layer | max buffer | authzid)
    → complete: `respond` returns None (the caller then sends CONTROL(−203))

The server never sends CONTROL(−203) mid-exchange: an empty first token, or one after which
the context is neither established nor has anything to answer, is refused (Kerberos V5 always
answers mid-exchange). Only "no security layer" (bit 1) is offered and accepted (Storm's qop
`auth`), with maximum buffer size 0 (there is no layer to bound; the JDK client accepts it).
The layer messages are wrapped with integrity only.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Protocol

from pmcluster.auth.kerberos import gss_reason
from pmcluster.errors import AuthError

__all__ = [
    "MAX_AUTHZID_BYTES",
    "NO_SECURITY_LAYER",
    "GssContext",
    "GssapiClient",
    "GssapiServer",
    "parse_security_layers",
    "security_layers",
]

NO_SECURITY_LAYER = 1  # RFC 4752 §3.3 bit masks: 1 none, 2 integrity, 4 confidentiality
MAX_AUTHZID_BYTES = 1024
_LAYERS = struct.Struct(">I")  # 1 octet bit mask + 3 octets maximum buffer size


class _Wrapped(Protocol):
    @property
    def message(self) -> bytes: ...


class GssContext(Protocol):
    """The part of python-gssapi's `SecurityContext` used here."""

    @property
    def complete(self) -> bool: ...

    @property
    def initiator_name(self) -> Any: ...

    @property
    def mech(self) -> Any: ...

    def step(self, token: bytes | None = None) -> bytes | None: ...

    def wrap(self, message: bytes, encrypt: bool) -> _Wrapped: ...

    def unwrap(self, message: bytes) -> _Wrapped: ...


def security_layers(layers: int, max_buffer: int, authzid: bytes = b"") -> bytes:
    """The plain text of a security-layer message: bit mask, 3-byte size, authorization id."""
    if not 0 <= layers <= 0xFF or not 0 <= max_buffer <= 0xFFFFFF:
        raise ValueError("security layer bit mask or maximum buffer size out of range")
    return _LAYERS.pack(layers << 24 | max_buffer) + authzid


def parse_security_layers(plain: bytes) -> tuple[int, int, bytes]:
    """(bit mask, maximum buffer size, authorization id bytes) of a security-layer message."""
    if len(plain) < _LAYERS.size:
        raise AuthError(f"security-layer message of {len(plain)} bytes (at least 4 expected)")
    (word,) = _LAYERS.unpack_from(plain)
    return word >> 24, word & 0xFFFFFF, plain[_LAYERS.size :]


class _Stage(enum.Enum):
    CONTEXT = "context"  # GSS-API context tokens
    CONFIRM = "confirm"  # server: waiting for the client's empty token after the AP-REP
    LAYERS = "layers"  # waiting for the other side's wrapped security-layer message
    DONE = "done"


class GssapiServer:
    """The server side of one SASL GSSAPI exchange.

    `respond(token)` returns the token to send back, or None when the exchange is complete;
    any failure (bad or replayed token, wrong order, a security layer we did not offer, an
    authorization id that is not the authenticated principal) raises `AuthError`.
    `principal` is set as soon as the context is established, so a caller can refuse an
    unauthorized principal before the security-layer round trip.
    """

    def __init__(
        self, context: GssContext, gss_error: type[Exception], *, mech: object = None
    ) -> None:
        self._ctx = context
        self._error = gss_error
        self._mech = mech  # the mechanism the context must end up with (None: any)
        self._stage = _Stage.CONTEXT
        self.principal: str | None = None
        self.authzid: str | None = None

    @property
    def complete(self) -> bool:
        return self._stage is _Stage.DONE

    def respond(self, token: bytes) -> bytes | None:
        if self._stage is _Stage.CONTEXT:
            if not token:
                raise AuthError("empty GSSAPI context token")
            try:
                out = self._ctx.step(token)
                established = self._ctx.complete
                if established:
                    if self._mech is not None and self._ctx.mech != self._mech:
                        raise AuthError(f"GSSAPI mechanism {self._ctx.mech} is not Kerberos V5")
                    self.principal = str(self._ctx.initiator_name)
            except self._error as exc:
                raise AuthError(f"GSSAPI token refused: {gss_reason(exc)}") from None
            if not established:
                if not out:  # Kerberos always answers mid-exchange: a token it cannot parse
                    raise AuthError("GSSAPI token not understood (no reply, context incomplete)")
                return out
            if out:
                self._stage = _Stage.CONFIRM  # the client must process our AP-REP first
                return out
            return self._offer()
        if self._stage is _Stage.CONFIRM:
            if token:
                raise AuthError("non-empty token after the GSSAPI context was established")
            return self._offer()
        if self._stage is _Stage.LAYERS:
            self._choose(token)
            self._stage = _Stage.DONE
            return None
        raise AuthError("SASL token after the GSSAPI exchange completed")

    def _offer(self) -> bytes:
        self._stage = _Stage.LAYERS
        return self._wrap(security_layers(NO_SECURITY_LAYER, 0))

    def _choose(self, token: bytes) -> None:
        try:
            plain = self._ctx.unwrap(token).message
        except self._error as exc:
            raise AuthError(f"security-layer message not verified: {gss_reason(exc)}") from None
        layer, _max_buffer, raw_authzid = parse_security_layers(plain)
        if layer != NO_SECURITY_LAYER:
            raise AuthError(f"client chose security layer {layer}; only 1 (none) is offered")
        if len(raw_authzid) > MAX_AUTHZID_BYTES:
            raise AuthError("authorization id too long")
        try:
            authzid = raw_authzid.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthError("authorization id is not UTF-8") from None
        assert self.principal is not None
        if authzid and authzid != self.principal and not _same_principal(authzid, self.principal):
            raise AuthError(f"{self.principal} may not act as {authzid!r}")
        self.authzid = authzid or self.principal

    def _wrap(self, plain: bytes) -> bytes:
        try:
            return self._ctx.wrap(plain, False).message
        except self._error as exc:
            raise AuthError(f"cannot wrap the security-layer message: {gss_reason(exc)}") from None


class GssapiClient:
    """The client side of one SASL GSSAPI exchange (tests and tools; Storm uses the JDK's).

    The caller sends the context's first token as soon as the connection is open (no −202);
    `respond(challenge)` answers each server token; `complete` once the security-layer
    answer has been produced (the server then confirms with CONTROL(−203)).
    """

    def __init__(self, context: GssContext, gss_error: type[Exception], authzid: str = "") -> None:
        self._ctx = context
        self._error = gss_error
        self._authzid = authzid.encode("utf-8")
        self._stage = _Stage.CONTEXT

    @property
    def complete(self) -> bool:
        return self._stage is _Stage.DONE

    def respond(self, challenge: bytes) -> bytes:
        if self._stage is _Stage.DONE:
            raise AuthError("server token after the GSSAPI exchange completed")
        try:
            if not self._ctx.complete:
                out = self._ctx.step(challenge)  # the AP-REP: mutual authentication
                return out or b""  # complete: an empty token asks for the layer offer
            plain = self._ctx.unwrap(challenge).message
        except self._error as exc:
            raise AuthError(f"GSSAPI: server token refused: {gss_reason(exc)}") from None
        layers, _max_buffer, _ = parse_security_layers(plain)
        if not layers & NO_SECURITY_LAYER:
            raise AuthError(f"server offers security layers {layers:#x}, not 1 (none)")
        self._stage = _Stage.DONE
        try:
            return self._ctx.wrap(
                security_layers(NO_SECURITY_LAYER, 0, self._authzid), False
            ).message
        except self._error as exc:
            raise AuthError(f"GSSAPI: cannot wrap the layer choice: {gss_reason(exc)}") from None


def _same_principal(authzid: str, principal: str) -> bool:
    """`nimbus` as authzid for `nimbus@REALM`: the same principal in the default realm."""
    return "@" not in authzid and principal.rsplit("@", 1)[0] == authzid
