"""Kerberos for HTTP: SPNEGO (RFC 4559) accept and initiate with python-gssapi.

`gssapi` is imported here only (`gssapi_module()`, when an acceptor or initiator is made),
so only when `pacemaker.auth.method` is KERBEROS: NONE and DIGEST work without it
(`pip install 'pmcluster[kerberos]'`).

- `KerberosAcceptor` (node): credentials from the `PacemakerServer` keytab and principal,
  through the GSSAPI credential store (no process-wide `KRB5_KTNAME`). Each token is accepted
  in a fresh one-leg context with step errors raised at once (so a bad or replayed token is
  a 401, not a later 500); the library's replay cache stays on.
- `KerberosInitiator` (pmcluster's client and a node towards its peers): credentials from a
  client keytab (`PacemakerClient`, or a node's `PacemakerServer`) into a private in-memory
  ccache, or the default ccache (`kinit`) when no keytab is given; target
  `serviceName@host`; mutual authentication required.
"""

from __future__ import annotations

import importlib
import itertools
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pmcluster.auth.jaas import KerberosClientCredentials, KerberosServerCredentials, short_name
from pmcluster.errors import AuthError, ConfigError

__all__ = [
    "KerberosAcceptor",
    "KerberosInitiator",
    "KerberosRejected",
    "gss_reason",
    "gssapi_module",
]

_SPNEGO_OID = "1.3.6.1.5.5.2"
_ccache_ids = itertools.count(1)


def gssapi_module() -> ModuleType:
    """`import gssapi`, or a `ConfigError` that says how to install it."""
    try:
        return importlib.import_module("gssapi")
    except ImportError as exc:
        raise ConfigError(
            "pacemaker.auth.method",
            f"KERBEROS needs the gssapi package (pip install 'pmcluster[kerberos]'): {exc}",
        ) from None


def gss_reason(exc: Exception) -> str:
    """A GSSAPI error in one line: the library's message, never token bytes (also for the
    Storm protocol's SASL GSSAPI, `pmcluster.storm.sasl_gssapi`)."""
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


class KerberosRejected(AuthError):
    """A Negotiate token was not accepted; `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KerberosAcceptor:
    """Accepts SPNEGO tokens for the node's service principal."""

    def __init__(self, server: KerberosServerCredentials) -> None:
        gssapi = gssapi_module()
        self._gssapi = gssapi
        if not os.access(server.keytab, os.R_OK):
            raise ConfigError(
                "java.security.auth.login.config",
                f"PacemakerServer keyTab {server.keytab} is not readable",
            )
        try:
            name = gssapi.Name(server.principal, gssapi.NameType.kerberos_principal)
            self._creds = gssapi.Credentials(
                name=name, usage="accept", store={b"keytab": server.keytab.encode()}
            )
            self._creds.inquire()  # fail now, not on the first request, if the key is missing
        except gssapi.exceptions.GSSError as exc:
            raise ConfigError(
                "java.security.auth.login.config",
                f"cannot use PacemakerServer {server.principal} from {server.keytab}: "
                f"{gss_reason(exc)}",
            ) from None
        self.principal = server.principal

    def context(self) -> Any:
        """A fresh acceptor `SecurityContext` on the node's credentials, step errors raised at
        once (multi-leg exchanges such as the Storm protocol's SASL GSSAPI step it themselves)."""
        ctx = self._gssapi.SecurityContext(creds=self._creds, usage="accept")
        ctx.__DEFER_STEP_ERRORS__ = False
        return ctx

    def accept(self, token: bytes) -> tuple[str, bytes | None]:
        """(initiator principal, reply token for mutual authentication) or `KerberosRejected`."""
        if not token:
            raise KerberosRejected("empty or malformed Negotiate token")
        gssapi = self._gssapi
        ctx = self.context()
        try:
            reply = ctx.step(token)
        except gssapi.exceptions.GSSError as exc:
            raise KerberosRejected(gss_reason(exc)) from None
        if not ctx.complete:
            raise KerberosRejected("multi-leg SPNEGO exchange is not supported")
        return str(ctx.initiator_name), reply


