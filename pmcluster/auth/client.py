"""Client-side authentication for pmcluster's own HTTP client (`NodeTransport`).

`make_request_auth(config)` returns a `RequestAuth` for DIGEST or KERBEROS (None for NONE).
The transport calls `begin(method, url)` before a request and sends `pending.headers`; then
`pending.finish(status, headers)`, which returns True when the request must be sent once more
with the new `pending.headers` (after a challenge), and raises `AuthError` when the server
failed mutual authentication.

- DIGEST: each node's challenge is cached and `nc` counted, so after the first 401 from a node
  every request to it carries credentials at once (a nonce is good on the node that issued it
  only); an expired nonce costs one retry.
- KERBEROS: a gated request that meets a `Negotiate` challenge is resent with a SPNEGO token;
  the server must prove itself (mutual authentication); its session cookie is then sent with
  every request to any node until a node refuses it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDictProxy
from yarl import URL

from pmcluster.auth.digest import DigestClient
from pmcluster.auth.jaas import load_jaas
from pmcluster.auth.tokens import COOKIE_NAME
from pmcluster.config import Config
from pmcluster.errors import AuthError

if TYPE_CHECKING:
    from pmcluster.auth.kerberos import InitiatorContext, KerberosInitiator

__all__ = ["DigestAuth", "KerberosAuth", "PendingAuth", "RequestAuth", "make_request_auth"]

ResponseHeaders = CIMultiDictProxy[str]


class PendingAuth(Protocol):
    headers: dict[str, str]

    async def finish(self, status: int, headers: ResponseHeaders) -> bool: ...


class RequestAuth(Protocol):
    async def begin(self, method: str, url: URL) -> PendingAuth: ...


def _target(url: URL) -> str:
    return url.raw_path_qs


# --- DIGEST ------------------------------------------------------------------------------------


class DigestAuth:
    """Digest credentials of the JAAS `PacemakerDigest` user; shared by every node's transport,
    with one cached challenge per node (`host:port`)."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password
        self._clients: dict[str, DigestClient] = {}
        self.client = self.client_for("")

    def client_for(self, authority: str) -> DigestClient:
        """The `DigestClient` holding the challenge of the node at `authority`."""
        client = self._clients.get(authority)
        if client is None:
            client = self._clients[authority] = DigestClient(self._username, self._password)
        return client

    async def begin(self, method: str, url: URL) -> _DigestPending:
        return _DigestPending(self.client_for(f"{url.host}:{url.port}"), method, _target(url))


class _DigestPending:
    def __init__(self, client: DigestClient, method: str, target: str) -> None:
        self._client = client
        self._method = method
        self._target = target
        self._retried = False
        self.headers: dict[str, str] = {}
        self._sign()

    def _sign(self) -> None:
        value = self._client.authorization(self._method, self._target)
        self.headers = {"Authorization": value} if value is not None else {}

    async def finish(self, status: int, headers: ResponseHeaders) -> bool:
        if status != 401 or self._retried:
            return False
        if not self._client.take_challenge(headers.getall("WWW-Authenticate", [])):
            return False
        self._retried = True
        self._sign()
        return True


# --- KERBEROS ----------------------------------------------------------------------------------


class KerberosAuth:
    """SPNEGO towards each node's host, then the cluster-wide session cookie.

    Members are addressed by IP, but production realms name hosts: the service principal is
    `service/<host name>`. `host_names` (the names of `pacemaker.servers`) are resolved once,
    on first use, and an address that one of them resolves to is asked for by that name."""

    def __init__(
        self,
        initiator_factory: Callable[[], KerberosInitiator],
        host_names: tuple[str, ...] = (),
    ) -> None:
        self._factory = initiator_factory
        self._initiator: KerberosInitiator | None = None
        self._host_names = host_names
        self._by_address: dict[str, str] | None = None
        self.cookie: str | None = None

    def service_host(self, host: str) -> str:
        """The host name to ask a ticket for when talking to `host` (blocks: may resolve)."""
        if self._by_address is None:
            table: dict[str, str] = {}
            for name in self._host_names:
                try:
                    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
                except OSError:
                    continue
                for info in infos:
                    table.setdefault(str(info[4][0]), name)
            self._by_address = table
        return self._by_address.get(host, host)

    def initiator(self) -> KerberosInitiator:
        """Client credentials, acquired on first use (may ask the KDC: call in a thread)."""
        if self._initiator is None:
            self._initiator = self._factory()
        return self._initiator

    async def begin(self, method: str, url: URL) -> _KerberosPending:
        return _KerberosPending(self, url.host or "")


