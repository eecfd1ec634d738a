"""Storm's own Pacemaker server (`org.apache.storm.pacemaker.Pacemaker` from storm-server) as a
JVM process on loopback: the peer that `pmcluster bench --rows pacemaker` and the Storm
topology test compare pmcluster with.

Storm's jars come from Maven (`storm_classpath`, the project's `tests/interop/storm/pom.xml`;
the first fetch is ~165 MB, later ones take seconds) or from a Storm installation's `lib/*`.
Storm's server binds the wildcard address on `pacemaker.port`, so it gets a port of its own; it
keeps heartbeats in memory only (a restart starts empty). Stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pmcluster.tools.localcluster import free_port, log_tail, wait_until

__all__ = ["STORM_POM", "StormPacemaker", "StormUnavailable", "storm_classpath"]

STORM_POM = Path(__file__).resolve().parents[2] / "tests" / "interop" / "storm" / "pom.xml"
MAVEN_TIMEOUT_SECS = 600.0  # a first fetch of ~165 MB
START_TIMEOUT_SECS = 60.0


class StormUnavailable(RuntimeError):
    """Storm's jars or a JDK cannot be had: what is missing and how to get it."""


def storm_classpath(work: Path, pom: Path = STORM_POM) -> str:
    """storm-client's and storm-server's jars (and their dependencies), resolved by Maven from
    `pom` into ~/.m2: the `-cp` value for `java`."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StormUnavailable("mvn not installed: run ./scripts/setup (installs Maven)")
    if not pom.is_file():
        raise StormUnavailable(f"{pom} not found: pass a Storm installation's lib/* instead")
    work.mkdir(parents=True, exist_ok=True)
    cp_file = work / "storm-classpath.txt"
    maven = subprocess.run(
        [
            *(mvn, "-q", "-B", "-f", str(pom), "dependency:build-classpath"),
            *(f"-Dmdep.outputFile={cp_file}", "-Dstyle.color=never"),
        ],
        capture_output=True,
        text=True,
        timeout=MAVEN_TIMEOUT_SECS,
    )
    if maven.returncode != 0:
        output = maven.stdout + maven.stderr
        raise StormUnavailable(f"Maven could not resolve Storm's jars:\n{output}")
    return cp_file.read_text().strip()


def java_command(classpath: str) -> list[str]:
    """`java -cp <classpath>` with the JDK on PATH."""
    java = shutil.which("java")
    if java is None:
        raise StormUnavailable("java not installed: run ./scripts/setup (installs a JDK 17)")
    return [java, "-cp", classpath]


class StormPacemaker:
    """One Storm Pacemaker server. `java` is `java -cp <Storm's jars>` (JVM options go after
    `java`); `heap` is its `-Xmx` (Storm's `pacemaker.childopts` default is `-Xmx1024m`)."""

    def __init__(
        self,
        java: Sequence[str],
        workdir: Path,
        *,
        heap: str = "128m",
        conf: dict[str, Any] | None = None,
    ) -> None:
        self.java = list(java)
        self.heap = heap
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "pacemaker.yaml"
        self.conf.write_text(yaml.safe_dump({"pacemaker.port": self.port, **(conf or {})}))
        self.log = workdir / "pacemaker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> StormPacemaker:
        """Start the JVM and wait until it accepts connections."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.java[:1],
                    f"-Xmx{self.heap}",
                    "-XX:+UseSerialGC",
                    f"-Dstorm.conf.file={self.conf}",
                    *self.java[1:],
                    "org.apache.storm.pacemaker.Pacemaker",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.listening, timeout=START_TIMEOUT_SECS, what="Storm's Pacemaker to listen")
        return self

    def listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise StormUnavailable(f"Storm's Pacemaker exited:\n{log_tail(self.log)}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL by PID (what a crash does: every heartbeat it held is gone)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