@dataclass
class InitiatorContext:
    """One client-side exchange: the token to send, then the server's reply to check."""

    ctx: Any
    token: bytes


class KerberosInitiator:
    """Client side of SPNEGO towards `service_name@host`."""

    def __init__(self, *, keytab: str | None, principal: str | None, service_name: str) -> None:
        gssapi = gssapi_module()
        self._gssapi = gssapi
        self.service_name = service_name
        self.principal = principal
        try:
            name = gssapi.Name(principal, gssapi.NameType.kerberos_principal) if principal else None
            if keytab:
                store = {
                    b"client_keytab": keytab.encode(),
                    b"ccache": f"MEMORY:pmcluster-{os.getpid()}-{next(_ccache_ids)}".encode(),
                }
                self._creds = gssapi.Credentials(name=name, usage="initiate", store=store)
            else:
                self._creds = gssapi.Credentials(name=name, usage="initiate")
        except gssapi.exceptions.GSSError as exc:
            raise ConfigError(
                "java.security.auth.login.config",
                f"cannot get Kerberos client credentials for {principal or 'the default ccache'}"
                f" (keytab {keytab or '-'}): {gss_reason(exc)}",
            ) from None
        self._mech = gssapi.OID.from_int_seq(_SPNEGO_OID)

    @classmethod
    def from_client(cls, creds: KerberosClientCredentials) -> KerberosInitiator:
        return cls(keytab=creds.keytab, principal=creds.principal, service_name=creds.service_name)

    @classmethod
    def from_server(cls, creds: KerberosServerCredentials) -> KerberosInitiator:
        """A node towards its peers with its own service key (principal `service/host@R`)."""
        service = short_name(creds.principal)
        return cls(keytab=creds.keytab, principal=creds.principal, service_name=service)

    def start(self, host: str, *, sasl: bool = False) -> InitiatorContext:
        """A new context and its first token (blocks: may ask the KDC for a ticket).

        `sasl`: the Kerberos V5 mechanism itself, as SASL GSSAPI (RFC 4752) uses it, with
        integrity for its security-layer messages; otherwise SPNEGO (HTTP Negotiate)."""
        gssapi = self._gssapi
        target = gssapi.Name(f"{self.service_name}@{host}", gssapi.NameType.hostbased_service)
        flags = gssapi.RequirementFlag
        wanted = [flags.mutual_authentication, flags.out_of_sequence_detection]
        if sasl:
            wanted.append(flags.integrity)
        try:
            ctx = gssapi.SecurityContext(
                name=target,
                creds=self._creds,
                usage="initiate",
                mech=gssapi.MechType.kerberos if sasl else self._mech,
                flags=wanted,
            )
            # Raised by `step` itself: a failed mutual authentication is then an `AuthError`
            # from `finish`, not a bare GSSError from a later `ctx.complete`.
            ctx.__DEFER_STEP_ERRORS__ = False
            token = ctx.step()
        except gssapi.exceptions.GSSError as exc:
            raise AuthError(
                f"Kerberos: no ticket for {self.service_name}@{host}: {gss_reason(exc)}"
            ) from None
        return InitiatorContext(ctx, token or b"")

    def finish(self, started: InitiatorContext, reply: bytes | None) -> None:
        """Check the server's reply token: mutual authentication, or `AuthError`."""
        ctx = started.ctx
        if reply is None:
            raise AuthError("Kerberos: the server did not authenticate itself (no reply token)")
        try:
            ctx.step(reply)
        except self._gssapi.exceptions.GSSError as exc:
            raise AuthError(f"Kerberos: mutual authentication failed: {gss_reason(exc)}") from None
        if not ctx.complete:
            raise AuthError("Kerberos: mutual authentication incomplete")
