"""The node daemon: `pmcluster node` (like `storm pacemaker`).

`run_node(config)` only sets up logging and runs `serve`, which composes the parts: the HTTP
app (`node.make_app`), the node's place in the cluster (`cluster.cluster_ctx`: membership and
coordination), and the listener. The node registers in the membership only after the listener
is up, so no peer meets a refused connection from a member it has just learnt of. Shutdown
(SIGTERM/SIGINT): leave the membership first, so peers and clients see the node go at once;
close the listener; let in-flight requests finish (including bodies still arriving) for at
most `drain_timeout(config)`; then close idle connections and exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from pmcluster import API_VERSION, __version__
from pmcluster.auth.tls import server_ssl_context
from pmcluster.config import Config
from pmcluster.node.admin import install_admin
from pmcluster.node.app import make_app
from pmcluster.node.appstate import (
    BUDGET_KEY,
    LIMITER_KEY,
    LOCAL_BACKEND_KEY,
    METRICS_KEY,
    STATE_KEY,
    NodeState,
)
from pmcluster.node.cluster import cluster_ctx
from pmcluster.node.fasthttp import FastPath
from pmcluster.node.limits import ConnectionCap, raise_open_file_limit
from pmcluster.node.requests import BODY_TIMEOUT_FACTOR
from pmcluster.node.sharedport import SharedSite
from pmcluster.node.stormfront import storm_factory
from pmcluster.protocol.paths import set_path_limits

log = logging.getLogger("pmcluster.node")


class QuietBadRequests(logging.Filter):
    """aiohttp logs every request it cannot parse at ERROR with a traceback; garbage from a
    port scanner or a broken client is not a server fault, so it becomes one DEBUG line. So
    does a client that went away before aiohttp could answer (e.g. its `100 Continue`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = str(exc.message).splitlines()[0] if exc.message else type(exc).__name__
        elif isinstance(exc, ConnectionResetError):
            reason = f"client went away ({exc})"
        else:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = (
            "unparsable request from %s: %s",
            (*(record.args if isinstance(record.args, tuple) else ()), reason),
        )
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def member_hosts(state: NodeState) -> Callable[[], frozenset[str]]:
    """The host addresses of the cluster's members, as the connection cap asks for them
    (recomputed only when the member list changes)."""
    cached: list[Any] = [None, frozenset()]

    def hosts() -> frozenset[str]:
        members = state.members
        if members is not cached[0]:
            cached[0] = members
            cached[1] = frozenset(m.rpartition(":")[0].strip("[]") for m in members)
        result: frozenset[str] = cached[1]
        return result

    return hosts


def drain_timeout(config: Config) -> float:
    """How long shutdown waits for in-flight requests: a full body read plus one request."""
    return config.request_timeout_secs * (BODY_TIMEOUT_FACTOR + 1)


async def serve(config: Config, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then drain in-flight requests."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=max(1, config.max_threads), thread_name_prefix="pmcluster")
    )
    stop = stop if stop is not None else asyncio.Event()
    raise_open_file_limit()  # as servers do: one fd per client connection (logged)
    app = make_app(config)
    install_admin(app, stop.set)  # POST /v1/admin/drain ends with stop.set()
    app.cleanup_ctx.append(cluster_ctx)
    set_path_limits(config.path_max_bytes, config.path_max_depth)
    budget = app[BUDGET_KEY]  # partial frames and bodies, all connections
    storm = storm_factory(app, budget)  # Storm's Pacemaker protocol on the same port (first byte)
    access_log = logging.getLogger("aiohttp.access") if log.isEnabledFor(logging.DEBUG) else None
    # The runner's own shutdown only waits for responses still being written (see below).
    runner = web.AppRunner(
        app,
        access_log=access_log,
        shutdown_timeout=config.request_timeout_secs,
        keepalive_timeout=config.http_idle_secs,  # also bounds a half-sent head on aiohttp
    )
    await runner.setup()
    assert runner.server is not None
    cap = ConnectionCap.for_config(config, app[METRICS_KEY])
    cap.follow_peers(member_hosts(app[STATE_KEY]))
    signals = (signal.SIGTERM, signal.SIGINT)
    quiet = QuietBadRequests()
    logging.getLogger("aiohttp.server").addFilter(quiet)
    try:
        ssl_context = server_ssl_context(config)  # pmcluster.tls.cert/key: HTTPS
        site: web.BaseSite
        if ssl_context is not None:
            # Storm's own protocol has no TLS: a TLS port serves HTTPS only.
            site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
            cap.install(runner.server)
        else:
            # Forwarded heartbeat writes/reads skip aiohttp's request machinery (fasthttp),
            # unless every request must reach aiohttp's access log (DEBUG).
            fast_path = (
                FastPath(config, app[STATE_KEY], app[LOCAL_BACKEND_KEY], app[METRICS_KEY])
                if access_log is None
                else None
            )
            if fast_path is not None:
                fast_path.budget = budget
                fast_path.limiter = app[LIMITER_KEY]
            site = SharedSite(
                runner,
                config.host,
                config.port,
                storm,
                drain_timeout=drain_timeout(config),
                fast_path=fast_path,
                cap=cap,
                sniff_timeout=config.handshake_timeout_secs,
            )
        await site.start()
        join = app[STATE_KEY].join
        if join is not None:  # only now: peers that see us in the ring can connect at once
            await join()
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        addresses = ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses)
        log.info(
            "pmcluster %s (API v%d) node %s listening on %s",
            __version__,
            API_VERSION,
            config.node_id,
            addresses,
        )
        await stop.wait()
        leave = app[STATE_KEY].leave
        if leave is not None:  # leave the membership first: peers and clients see it at once
            try:
                await leave()
            except Exception:
                log.exception("leaving the membership failed")
        # Close the listener ourselves and wait for in-flight requests *before*
        # runner.cleanup(): aiohttp's shutdown stops reading from open connections, which
        # would starve a request whose body is still arriving.
        log.info("stopping: no new connections, draining up to %gs", drain_timeout(config))
        await site.stop()
        if not await app[STATE_KEY].drain(drain_timeout(config)):
            log.warning("drain timed out with %d requests in flight", app[STATE_KEY].in_flight)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        logging.getLogger("aiohttp.server").removeFilter(quiet)
    log.info("node %s stopped", config.node_id)


def event_loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`pmcluster.event.loop`: uvloop (libuv) or asyncio's default loop (None); the measured
    difference is in docs/benchmarks.md."""
    if config.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("pmcluster.event.loop: uvloop is not installed; using asyncio's loop")
            return None
        return uvloop.new_event_loop
    return None


def run_node(config: Config) -> int:
    """Run the node daemon in the foreground; returns the process exit code."""
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(config)) as runner:
            runner.run(serve(config))
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", config.host, config.port, exc)
        return 1
    return 0
