"""The node's authentication gate: `make_auth_middleware(config)` -> aiohttp middleware | None.

Gated: the reads (GET/HEAD of a pulse, children, pulses, members, the status page `/` and
its `/v1/cluster`) always; the writes and deletes (PUT/DELETE pulse, POST/DELETE path, POST
batch) only with `pmcluster.auth.writes: true` (open by default, as in Storm). `/health` and
`/metrics` stay open (they carry no heartbeat data). A request marked `X-Pmcluster-Forwarded`
is gated like any other: forwarding nodes authenticate with their own credentials.

- DIGEST: RFC 7616 against the JAAS `PacemakerDigest` user (`pmcluster.auth.digest`).
- KERBEROS: SPNEGO (RFC 4559) with the `PacemakerServer` keytab; on success the node returns a
  signed session cookie that every node accepts until it expires (`pmcluster.auth.cookie.secs`).
  Authorized readers: short name (before the first `/` or `@`) equal to `nimbus.daemon.user`,
  listed in `pacemaker.kerberos.users`, or equal to the node's own service (peer nodes).

401 carries the right `WWW-Authenticate` challenge; 403 means authenticated but not
authorized. Each rejection is logged with the user or principal and the path, never a secret.
The middleware sits inside the node's own middleware, so rejections are counted, carry the
node headers, and have the JSON error shape.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from pmcluster.auth.digest import DigestRejected, DigestServer
from pmcluster.auth.jaas import JaasConfig, load_jaas, short_name
from pmcluster.auth.tokens import COOKIE_NAME, CookieSigner, NonceSigner, ReplayCache
from pmcluster.config import Config
from pmcluster.errors import ConfigError

if TYPE_CHECKING:
    from pmcluster.auth.kerberos import KerberosAcceptor

__all__ = [
    "COOKIE_NAME",
    "AuthMiddleware",
    "DigestGate",
    "KerberosGate",
    "cluster_secret",
    "kerberos_readers",
    "make_auth_middleware",
    "needs_auth",
    "short_name",
]

log = logging.getLogger("pmcluster.auth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AuthMiddleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

# Route resources (aiohttp canonical form) and what each method is.
_READ_RESOURCES = frozenset({"/v1/pulse/{path}", "/v1/children/{path}", "/v1/pulses/{path}"})
_WRITE_RESOURCES = frozenset({"/v1/pulse/{path}", "/v1/path/{path}", "/v1/batch"})
_READ_METHODS = frozenset({"GET", "HEAD"})
# The authenticated user, for the admin routes' check.
PRINCIPAL_KEY = web.RequestKey("principal", str)
# Views of the cluster, gated like reads: the members, the status page and its JSON.
_VIEW_RESOURCES = frozenset({"/v1/members", "/v1/cluster", "/"})


def needs_auth(request: web.Request, writes: bool) -> bool:
    """Whether the matched route is gated: reads and admin always, writes only if `writes`."""
    resource = request.match_info.route.resource
    if resource is None:
        return False  # unknown route or wrong method: 404/405 need no credentials
    canonical = resource.canonical
    if canonical.startswith(("/v1/admin/", "/v1/internal/")):
        # Draining a node is never open when authentication is on; the peers' internal
        # routes (anti-entropy) read and write heartbeats: peers authenticate as readers.
        return True
    if request.method in _READ_METHODS:
        return canonical in _READ_RESOURCES or canonical in _VIEW_RESOURCES
    return writes and canonical in _WRITE_RESOURCES


def _target(request: web.Request) -> str:
    return request.raw_path


def log_safe(text: str | None, limit: int = 200) -> str:
    """User-controlled text for a log line: control and non-ASCII characters escaped (a
    newline cannot forge a line), and shortened."""
    if text is None:
        return "-"
    shown = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in shown)
    return shown + ("..." if len(text) > limit else "")


def _log_rejection(request: web.Request, status: int, reason: str, who: str | None) -> None:
    # Missing credentials are the normal first leg of a challenge: INFO; everything else WARNING.
    level = logging.INFO if reason == "no credentials" else logging.WARNING
    log.log(
        level,
        "auth %d: %s %s from %s user=%s: %s",
        status,
        log_safe(request.method, 20),
        log_safe(request.raw_path),
        request.remote,
        log_safe(who),
        log_safe(reason),
    )


def _error(status: int, error: str, detail: str) -> web.Response:
    body = json.dumps({"error": error, "detail": detail}).encode()
    return web.Response(status=status, body=body, content_type="application/json")


def unauthorized(
    request: web.Request, reason: str, who: str | None, challenges: list[str], detail: str
) -> web.Response:
    """A logged 401 with every challenge as its own `WWW-Authenticate` header."""
    _log_rejection(request, 401, reason, who)
    response = _error(401, "unauthorized", detail)
    for challenge in challenges:
        response.headers.add("WWW-Authenticate", challenge)
    return response


def forbidden(request: web.Request, who: str) -> web.Response:
    _log_rejection(request, 403, "not an authorized reader", who)
    return _error(403, "forbidden", f"{who} is not authorized for this operation")


class DigestGate:
    """RFC 7616 Digest for the gated routes (see the module docstring)."""

    def __init__(
        self, server: DigestServer, writes: bool, *, admins: frozenset[str] = frozenset()
    ) -> None:
        self.server = server
        self._writes = writes
        self.admins = admins

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not needs_auth(request, self._writes):
            return await handler(request)
        header = request.headers.get("Authorization")
        if not header:
            return unauthorized(
                request,
                "no credentials",
                None,
                self.server.challenges(),
                "authentication required (Digest)",
            )
        try:
            ok = self.server.verify(request.method, _target(request), header)
        except DigestRejected as exc:
            detail = "nonce expired, retry" if exc.stale else "authentication failed"
            return unauthorized(
                request, exc.reason, exc.user, self.server.challenges(stale=exc.stale), detail
            )
        request[PRINCIPAL_KEY] = ok.user
        response = await handler(request)
        response.headers["Authentication-Info"] = ok.authentication_info
        return response


class KerberosGate:
    """SPNEGO, then a signed session cookie (see the module docstring)."""

    def __init__(
        self,
        acceptor: KerberosAcceptor,
        cookies: CookieSigner,
        readers: frozenset[str],
        writes: bool,
        *,
        secure_cookie: bool = False,
        realm: str | None = None,
        peers: frozenset[str] = frozenset(),
    ) -> None:
        """`readers`: short names that may read (in `realm` only, when given); `peers`: full
        principals of the cluster's nodes, which may always read (coordinated requests)."""
        self._acceptor = acceptor
        self._cookies = cookies
        self.readers = readers
        self._writes = writes
        self._secure = secure_cookie
        self.realm = realm
        self.peers = peers

    def authorized(self, principal: str, request: web.Request | None = None) -> bool:
        """A peer node's principal, or a reader's short name in the node's own realm."""
        if principal in self.peers:
            ok = True
        else:
            _, at, realm = principal.rpartition("@")
            in_realm = self.realm is None or (at and realm == self.realm)
            ok = bool(in_realm) and short_name(principal) in self.readers
        if ok and request is not None:
            request[PRINCIPAL_KEY] = principal
        return ok

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not needs_auth(request, self._writes):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        cookie = request.cookies.get(COOKIE_NAME)
        cookie_problem: str | None = None
        if cookie is not None and not header:
            session = self._cookies.check(cookie)
            if session is not None:
                if not self.authorized(session.principal, request):
                    return forbidden(request, session.principal)
                return await handler(request)
            cookie_problem = "session cookie invalid or expired"
        if not header:
            reason = cookie_problem or "no credentials"
            challenge = unauthorized(
                request, reason, None, ["Negotiate"], "authentication required (Negotiate)"
            )
            if cookie_problem is not None:
                challenge.del_cookie(COOKIE_NAME)
            return challenge
        scheme, _, token_text = header.strip().partition(" ")
        if scheme.lower() != "negotiate":
            return unauthorized(
                request,
                f"{scheme[:20]} credentials where Negotiate is required",
                None,
                ["Negotiate"],
                "authentication required (Negotiate)",
            )
        try:
            token = base64.b64decode(token_text.strip(), validate=True)
        except (binascii.Error, ValueError):
            token = b""
        from pmcluster.auth.kerberos import KerberosRejected

        try:
            principal, reply = self._acceptor.accept(token)
        except KerberosRejected as exc:
            return unauthorized(request, exc.reason, None, ["Negotiate"], "authentication failed")
        if not self.authorized(principal, request):
            return forbidden(request, principal)
        response = await handler(request)
        if reply:
            response.headers["WWW-Authenticate"] = "Negotiate " + base64.b64encode(reply).decode()
        response.set_cookie(
            COOKIE_NAME,
            self._cookies.issue(principal),
            max_age=int(self._cookies.lifetime_secs),
            httponly=True,
            secure=self._secure,
            samesite="Strict",
            path="/",
        )
        return response


