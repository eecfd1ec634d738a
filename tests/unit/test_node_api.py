"""The node's HTTP API against the real aiohttp app: every route, status and header."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import Sequence

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from yarl import URL

from pmcluster.config import Config
from pmcluster.errors import ClusterUnavailable, NotAuthorized
from pmcluster.node.app import make_app
from pmcluster.node.appstate import STATE_KEY
from pmcluster.node.local import LocalBackend
from pmcluster.protocol import pulsecodec
from pmcluster.protocol.backend import PulseEntry
from pmcluster.protocol.paths import to_url
from pmcluster.protocol.pulse import Pulse
from pmcluster.store import PulseStore

Client = TestClient[web.Request, web.Application]

CONFIG = Config(host="127.0.0.1", port=6699, max_message_size=64 * 1024)
NODE_ID = "127.0.0.1:6699"

TRICKY_PATHS = [
    "/workerbeats/wordcount-3-1718000000/9c1de2-10.0.0.5-6700",
    "/wb/topo(1)+$[x]/node,1~2",
    "/wb/100%/a%2Fb/%41",
    "/wb/what?/#frag/&amp;=",
    "/wb/with space/ and  two ",
    "/wb/ünïcödé/日本語/emoji-🙂",
    "/wb/plus+sign/semi;colon/at@/colon:/back\\slash/quote\"'/star*",
    "/wb/...dots/.hidden/trailing.",
]


def target(route: str, path: str) -> str:
    """The raw request target for `path` under `route` (e.g. "/v1/pulse/")."""
    return route + to_url(path)


async def call(
    client: Client,
    method: str,
    raw_target: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """Send `raw_target` byte for byte (encoded=True: the client must not re-encode it)."""
    url = URL(f"http://{client.host}:{client.port}{raw_target}", encoded=True)
    async with client.session.request(method, url, data=data, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_app(CONFIG))


def assert_error(
    status: int, body: bytes, headers: dict[str, str], expected: int
) -> dict[str, str]:
    """An error answer: the status, a JSON {"error", "detail"} body, the node headers."""
    assert status == expected, body
    assert headers["Content-Type"].startswith("application/json")
    payload = json.loads(body)
    assert set(payload) == {"error", "detail"}
    assert isinstance(payload["error"], str) and payload["error"]
    assert headers["X-Pmcluster-Node"] == NODE_ID
    return dict(payload)


async def test_put_then_get_round_trip_with_version(client: Client) -> None:
    status, body, headers = await call(
        client, "PUT", "/v1/pulse/wb/t1/n1", data=b"\x00beat\xff", headers={"X-Pulse-Version": "42"}
    )
    assert (status, body) == (204, b"")
    assert headers["X-Pmcluster-Node"] == NODE_ID
    assert headers["X-Pmcluster-Epoch"] == "static-local"
    status, body, headers = await call(client, "GET", "/v1/pulse/wb/t1/n1")
    assert (status, body) == (200, b"\x00beat\xff")
    assert headers["X-Pulse-Version"] == "42"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Pmcluster-Epoch"] == "static-local"


async def test_put_without_version_gets_a_clock_version(client: Client) -> None:
    assert (await call(client, "PUT", "/v1/pulse/a", data=b"x"))[0] == 204
    status, _, headers = await call(client, "GET", "/v1/pulse/a")
    assert status == 200
    assert int(headers["X-Pulse-Version"]) > 1_600_000_000 * 10**9  # ns since the epoch


async def test_older_version_does_not_replace_newer(client: Client) -> None:
    await call(client, "PUT", "/v1/pulse/a", data=b"new", headers={"X-Pulse-Version": "10"})
    status, _, _ = await call(
        client, "PUT", "/v1/pulse/a", data=b"old", headers={"X-Pulse-Version": "9"}
    )
    assert status == 204
    status, body, headers = await call(client, "GET", "/v1/pulse/a")
    assert (status, body, headers["X-Pulse-Version"]) == (200, b"new", "10")


@pytest.mark.parametrize("path", TRICKY_PATHS)
async def test_tricky_paths_round_trip_byte_for_byte(client: Client, path: str) -> None:
    value = path.encode("utf-8") + b"-value"
    assert (await call(client, "PUT", target("/v1/pulse/", path), data=value))[0] == 204
    status, body, _ = await call(client, "GET", target("/v1/pulse/", path))
    assert (status, body) == (200, value)
    parent, name = path.rsplit("/", 1)
    status, body, _ = await call(client, "GET", target("/v1/children/", parent))
    assert status == 200
    assert json.loads(body) == [name]
    status, body, _ = await call(client, "GET", target("/v1/pulses/", path))
    assert pulsecodec.decode(body)[0][:2] == (path, value)


async def test_fully_encoded_path_is_the_same_key(client: Client) -> None:
    await call(client, "PUT", "/v1/pulse/a/b", data=b"v")
    status, body, _ = await call(client, "GET", "/v1/pulse/%2Fa%2Fb")
    assert (status, body) == (200, b"v")


async def test_head_reports_existence_and_version(client: Client) -> None:
    status, body, headers = await call(client, "HEAD", "/v1/pulse/a")
    assert (status, body) == (404, b"")
    assert "X-Pulse-Tombstone" not in headers
    assert headers["X-Pmcluster-Node"] == NODE_ID
    await call(client, "PUT", "/v1/pulse/a", data=b"12345", headers={"X-Pulse-Version": "7"})
    status, body, headers = await call(client, "HEAD", "/v1/pulse/a")
    assert (status, body, headers["X-Pulse-Version"]) == (200, b"", "7")
    assert (await call(client, "HEAD", "/v1/pulse/a/child"))[0] == 404  # exact key only


async def test_get_absent_is_404_json_without_tombstone(client: Client) -> None:
    status, body, headers = await call(client, "GET", "/v1/pulse/never/written")
    payload = assert_error(status, body, headers, 404)
    assert payload["error"] == "not_found"
    assert "X-Pulse-Tombstone" not in headers


async def test_delete_pulse_leaves_tombstone_that_blocks_older_writes(client: Client) -> None:
    await call(client, "PUT", "/v1/pulse/a/b", data=b"v", headers={"X-Pulse-Version": "5"})
    status, body, _ = await call(
        client, "DELETE", "/v1/pulse/a/b", headers={"X-Pulse-Version": "8"}
    )
    assert (status, body) == (204, b"")
    for method in ("GET", "HEAD"):
        status, _, headers = await call(client, method, "/v1/pulse/a/b")
        assert status == 404
        assert headers["X-Pulse-Tombstone"] == "8"
    await call(client, "PUT", "/v1/pulse/a/b", data=b"stale", headers={"X-Pulse-Version": "7"})
    assert (await call(client, "GET", "/v1/pulse/a/b"))[0] == 404
    await call(client, "PUT", "/v1/pulse/a/b", data=b"fresh", headers={"X-Pulse-Version": "9"})
    status, body, headers = await call(client, "GET", "/v1/pulse/a/b")
    assert (status, body, headers["X-Pulse-Version"]) == (200, b"fresh", "9")


async def test_delete_path_is_recursive_and_component_aware(client: Client) -> None:
    for path in ("/wb/t1", "/wb/t1/n1", "/wb/t1/n2/x", "/wb/t10/n1"):
        await call(
            client, "PUT", target("/v1/pulse/", path), data=b"v", headers={"X-Pulse-Version": "3"}
        )
    status, _, _ = await call(client, "DELETE", "/v1/path/wb/t1", headers={"X-Pulse-Version": "4"})
    assert status == 204
    for path in ("/wb/t1", "/wb/t1/n1", "/wb/t1/n2/x"):
        status, _, headers = await call(client, "GET", target("/v1/pulse/", path))
        assert (status, headers.get("X-Pulse-Tombstone")) == (404, "4")
    assert (await call(client, "GET", "/v1/pulse/wb/t10/n1"))[0] == 200


async def test_children_list_and_versions(client: Client) -> None:
    for path, version in (("/wb/t1/a", 5), ("/wb/t1/b/deep", 6), ("/wb/t10/c", 7)):
        await call(
            client,
            "PUT",
            target("/v1/pulse/", path),
            data=b"v",
            headers={"X-Pulse-Version": str(version)},
        )
    await call(client, "PUT", "/v1/pulse/wb/t1/gone", data=b"v", headers={"X-Pulse-Version": "1"})
    await call(client, "DELETE", "/v1/pulse/wb/t1/gone", headers={"X-Pulse-Version": "9"})
    status, body, _ = await call(client, "GET", "/v1/children/wb/t1")
    assert (status, json.loads(body)) == (200, ["a", "b"])
    status, body, _ = await call(client, "GET", "/v1/children/wb/t1/")  # trailing slash
    assert json.loads(body) == ["a", "b"]
    status, body, _ = await call(client, "GET", "/v1/children/wb")
    assert json.loads(body) == ["t1", "t10"]
    status, body, _ = await call(client, "GET", "/v1/children/")  # the root
    assert (status, json.loads(body)) == (200, ["wb"])
    status, body, _ = await call(client, "GET", "/v1/children/wb/t1?versions=1")
    assert status == 200
    assert json.loads(body) == {"children": {"a": 5, "b": 6}, "tombstones": {"gone": 9}}
    status, body, _ = await call(client, "GET", "/v1/children/nothing/here")
    assert (status, json.loads(body)) == (200, [])


async def test_pulses_binary_and_json(client: Client) -> None:
    values = {"/wb/t1/a": b"\x01\x02", "/wb/t1/b/c": b"", "/wb/t10/x": b"no"}
    for path, data in values.items():
        await call(
            client, "PUT", target("/v1/pulse/", path), data=data, headers={"X-Pulse-Version": "11"}
        )
    status, body, headers = await call(client, "GET", "/v1/pulses/wb/t1")
    assert status == 200
    assert headers["Content-Type"] == "application/x-pmcluster-pulses"
    decoded = sorted(pulsecodec.decode(body))
    assert decoded == [("/wb/t1/a", b"\x01\x02", 11), ("/wb/t1/b/c", b"", 11)]
    status, body, headers = await call(
        client, "GET", "/v1/pulses/wb/t1", headers={"Accept": "application/json"}
    )
    assert headers["Content-Type"].startswith("application/json")
    pulses = sorted(json.loads(body)["pulses"], key=lambda p: p["path"])
    assert pulses == [
        {"path": "/wb/t1/a", "version": 11, "data_b64": base64.b64encode(b"\x01\x02").decode()},
        {"path": "/wb/t1/b/c", "version": 11, "data_b64": ""},
    ]
    status, body, _ = await call(client, "GET", "/v1/pulses/")  # root: everything
    assert {p for p, _, _ in pulsecodec.decode(body)} == set(values)


async def test_create_path_is_accepted_and_stores_nothing(client: Client) -> None:
    status, body, _ = await call(client, "POST", "/v1/path/wb/new")
    assert (status, body) == (204, b"")
    assert json.loads((await call(client, "GET", "/v1/children/wb"))[1]) == []
    status, body, headers = await call(client, "POST", "/v1/path/wb/%ZZ")
    assert_error(status, body, headers, 400)


async def test_batch_stores_all_and_reports_ignored(client: Client) -> None:
    await call(client, "PUT", "/v1/pulse/b/newer", data=b"keep", headers={"X-Pulse-Version": "100"})
    body = pulsecodec.encode(
        [("/b/one", b"1", 5), ("/b/two", b"2", None), ("/b/newer", b"older", 50)]
    )
    status, answer, _ = await call(client, "POST", "/v1/batch", data=body)
    assert (status, json.loads(answer)) == (200, {"stored": 2, "ignored": 1})
    assert (await call(client, "GET", "/v1/pulse/b/one"))[1] == b"1"
    assert (await call(client, "GET", "/v1/pulse/b/two"))[0] == 200
    assert (await call(client, "GET", "/v1/pulse/b/newer"))[1] == b"keep"
    status, answer, _ = await call(client, "POST", "/v1/batch", data=b"")
    assert (status, json.loads(answer)) == (200, {"stored": 0, "ignored": 0})


@pytest.mark.parametrize(
    ("bad_entry", "index_text"),
    [
        ("relative/path", "entry 1"),
        ("/a//b", "entry 1"),
        ("/", "entry 1"),
        ("", "entry 1"),
    ],
)
async def test_batch_with_one_bad_entry_stores_nothing(
    client: Client, bad_entry: str, index_text: str
) -> None:
    raw = pulsecodec.encode([("/ok/0", b"a", 1), ("/placeholder", b"b", 1), ("/ok/2", b"c", 1)])
    # Swap the middle record's path for the bad one (the encoder itself validates nothing).
    good = pulsecodec.encode([("/placeholder", b"b", 1)])
    bad_path = bad_entry.encode()
    bad = len(bad_path).to_bytes(4, "big") + bad_path + good[4 + len("/placeholder") :]
    body = raw.replace(good, bad)
    status, answer, headers = await call(client, "POST", "/v1/batch", data=body)
    payload = assert_error(status, answer, headers, 400)
    assert index_text in payload["detail"]
    for path in ("/ok/0", "/ok/2"):
        assert (await call(client, "GET", target("/v1/pulse/", path)))[0] == 404


async def test_batch_truncated_body_is_400_naming_the_entry(client: Client) -> None:
    body = pulsecodec.encode([("/a", b"1", 1), ("/b", b"22", 1)])[:-1]
    status, answer, headers = await call(client, "POST", "/v1/batch", data=body)
    assert "entry 1" in assert_error(status, answer, headers, 400)["detail"]
    assert (await call(client, "GET", "/v1/pulse/a"))[0] == 404


async def test_members_and_health(client: Client) -> None:
    status, body, _ = await call(client, "GET", "/v1/members")
    assert status == 200
    assert json.loads(body) == {
        "epoch": "static-local",
        "node": NODE_ID,
        "members": [NODE_ID],
        "replication": CONFIG.replication,
        "points": CONFIG.ring_points,
    }
    await call(client, "PUT", "/v1/pulse/k1", data=b"v")
    await call(client, "PUT", "/v1/pulse/k2/x", data=b"v")
    status, body, _ = await call(client, "GET", "/health")
    health = json.loads(body)
    assert (status, health["status"], health["node"], health["keys"]) == (200, "ok", NODE_ID, 2)
    # A node without ZooKeeper (a fixed member list) says so; it is never fenced.
    assert (health["membership"], health["fenced"]) == ("static", False)


async def test_epoch_header_follows_node_state(client: Client) -> None:
    client.app[STATE_KEY].epoch = "zk-17"
    for method, route in (("GET", "/health"), ("GET", "/nope"), ("GET", "/v1/pulse/x")):
        assert (await call(client, method, route))[2]["X-Pmcluster-Epoch"] == "zk-17"


async def test_metrics_count_ops_bytes_and_errors(client: Client) -> None:
    await call(client, "PUT", "/v1/pulse/m/a", data=b"x" * 2000)
    await call(client, "GET", "/v1/pulse/m/a")
    await call(client, "GET", "/v1/pulse/m/absent")
    await call(client, "GET", "/v1/pulse/bad%G0")
    status, body, headers = await call(client, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = set(body.decode().splitlines())
    assert "pmcluster_pulses_received_total 1" in lines
    assert "pmcluster_received_bytes_total 2000" in lines
    assert "pmcluster_pulse_reads_total 1" in lines
    assert "pmcluster_sent_bytes_total 2000" in lines
    assert "pmcluster_stored_keys 1" in lines
    assert "pmcluster_stored_bytes 2000" in lines
    assert 'pmcluster_pulse_size_bytes_bucket{le="4096"} 1' in lines
    assert 'pmcluster_requests_total{op="send_pulse"} 1' in lines
    assert 'pmcluster_requests_total{op="get_pulse"} 3' in lines
    assert 'pmcluster_errors_total{op="get_pulse",status="400"} 1' in lines
    assert 'pmcluster_request_duration_seconds_count{op="send_pulse"} 1' in lines


@pytest.mark.parametrize(
    ("method", "raw_target"),
    [
        ("GET", "/v1/pulse/bad%zzescape"),
        ("GET", "/v1/pulse/trailing%"),
        ("GET", "/v1/pulse/bad%FFutf8"),
        ("PUT", "/v1/pulse/"),
        ("GET", "/v1/pulse/"),
        ("HEAD", "/v1/pulse/"),
        ("DELETE", "/v1/pulse/"),
        ("GET", "/v1/pulse/%2F"),
        ("GET", "/v1/pulse/a//b"),
        ("GET", "/v1/pulse/a/%2E%2E/b"),
        ("GET", "/v1/pulse/."),
        ("PUT", "/v1/pulse/a%00b"),
        ("GET", "/v1/children/a//b"),
        ("DELETE", "/v1/path/a/%2e"),
        ("GET", "/v1/pulses/%"),
    ],
)
async def test_malformed_or_empty_paths_are_400(
    client: Client, method: str, raw_target: str
) -> None:
    status, body, headers = await call(
        client, method, raw_target, data=b"v" if method == "PUT" else None
    )
    if method == "HEAD":
        assert (status, body) == (400, b"")
        assert headers["X-Pmcluster-Node"] == NODE_ID
    else:
        assert assert_error(status, body, headers, 400)["error"] == "invalid_path"
    assert (await call(client, "GET", "/health"))[0] == 200


@pytest.mark.parametrize("version", ["-1", "abc", "1.5", "1e9", "9223372036854775808", "", "0x10"])
async def test_bad_version_header_is_400(client: Client, version: str) -> None:
    for method in ("PUT", "DELETE"):
        status, body, headers = await call(
            client, method, "/v1/pulse/v", data=b"x", headers={"X-Pulse-Version": version}
        )
        assert assert_error(status, body, headers, 400)["error"] == "invalid_request"
        status, body, headers = await call(
            client, "DELETE", "/v1/path/v", headers={"X-Pulse-Version": version}
        )
        assert status == 400
    assert (await call(client, "GET", "/v1/pulse/v"))[0] == 404


async def test_versions_past_the_allowed_skew_are_refused(client: Client) -> None:
    # A version far ahead of the node's clock would pin the key (or, on a delete, silence a
    # whole subtree) against every honest write: 400, and nothing stored.
    for method, route in (
        ("PUT", "/v1/pulse/v"),
        ("DELETE", "/v1/pulse/v"),
        ("DELETE", "/v1/path/"),
    ):
        status, body, headers = await call(
            client, method, route, data=b"x", headers={"X-Pulse-Version": str(2**63 - 1)}
        )
        detail = assert_error(status, body, headers, 400)["detail"]
        assert "pmcluster.version.max.skew.secs" in detail
    near = str(time.time_ns() + 10**9)  # within the default 30 s
    await call(client, "PUT", "/v1/pulse/v", data=b"x", headers={"X-Pulse-Version": near})
    assert (await call(client, "GET", "/v1/pulse/v"))[2]["X-Pulse-Version"] == near
    assert (await call(client, "PUT", "/v1/pulse/w", data=b"y"))[0] == 204


async def test_unknown_route_is_404_json(client: Client) -> None:
    for raw in ("/nope", "/v1/pulse", "/v2/pulse/a", "/v1/batch/extra"):
        status, body, headers = await call(client, "GET", raw)
        assert assert_error(status, body, headers, 404)["error"] == "not_found"


async def test_wrong_method_is_405_json_with_allow(client: Client) -> None:
    for method, raw in (
        ("POST", "/v1/pulse/a"),
        ("PUT", "/v1/children/a"),
        ("GET", "/v1/batch"),
        ("PATCH", "/health"),
    ):
        status, body, headers = await call(client, method, raw)
        assert assert_error(status, body, headers, 405)["error"] == "method_not_allowed"
        assert headers["Allow"]


class _OtherStoreBackend(LocalBackend):
    """A stand-in for the coordinating backend: a different store than the node's own."""


