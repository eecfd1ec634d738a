"""Per-connection authentication of the Storm protocol (`pacemaker.auth.method`).

CONTROL_MESSAGE and SASL_MESSAGE_TOKEN frames carry their payload in `message_blob`
(`STORM-PROTOCOL.md` §4): a CONTROL blob is an int16 code, a SASL blob is int16 −500, an int32
length and the token. `DigestAuth` runs Storm's DIGEST exchange on one connection:

    C→S CONTROL(−202)   S→C token(challenge)   C→S token(digest-response)
    S→C token(rspauth)  S→C CONTROL(−203)       → reads allowed on this connection

`GssapiAuth` runs Storm's KERBEROS exchange (SASL GSSAPI, RFC 4752; the message handling is
`pmcluster.storm.sasl_gssapi`): no −202, the client's first SASL token opens it, tokens go back
and forth until the context and the security-layer negotiation are done, then S→C
CONTROL(−203). Only principals whose short name is `nimbus.daemon.user` or listed in
`pacemaker.kerberos.users` are authorized; anyone else fails the handshake.

A failed or out-of-order handshake raises `ProtocolError`: the connection (only it) is closed.

The DIGEST secret comes from the JAAS file's `PacemakerDigest` section (`pmcluster.auth.jaas`),
the KERBEROS credentials from `PacemakerServer` (`pmcluster.auth.kerberos`, which imports
gssapi: only done when the method is KERBEROS).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from pmcluster.auth.jaas import load_jaas
from pmcluster.auth.middleware import kerberos_readers, log_safe, short_name
from pmcluster.config import Config
from pmcluster.errors import AuthError, ConfigError, ProtocolError
from pmcluster.storm.codec import HBMessage, HBMessageData
from pmcluster.storm.codec import HBServerMessageType as T
from pmcluster.storm.metrics import StormMetrics
from pmcluster.storm.sasl_digest import DigestMD5Server, storm_digest_password
from pmcluster.storm.sasl_gssapi import GssapiServer
from pmcluster.storm.server import ConnectionAuth, NoAuth

__all__ = [
    "SASL_COMPLETE_REQUEST",
    "SASL_TOKEN_MESSAGE_REQUEST",
    "DigestAuth",
    "GssapiAuth",
    "control_code",
    "control_message",
    "digest_password_from_jaas",
    "kerberos_readers",
    "make_auth_factory",
    "sasl_token",
    "sasl_token_message",
]

log = logging.getLogger(__name__)

SASL_TOKEN_MESSAGE_REQUEST = -202  # client: start DIGEST
SASL_COMPLETE_REQUEST = -203  # server: authentication done
_SASL_TOKEN_MARKER = -500
_CONTROL = struct.Struct(">h")
_TOKEN_HEADER = struct.Struct(">hi")

AuthFactory = Callable[[], ConnectionAuth]


# ---------------------------------------------------------------- blobs


def control_message(code: int) -> HBMessage:
    """A CONTROL_MESSAGE frame (no message_id, as Storm writes it)."""
    return HBMessage(T.CONTROL_MESSAGE, HBMessageData(message_blob=_CONTROL.pack(code)))


def sasl_token_message(token: bytes) -> HBMessage:
    """A SASL_MESSAGE_TOKEN frame carrying `token`."""
    blob = _TOKEN_HEADER.pack(_SASL_TOKEN_MARKER, len(token)) + token
    return HBMessage(T.SASL_MESSAGE_TOKEN, HBMessageData(message_blob=blob))


def _blob(message: HBMessage) -> bytes:
    if message.data is None or message.data.message_blob is None:
        raise ProtocolError(f"type {message.type} frame without message_blob")
    return message.data.message_blob


def control_code(message: HBMessage) -> int:
    """The int16 code of a CONTROL_MESSAGE frame."""
    blob = _blob(message)
    if len(blob) != _CONTROL.size:
        raise ProtocolError(f"CONTROL_MESSAGE blob of {len(blob)} bytes (expected 2)")
    code: int = _CONTROL.unpack(blob)[0]
    return code


def sasl_token(message: HBMessage) -> bytes:
    """The token of a SASL_MESSAGE_TOKEN frame (marker and length checked)."""
    blob = _blob(message)
    if len(blob) < _TOKEN_HEADER.size:
        raise ProtocolError("SASL token blob shorter than its header")
    marker, length = _TOKEN_HEADER.unpack_from(blob)
    if marker != _SASL_TOKEN_MARKER or length != len(blob) - _TOKEN_HEADER.size:
        raise ProtocolError("SASL token blob with a wrong marker or length")
    return blob[_TOKEN_HEADER.size :]


# ---------------------------------------------------------------- connection auth


class DigestAuth:
    """Storm's DIGEST (SASL DIGEST-MD5) handshake on one connection."""

    def __init__(
        self, password: str, *, metrics: StormMetrics | None = None, nonce: str | None = None
    ) -> None:
        self._server = DigestMD5Server(password, nonce=nonce)
        self._metrics = metrics
        self._started = False

    @property
    def authorized_reader(self) -> bool:
        return self._server.complete

    @property
    def username(self) -> str | None:
        """The SASL user name the client proved (base64 of its Storm name), once complete."""
        return self._server.username

    def on_auth_frame(self, message: HBMessage) -> list[HBMessage]:
        if self._server.complete:
            raise ProtocolError("authentication frame on an authenticated connection")
        if message.type == T.CONTROL_MESSAGE:
            code = control_code(message)
            if code != SASL_TOKEN_MESSAGE_REQUEST or self._started:
                raise ProtocolError(f"unexpected CONTROL_MESSAGE {code}")
            self._started = True
            return [sasl_token_message(self._server.challenge())]
        if not self._started:
            raise ProtocolError("SASL token before the CONTROL(-202) that starts DIGEST")
        try:
            rspauth = self._server.verify(sasl_token(message))
        except AuthError as exc:
            if self._metrics is not None:
                self._metrics.auth_failed += 1
            raise ProtocolError(f"DIGEST-MD5 authentication failed: {exc}") from None
        if self._metrics is not None:
            self._metrics.auth_ok += 1
        return [sasl_token_message(rspauth), control_message(SASL_COMPLETE_REQUEST)]


