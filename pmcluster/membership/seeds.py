"""Seed and fixed membership: members from `pacemaker.servers` (IP literals, and DNS names
whose A/AAAA records are the nodes, re-resolved periodically) or an exact list.

Seed and fixed snapshots carry no zones: a zone is only known from a node's own registration
(ZooKeeper), and every node must compute the same ring from the same snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from pmcluster.errors import ConfigError
from pmcluster.membership.base import MembershipSnapshot, SnapshotPublisher
from pmcluster.ring import Member

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

SERVERS_KEY = "pacemaker.servers"
NAMESERVERS_KEY = "pmcluster.dns.nameservers"
# Before the first successful resolution, retry at least this often.
FIRST_RETRY_SECS = 1.0
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")

# --- parsing -------------------------------------------------------------------------------


def parse_ip(text: str) -> str | None:
    """The canonical form of an IP literal, or None when `text` is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _is_hostname(text: str) -> bool:
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    return len(text) <= 254 and all(_LABEL.match(label) for label in labels)


def _parse_port(text: str, entry: str, key: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(key, f"entry {entry!r}: port must be 1-65535, got {text!r}")
    return int(text)


def parse_address(entry: str, default_port: int, *, key: str = SERVERS_KEY) -> tuple[str, int]:
    """Split `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal into (host, port).

    IP literals come back canonical (`::0:1` → `::1`); a host name comes back as written.
    Raises `ConfigError` naming `key` and the entry for anything else.
    """
    text = entry.strip() if isinstance(entry, str) else entry
    if not isinstance(text, str) or not text:
        raise ConfigError(key, f"entry {entry!r}: expected 'host' or 'host:port'")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ConfigError(key, f"entry {entry!r}: missing ']' after IPv6 address")
        host, rest = text[1:close], text[close + 1 :]
        if parse_ip(host) is None or ":" not in host:
            raise ConfigError(key, f"entry {entry!r}: {host!r} is not an IPv6 address")
        if rest and not rest.startswith(":"):
            raise ConfigError(key, f"entry {entry!r}: unexpected {rest!r} after ']'")
        port = _parse_port(rest[1:], entry, key) if rest else default_port
        return str(parse_ip(host)), port
    if text.count(":") > 1:  # a bare IPv6 literal, no port
        ip = parse_ip(text)
        if ip is None:
            raise ConfigError(key, f"entry {entry!r}: not an address (use [v6]:port for IPv6)")
        return ip, default_port
    host, sep, port_text = text.partition(":")
    port = _parse_port(port_text, entry, key) if sep else default_port
    if not host:
        raise ConfigError(key, f"entry {entry!r}: empty host")
    ip = parse_ip(host)
    if ip is not None:
        return ip, port
    if not _is_hostname(host) or host.replace(".", "").isdigit():
        raise ConfigError(key, f"entry {entry!r}: {host!r} is not a host name or IP address")
    return host, port


def parse_nameserver(entry: str) -> tuple[str, int]:
    """A `pmcluster.dns.nameservers` entry (`ip` or `ip:port`, IPv6 as `[ip]:port`)."""
    host, port = parse_address(entry, 53, key=NAMESERVERS_KEY)
    if parse_ip(host) is None:
        raise ConfigError(NAMESERVERS_KEY, f"entry {entry!r}: a name server must be an IP address")
    return host, port


# --- resolution ----------------------------------------------------------------------------


class _ResolutionFailed(Exception):
    """A name gave no address this round (internal: the round is dropped, never raised out)."""


class _DnsResolver:
    """A/AAAA lookups against configured name servers with dnspython (no cache, no search)."""

    def __init__(self, nameservers: Sequence[tuple[str, int]], timeout: float) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, 1.0)

    async def addresses(self, name: str) -> list[str]:
        # One family answering is enough: some servers (dnsmasq with --no-resolv) refuse the
        # AAAA query of a name that only has A records.
        results = await asyncio.gather(
            self._query(name, "A"), self._query(name, "AAAA"), return_exceptions=True
        )
        found = [ip for batch in results if isinstance(batch, list) for ip in batch]
        if found:
            return found
        for failure in results:
            if isinstance(failure, BaseException):
                raise failure
        raise _ResolutionFailed(f"{name}: no A or AAAA records")

    async def _query(self, name: str, rdtype: str) -> list[str]:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
            if isinstance(exc, dns.resolver.NXDOMAIN):
                raise _ResolutionFailed(f"{name}: no such name") from exc
            return []
        except dns.exception.DNSException as exc:
            raise _ResolutionFailed(f"{name} {rdtype}: {exc}") from exc
        return [rdata.to_text() for rdata in answer]


