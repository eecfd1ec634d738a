"""Request parsing shared by the node's HTTP handlers and its HTTP fast path: key and tree
paths from the raw target, the version header, the bounded body read, the JSON answers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from pmcluster.errors import (
    InsufficientStorage,
    InvalidPath,
    InvalidRequest,
    NodeFenced,
    PayloadTooLarge,
)
from pmcluster.node.appstate import BACKEND_KEY, CONFIG_KEY, LOCAL_BACKEND_KEY, STATE_KEY
from pmcluster.protocol import paths
from pmcluster.protocol.backend import Backend
from pmcluster.protocol.budget import BufferBudget
from pmcluster.protocol.http import (
    FORWARDED_HEADER,
    FRESH_HEADER,
    MAX_VERSION,
    TOMBSTONE_HEADER,
    VERSION_HEADER,
)

BODY_TIMEOUT_FACTOR = 5.0  # a body must arrive within request_timeout_secs * this


def _remainder(request: web.Request, prefix: str) -> str:
    """The raw (still percent-encoded) part of the request target after `prefix`."""
    raw = request.raw_path.split("?", 1)[0]
    if not raw.startswith(prefix):
        raise InvalidPath(f"request target must start with {prefix} (encode only the path)")
    return raw[len(prefix) :]


def request_key(request: web.Request, prefix: str) -> str:
    """A path naming one key: the root and the empty path are refused."""
    return key_path(_remainder(request, prefix), prefix)


def key_path(raw: str, prefix: str) -> str:
    """The key named by `raw`, the percent-encoded remainder of a target after `prefix`."""
    if not raw:
        raise InvalidPath("empty path: a key path is required after " + prefix)
    path = paths.from_url(raw)  # decoded and normalised
    if path == "/":
        raise InvalidPath("the root '/' is not a key")
    return path


def request_tree(request: web.Request, prefix: str) -> str:
    """A path naming a subtree: an empty remainder means the root `/`."""
    raw = _remainder(request, prefix)
    return paths.from_url(raw)  # "" decodes to "/"


def request_version(request: web.Request) -> int | None:
    ceiling = version_ceiling(request.app[CONFIG_KEY].version_max_skew_secs)
    return parse_version(request.headers.get(VERSION_HEADER), ceiling)


def version_ceiling(skew_secs: float) -> int:
    """The newest version a request may carry now: this node's clock plus the allowed skew
    (`pmcluster.version.max.skew.secs`). A version from further ahead would pin a key (or,
    as a tombstone, a whole subtree) against every honest write until the clocks catch up."""
    return time.time_ns() + int(skew_secs * 1e9)


def parse_version(raw: str | None, ceiling: int | None = None) -> int | None:
    """`X-Pulse-Version` as a non-negative i64, at most `ceiling`; absent or 0 means "now"."""
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_VERSION:
        raise InvalidRequest(f"{VERSION_HEADER} must be an integer in [0, 2^63): {raw[:40]!r}")
    version = int(text)
    if ceiling is not None and version > ceiling:
        raise_too_new(version, ceiling)
    return version or None


def check_versions(entries: Sequence[tuple[str, bytes, int | None]], ceiling: int) -> None:
    """Refuse a batch whose newest version is past `ceiling` (see `version_ceiling`)."""
    newest = max((version or 0 for _, _, version in entries), default=0)
    if newest > ceiling:
        raise_too_new(newest, ceiling)


def raise_too_new(version: int, ceiling: int) -> NoReturn:
    ahead = (version - ceiling) / 1e9
    raise InvalidRequest(
        f"version {version} is {ahead:.3g}s past this node's clock plus the allowed skew "
        "(pmcluster.version.max.skew.secs): versions are nanoseconds since the epoch"
    )


def request_backend(request: web.Request) -> Backend:
    """The local store for a forwarded request, else the coordinator; a fenced node answers
    neither (`NodeFenced`, 503)."""
    if request.headers.get(FORWARDED_HEADER) == "1":
        if request.app[STATE_KEY].fenced:
            raise NodeFenced("this node lost its ZooKeeper session; ask another node")
        return request.app[LOCAL_BACKEND_KEY]
    coordinator = request.app[STATE_KEY].coordinator
    return coordinator if coordinator is not None else request.app[BACKEND_KEY]


async def read_body(
    request: web.Request, limit: int, timeout: float, budget: BufferBudget | None = None
) -> bytes:
    """The whole body, at most `limit` bytes, arriving within `timeout` seconds; while it
    arrives in pieces, its bytes count against the node's `budget` (507 past it)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body of {length} bytes exceeds the limit of {limit} bytes")
    content = request.content
    if content.is_eof() and content.exception() is None:
        # Fast path (the usual heartbeat): the whole body arrived with the headers, so take it
        # without a timeout context and a read loop (measured: ~4% of a PUT's CPU).
        body = content.read_nowait()
        if len(body) > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = held = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
                if budget is not None:
                    if not budget.hold(held, size):
                        held = 0
                        raise InsufficientStorage(
                            "the node holds pmcluster.buffer.max.bytes of unfinished requests"
                        )
                    held = size
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"body not received within {timeout:g}s") from None
    except ConnectionError:
        raise InvalidRequest("connection lost before the body was complete") from None
    except RuntimeError as exc:
        # aiohttp raises a bare RuntimeError("Connection closed.") when the peer left while
        # the body was awaited (seen by the fuzzer): the same as a lost connection.
        if "closed" not in str(exc).lower():
            raise
        raise InvalidRequest("connection lost before the body was complete") from None
    except HttpProcessingError as exc:  # e.g. a malformed chunked encoding
        raise InvalidRequest(f"malformed body: {exc.message}") from None
    finally:
        if budget is not None and held:
            budget.hold(held, 0)
    return b"".join(chunks)


# --- responses ---------------------------------------------------------------------------------


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer (every route of the API, admin routes included)."""
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )


def error_response(status: int, error: str, detail: str) -> web.Response:
    """The one error body shape: `{"error": short name, "detail": reason}`."""
    return json_response({"error": error, "detail": detail}, status)


def absent_response(request: web.Request, path: str, tombstone: int) -> web.Response:
    headers = {TOMBSTONE_HEADER: str(tombstone)} if tombstone > 0 else {}
    if request.headers.get(FORWARDED_HEADER) == "1" and request.app[STATE_KEY].is_fresh():
        headers[FRESH_HEADER] = "1"  # still being filled: this absent is no answer
    if request.method == "HEAD":
        return web.Response(status=404, headers=headers)
    response = error_response(404, "not_found", f"no pulse at {path}")
    response.headers.update(headers)
    return response
