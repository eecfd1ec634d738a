"""`pmcluster.auth.tls`: contexts from config, proved by real handshakes on 127.0.0.1.

trustme makes the CAs and certificates; each case runs the node's listener context against a
client context over a loopback socket and checks the precise verification error."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
import trustme

from pmcluster.auth.tls import client_ssl_context, server_ssl_context, tls_enabled
from pmcluster.config import Config, config_from_mapping
from pmcluster.errors import ConfigError


def write(ca: trustme.CA, folder: Path, *hosts: str) -> dict[str, str]:
    """`pmcluster.tls.*` keys: a certificate for `hosts` signed by `ca`, and `ca` to trust."""
    folder.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(*hosts)
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "node.pem"))
    cert.private_key_pem.write_to_path(str(folder / "node.key"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return {
        "pmcluster.tls.cert": str(folder / "node.pem"),
        "pmcluster.tls.key": str(folder / "node.key"),
        "pmcluster.tls.ca": str(folder / "ca.pem"),
    }


def conf(keys: dict[str, object]) -> Config:
    return config_from_mapping(keys)


async def handshake(server: Config, client: Config, host: str = "127.0.0.1") -> str:
    """Serve on 127.0.0.1 with the node's context, connect with the client's; the answer."""
    server_ctx = server_ssl_context(server)
    client_ctx = client_ssl_context(client)
    assert server_ctx is not None and client_ctx is not None

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=client_ctx, server_hostname=host), 5
        )
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data.decode()
    finally:
        srv.close()
        await srv.wait_closed()


async def test_a_client_trusting_the_ca_talks_to_the_node(tmp_path: Path) -> None:
    keys = write(trustme.CA(), tmp_path, "127.0.0.1")
    client = {"pmcluster.tls.ca": keys["pmcluster.tls.ca"]}
    assert await handshake(conf(keys), conf(client)) == "hello"


async def test_a_client_trusting_another_ca_refuses_the_node(tmp_path: Path) -> None:
    keys = write(trustme.CA(), tmp_path / "node", "127.0.0.1")
    other = write(trustme.CA(), tmp_path / "other", "127.0.0.1")
    client = {"pmcluster.tls.ca": other["pmcluster.tls.ca"]}
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        await handshake(conf(keys), conf(client))
    assert caught.value.verify_code == 20  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    assert "unable to get local issuer certificate" in str(caught.value)


async def test_a_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    keys = write(trustme.CA(), tmp_path, "node-7.example")
    client = {"pmcluster.tls.ca": keys["pmcluster.tls.ca"]}
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        await handshake(conf(keys), conf(client))
    assert caught.value.verify_code == 64  # X509_V_ERR_IP_ADDRESS_MISMATCH
    assert "IP address mismatch" in str(caught.value)


async def test_a_peer_node_with_another_ca_is_refused(tmp_path: Path) -> None:
    """Node-to-node: a node (certificate and key set, so its client context presents them)
    whose CA did not sign its peer's certificate refuses the peer."""
    peer = write(trustme.CA(), tmp_path / "peer", "127.0.0.1")
    me = write(trustme.CA(), tmp_path / "me", "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        await handshake(conf(peer), conf(me))
    assert caught.value.verify_code == 20
    # The same node trusting the peer's CA talks to it.
    trusting = me | {"pmcluster.tls.ca": peer["pmcluster.tls.ca"]}
    assert await handshake(conf(peer), conf(trusting)) == "hello"


async def test_verify_off_accepts_any_certificate_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = write(trustme.CA(), tmp_path / "node", "node-7.example")
    other = write(trustme.CA(), tmp_path / "other", "127.0.0.1")
    client = {"pmcluster.tls.ca": other["pmcluster.tls.ca"], "pmcluster.tls.verify": False}
    with caplog.at_level(logging.WARNING, logger="pmcluster.auth.tls"):
        assert await handshake(conf(keys), conf(client)) == "hello"
    assert "NOT verified" in caplog.text


def test_contexts_follow_the_keys(tmp_path: Path) -> None:
    keys = write(trustme.CA(), tmp_path, "127.0.0.1")
    assert not tls_enabled(conf({})) and client_ssl_context(conf({})) is None
    assert server_ssl_context(conf({})) is None
    only_ca = conf({"pmcluster.tls.ca": keys["pmcluster.tls.ca"]})
    assert tls_enabled(only_ca) and server_ssl_context(only_ca) is None
    for context in (client_ssl_context(only_ca), server_ssl_context(conf(keys))):
        assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    ctx = client_ssl_context(only_ca)
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_unreadable_files_name_the_key(tmp_path: Path) -> None:
    keys = write(trustme.CA(), tmp_path, "127.0.0.1")
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"pmcluster\.tls\.ca.*missing\.pem"):
        client_ssl_context(conf({"pmcluster.tls.ca": missing}))
    bad_cert = keys | {"pmcluster.tls.cert": keys["pmcluster.tls.ca"]}  # a CA, not our chain
    with pytest.raises(ConfigError, match=r"pmcluster\.tls\.cert"):
        server_ssl_context(conf(bad_cert))
    with pytest.raises(ConfigError, match=r"pmcluster\.tls\.cert"):
        client_ssl_context(conf(keys | {"pmcluster.tls.key": missing}))
