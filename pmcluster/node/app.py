"""The node's HTTP API (`make_app`); the daemon that serves it is `pmcluster.node.daemon`.

Handlers are thin: parse and validate the request, call a `Backend`, map the result to a
response. Requests carrying `X-Pmcluster-Forwarded: 1` come from a coordinating node and are
answered from the local store only (`LocalBackend`); all others go to the app's `Backend`
(the local store until a coordinating backend is plugged in).

Paths are parsed from `request.raw_path`, never from aiohttp's decoded `match_info` (which
decodes `%2F` and would break round trips): the remainder after the route prefix goes through
`paths.from_url`.

Concurrency: `pacemaker.max.threads` (`config.max_threads`) bounds how many requests are
processed at once (an `asyncio.Semaphore` around handler work, taken *after* the body has
been read, so slow uploaders never hold a slot) and sizes the default executor's thread pool
in the daemon. Bodies are capped at `pacemaker.thrift.message.size.max`: a too-large
Content-Length is refused with 413 before any body byte is read, a chunked body is read
incrementally and refused as soon as it passes the cap, and a body that does not arrive
within `request_timeout_secs * 5` is answered with 408. Every error is JSON
`{"error": ..., "detail": ...}`; every response carries `X-Pmcluster-Node`/`X-Pmcluster-Epoch`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pmcluster import __version__
from pmcluster.auth.middleware import make_auth_middleware
from pmcluster.config import Config
from pmcluster.errors import PayloadTooLarge, PmclusterError
from pmcluster.node.antientropy import install_antientropy
from pmcluster.node.appstate import (
    BACKEND_KEY,
    BODY_KEY,
    BUDGET_KEY,
    CONFIG_KEY,
    FORWARD_LIMITER_KEY,
    HISTORY_KEY,
    LIMITER_KEY,
    LOCAL_BACKEND_KEY,
    METRICS_KEY,
    STATE_KEY,
    STORE_KEY,
    NodeState,
    Slots,
    members_doc,
)
from pmcluster.node.clusterview import CLUSTER_VIEW_KEY, ClusterView, cluster_view_ctx, get_cluster
from pmcluster.node.events import ClusterHistory
from pmcluster.node.limits import bind_store_metrics, memory_limit
from pmcluster.node.local import LocalBackend
from pmcluster.node.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from pmcluster.node.metrics import Metrics
from pmcluster.node.requests import (
    BODY_TIMEOUT_FACTOR,
    absent_response,
    check_versions,
    error_response,
    json_response,
    read_body,
    request_backend,
    request_key,
    request_tree,
    request_version,
    version_ceiling,
)
from pmcluster.node.statuspage import get_status_page
from pmcluster.protocol import pulsecodec
from pmcluster.protocol.backend import Backend, PulseEntry
from pmcluster.protocol.budget import BufferBudget
from pmcluster.protocol.http import (
    FORWARDED_HEADER,
    HELD_HEADER,
    PULSES_MEDIA_TYPE,
    VERSION_HEADER,
    status_for,
)
from pmcluster.protocol.pulse import Pulse
from pmcluster.store import PulseStore

log = logging.getLogger(__name__)

EXPIRE_INTERVAL_SECS = 5.0  # how often the store drops expired tombstones / TTL'd keys

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- handlers ----------------------------------------------------------------------------------


async def put_pulse(request: web.Request) -> web.StreamResponse:
    path = request_key(request, "/v1/pulse/")
    version = request_version(request)
    data = request[BODY_KEY]
    backend = request_backend(request)
    stored = await backend.send_pulse(path, data, version)
    request.app[METRICS_KEY].received(len(data))
    held = 0 if stored else backend.held_version(path)
    if held:
        # Tell the coordinator what won, so it can retry above it (pmcluster.client.versionclock).
        return web.Response(status=204, headers={HELD_HEADER: str(held)})
    return web.Response(status=204)


async def get_pulse(request: web.Request) -> web.StreamResponse:
    path = request_key(request, "/v1/pulse/")
    pulse, tombstone = await request_backend(request).get_pulse(path)
    if pulse is None:
        return absent_response(request, path, tombstone)
    request.app[METRICS_KEY].pulse_read(len(pulse.data))
    return web.Response(
        body=pulse.data,
        content_type="application/octet-stream",
        headers={VERSION_HEADER: str(pulse.version)},
    )


async def head_pulse(request: web.Request) -> web.StreamResponse:
    # get_pulse rather than exists: HEAD 200 must carry the value's version so a coordinator
    # can merge answers against tombstones.
    path = request_key(request, "/v1/pulse/")
    pulse, tombstone = await request_backend(request).get_pulse(path)
    if pulse is None:
        return absent_response(request, path, tombstone)
    return web.Response(status=200, headers={VERSION_HEADER: str(pulse.version)})


async def delete_pulse(request: web.Request) -> web.StreamResponse:
    path = request_key(request, "/v1/pulse/")
    version = request_version(request)
    backend = request_backend(request)
    await backend.delete_pulse_id(path, version)
    return _deleted(backend, path, version, tree=False)


def _deleted(backend: Backend, path: str, version: int | None, *, tree: bool) -> web.Response:
    """204; with the version a value newer than the delete kept (`X-Pulse-Held`), so the
    coordinator that chose the delete's version deletes again above it."""
    held = 0 if version is None else backend.held_after_delete(path, version, tree=tree)
    if held:
        return web.Response(status=204, headers={HELD_HEADER: str(held)})
    return web.Response(status=204)