def kerberos_readers(config: Config) -> frozenset[str]:
    """Short names that may read over KERBEROS: nimbus.daemon.user, pacemaker.kerberos.users
    (the HTTP gate adds the node's own service, for its peers)."""
    readers = set(config.kerberos_users)
    if config.nimbus_daemon_user:
        readers.add(config.nimbus_daemon_user)
    return frozenset(readers)


def admin_users(config: Config) -> frozenset[str]:
    """Users (DIGEST) or principals (KERBEROS) allowed the admin routes."""
    return frozenset(config.admin_users)


def kerberos_peers(config: Config, own: str) -> frozenset[str]:
    """Principals counted as the cluster's nodes: `pmcluster.kerberos.peers` when set, else
    the node's own principal and `service/host@REALM` for each host of `pacemaker.servers`
    (never any `service/<anyhost>`: a principal for a host outside the cluster is no peer)."""
    if config.kerberos_peers:
        return frozenset(config.kerberos_peers) | {own}
    service = short_name(own)
    realm = own.rpartition("@")[2]
    peers = {own}
    for server in config.servers:
        host = server.rsplit(":", 1)[0] if server.count(":") == 1 else server
        peers.add(f"{service}/{host.strip('[]')}@{realm}")
    return frozenset(peers)


def cluster_secret(config: Config, jaas: JaasConfig | None = None) -> bytes:
    """The secret every node derives nonce and cookie keys from.

    `pmcluster.auth.secret.file` when set (any bytes, the same file on every node); otherwise
    DIGEST uses a random secret of this process (its nonces are good on this node only anyway)
    and KERBEROS the bytes of the server keytab (cookies then work across nodes only when every
    node has the same keytab file). `jaas`: the JAAS file when
    the caller has loaded it already (read from `config.jaas_path` otherwise)."""
    if config.auth_secret_file:
        return _read_secret(config.auth_secret_file, "pmcluster.auth.secret.file")
    if jaas is None:
        assert config.jaas_path is not None
        jaas = load_jaas(config.jaas_path)
    if config.auth_method == "DIGEST":
        # Never the password: a challenge signed with a password-derived key is an offline
        # guessing oracle. Nonces are bound to their node, so a per-process secret works.
        return b"random:" + os.urandom(32)
    return b"keytab:" + _read_secret(jaas.kerberos_server().keytab, "PacemakerServer keyTab")


