"""`pmcluster fuzz`: a seeded, reproducible fuzzer against a running node.

A run (1) stores `keep` values under `KEEP_ROOT`, (2) sends `requests` fuzz cases
(`pmcluster.tools.fuzzcases`: random and mutated HTTP requests on every route, the batch encoding,
Storm frames, raw bytes), each on its own connection, `concurrency` at a time, and (3) checks
that the node still answers correctly: `/health` is 200, a write/read/delete round trip works,
and every kept value and the kept listing are exactly as before. With `log_path`, it also
scans what the node logged during the run for unhandled exceptions ("Traceback",
"unhandled"). A 500 answer is a finding too; each finding names its case index, and
`--only INDEX` replays that one case.

    pmcluster fuzz --host 127.0.0.1 --port 6699 --requests 100000 --seed 1 --log node.log
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pmcluster.protocol.paths import to_url
from pmcluster.storm.codec import DEFAULT_MAX_FRAME_SIZE
from pmcluster.tools.fuzzcases import KEEP_ROOT, Case, make_case

__all__ = [
    "LOG_MARKERS",
    "FuzzReport",
    "add_arguments",
    "fuzz",
    "replay",
    "run_command",
    "send_case",
]

LOG_MARKERS = ("Traceback", "unhandled")
ANSWER_WAIT_SECS = 1.0  # a complete request is answered well within this


@dataclass
class FuzzReport:
    """What a run did and found; `ok` when nothing was found."""

    seed: int
    requests: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        verdict = "OK" if self.ok else f"FAILED ({len(self.findings)} findings)"
        top = ", ".join(f"{k} {v}" for k, v in self.outcomes.most_common(8))
        return (
            f"{verdict}: seed {self.seed}, {self.requests} cases in {self.seconds:.1f}s "
            f"({rate:.0f}/s); outcomes: {top}"
        )


async def _http(
    host: str, port: int, method: str, target: str, body: bytes = b"", timeout: float = 5.0
) -> tuple[int, bytes]:
    """One well-formed HTTP/1.1 request on its own connection: (status, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        raw = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


async def send_case(host: str, port: int, case: Case, timeout: float) -> str:
    """Send one case; the outcome: `HTTP <status>`, `storm-reply`, `bytes`, `closed`, `reset`
    or `no-answer` (nothing within `timeout` even after a half-close, connection still open).

    Only the first bytes of the answer are read. A case that is not answered within
    `ANSWER_WAIT_SECS` is half-closed (the server may be waiting for the rest of a body).
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"connect-failed {type(exc).__name__}"
    first = b""
    try:
        writer.write(case.payload)
        await asyncio.wait_for(writer.drain(), timeout)
        if case.half_close:
            writer.write_eof()
            first = await asyncio.wait_for(reader.read(4096), timeout)
        else:
            try:
                first = await asyncio.wait_for(reader.read(4096), ANSWER_WAIT_SECS)
            except TimeoutError:
                writer.write_eof()
                first = await asyncio.wait_for(reader.read(4096), timeout)
    except TimeoutError:
        return "no-answer"
    except OSError:
        return "reset"
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    if not first:
        return "closed"
    if first.startswith(b"HTTP/1."):
        parts = first.split(b" ", 2)
        return f"HTTP {parts[1].decode(errors='replace')}" if len(parts) > 1 else "HTTP ?"
    return "storm-reply" if first[:1] == b"\x00" else "bytes"


def _kept(seed: int, count: int) -> dict[str, bytes]:
    rng = random.Random(f"pmcluster-fuzz-kept-{seed}")
    return {
        f"{KEEP_ROOT}/w{i:03d}/n-{6700 + i % 4}": rng.randbytes(rng.randint(1, 2000))
        for i in range(count)
    }


async def _store_kept(host: str, port: int, kept: dict[str, bytes]) -> None:
    for path, data in kept.items():
        status, body = await _http(host, port, "PUT", "/v1/pulse/" + to_url(path), data)
        if status != 204:
            raise RuntimeError(f"could not store {path} before fuzzing: {status} {body[:200]!r}")


async def _check_after(host: str, port: int, kept: dict[str, bytes]) -> list[str]:
    """The node answers correctly and every kept value is intact."""
    found: list[str] = []
    try:
        status, _ = await _http(host, port, "GET", "/health")
        if status != 200:
            found.append(f"after: GET /health answered {status}")
        probe = "/v1/pulse/" + to_url("/fz-after/probe")
        checks = [
            (await _http(host, port, "PUT", probe, b"probe"))[0] == 204,
            await _http(host, port, "GET", probe) == (200, b"probe"),
            (await _http(host, port, "DELETE", probe))[0] == 204,
            (await _http(host, port, "GET", probe))[0] == 404,
        ]
        if not all(checks):
            found.append(f"after: put/get/delete round trip failed: {checks}")
        for path, data in kept.items():
            status, body = await _http(host, port, "GET", "/v1/pulse/" + to_url(path))
            if (status, body) != (200, data):
                found.append(f"after: kept value {path} changed: HTTP {status}, {len(body)} bytes")
        status, body = await _http(host, port, "GET", "/v1/children/" + to_url(KEEP_ROOT))
        expected = sorted({p.split("/")[2] for p in kept})
        if status != 200 or json.loads(body) != expected:
            found.append(f"after: listing of {KEEP_ROOT} changed: HTTP {status} {body[:200]!r}")
    except (OSError, TimeoutError, ValueError, IndexError) as exc:
        found.append(f"after: the node did not answer correctly: {type(exc).__name__}: {exc}")
    return found


def _log_findings(log_path: Path | None, offset: int) -> list[str]:
    if log_path is None:
        return []
    with open(log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    lines = [line for line in text.splitlines() if any(m in line for m in LOG_MARKERS)]
    return [f"node log: {line.strip()[:300]}" for line in lines[:20]]


async def fuzz(
    host: str,
    port: int,
    *,
    requests: int,
    seed: int,
    concurrency: int = 16,
    storm: bool = True,
    max_body: int = DEFAULT_MAX_FRAME_SIZE,
    timeout: float = 5.0,
    keep: int = 64,
    log_path: Path | None = None,
    progress: bool = False,
) -> FuzzReport:
    """Run `requests` cases against host:port and check the node afterwards."""
    report = FuzzReport(seed)
    offset = log_path.stat().st_size if log_path is not None else 0
    kept = _kept(seed, keep)
    await _store_kept(host, port, kept)
    next_index = 0
    started = time.monotonic()

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests:
            index = next_index
            next_index += 1
            case = make_case(seed, index, storm=storm, max_body=max_body)
            outcome = await send_case(host, port, case, timeout)
            report.outcomes[outcome] += 1
            report.kinds[case.kind] += 1
            report.requests += 1
            if outcome == "HTTP 500" or outcome.startswith("connect-failed"):
                report.findings.append(f"case {index} ({case.kind}): {outcome}")
            if progress and report.requests % 10000 == 0:
                print(f"fuzz: {report.requests} cases, {report.outcomes.most_common(4)}")

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    report.seconds = time.monotonic() - started
    report.findings += await _check_after(host, port, kept)
    report.findings += _log_findings(log_path, offset)
    return report


async def replay(
    host: str,
    port: int,
    seed: int,
    indices: Sequence[int],
    *,
    storm: bool = True,
    max_body: int = DEFAULT_MAX_FRAME_SIZE,
) -> list[tuple[Case, str]]:
    """Send the given cases of a run one by one; (case, outcome) for each."""
    return [
        (case, await send_case(host, port, case, 5.0))
        for case in (make_case(seed, i, storm=storm, max_body=max_body) for i in indices)
    ]


# --- the `pmcluster fuzz` command ---------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `pmcluster fuzz`."""
    p.add_argument("--host", default="127.0.0.1", help="the node's address (127.0.0.1)")
    p.add_argument("--port", type=int, default=6699, help="the node's port (6699)")
    p.add_argument("--requests", type=int, default=100_000, help="fuzz cases to send (100000)")
    p.add_argument("--seed", type=int, default=1, help="seed: same seed, same cases (1)")
    p.add_argument("--concurrency", type=int, default=16, help="cases in flight (16)")
    p.add_argument("--no-storm", action="store_true", help="no Storm frames (HTTP-only node)")
    p.add_argument(
        "--max-body",
        type=int,
        default=DEFAULT_MAX_FRAME_SIZE,
        help="the node's pacemaker.thrift.message.size.max, for just-too-large bodies",
    )
    p.add_argument("--log", metavar="FILE", help="the node's log: scanned for tracebacks")
    p.add_argument("--only", type=int, nargs="+", metavar="INDEX", help="replay these cases")


def run_command(args: argparse.Namespace) -> int:
    """`pmcluster fuzz`: 0 when the node survived everything, 1 on findings."""
    storm = not args.no_storm
    if args.only:
        results = asyncio.run(
            replay(args.host, args.port, args.seed, args.only, storm=storm, max_body=args.max_body)
        )
        for case, outcome in results:
            print(f"case {case.index} ({case.kind}, {len(case.payload)} bytes): {outcome}")
            print(f"  {case.payload[:300]!r}")
        return 0
    report = asyncio.run(
        fuzz(
            args.host,
            args.port,
            requests=args.requests,
            seed=args.seed,
            concurrency=args.concurrency,
            storm=storm,
            max_body=args.max_body,
            log_path=Path(args.log) if args.log else None,
            progress=True,
        )
    )
    print(report.summary())
    for finding in report.findings[:50]:
        print(f"  {finding}")
    return 0 if report.ok else 1
