"""Test harness: a real ZooKeeper and real node processes on loopback, stopped by PID.

Shared by the integration, fault and ops tests (pytest fixtures wrapping these classes live in
`tests/conftest.py`; this module never imports pytest). Every process is started with a
parent-death signal (`prctl(PR_SET_PDEATHSIG, SIGKILL)`) so a test run that is itself killed
leaks no JVM and no node. Linux ties that signal to the *thread* that started the child: start
processes from a long-lived thread (the test's main thread), not from a short-lived executor
thread, or the child dies with that thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from pmcluster.tools.launch import node_argv

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
SLF4J_SIMPLE_JAR = Path("/usr/share/java/slf4j-simple.jar")
ZOOKEEPER_CLASSPATH: tuple[Path, ...] = (ZOOKEEPER_JAR, SLF4J_SIMPLE_JAR)
_ZOOKEEPER_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
_JVM_OPTIONS = ("-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
_LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1


class HarnessError(RuntimeError):
    """A process the harness manages failed to start, died, or did not stop."""


class ZooKeeperNotInstalled(HarnessError):
    """A ZooKeeper jar is missing; names it (the README's setup step installs it)."""

    def __init__(self, missing: Path) -> None:
        super().__init__(
            f"ZooKeeper is not installed: {missing} is missing; run the README's setup step "
            "(apt-get install -y --no-install-recommends zookeeper)"
        )
        self.missing = missing


def missing_zookeeper_jar(classpath: Sequence[Path] = ZOOKEEPER_CLASSPATH) -> Path | None:
    """The first jar of `classpath` that does not exist, or None when ZooKeeper is usable."""
    for jar in classpath:
        if not jar.is_file():
            return jar
    return None


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_CHOSEN_PORT = 10_000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for `bind(0)` and outgoing connections."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now and that the kernel will not hand out.

    Chosen at random *below* the kernel's ephemeral range: a port the kernel picked for
    `bind(0)` is itself ephemeral, so between the choice and the moment a child process
    binds it, any outgoing connection on the machine (a node's link to ZooKeeper, a proxy's
    upstream) could take it as its local port and the bind fails with EADDRINUSE. Ports
    handed out earlier in this process are not handed out again.
    """
    low = _ephemeral_low()
    if low - _LOWEST_CHOSEN_PORT < 1_000:
        return _kernel_port(host)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(_LOWEST_CHOSEN_PORT, low)
        if port not in _handed_out and port_is_free(host, port):
            _handed_out.add(port)
            return port
    raise HarnessError(f"no free port below {low} on {host}")


def _kernel_port(host: str) -> int:
    """A port the kernel picks (the fallback when no range lies below the ephemeral one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_on_all(hosts: Sequence[str]) -> int:
    """A TCP port free on every one of `hosts` (for several nodes on 127.0.0.x, one port)."""
    for _ in range(50):
        port = free_port(hosts[0])
        if all(port_is_free(host, port) for host in hosts[1:]):
            return port
    raise HarnessError(f"no common free port on {list(hosts)}")


def port_is_free(host: str, port: int) -> bool:
    """Whether `port` can be bound on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def process_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(
    predicate: Callable[[], bool], timeout: float, *, interval: float = 0.02, what: str = ""
) -> None:
    """Poll `predicate` until it is true; raise `HarnessError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.1f}s waiting for {what or predicate}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def split_zk_hosts(hosts: str) -> tuple[tuple[str, ...], str]:
    """Split a kazoo hosts string `h1:p1,h2:p2/chroot` into (("h1:p1", "h2:p2"), "/chroot")."""
    servers, slash, chroot = hosts.partition("/")
    return tuple(s.strip() for s in servers.split(",") if s.strip()), (slash + chroot).rstrip("/")


def zk_yaml(hosts: str) -> dict[str, Any]:
    """Storm YAML keys pointing at `hosts`; a chroot becomes the prefix of storm.zookeeper.root.

    Storm has no chroot in its server list, so `127.0.0.1:PORT/t-x` maps to
    `storm.zookeeper.servers: [127.0.0.1]`, `storm.zookeeper.port: PORT`,
    `storm.zookeeper.root: /t-x/storm`.
    """
    servers, chroot = split_zk_hosts(hosts)
    pairs = [s.rsplit(":", 1) for s in servers]
    ports = {p for _, p in pairs}
    keys: dict[str, Any] = {"storm.zookeeper.root": f"{chroot}/storm"}
    if len(ports) == 1:
        keys["storm.zookeeper.servers"] = [h for h, _ in pairs]
        keys["storm.zookeeper.port"] = int(ports.pop())
    else:
        keys["storm.zookeeper.servers"] = list(servers)
    return keys


def _prctl() -> Callable[..., int]:
    """libc's prctl, resolved in the parent so the forked child only calls it."""
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def spawn(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout and stderr appended to `log_path` and a parent-death signal."""
    parent = os.getpid()
    prctl = _prctl()

    def preexec() -> None:
        # SIGKILL this child when the thread that started it goes away.
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    with log_path.open("ab") as log:
        log.write(f"=== harness: starting {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            preexec_fn=preexec,
            close_fds=True,
        )


def _signal_and_reap(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Send `sig` (if the process still runs) and wait up to `timeout`; SIGKILL after that."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(10)


class _Child:
    """What the harness's process classes share: the child, its PID, SIGKILL by PID."""

    _proc: subprocess.Popen[bytes] | None = None

    def _label(self) -> str:
        """How messages name the process ("ZooKeeper", "node 127.0.0.1:6699")."""
        raise NotImplementedError

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise HarnessError(f"{self._label()} was never started")
        return self._proc

    @property
    def pid(self) -> int:
        """PID of the current (or last) process."""
        return self._started().pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> int | None:
        """SIGKILL (a crash) and reap."""
        if self._proc is None:
            return None
        return _signal_and_reap(self._proc, signal.SIGKILL, 10.0)


class ManagedZooKeeper(_Child):
    """One standalone ZooKeeper 3.8 server on 127.0.0.1, from the jars, in its own data dir.

    `start()` writes `zoo.cfg`, starts the JVM and waits (bounded) until `srvr` answers
    `Mode:`. `restart()` keeps the data dir and the port, so sessions and ephemeral znodes
    survive it. The server's output goes to `<data_dir>/zookeeper.log`.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        tick_ms: int = 200,
        port: int | None = None,
        start_timeout: float = 30.0,
        classpath: Sequence[Path] = ZOOKEEPER_CLASSPATH,
        java: str = "java",
    ) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="pmcluster-zk-")).resolve()
        self.tick_ms = tick_ms
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.classpath = tuple(classpath)
        self.java = java
        self._proc = None

    @property
    def hosts(self) -> str:
        """The kazoo hosts string of this server."""
        return f"127.0.0.1:{self.port}"

    def _label(self) -> str:
        return "ZooKeeper"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "zookeeper.log"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "zoo.cfg"

    def start(self) -> Self:
        """Start the server and wait until it serves; raise `HarnessError` with its log tail."""
        if self.running():
            return self
        missing = missing_zookeeper_jar(self.classpath)
        if missing is not None:
            raise ZooKeeperNotInstalled(missing)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._zoo_cfg())
        argv = [
            self.java,
            *_JVM_OPTIONS,
            "-cp",
            ":".join(str(jar) for jar in self.classpath),
            _ZOOKEEPER_MAIN,
            str(self.config_path),
        ]
        self._proc = spawn(argv, self.log_path)
        self._wait_serving()
        return self

    def _zoo_cfg(self) -> str:
        return "\n".join(
            [
                f"tickTime={self.tick_ms}",
                f"dataDir={self.data_dir}",
                f"clientPort={self.port}",
                "clientPortAddress=127.0.0.1",
                "maxClientCnxns=0",
                "admin.enableServer=false",
                "minSessionTimeout=400",
                "maxSessionTimeout=60000",
                "",
            ]
        )

    def _wait_serving(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not self.serving():
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                raise HarnessError(
                    f"ZooKeeper exited with code {proc.returncode} during start; "
                    f"log tail ({self.log_path}):\n{log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise HarnessError(
                    f"ZooKeeper did not serve on port {self.port} within {self.start_timeout}s; "
                    f"log tail ({self.log_path}):\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def serving(self) -> bool:
        """True if the four-letter word `srvr` answers a `Mode:` line."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"srvr")
                chunks = []
                while chunk := sock.recv(4096):
                    chunks.append(chunk)
        except OSError:
            return False
        lines = b"".join(chunks).decode(errors="replace").splitlines()
        return any(line.startswith("Mode:") for line in lines)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL fallback; the return code (None if never started)."""
        if self._proc is None:
            return None
        return _signal_and_reap(self._proc, signal.SIGTERM, timeout)

    def restart(self) -> Self:
        """Stop and start again on the same data dir and port."""
        self.stop()
        return self.start()

    def new_chroot(self, prefix: str = "t-") -> str:
        """Create `/<prefix><uuid>` and return a hosts string chrooted there."""
        from kazoo.client import KazooClient  # kazoo is a runtime dependency; imported lazily

        name = f"/{prefix}{uuid.uuid4().hex}"
        client = KazooClient(hosts=self.hosts, timeout=10.0)
        client.start(timeout=10.0)
        try:
            client.ensure_path(name)
        finally:
            client.stop()
            client.close()
        return f"{self.hosts}{name}"

    def close(self) -> None:
        """Stop the server and remove the data dir if the harness made it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NodeProcess(_Child):
    """One `python -m pmcluster node --config FILE` process, configured by Storm YAML keys.

    The YAML goes to `<workdir>/node-<host>-<port>.yaml`, stdout and stderr to
    `<workdir>/node-<host>-<port>.log` (appended across restarts). Used as a context manager
    it starts the node, waits until `/health` answers 200, and always SIGKILLs it by PID on exit.
    """

    def __init__(
        self,
        config_yaml: Mapping[str, Any],
        *,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.config_yaml = dict(config_yaml)
        self.host = str(self.config_yaml.get("pacemaker.host", "127.0.0.1"))
        self.port = int(self.config_yaml.get("pacemaker.port", 6699))
        self.workdir = Path(workdir)
        self.env = dict(os.environ if env is None else env)
        self.python = python
        stem = f"node-{self.host}-{self.port}"
        self.config_path = self.workdir / f"{stem}.yaml"
        self.log_path = self.workdir / f"{stem}.log"
        self._proc = None

    @property
    def node_id(self) -> str:
        return f"{self.host}:{self.port}"

    def _label(self) -> str:
        return f"node {self.node_id}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def local_pulse(self, path: str, timeout: float = 5.0) -> bytes | None:
        """The value of key `path` in this node's own store, None when absent (a forwarded
        read is answered locally, never coordinated)."""
        from pmcluster.protocol.paths import to_url

        request = urllib.request.Request(
            f"{self.url}/v1/pulse/{to_url(path)}", headers={"X-Pmcluster-Forwarded": "1"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(self) -> Self:
        """Write the config and start the process (does not wait for readiness)."""
        if self.running():
            raise HarnessError(f"node {self.node_id} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config_yaml, sort_keys=True))
        childopts = str(self.config_yaml.get("pacemaker.childopts") or "")
        argv = node_argv(self.config_path, childopts, self.python)
        self._proc = spawn(argv, self.log_path, self.env)
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _died(self, when: str) -> HarnessError:
        return HarnessError(
            f"node {self.node_id} (pid {self.pid}) exited with code {self.returncode} {when}; "
            f"log tail ({self.log_path}):\n{log_tail(self.log_path)}"
        )

    def check_alive(self) -> None:
        """Raise `HarnessError` with the log tail if the process has exited."""
        if self._started().poll() is not None:
            raise self._died("unexpectedly")

    def health_status(self, timeout: float = 1.0) -> int | None:
        """HTTP status of `GET /health`, or None when the node does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as response:
                status: int = response.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 15.0) -> Self:
        """Poll `GET /health` until 200; raise with the log tail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if self.health_status() == 200:
                return self
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"node {self.node_id} (pid {self.pid}) not ready within {timeout}s; "
                    f"log tail ({self.log_path}):\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit by itself; its return code."""
        proc = self._started()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"node {self.node_id} still running after {timeout}s") from None

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (graceful shutdown) and wait; SIGKILL after `timeout`. The return code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            # A stopped process cannot act on SIGTERM until it is continued.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGCONT)
        return _signal_and_reap(self._proc, signal.SIGTERM, timeout)

    def stop_signal(self) -> None:
        """SIGSTOP: the node hangs (connections accepted, never answered)."""
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT after `stop_signal()`."""
        os.kill(self.pid, signal.SIGCONT)

    def restart(self, *, wait_ready: bool = True, timeout: float = 15.0) -> Self:
        """Stop the current process if any (SIGTERM) and start a new one on the same config."""
        self.terminate()
        self.start()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def __enter__(self) -> Self:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.kill()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


class NodeCluster:
    """N node processes on 127.0.0.1, 127.0.0.2, ... sharing one port, stopped by PID.

    Every node lists all nodes in `pacemaker.servers`; with `zk_hosts` they also register in
    that ZooKeeper (its chroot becomes the prefix of `storm.zookeeper.root`). `extra` keys are
    merged into every node's YAML.
    """

    def __init__(
        self,
        size: int,
        *,
        workdir: Path,
        zk_hosts: str | None = None,
        port: int | None = None,
        extra: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.hosts = tuple(f"127.0.0.{i}" for i in range(1, size + 1))
        self.port = port if port is not None else free_port_on_all(self.hosts)
        common: dict[str, Any] = {
            "pacemaker.port": self.port,
            "pacemaker.servers": list(self.hosts),
        }
        if zk_hosts is not None:
            common.update(zk_yaml(zk_hosts))
        common.update(extra or {})
        self.nodes = [
            NodeProcess({**common, "pacemaker.host": host}, workdir=workdir, env=env, python=python)
            for host in self.hosts
        ]

    @property
    def node_ids(self) -> list[str]:
        return [node.node_id for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def __getitem__(self, index: int) -> NodeProcess:
        return self.nodes[index]

    def __len__(self) -> int:
        return len(self.nodes)

    def start(self, *, timeout: float = 30.0) -> Self:
        """Start every node, then wait until each is ready."""
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                node.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def terminate(self) -> None:
        """Graceful stop of every node (SIGTERM, by PID)."""
        for node in self.nodes:
            node.terminate()

    def kill(self) -> None:
        """SIGKILL every node by PID."""
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