async def get_children(request: web.Request) -> web.StreamResponse:
    path = request_tree(request, "/v1/children/")
    backend = request_backend(request)
    if request.query.get("versions") in ("1", "true"):
        children, tombstones = await backend.children_versions(path)
        return json_response({"children": children, "tombstones": tombstones})
    return json_response(await backend.get_all_nodes_for_path(path))


async def get_pulses(request: web.Request) -> web.StreamResponse:
    path = request_tree(request, "/v1/pulses/")
    pulses = await request_backend(request).get_all_pulse_for_path(path)
    size = sum(len(p.data) + len(p.path) for p in pulses)
    limit = request.app[CONFIG_KEY].response_max_bytes
    if size > limit:
        raise PayloadTooLarge(
            f"the pulses under {path} hold {size} bytes, more than the {limit} one answer may "
            "carry (pmcluster.response.max.bytes): list the children and read them in parts"
        )
    request.app[METRICS_KEY].sent(sum(len(p.data) for p in pulses))
    if "application/json" in request.headers.get("Accept", ""):
        return json_response({"pulses": [_pulse_json(p) for p in pulses]})
    return web.Response(body=pulsecodec.encode(pulses), content_type=PULSES_MEDIA_TYPE)


def _pulse_json(pulse: Pulse) -> dict[str, Any]:
    data_b64 = base64.b64encode(pulse.data).decode("ascii")
    return {"path": pulse.path, "version": pulse.version, "data_b64": data_b64}


async def delete_path(request: web.Request) -> web.StreamResponse:
    path = request_tree(request, "/v1/path/")
    version = request_version(request)
    backend = request_backend(request)
    await backend.delete_path(path, version)
    return _deleted(backend, path, version, tree=True)


async def create_path(request: web.Request) -> web.StreamResponse:
    path = request_tree(request, "/v1/path/")
    await request_backend(request).create_path(path)
    return web.Response(status=204)


async def post_batch(request: web.Request) -> web.StreamResponse:
    # decode validates every entry (normalised key paths, versions >= 0) before anything is
    # stored, naming the first bad entry; version 0 means "assign now".
    config = request.app[CONFIG_KEY]
    # At most pmcluster.batch.max.entries entries: a huge batch blocks the loop its whole length.
    decoded = pulsecodec.decode(request[BODY_KEY], max_entries=config.batch_max_entries)
    check_versions(decoded, version_ceiling(config.version_max_skew_secs))
    entries: list[PulseEntry] = [(path, data, version or None) for path, data, version in decoded]
    # The decoder validated every entry: the store need not again.
    stored, ignored = await request_backend(request).send_pulses(entries, trusted=True)
    request.app[METRICS_KEY].received_many([len(data) for _, data, _ in entries])
    return json_response({"stored": stored, "ignored": ignored})


async def get_members(request: web.Request) -> web.StreamResponse:
    return json_response(members_doc(request.app))


