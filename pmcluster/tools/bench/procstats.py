"""A server process's own figures from /proc: CPU time, resident memory, bytes written to disk.

CPU is `utime + stime` of `/proc/PID/stat` (every thread of the process, so a JVM's GC and
I/O threads count for ZooKeeper); RSS is `VmRSS` of `/proc/PID/status`; disk writes are
`write_bytes` of `/proc/PID/io` (bytes the process caused to be sent to the storage layer,
counted when a page is dirtied, so an fsync-free write still counts). Linux only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcSample", "dir_disk_bytes", "rss_bytes", "sample", "sample_sum"]

_TICKS_PER_SEC = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One reading of a process (or the sum over several processes)."""

    cpu_secs: float
    rss_bytes: int
    write_bytes: int

    def __sub__(self, earlier: ProcSample) -> ProcSample:
        """The change since `earlier` (RSS is the later value, not a difference)."""
        return ProcSample(
            self.cpu_secs - earlier.cpu_secs,
            self.rss_bytes,
            self.write_bytes - earlier.write_bytes,
        )


def _cpu_secs(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name (which may hold spaces): state is field 3,
    # utime and stime are fields 14 and 15 of the whole line.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SEC


def rss_bytes(pid: int) -> int:
    """`VmRSS` of `pid` in bytes (0 when the kernel does not report it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def sample(pid: int) -> ProcSample:
    """Read CPU seconds, RSS and disk write bytes of `pid` now."""
    return ProcSample(_cpu_secs(pid), rss_bytes(pid), _write_bytes(pid))


def sample_sum(pids: Sequence[int]) -> ProcSample:
    """The sum of `sample` over several processes (a cluster's nodes)."""
    samples = [sample(pid) for pid in pids]
    return ProcSample(
        sum(s.cpu_secs for s in samples),
        sum(s.rss_bytes for s in samples),
        sum(s.write_bytes for s in samples),
    )


def dir_disk_bytes(path: Path) -> int:
    """Bytes allocated on disk by the files under `path` (st_blocks, so sparse files and
    preallocated-but-unwritten log tails count as what they really occupy)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total