def _read_secret(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(what, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) < 16:
        raise ConfigError(what, f"{path} holds fewer than 16 bytes: too weak a secret")
    return data


def make_auth_middleware(config: Config) -> AuthMiddleware | None:
    """The gate for `config.auth_method`, or None for NONE. Raises `ConfigError` early (at
    app construction) when the JAAS file, keytab or secret is missing or wrong."""
    if config.auth_method == "NONE":
        return None
    if config.jaas_path is None:
        raise ConfigError("java.security.auth.login.config", "required for authentication")
    jaas = load_jaas(config.jaas_path)
    secret = cluster_secret(config, jaas)
    gate: DigestGate | KerberosGate
    if config.auth_method == "DIGEST":
        nonces = NonceSigner(secret, config.auth_nonce_secs, node=config.node_id)
        digest = DigestServer(
            jaas.digest(),
            nonces,
            ReplayCache(),
            opaque_secret=secret,
            md5=config.auth_digest_md5,
        )
        gate = DigestGate(digest, config.auth_writes, admins=admin_users(config))
    else:
        from pmcluster.auth.kerberos import KerberosAcceptor

        server = jaas.kerberos_server(config.host)
        gate = KerberosGate(
            KerberosAcceptor(server),
            CookieSigner(secret, config.auth_cookie_secs),
            kerberos_readers(config),
            config.auth_writes,
            secure_cookie=config.tls_cert is not None,
            realm=server.principal.rpartition("@")[2] or None,
            peers=kerberos_peers(config, server.principal),
        )
    log.info(
        "authentication %s: reads gated, writes %s",
        config.auth_method,
        "gated" if config.auth_writes else "open",
    )
    return web.middleware(gate)