async def get_health(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    keys = request.app[STORE_KEY].key_count
    return json_response(
        {
            "status": "ok",
            "node": state.node_id,
            "keys": keys,
            "version": __version__,
            "membership": state.membership_state(),
            "fenced": state.fenced,
        }
    )


async def get_metrics(request: web.Request) -> web.StreamResponse:
    body = request.app[METRICS_KEY].render().encode()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str
    handler: Handler
    op: str
    reads_body: bool = False


ROUTES: tuple[Route, ...] = (
    Route("PUT", "/v1/pulse/{path:.*}", put_pulse, "send_pulse", reads_body=True),
    Route("GET", "/v1/pulse/{path:.*}", get_pulse, "get_pulse"),
    Route("HEAD", "/v1/pulse/{path:.*}", head_pulse, "exists"),
    Route("DELETE", "/v1/pulse/{path:.*}", delete_pulse, "delete_pulse_id"),
    Route("GET", "/v1/children/{path:.*}", get_children, "get_all_nodes_for_path"),
    Route("GET", "/v1/pulses/{path:.*}", get_pulses, "get_all_pulse_for_path"),
    Route("DELETE", "/v1/path/{path:.*}", delete_path, "delete_path"),
    Route("POST", "/v1/path/{path:.*}", create_path, "create_path"),
    Route("POST", "/v1/batch", post_batch, "batch", reads_body=True),
    Route("GET", "/v1/members", get_members, "members"),
    Route("GET", "/health", get_health, "other"),
    Route("GET", "/metrics", get_metrics, "other"),
    Route("GET", "/v1/cluster", get_cluster, "other"),
    Route("GET", "/", get_status_page, "other"),
)
_ROUTE_OF: dict[Handler, Route] = {route.handler: route for route in ROUTES}


# --- middleware: body limits, concurrency bound, error mapping, headers, metrics ---------------


@web.middleware
async def _node_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    app = request.app
    state = app[STATE_KEY]
    route = _ROUTE_OF.get(request.match_info.route.handler)
    op = route.op if route is not None else "other"
    state.in_flight += 1
    try:
        response = await _answer(request, handler, route)
    finally:
        state.request_done()
    response.headers.update(state.identity_headers())
    if state.draining:
        response.force_close()
    app[METRICS_KEY].record(op, time.perf_counter() - start, response.status)
    return response


async def _answer(
    request: web.Request, handler: Handler, route: Route | None
) -> web.StreamResponse:
    """Read the body (bounded), run the handler under the concurrency limit, map errors."""
    app = request.app
    try:
        if route is not None and route.reads_body:
            config = app[CONFIG_KEY]
            timeout = config.request_timeout_secs * BODY_TIMEOUT_FACTOR
            request[BODY_KEY] = await read_body(
                request, config.max_message_size, timeout, app[BUDGET_KEY]
            )
        # Forwarded requests only touch the local store and never wait on peers; they get a
        # limiter of their own, or coordinated requests holding every slot while they wait
        # for their peers' forwarded answers would deadlock the cluster.
        forwarded = request.headers.get(FORWARDED_HEADER) == "1"
        async with app[FORWARD_LIMITER_KEY] if forwarded else app[LIMITER_KEY]:
            response = await handler(request)
    except web.HTTPException as exc:
        name = exc.reason.lower().replace(" ", "_")
        detail = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason
        response = error_response(exc.status, name, detail or "")
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        if exc.status in (408, 413):
            response.force_close()
    except PmclusterError as exc:
        status, name = status_for(exc)
        response = error_response(status, name, str(exc))
        if status == 413:
            response.force_close()  # the rest of the body was never read
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = error_response(500, "internal_error", "unexpected server error (logged)")
    return response


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    """Drop expired tombstones and TTL'd keys every few seconds while the app runs."""
    store = app[STORE_KEY]

    async def loop() -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL_SECS)
            try:
                store.expire()
            except Exception:
                log.exception("store expiry failed")

    task = asyncio.create_task(loop(), name="pmcluster-expire")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(
    config: Config,
    *,
    store: PulseStore | None = None,
    backend: Backend | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """Build the node's application: routes, middleware and shared state under AppKeys."""
    if store is None:
        store = PulseStore(
            tombstone_ttl_secs=config.tombstone_secs,
            ttl_secs=config.ttl_secs,
            max_bytes=memory_limit(config),
        )
    local = LocalBackend(store)
    if metrics is None:
        metrics = Metrics()
    metrics.bind_store(lambda: store.key_count, lambda: store.total_bytes)
    if store.max_bytes is not None:
        bind_store_metrics(metrics, lambda: store.footprint_bytes, store.max_bytes)
    # Auth runs inside the node middleware: rejections are counted, JSON, with node headers.
    middlewares: list[Any] = [_node_middleware]
    auth = make_auth_middleware(config)
    if auth is not None:
        middlewares.append(auth)
    # Kerberos tokens (Active Directory PACs) exceed aiohttp's default 8190-byte header field.
    handler_args = {"max_field_size": 65536} if config.auth_method == "KERBEROS" else None
    app = web.Application(
        middlewares=middlewares,
        client_max_size=config.max_message_size,
        handler_args=handler_args,
    )
    app[CONFIG_KEY] = config
    app[STATE_KEY] = NodeState(config.node_id)
    app[STORE_KEY] = store
    app[LOCAL_BACKEND_KEY] = local
    app[BACKEND_KEY] = backend if backend is not None else local
    app[METRICS_KEY] = metrics
    app[LIMITER_KEY] = Slots(max(1, config.max_threads))
    app[FORWARD_LIMITER_KEY] = asyncio.Semaphore(max(1, config.max_threads))
    app[BUDGET_KEY] = BufferBudget(config.buffer_max_bytes)
    app[HISTORY_KEY] = history = ClusterHistory()
    history.record("node", f"node {config.node_id} started (pmcluster {__version__})")
    app[CLUSTER_VIEW_KEY] = ClusterView(app)
    for route in ROUTES:
        app.router.add_route(route.method, route.pattern, route.handler)
    app.cleanup_ctx.append(_housekeeping)
    app.cleanup_ctx.append(cluster_view_ctx)
    # Anti-entropy's peer routes (the loop starts with the node's cluster context).
    install_antientropy(app)
    return app
