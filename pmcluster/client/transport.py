"""Async HTTP calls to ONE node, with timeouts and the error tree of `pmcluster.errors`.

A `NodeTransport` shares the client's `aiohttp.ClientSession` (one pooled, keep-alive session
per client). URLs are built already encoded (`paths.to_url` + `yarl.URL(..., encoded=True)`)
so a path round-trips byte for byte. Every response's `X-Pmcluster-Epoch` is reported to the
`on_epoch` callback: that is how a client learns that the ring changed.

A response larger than `max_response_bytes` (`pmcluster.response.max.bytes`) is not read
further (`ProtocolError`): a broken or hostile peer cannot make the client buffer without
bound. A batch longer than `batch_max_entries` leaves in several requests.

Connection errors, timeouts and 5xx raise `NodeUnavailable`; 4xx raise the precise error the
server named (`InvalidPath`, `InvalidRequest`, `PayloadTooLarge`, `AuthError`, `NotAuthorized`).
A 404 marked `X-Pmcluster-Fresh` (the node joined or restarted empty recently) raises
`NodeNotReady`: that node's "absent" is no answer, and it is not failing either.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from yarl import URL

from pmcluster.client.channel import ChannelRefused, PulseChannel
from pmcluster.errors import (
    InvalidRequest,
    NodeNotReady,
    NodeUnavailable,
    PmclusterError,
    ProtocolError,
)
from pmcluster.protocol import pulsecodec
from pmcluster.protocol.http import (
    EPOCH_HEADER,
    FORWARDED_HEADER,
    FRESH_HEADER,
    HELD_HEADER,
    MAX_VERSION,
    PULSES_MEDIA_TYPE,
    TOMBSTONE_HEADER,
    VERSION_HEADER,
    caller_error,
)
from pmcluster.protocol.paths import to_url
from pmcluster.protocol.pulse import Pulse

if TYPE_CHECKING:
    from pmcluster.auth.client import RequestAuth

__all__ = ["NodeTransport", "Transport"]

DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024  # pmcluster.response.max.bytes
DEFAULT_BATCH_MAX_ENTRIES = 10_000  # pmcluster.batch.max.entries

EpochCallback = Callable[[str, str], None]


class Transport(Protocol):
    """What the client needs of one node: `NodeTransport` over HTTP, or a node's own store."""

    node_id: str

    # put_pulse: 0 when stored, else the newer version the node holds (which won).
    async def put_pulse(self, path: str, data: bytes, version: int) -> int: ...
    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]: ...
    async def exists(self, path: str) -> tuple[bool, int]: ...
    async def children(self, path: str) -> list[str]: ...
    async def children_versions(self, path: str) -> tuple[dict[str, int], dict[str, int]]: ...
    async def pulses(self, path: str) -> list[Pulse]: ...
    async def delete_pulse_id(self, path: str, version: int) -> int: ...
    async def delete_path(self, path: str, version: int) -> int: ...
    async def create_path(self, path: str) -> None: ...
    async def batch(self, pulses: Sequence[tuple[str, bytes, int]]) -> tuple[int, int]: ...
    async def members(self) -> dict[str, Any]: ...


