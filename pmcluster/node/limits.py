"""Limits that protect a node: stored bytes, open connections, open files.

- Memory: `pmcluster.memory.max.bytes` caps the store's footprint (`PulseStore(max_bytes=)`);
  by default half of the machine's memory (`MemTotal` in /proc/meminfo), so a heartbeat
  flood is refused with 507 long before the kernel's OOM killer would end the process.
- Connections: `pmcluster.max.connections` caps open HTTP connections. One past the cap is
  accepted, answered `503` with a JSON reason and closed: never a crash, never an accept
  loop failing on EMFILE. The cap is also kept below the open-file limit. One client address
  holds at most `pmcluster.max.connections.per.address`, and the last
  `pmcluster.peer.connections.reserved` places are kept for the cluster's own members.
- Open files: a server raises its soft RLIMIT_NOFILE to the hard limit at start (as nginx,
  ZooKeeper's scripts and systemd units do) and logs it.
- Request concurrency is bounded elsewhere: `pacemaker.max.threads` (node.py's semaphore).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import cast

from aiohttp import web

from pmcluster.config import Config
from pmcluster.node.metrics import CounterChild, Metrics

__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "ConnectionCap",
    "bind_store_metrics",
    "default_memory_limit",
    "memory_limit",
    "raise_open_file_limit",
]

log = logging.getLogger(__name__)

DEFAULT_MEMORY_FRACTION = 0.5  # of MemTotal, when pmcluster.memory.max.bytes is not set
_FALLBACK_MEMORY = 1 << 30  # when /proc/meminfo cannot be read
FDS_RESERVED = 64  # files a node needs besides client connections (logs, ZooKeeper, peers)


def default_memory_limit(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Half of the machine's memory (MemTotal), or 1 GiB when that cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(int(line.split()[1]) * 1024 * DEFAULT_MEMORY_FRACTION)
    except (OSError, ValueError, IndexError):
        pass
    return _FALLBACK_MEMORY


def memory_limit(config: Config) -> int:
    """The store's cap in bytes: `pmcluster.memory.max.bytes`, else `default_memory_limit()`."""
    if config.memory_max_bytes is not None:
        return config.memory_max_bytes
    return default_memory_limit()


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit and log it; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        log.info("open-file limit raised from %d to %d (the hard limit)", soft, target)
        return soft, target
    log.info("open-file limit %d (already the hard limit)", soft)
    return soft, soft


def bind_store_metrics(metrics: Metrics, footprint: Callable[[], float], limit: int) -> None:
    """Expose the memory cap and the store's estimated use (read at render time).

    Refused writes are counted by the request metrics: `pmcluster_errors_total{status="507"}`.
    """
    registry = metrics.registry
    registry.gauge(
        "pmcluster_memory_limit_bytes", "Cap on the store's footprint (pmcluster.memory.max.bytes)."
    ).labels().set(limit)
    registry.gauge(
        "pmcluster_memory_used_bytes",
        "Estimated store footprint: payloads, paths and per-key overhead.",
    ).labels().set_function(footprint)