async def test_forwarded_requests_use_the_local_store_only(aiohttp_client: AiohttpClient) -> None:
    own, other = PulseStore(), PulseStore()
    app = make_app(CONFIG, store=own, backend=_OtherStoreBackend(other))
    client: Client = await aiohttp_client(app)
    await call(client, "PUT", "/v1/pulse/x", data=b"coordinated")
    await call(client, "PUT", "/v1/pulse/x", data=b"local", headers={"X-Pmcluster-Forwarded": "1"})
    in_other, in_own = other.get_pulse("/x"), own.get_pulse("/x")
    assert in_other is not None and in_other.data == b"coordinated"
    assert in_own is not None and in_own.data == b"local"
    assert (await call(client, "GET", "/v1/pulse/x"))[1] == b"coordinated"
    forwarded = {"X-Pmcluster-Forwarded": "1"}
    assert (await call(client, "GET", "/v1/pulse/x", headers=forwarded))[1] == b"local"


class _FailingBackend(LocalBackend):
    """A backend whose every read fails the way a coordinator's would."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(PulseStore())
        self.exc = exc

    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [
        (ClusterUnavailable("no owner of /x answered"), 503, "cluster_unavailable"),
        (NotAuthorized("reads need nimbus"), 403, "forbidden"),
        (RuntimeError("bug"), 500, "internal_error"),
    ],
)
async def test_backend_errors_map_to_statuses(
    aiohttp_client: AiohttpClient, exc: Exception, status: int, error: str
) -> None:
    client: Client = await aiohttp_client(make_app(CONFIG, backend=_FailingBackend(exc)))
    answer = await call(client, "GET", "/v1/pulse/x")
    assert assert_error(*answer, status)["error"] == error
    assert (await call(client, "GET", "/health"))[0] == 200


class _GatedBackend(LocalBackend):
    """Counts how many send_pulse calls run at once and holds each until released."""

    def __init__(self) -> None:
        super().__init__(PulseStore())
        self.running = 0
        self.peak = 0
        self.release = asyncio.Event()

    async def send_pulse(self, path: str, data: bytes, version: int | None = None) -> bool:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
            return await super().send_pulse(path, data, version)
        finally:
            self.running -= 1

    async def send_pulses(self, pulses: Sequence[PulseEntry]) -> tuple[int, int]:
        return await super().send_pulses(pulses)


async def test_max_threads_bounds_requests_in_progress(aiohttp_client: AiohttpClient) -> None:
    backend = _GatedBackend()
    config = dataclasses.replace(CONFIG, max_threads=2)
    client: Client = await aiohttp_client(make_app(config, backend=backend))
    puts = [
        asyncio.create_task(call(client, "PUT", f"/v1/pulse/g/{i}", data=b"v")) for i in range(6)
    ]
    async with asyncio.timeout(5):
        while backend.running < 2:
            await asyncio.sleep(0.01)
    # Other requests still get in line; give the server time to admit more if it would.
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert backend.peak == 2
    backend.release.set()
    results = await asyncio.gather(*puts)
    assert [r[0] for r in results] == [204] * 6
    assert backend.peak == 2