def _int_header(headers: Mapping[str, str], name: str) -> int:
    raw = headers.get(name)
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError as exc:
        raise ProtocolError(f"header {name}: not an integer: {raw!r}") from exc


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, node: str) -> bytes:
    """The response body, refused past `limit` bytes (`ProtocolError`)."""
    length = resp.content_length
    if length is not None and length > limit:
        raise ProtocolError(f"node {node}: a {length}-byte answer exceeds {limit} bytes")
    if length is not None:
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"node {node}: an answer of more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _Answer:
    """What the caller needs of a response, read while the connection was held."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ProtocolError(f"expected JSON, got {self.body[:80]!r}") from exc


class NodeTransport:
    """HTTP to one node `host:port`; stateless apart from the shared session."""

    def __init__(
        self,
        node_id: str,
        host: str,
        port: int,
        session: aiohttp.ClientSession,
        *,
        connect_timeout_secs: float,
        request_timeout_secs: float,
        on_epoch: EpochCallback | None = None,
        forwarded: bool = False,
        auth: RequestAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        batch_max_entries: int = DEFAULT_BATCH_MAX_ENTRIES,
        channel: bool = False,
    ) -> None:
        """`auth` adds credentials and answers challenges (`pmcluster.auth.client`);
        `ssl_context` switches to https with that context (`pmcluster.auth.tls`); `channel`
        (with `forwarded`) sends batches over a pulse channel (`pmcluster.client.channel`)
        when the node takes one."""
        self._max_response = max_response_bytes
        self._batch_max = batch_max_entries
        self.node_id = node_id
        scheme = "http" if ssl_context is None else "https"
        self._base = str(URL.build(scheme=scheme, host=host, port=port))
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._auth = auth
        self._session = session
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_secs, sock_connect=connect_timeout_secs
        )
        self._on_epoch = on_epoch
        self._forwarded = forwarded
        self._channel: PulseChannel | None = None
        if channel and forwarded:
            self._channel = PulseChannel(
                node_id,
                host,
                port,
                connect_timeout_secs=connect_timeout_secs,
                request_timeout_secs=request_timeout_secs,
                ssl_context=ssl_context,
                on_epoch=on_epoch,
            )

    def __repr__(self) -> str:
        return f"NodeTransport({self.node_id!r})"

    # --- plumbing ----------------------------------------------------------------------------

    def _url(self, route: str, path: str | None = None, query: str = "") -> URL:
        tail = "" if path is None else to_url(path)
        return URL(f"{self._base}/v1/{route}{tail}{query}", encoded=True)

    async def _request(
        self,
        method: str,
        url: URL,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> _Answer:
        """One request; returns 200, 204 and 404 answers, raises for everything else."""
        send_headers = dict(headers or {})
        if self._forwarded:
            send_headers[FORWARDED_HEADER] = "1"
        pending = None if self._auth is None else await self._auth.begin(method, url)
        while True:
            sent = send_headers if pending is None else {**send_headers, **pending.headers}
            try:
                async with self._session.request(
                    method,
                    url,
                    data=data,
                    headers=sent,
                    timeout=self._timeout if timeout is None else timeout,
                    ssl=self._ssl,
                ) as resp:
                    body = await _read_capped(resp, self._max_response, self.node_id)
                    answer = _Answer(resp.status, resp.headers, body)
                    # A challenge answered: send once more with credentials (bounded by auth).
                    if pending is None or not await pending.finish(resp.status, resp.headers):
                        break
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise NodeUnavailable(self.node_id, f"{type(exc).__name__}: {exc}") from exc
        epoch = answer.headers.get(EPOCH_HEADER)
        if epoch is not None and self._on_epoch is not None:
            self._on_epoch(self.node_id, epoch)
        if answer.status in (200, 204, 404):
            return answer
        raise self._error(answer)

    def _error(self, answer: _Answer) -> PmclusterError:
        detail = answer.body[:500].decode("utf-8", "replace")
        short = ""
        try:
            doc = json.loads(answer.body)
            if isinstance(doc, dict):
                short = str(doc.get("error", ""))
                detail = str(doc.get("detail", short or detail))
        except ValueError:
            pass
        status = answer.status
        error = caller_error(status, short)
        if error is not None:
            return error(detail)
        if status >= 500:
            return NodeUnavailable(self.node_id, f"HTTP {status}: {detail}")
        return ProtocolError(f"node {self.node_id}: HTTP {status}: {detail}")

    def _not_404(self, answer: _Answer, what: str) -> _Answer:
        if answer.status == 404:
            raise ProtocolError(f"node {self.node_id}: {what}: HTTP 404: unknown route?")
        return answer

    # --- the routes --------------------------------------------------------------------------

    async def put_pulse(self, path: str, data: bytes, version: int) -> int:
        """PUT /v1/pulse/{path} with the writer's version; 0 when stored, else the newer
        version the node holds (its `X-Pulse-Held`), which won over this write. Over the
        pulse channel when the node takes one (a batch of one, its ack naming the same
        version), else HTTP."""
        channel = self._channel
        if channel is not None and channel.usable() and 0 < version <= MAX_VERSION:
            try:
                ack = await channel.batch(pulsecodec.encode([(path, data, version)]))
            except ChannelRefused:
                pass
            else:
                return max((held for _, held in ack.ignored), default=0)
        answer = await self._request(
            "PUT", self._url("pulse/", path), data=data, headers={VERSION_HEADER: str(version)}
        )
        return _int_header(self._not_404(answer, "put_pulse").headers, HELD_HEADER)

    async def get_pulse(self, path: str) -> tuple[Pulse | None, int]:
        """GET /v1/pulse/{path} -> (value or None, newest tombstone version or 0)."""
        answer = await self._request("GET", self._url("pulse/", path))
        if answer.status == 404:
            return None, self._absent(answer)
        return Pulse(path, answer.body, _int_header(answer.headers, VERSION_HEADER)), 0

    async def exists(self, path: str) -> tuple[bool, int]:
        """HEAD /v1/pulse/{path} -> (True, the value's version) when it holds a value, else
        (False, its newest tombstone version or 0)."""
        answer = await self._request("HEAD", self._url("pulse/", path))
        if answer.status == 404:
            return False, self._absent(answer)
        return True, _int_header(answer.headers, VERSION_HEADER)

    def _absent(self, answer: _Answer) -> int:
        """A 404's tombstone version; `NodeNotReady` when the node is still being filled and
        holds no tombstone (its absent says nothing)."""
        tomb = _int_header(answer.headers, TOMBSTONE_HEADER)
        if tomb == 0 and answer.headers.get(FRESH_HEADER) == "1":
            raise NodeNotReady(self.node_id)
        return tomb

    async def children(self, path: str) -> list[str]:
        """GET /v1/children/{path} -> sorted child names."""
        answer = self._not_404(await self._request("GET", self._url("children/", path)), "children")
        names = answer.json()
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProtocolError(f"node {self.node_id}: children: not a list of names")
        return names

    async def children_versions(self, path: str) -> tuple[dict[str, int], dict[str, int]]:
        """GET /v1/children/{path}?versions=1 -> ({child: version}, {child: tombstone})."""
        url = self._url("children/", path, "?versions=1")
        doc = self._not_404(await self._request("GET", url), "children").json()
        try:
            children = {str(k): int(v) for k, v in doc["children"].items()}
            tombstones = {str(k): int(v) for k, v in doc.get("tombstones", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"node {self.node_id}: bad children versions: {exc}") from exc
        return children, tombstones

    async def pulses(self, path: str) -> list[Pulse]:
        """GET /v1/pulses/{path} in the binary pulse-list encoding."""
        answer = self._not_404(
            await self._request(
                "GET", self._url("pulses/", path), headers={"Accept": PULSES_MEDIA_TYPE}
            ),
            "pulses",
        )
        try:
            entries = pulsecodec.decode(answer.body)
        except InvalidRequest as exc:
            raise ProtocolError(f"node {self.node_id}: bad pulse list: {exc}") from exc
        return [Pulse(p, data, version) for p, data, version in entries]

    async def delete_pulse_id(self, path: str, version: int) -> int:
        """DELETE /v1/pulse/{path}: tombstone the exact key at `version`; returns the newer
        version of a value the node kept (`X-Pulse-Held`), 0 when none."""
        answer = await self._request(
            "DELETE", self._url("pulse/", path), headers={VERSION_HEADER: str(version)}
        )
        return _int_header(answer.headers, HELD_HEADER)

    async def delete_path(self, path: str, version: int) -> int:
        """DELETE /v1/path/{path}: tombstone the subtree at `version`; returns the newest
        version of a value under it the node kept (`X-Pulse-Held`), 0 when none."""
        answer = await self._request(
            "DELETE", self._url("path/", path), headers={VERSION_HEADER: str(version)}
        )
        return _int_header(answer.headers, HELD_HEADER)

    async def create_path(self, path: str) -> None:
        """POST /v1/path/{path}: validated, no effect (Storm's no-op)."""
        self._not_404(await self._request("POST", self._url("path/", path)), "create_path")

    async def batch(self, pulses: Sequence[tuple[str, bytes, int]]) -> tuple[int, int]:
        """POST /v1/batch -> (stored, ignored); in pieces of at most `batch_max_entries`."""
        if len(pulses) <= self._batch_max:
            return await self._batch(pulses)
        stored = ignored = 0
        for start in range(0, len(pulses), self._batch_max):
            done, skipped = await self._batch(pulses[start : start + self._batch_max])
            stored, ignored = stored + done, ignored + skipped
        return stored, ignored

    async def _batch(self, pulses: Sequence[tuple[str, bytes, int]]) -> tuple[int, int]:
        body = pulsecodec.encode(pulses)
        channel = self._channel
        if channel is not None and channel.usable():
            try:
                ack = await channel.batch(body)
            except ChannelRefused:
                pass  # this node takes no channel (for now): the HTTP route below
            else:
                return ack.stored, len(pulses) - ack.stored
        answer = await self._request(
            "POST",
            self._url("batch"),
            data=body,
            headers={"Content-Type": PULSES_MEDIA_TYPE},
        )
        doc = self._not_404(answer, "batch").json()
        try:
            return int(doc["stored"]), int(doc.get("ignored", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"node {self.node_id}: bad batch answer: {exc}") from exc

    async def internal(self, route: str, doc: Any, timeout_secs: float) -> Any:
        """POST a JSON `doc` to the peer-only route `/v1/internal/{route}` (anti-entropy);
        the JSON answer. `timeout_secs` bounds the whole exchange (a digest of a large store
        takes longer than one heartbeat request)."""
        timeout = aiohttp.ClientTimeout(total=timeout_secs, sock_connect=self._timeout.sock_connect)
        answer = await self._request(
            "POST",
            self._url(f"internal/{route}"),
            data=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        )
        return self._not_404(answer, f"internal/{route}").json()

    def close(self) -> None:
        """Close the pulse channel, when there is one (the HTTP session is the client's)."""
        if self._channel is not None:
            self._channel.close()

    async def members(self) -> dict[str, Any]:
        """GET /v1/members -> this node's view (epoch, members, ring parameters)."""
        doc = self._not_404(await self._request("GET", self._url("members")), "members").json()
        if not isinstance(doc, dict):
            raise ProtocolError(f"node {self.node_id}: members: not an object")
        return doc
