"""A small in-process DNS server (dnslib, UDP on 127.0.0.1) for tests, the harness and demos.

It answers A and AAAA queries for the names given to `set_records`, NXDOMAIN for any other
name, and its records can be changed while it runs, which is how tests exercise "several
nodes behind one DNS name" and re-resolution. It serves UDP only (answers stay small).

    server = DnsServer()
    server.start()
    server.set_records("pm.test", ["127.0.0.1", "127.0.0.2"])
    ... Config(dns_nameservers=(server.nameserver,), servers=("pm.test",)) ...
    server.stop()
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Self

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import DNSServer as _DnslibServer

log = logging.getLogger(__name__)


def _canonical(name: str) -> str:
    """Lower case, no trailing dot: the key records are stored under."""
    return name.lower().rstrip(".")


class _Resolver:
    """dnslib resolver over a {name: (ipv4s, ipv6s)} table swapped whole under a lock."""

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.lock = threading.Lock()
        self.records: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.queries = 0

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        reply.header.aa = 1
        with self.lock:
            self.queries += 1
            table = self.records
        for question in request.questions:
            entry = table.get(_canonical(str(question.qname)))
            if entry is None:
                reply.header.rcode = RCODE.NXDOMAIN
                continue
            ipv4, ipv6 = entry
            if question.qtype == QTYPE.A:
                for ip in ipv4:
                    reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(ip), ttl=self.ttl))
            elif question.qtype == QTYPE.AAAA:
                for ip in ipv6:
                    reply.add_answer(RR(question.qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=self.ttl))
        return reply


class _QuietLogger:
    """dnslib logger that prints nothing; decoding errors go to `logging` at debug level."""

    def log_recv(self, handler: Any, data: bytes) -> None: ...
    def log_send(self, handler: Any, data: bytes) -> None: ...
    def log_request(self, handler: Any, request: Any) -> None: ...
    def log_reply(self, handler: Any, reply: Any) -> None: ...
    def log_truncated(self, handler: Any, reply: Any) -> None: ...
    def log_data(self, dnsobj: Any) -> None: ...

    def log_error(self, handler: Any, e: Exception) -> None:
        log.debug("test DNS server: bad request: %s", e)


class DnsServer:
    """Authoritative DNS for a few test names on `address` (a 127.x address), UDP.

    `port=0` (the default) takes a free port; read it from `.port` after `start()`.
    """

    def __init__(self, address: str = "127.0.0.1", port: int = 0, *, ttl: int = 1) -> None:
        self.address = address
        self._requested_port = port
        self._resolver = _Resolver(ttl)
        self._server: _DnslibServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The UDP port the server listens on (valid after `start()`)."""
        if self._server is None:
            raise RuntimeError("DnsServer is not started")
        return int(self._server.server.server_address[1])

    @property
    def nameserver(self) -> str:
        """`ip:port`, the form `pmcluster.dns.nameservers` takes."""
        return f"{self.address}:{self.port}"

    @property
    def query_count(self) -> int:
        """Questions answered so far (lets a test see that re-resolution happened)."""
        with self._resolver.lock:
            return self._resolver.queries

    def set_records(self, name: str, ips: Iterable[str]) -> None:
        """Make `name` answer with exactly `ips` (IPv4 → A, IPv6 → AAAA); `[]` = no address."""
        ipv4: list[str] = []
        ipv6: list[str] = []
        for ip in ips:
            parsed = ipaddress.ip_address(ip)
            (ipv4 if parsed.version == 4 else ipv6).append(str(parsed))
        with self._resolver.lock:
            table = dict(self._resolver.records)
            table[_canonical(name)] = (tuple(ipv4), tuple(ipv6))
            self._resolver.records = table

    def remove(self, name: str) -> None:
        """Forget `name`: later queries get NXDOMAIN."""
        with self._resolver.lock:
            table = dict(self._resolver.records)
            table.pop(_canonical(name), None)
            self._resolver.records = table

    def records(self, name: str) -> Sequence[str]:
        """The addresses `name` currently answers with (empty if unknown)."""
        with self._resolver.lock:
            ipv4, ipv6 = self._resolver.records.get(_canonical(name), ((), ()))
        return (*ipv4, *ipv6)

    def start(self) -> None:
        """Bind the UDP socket and serve on a daemon thread (idempotent)."""
        if self._server is not None:
            return
        server = _DnslibServer(
            self._resolver, address=self.address, port=self._requested_port, logger=_QuietLogger()
        )
        thread = threading.Thread(
            target=server.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"dns-server {self.address}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving, join the thread and close the socket (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.server.shutdown()
        server.server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def query(nameserver: tuple[str, int], name: str, qtype: str = "A", timeout: float = 2.0) -> Any:
    """Send one query with dnslib (a debugging aid, and a check independent of dnspython)."""
    packet = DNSRecord.question(name, qtype).send(
        nameserver[0], nameserver[1], tcp=False, timeout=timeout
    )
    return DNSRecord.parse(packet)
