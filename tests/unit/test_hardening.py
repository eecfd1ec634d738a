"""Issue 17's findings, one module at a time: what an unauthenticated client sends cannot
crash a handler, forge a log line, read what it may not, or cost a node without bound."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from pmcluster.auth.digest import DigestRejected, DigestServer
from pmcluster.auth.jaas import DigestCredentials
from pmcluster.auth.middleware import KerberosGate, kerberos_peers, log_safe
from pmcluster.auth.tokens import NonceSigner, ReplayCache
from pmcluster.config import Config, config_from_mapping
from pmcluster.errors import AuthError, ConfigError, InvalidPath, PmclusterError, ProtocolError
from pmcluster.node.admin import install_admin
from pmcluster.node.app import make_app
from pmcluster.node.appstate import BUDGET_KEY
from pmcluster.protocol import paths
from pmcluster.protocol.budget import BudgetShare, BufferBudget
from pmcluster.store import KEY_OVERHEAD_BYTES, PulseStore
from pmcluster.store.trie import index_entry_bytes
from pmcluster.storm.codec import TType, decode_message

Client = TestClient[web.Request, web.Application]


def test_auth_errors_join_the_one_tree() -> None:
    from pmcluster.auth.kerberos import KerberosRejected

    assert issubclass(DigestRejected, AuthError) and issubclass(KerberosRejected, AuthError)
    assert issubclass(AuthError, PmclusterError)


# --- digest ------------------------------------------------------------------------------------


def digest_server() -> DigestServer:
    signer = NonceSigner(b"k" * 32, 300.0, node="n1")
    return DigestServer(DigestCredentials("storm", "pw"), signer, ReplayCache())


@pytest.mark.parametrize(
    "header",
    [
        'Digest username="storm", realm="pmcluster", nonce="x", uri="/a", response="r", '
        'qop=auth, nc=00000001, cnonce="c", opaque="\u00e9"',
        "Digest username*=UTF-8''%ff, realm=\"pmcluster\"",
        'Digest username="\u00e9", userhash=true, realm="pmcluster"',
        'Digest username*=UTF-8\'\'x%0aFORGED, realm="pmcluster", nonce="x", uri="/a", '
        'response="r", qop=auth, nc=00000001, cnonce="c"',
    ],
)
def test_malformed_digest_headers_are_rejections_not_exceptions(header: str) -> None:
    with pytest.raises(DigestRejected):
        digest_server().verify("GET", "/a", header)


def test_challenges_do_not_derive_from_the_password() -> None:
    # Two servers with the same password and different secrets: different opaque values, so
    # neither the opaque nor the nonce MAC can be used to test password guesses offline.
    a = digest_server().challenges()[0]
    b = DigestServer(
        DigestCredentials("storm", "pw"), NonceSigner(b"j" * 32, 300.0), ReplayCache()
    ).challenges()[0]
    opaque = [c.split('opaque="')[1].split('"')[0] for c in (a, b)]
    assert opaque[0] != opaque[1]


def test_md5_can_be_turned_off() -> None:
    server = DigestServer(
        DigestCredentials("u", "p"), NonceSigner(b"k" * 32, 300.0), ReplayCache(), md5=False
    )
    assert all("SHA-256" in c for c in server.challenges())


def test_log_lines_escape_user_text() -> None:
    assert "\n" not in log_safe("x\nFORGED") and "FORGED" in log_safe("x\nFORGED")
    assert log_safe("\u00e9\r") == "\\xe9\\x0d"
    assert log_safe("a" * 500).endswith("...")


# --- kerberos authorization --------------------------------------------------------------------


def test_kerberos_readers_must_be_in_the_realm_and_peers_must_be_configured() -> None:
    peers = kerberos_peers(
        Config(servers=("127.0.0.1", "node2.example:6699")), "pacemaker/127.0.0.1@R.TEST"
    )
    assert peers == {
        "pacemaker/127.0.0.1@R.TEST",
        "pacemaker/node2.example@R.TEST",
    }
    gate = KerberosGate(
        acceptor=None,  # type: ignore[arg-type]
        cookies=None,  # type: ignore[arg-type]
        readers=frozenset({"nimbus"}),
        writes=False,
        realm="R.TEST",
        peers=peers,
    )
    assert gate.authorized("nimbus@R.TEST")
    assert gate.authorized("nimbus/host@R.TEST")
    assert not gate.authorized("nimbus@OTHER.REALM")
    assert not gate.authorized("pacemaker/evil.example@R.TEST")
    assert gate.authorized("pacemaker/node2.example@R.TEST")


# --- admin -------------------------------------------------------------------------------------


async def test_admin_routes_need_the_secret_from_another_host(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    secret = tmp_path / "admin"
    secret.write_bytes(b"a" * 32 + b"\n")
    app = make_app(Config(admin_secret_file=str(secret)))
    install_admin(app, lambda: None)
    client: Client = await aiohttp_client(app)
    resp = await client.post("/v1/admin/drain", json={"force": True})
    assert resp.status == 403 and "pmcluster.admin.secret.file" in (await resp.json())["detail"]
    assert (await client.get("/v1/admin/drain")).status == 403
    ok = await client.get("/v1/admin/drain", headers={"X-Pmcluster-Admin-Secret": "a" * 32})
    assert ok.status == 200


# --- paths, store, budget ----------------------------------------------------------------------


def test_paths_past_the_limits_are_invalid() -> None:
    with pytest.raises(InvalidPath, match=r"pmcluster\.path\.max\.depth"):
        paths.normalize("/a" * 65)
    with pytest.raises(InvalidPath, match=r"pmcluster\.path\.max\.bytes"):
        paths.normalize("/" + "x" * 4096)
    assert paths.normalize("/a" * 64) == "/a" * 64
    paths.set_path_limits(300, 40)
    try:
        with pytest.raises(InvalidPath):
            paths.normalize("/a" * 41)
    finally:
        paths.set_path_limits(paths.DEFAULT_MAX_PATH_BYTES, paths.DEFAULT_MAX_PATH_DEPTH)


def test_deep_paths_are_counted_in_the_footprint() -> None:
    deep = PulseStore()
    key = "/a" * 64
    deep.send_pulse(key, b"x")
    # 63 interior nodes, the one at depth d with a chain of d + 1 nodes in the parents index.
    interior = sum(index_entry_bytes(2 * d, d + 1) for d in range(1, 64))
    assert deep.footprint_bytes == len(key) + 1 + KEY_OVERHEAD_BYTES + interior
    assert interior > 60 * KEY_OVERHEAD_BYTES
    deep.delete_path("/a")
    assert deep.footprint_bytes == 0


def test_buffer_budget_refuses_growth_past_its_limit() -> None:
    budget = BufferBudget(100)
    assert budget.hold(0, 60) and budget.used == 60
    assert not budget.hold(0, 50) and budget.used == 60 and budget.refused == 1
    assert budget.hold(60, 0) and budget.used == 0


# --- thrift ------------------------------------------------------------------------------------


def _message_with_unknown_list(etype: TType, count: int, element: bytes) -> bytes:
    # HBMessage { 1: type = 0, 9: list<etype> (unknown field, skipped) }
    head = struct.pack(">bhi", TType.I32, 1, 0)
    unknown = struct.pack(">bhbi", TType.LIST, 9, etype, count) + element * count
    return head + unknown + b"\x00"


def test_a_large_list_of_bools_is_skipped_in_one_step() -> None:
    body = _message_with_unknown_list(TType.BOOL, 900_000, b"\x01")
    began = time.perf_counter()
    assert decode_message(body).type == 0
    print(f"skip of a 900k-element list<bool>: {(time.perf_counter() - began) * 1e3:.2f} ms")


def test_elements_per_frame_are_bounded() -> None:
    body = _message_with_unknown_list(TType.STRING, 200, b"\x00\x00\x00\x00")
    assert decode_message(body, max_elements=200).type == 0
    with pytest.raises(ProtocolError, match=r"pmcluster\.thrift\.max\.elements"):
        decode_message(body, max_elements=199)


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("pmcluster.version.max.skew.secs", "soon"),
        ("pmcluster.version.max.skew.secs", 0),
        ("pmcluster.path.max.bytes", 10),
        ("pmcluster.path.max.depth", "deep"),
        ("pmcluster.thrift.max.elements", 1),
        ("pmcluster.batch.max.entries", 0),
        ("pmcluster.http.idle.secs", -1),
        ("pmcluster.header.timeout.secs", "x"),
        ("pmcluster.max.connections.per.address", 0),
        ("pmcluster.buffer.max.bytes", 10),
        ("pmcluster.auth.digest.md5", "maybe"),
    ],
)
def test_wrong_limit_values_stop_start_naming_the_key(key: str, bad: object) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_mapping({key: bad})


def test_limit_defaults() -> None:
    config = config_from_mapping({})
    assert (config.version_max_skew_secs, config.path_max_bytes, config.path_max_depth) == (
        30.0,
        4096,
        64,
    )
    assert (config.max_connections_per_address, config.peer_connections_reserved) == (256, 64)


async def test_bodies_arriving_in_pieces_count_against_the_buffer_budget(
    aiohttp_client: AiohttpClient,
) -> None:
    app = make_app(Config(buffer_max_bytes=1 << 16))
    client: Client = await aiohttp_client(app)

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(40):  # slowly: the body is still arriving while the handler reads it
            await asyncio.sleep(0.005)
            yield b"x" * 4096

    resp = await client.put("/v1/pulse/wb/big", data=pieces())
    assert resp.status == 507 and "pmcluster.buffer.max.bytes" in (await resp.json())["detail"]
    assert app[BUDGET_KEY].used == 0  # released: the next upload has the whole budget
    small = await client.put("/v1/pulse/wb/small", data=b"y" * 1000)
    assert small.status == 204


def test_a_connections_budget_share_counts_growth_and_gives_back_on_refusal() -> None:
    budget = BufferBudget(100)
    first, second = BudgetShare(budget), BudgetShare(budget)
    assert first.hold(60) and budget.used == 60
    assert second.hold(40) and budget.used == 100
    assert not second.hold(41)  # past the limit: refused, its 40 bytes given back
    assert second.held == 0 and budget.used == 60 and budget.refused == 1
    assert first.hold(10) and budget.used == 10  # shrinking is always allowed
    first.release()
    assert budget.used == 0 and first.held == 0
    assert BudgetShare(None).hold(10**12)  # no budget: nothing counted, nothing refused
