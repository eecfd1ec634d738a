"""TLS contexts from `pmcluster.tls.*`: the node's listener, and clients (including the
node's own client for node-to-node traffic).

- `pmcluster.tls.cert` + `pmcluster.tls.key` (PEM): the node's certificate chain and key.
  Setting them turns TLS on for the listener and makes every client of that configuration
  speak `https`.
- `pmcluster.tls.ca` (PEM): the CA bundle clients verify nodes against (the system store
  when unset). A client-only configuration sets `ca` alone to speak `https`.
- `pmcluster.tls.verify` (default true): certificate and host-name verification. Turning it
  off is logged as a warning at every context creation.

A client context also presents the certificate and key when both are set, so a node talking
to a peer (or a proxy that asks for client certificates) identifies itself by TLS too.
"""

from __future__ import annotations

import logging
import ssl

from pmcluster.config import Config
from pmcluster.errors import ConfigError

__all__ = ["client_ssl_context", "server_ssl_context", "tls_enabled"]

log = logging.getLogger(__name__)


def tls_enabled(config: Config) -> bool:
    """Whether this configuration speaks `https` (a certificate, or a CA to trust)."""
    return config.tls_cert is not None or config.tls_ca is not None


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The listener's context, or None when the node has no certificate (plain HTTP)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, config)
    return context


def client_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The context clients use towards nodes, or None when TLS is off (plain HTTP)."""
    if not tls_enabled(config):
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("pmcluster.tls.ca", f"cannot load {config.tls_ca}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not config.tls_verify:
        log.warning("pmcluster.tls.verify is false: node certificates are NOT verified")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.tls_cert is not None:
        _load_chain(context, config)
    return context


def _load_chain(context: ssl.SSLContext, config: Config) -> None:
    try:
        context.load_cert_chain(config.tls_cert or "", config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "pmcluster.tls.cert", f"cannot load {config.tls_cert} / {config.tls_key}: {exc}"
        ) from None