class GssapiAuth:
    """Storm's KERBEROS (SASL GSSAPI) handshake on one connection, authorizing by short name."""

    def __init__(
        self,
        server: GssapiServer,
        readers: frozenset[str],
        *,
        realm: str | None = None,
        metrics: StormMetrics | None = None,
    ) -> None:
        self._server = server
        self._readers = readers
        self._realm = realm
        self._metrics = metrics
        self._checked = False  # the principal's authorization, checked once it is known

    @property
    def authorized_reader(self) -> bool:
        return self._server.complete

    @property
    def principal(self) -> str | None:
        """The authenticated Kerberos principal, once the GSSAPI context is established."""
        return self._server.principal

    def on_auth_frame(self, message: HBMessage) -> list[HBMessage]:
        if self._server.complete:
            raise ProtocolError("authentication frame on an authenticated connection")
        if message.type == T.CONTROL_MESSAGE:
            code = control_code(message)
            raise ProtocolError(f"unexpected CONTROL_MESSAGE {code} (KERBEROS starts with a token)")
        token = sasl_token(message)
        try:
            reply = self._server.respond(token)
            self._authorize()
        except AuthError as exc:
            if self._metrics is not None:
                self._metrics.auth_failed += 1
            raise ProtocolError(f"GSSAPI authentication failed: {exc}") from None
        if reply is not None:
            return [sasl_token_message(reply)]
        if self._metrics is not None:
            self._metrics.auth_ok += 1
        return [control_message(SASL_COMPLETE_REQUEST)]

    def _authorize(self) -> None:
        principal = self._server.principal
        if self._checked or principal is None:
            return
        self._checked = True
        realm = principal.rpartition("@")[2]
        if self._realm is not None and realm != self._realm:
            log.warning(
                "Storm KERBEROS: %s is not of this node's realm %s: refused",
                log_safe(principal),
                self._realm,
            )
            raise AuthError(f"{principal} is not of the realm {self._realm}")
        if short_name(principal) not in self._readers:
            log.warning("Storm KERBEROS: %s is not an authorized reader: refused", principal)
            raise AuthError(f"{principal} is not an authorized reader")


# ---------------------------------------------------------------- factory


def digest_password_from_jaas(path: str) -> str:
    """Storm's SASL password from the `PacemakerDigest` section of the JAAS file at `path`
    (raises `ConfigError` when the file, the section or an option is missing)."""
    credentials = load_jaas(path).digest()
    return storm_digest_password(credentials.username, credentials.password)


def make_auth_factory(config: Config, metrics: StormMetrics | None = None) -> AuthFactory:
    """A new `ConnectionAuth` per connection, for `pacemaker.auth.method`.

    Raises `ConfigError` when DIGEST's JAAS file or section is missing or incomplete, or
    KERBEROS's `PacemakerServer` keytab or principal cannot be used (or gssapi is missing).
    """
    if config.auth_method == "DIGEST":
        if config.jaas_path is None:
            raise ConfigError("java.security.auth.login.config", "DIGEST needs a JAAS file")
        if not config.auth_digest_md5:
            # Storm's only DIGEST mechanism is SASL DIGEST-MD5: with MD5 off, no Storm-protocol
            # connection authenticates (reads refused, open writes still served).
            log.warning(
                "pmcluster.auth.digest.md5 false: Storm-protocol DIGEST-MD5 is refused, "
                "so Storm clients cannot read"
            )
            no_auth = NoAuth(reads=False)
            return lambda: no_auth
        password = digest_password_from_jaas(config.jaas_path)
        return lambda: DigestAuth(password, metrics=metrics)
    if config.auth_method == "KERBEROS":
        return _gssapi_factory(config, metrics)
    no_auth = NoAuth()
    return lambda: no_auth


def _gssapi_factory(config: Config, metrics: StormMetrics | None) -> AuthFactory:
    if config.jaas_path is None:
        raise ConfigError("java.security.auth.login.config", "KERBEROS needs a JAAS file")
    from pmcluster.auth.kerberos import KerberosAcceptor, gssapi_module

    acceptor = KerberosAcceptor(load_jaas(config.jaas_path).kerberos_server(config.host))
    realm = acceptor.principal.rpartition("@")[2] or None
    gssapi = gssapi_module()
    gss_error: type[Exception] = gssapi.exceptions.GSSError
    krb5 = gssapi.MechType.kerberos  # SASL GSSAPI is Kerberos V5 itself, never SPNEGO
    readers = kerberos_readers(config)
    if not readers:
        log.warning(
            "pacemaker.auth.method KERBEROS without nimbus.daemon.user or "
            "pacemaker.kerberos.users: no Storm-protocol connection can read"
        )

    def make() -> GssapiAuth:
        server = GssapiServer(acceptor.context(), gss_error, mech=krb5)
        return GssapiAuth(server, readers, metrics=metrics, realm=realm)

    return make