class _KerberosPending:
    def __init__(self, auth: KerberosAuth, host: str) -> None:
        self._auth = auth
        self._host = host
        self._sent_cookie = auth.cookie
        self._started: InitiatorContext | None = None
        self.headers: dict[str, str] = {}
        if auth.cookie is not None:
            self.headers = {"Cookie": f"{COOKIE_NAME}={auth.cookie}"}

    async def finish(self, status: int, headers: ResponseHeaders) -> bool:
        auth = self._auth
        if self._started is not None:  # we sent a token: the server must prove itself
            if status == 401:
                return False
            reply = _negotiate_reply(headers)
            if reply is None and not (200 <= status < 300 or status == 404):
                return False  # refused (403) or failed: no data to trust, nothing to check
            auth.initiator().finish(self._started, reply)
            auth.cookie = _session_cookie(headers) or auth.cookie
            return False
        if status != 401 or not _offers_negotiate(headers):
            return False
        if self._sent_cookie is not None and auth.cookie == self._sent_cookie:
            auth.cookie = None  # refused (expired, or the cluster secret changed)
        initiator = await asyncio.to_thread(auth.initiator)
        host = await asyncio.to_thread(auth.service_host, self._host)
        started = await asyncio.to_thread(initiator.start, host)
        self._started = started
        self.headers = {"Authorization": "Negotiate " + base64.b64encode(started.token).decode()}
        return True


def _offers_negotiate(headers: ResponseHeaders) -> bool:
    return any(
        v.strip().lower().startswith("negotiate") for v in headers.getall("WWW-Authenticate", [])
    )


def _negotiate_reply(headers: ResponseHeaders) -> bytes | None:
    for value in headers.getall("WWW-Authenticate", []):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "negotiate" and token.strip():
            try:
                return base64.b64decode(token.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise AuthError("Kerberos: malformed Negotiate reply from the server") from None
    return None


def _session_cookie(headers: ResponseHeaders) -> str | None:
    for value in headers.getall("Set-Cookie", []):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(value)
        except CookieError:
            continue
        morsel = jar.get(COOKIE_NAME)
        if morsel is not None and morsel.value:
            return morsel.value
    return None


# --- factory -----------------------------------------------------------------------------------


def make_request_auth(config: Config) -> RequestAuth | None:
    """Client credentials for `config.auth_method`: DIGEST's JAAS user, or for KERBEROS the
    `PacemakerClient` section (a node without one uses its `PacemakerServer` key)."""
    if config.auth_method == "NONE" or config.jaas_path is None:
        return None
    jaas = load_jaas(config.jaas_path)
    if config.auth_method == "DIGEST":
        creds = jaas.digest()
        return DigestAuth(creds.username, creds.password)

    from pmcluster.auth.kerberos import KerberosInitiator  # gssapi itself: on first use

    # Read the section now, so a missing one fails at construction, not at the first read.
    names = host_names(config.servers)
    if "PacemakerClient" in jaas.sections:
        client = jaas.kerberos_client()
        return KerberosAuth(lambda: KerberosInitiator.from_client(client), names)
    server = jaas.kerberos_server(config.host)
    return KerberosAuth(lambda: KerberosInitiator.from_server(server), names)


def host_names(servers: tuple[str, ...]) -> tuple[str, ...]:
    """The host names (not IP literals) among `pacemaker.servers` entries (`host[:port]`)."""
    names = []
    for server in servers:
        host = server
        if server.startswith("["):
            host = server[1:].partition("]")[0]
        elif server.count(":") == 1:
            host = server.partition(":")[0]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            names.append(host)
    return tuple(names)