class _SystemResolver:
    """The host's own resolver (getaddrinfo: /etc/hosts, nsswitch, resolv.conf)."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    async def addresses(self, name: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), self._timeout
            )
        except (OSError, TimeoutError) as exc:
            raise _ResolutionFailed(f"{name}: {exc or 'timed out'}") from exc
        found = [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
        if not found:
            raise _ResolutionFailed(f"{name}: no addresses")
        return found


def _is_localhost(name: str) -> bool:
    return name.lower().rstrip(".") == "localhost"


# --- sources ---------------------------------------------------------------------------------


class FixedMembership(SnapshotPublisher):
    """A membership that never changes: a node alone, or an exact list (tests, tools)."""

    def __init__(self, members: Sequence[Member], *, prefix: str = "static") -> None:
        super().__init__()
        self._snapshot = MembershipSnapshot.of(prefix, members)

    async def start(self) -> None:
        self.publish(self._snapshot)

    async def stop(self) -> None:
        return None


class SeedMembership(SnapshotPublisher):
    """Members from a seed list: IP literals as written, host names through DNS.

    Every A/AAAA record of a name becomes a member `ip:port` (the entry's port, else
    `default_port`). Names are re-resolved every `refresh_secs` by a task `start()` creates;
    a new snapshot is published only when the member set changes. When any name fails to
    resolve, the round is dropped and the last snapshot stays (a DNS hiccup must not shrink
    the ring); before the first success, rounds are retried every `FIRST_RETRY_SECS`.
    With `nameservers` ("ip" or "ip:port") names are asked of those servers with dnspython;
    without, the host's resolver is used. `localhost` is always 127.0.0.1.
    The epoch is `static-<hash>` when every entry is an IP literal, `dns-<hash>` otherwise.
    """

    def __init__(
        self,
        entries: Sequence[str],
        default_port: int,
        *,
        nameservers: Sequence[str] = (),
        refresh_secs: float = 30.0,
        resolve_timeout_secs: float = 2.0,
    ) -> None:
        super().__init__()
        if isinstance(entries, str):
            entries = (entries,)
        if not entries:
            raise ConfigError(SERVERS_KEY, "no servers given")
        if refresh_secs <= 0:
            raise ValueError(f"refresh_secs must be > 0, got {refresh_secs}")
        self._seeds = tuple(parse_address(e, default_port) for e in entries)
        self._names = tuple(h for h, _ in self._seeds if parse_ip(h) is None)
        self._prefix = "dns" if self._names else "static"
        self.refresh_secs = refresh_secs
        parsed_ns = tuple(parse_nameserver(n) for n in nameservers)
        self._resolver: _DnsResolver | _SystemResolver = (
            _DnsResolver(parsed_ns, resolve_timeout_secs)
            if parsed_ns
            else _SystemResolver(resolve_timeout_secs)
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def seeds(self) -> tuple[tuple[str, int], ...]:
        """The parsed entries, (host or IP, port), as configured."""
        return self._seeds

    async def start(self) -> None:
        """Resolve once (so `current()` is set when DNS answers), then keep refreshing."""
        if self._task is not None:
            return
        await self.refresh()
        if self._names:
            self._task = asyncio.create_task(self._refresh_loop(), name="seed-membership")

    async def stop(self) -> None:
        """Stop the refresh task (idempotent); the last snapshot stays readable."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self) -> bool:
        """One resolution round now; True when it published a new snapshot."""
        try:
            members = await self._resolve_all()
        except _ResolutionFailed as exc:
            kept = self._current.epoch if self._current is not None else "none yet"
            log.warning("seed resolution failed (%s); keeping membership %s", exc, kept)
            return False
        return self.publish(MembershipSnapshot.of(self._prefix, members))

    async def _refresh_loop(self) -> None:
        while True:
            delay = self.refresh_secs
            if self._current is None:
                delay = min(delay, FIRST_RETRY_SECS)
            await asyncio.sleep(delay)
            await self.refresh()

    async def _resolve_all(self) -> list[Member]:
        names = sorted(set(self._names))
        found = await asyncio.gather(*(self._addresses(n) for n in names))
        addresses = dict(zip(names, found, strict=True))
        members: dict[str, Member] = {}
        for host, port in self._seeds:
            for ip in addresses.get(host, [host]):
                member = Member.at(parse_ip(ip) or ip, port)
                members.setdefault(member.node_id, member)
        return list(members.values())

    async def _addresses(self, name: str) -> list[str]:
        if _is_localhost(name):
            return ["127.0.0.1"]
        return await self._resolver.addresses(name)