class ConnectionCap:
    """Caps a node's open client connections; counts refusals.

    Two ways in: `install(server)` wraps an aiohttp `web.Server`'s `connection_made` hook
    (the HTTPS site: aiohttp owns every connection); the shared HTTP+Storm port
    (`sharedport`) instead counts every connection it accepted (`count_with`) and asks
    `over_limit()` / `refuse()` on each connection's first byte. A connection past the cap is
    answered with a 503 JSON body (HTTP) or just closed (Storm), before any request is read.
    """

    def __init__(
        self,
        limit: int,
        metrics: Metrics | None = None,
        *,
        per_address: int | None = None,
        reserved: int = 0,
        peers: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        """`per_address`: open connections one client address may hold; `reserved`: room
        kept for the cluster's own members (`peers()`: their host addresses), so clients
        filling the cap never lock the nodes out of each other."""
        self.limit = limit
        self.per_address = per_address
        self.reserved = min(reserved, limit // 4)
        self._peers = peers
        self._by_address: dict[str, weakref.WeakSet[asyncio.BaseTransport]] = {}
        self.refused = 0
        self._server: web.Server | None = None
        self._count: Callable[[], int] | None = None
        self._at_most: Callable[[], int] | None = None
        self._counter: CounterChild | None = None
        if metrics is not None:
            registry = metrics.registry
            registry.gauge(
                "pmcluster_connections_open", "Open client connections (HTTP and Storm)."
            ).labels().set_function(lambda: float(self.open))
            self._counter = registry.counter(
                "pmcluster_connections_refused_total",
                "Connections answered 503 and closed because pmcluster.max.connections were open.",
            ).labels()

    @classmethod
    def for_config(cls, config: Config, metrics: Metrics | None = None) -> ConnectionCap:
        """The cap of `pmcluster.max.connections`, kept below the soft open-file limit."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = config.max_connections
        if soft != resource.RLIM_INFINITY and limit > soft - FDS_RESERVED:
            lowered = max(1, soft - FDS_RESERVED)
            log.warning(
                "pmcluster.max.connections %d is above the open-file limit %d: capping at %d",
                limit,
                soft,
                lowered,
            )
            limit = lowered
        return cls(
            limit,
            metrics,
            per_address=config.max_connections_per_address,
            reserved=config.peer_connections_reserved,
        )

    def follow_peers(self, peers: Callable[[], frozenset[str]]) -> None:
        """Take the members' host addresses from `peers` (the node's membership view)."""
        self._peers = peers

    def admit(self, transport: asyncio.BaseTransport) -> str | None:
        """Count a new connection by its peer address; the reason it must be refused, or
        None. Members (`peers`) may use the room reserved for them and have no per-address
        limit; any other address holds at most `per_address` connections."""
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        is_peer = self._peers is not None and host in self._peers()
        if not is_peer and self.reserved and self.open > self.limit - self.reserved:
            return f"connections for clients are full (pmcluster.max.connections={self.limit})"
        if self.per_address is None or is_peer:
            return None
        conns = self._by_address.get(host)
        if conns is None:
            if len(self._by_address) > 4 * self.limit:
                self._by_address = {
                    h: c for h, c in self._by_address.items() if any(not t.is_closing() for t in c)
                }
            conns = self._by_address[host] = weakref.WeakSet()
        open_here = sum(1 for t in list(conns) if not t.is_closing())
        if open_here >= self.per_address:
            return (
                f"{open_here} connections open from {host} "
                f"(pmcluster.max.connections.per.address={self.per_address})"
            )
        conns.add(transport)
        return None

    @property
    def open(self) -> int:
        """Connections open right now."""
        if self._count is not None:
            return self._count()
        return 0 if self._server is None else len(self._server.connections)

    def count_with(
        self, count: Callable[[], int], at_most: Callable[[], int] | None = None
    ) -> None:
        """Take the open-connection count from `count` (the shared port's own tally);
        `at_most`, a cheap upper bound, spares the exact count while far below the cap."""
        self._count = count
        self._at_most = at_most

    def over_limit(self) -> bool:
        """True when more connections are open than the cap allows (the newest included)."""
        if self._at_most is not None and self._at_most() <= self.limit:
            return False
        return self.open > self.limit

    def install(self, server: web.Server) -> None:
        """Start capping `server`'s connections (call once, after `runner.setup()`)."""
        self._server = server
        admit = server.connection_made

        def connection_made(handler: web.RequestHandler, transport: asyncio.Transport) -> None:
            admit(handler, transport)
            if len(server.connections) > self.limit:
                self.refuse(transport)

        # An instance attribute shadows the method: aiohttp calls `self._manager.connection_made`.
        setattr(server, "connection_made", connection_made)  # noqa: B010

    def refuse(
        self, transport: asyncio.BaseTransport, *, http: bool = True, reason: str | None = None
    ) -> None:
        """Turn this connection away: a 503 for HTTP, a plain close otherwise."""
        self.refused += 1
        if self._counter is not None:
            self._counter.inc()
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning(
                "connection cap reached (%d open, pmcluster.max.connections=%d): "
                "refused %d connection(s) so far",
                self.open,
                self.limit,
                self.refused,
            )
        body = json.dumps(
            {
                "error": "service_unavailable",
                "detail": reason
                or f"too many open connections (pmcluster.max.connections={self.limit})",
            }
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Retry-After: 1\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            if http:  # (uvloop's transports do not subclass asyncio.WriteTransport)
                cast(asyncio.WriteTransport, transport).write(head + body)
        finally:
            transport.close()
