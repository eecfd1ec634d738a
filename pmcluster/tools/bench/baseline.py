"""The baseline: a bare aiohttp server storing PUT bodies in a dict, run as its own process.

It is what "a single node write rate ≥ 0.8 × a bare aiohttp dict server" compares against:
the same framework, routes shaped like the node's (`PUT /v1/pulse/{path}` → 204,
`GET /v1/pulse/{path}`), nothing else — no path validation, versions, tombstones, metrics or
headers. Shipped inside the benchmark so the ratio is reproducible on any machine:
`python -m pmcluster.tools.bench.baseline --host 127.0.0.1 --port 7000`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

__all__ = ["BaselineProcess", "main", "make_baseline_app"]

_STORE_KEY = web.AppKey("store", dict[str, bytes])


async def _put(request: web.Request) -> web.Response:
    request.app[_STORE_KEY][request.match_info["path"]] = await request.read()
    return web.Response(status=204)


async def _get(request: web.Request) -> web.Response:
    data = request.app[_STORE_KEY].get(request.match_info["path"])
    if data is None:
        return web.Response(status=404)
    return web.Response(body=data)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_baseline_app() -> web.Application:
    """The dict server's application: PUT/GET one key, and /health."""
    app = web.Application()
    app[_STORE_KEY] = {}
    app.router.add_put("/v1/pulse/{path:.*}", _put)
    app.router.add_get("/v1/pulse/{path:.*}", _get)
    app.router.add_get("/health", _health)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the dict server until SIGTERM."""
    parser = argparse.ArgumentParser(description="bare aiohttp dict server (bench baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(make_baseline_app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0


class BaselineProcess:
    """The dict server as a child process (parent-death signal set), stopped by PID."""

    def __init__(self, host: str, port: int, log_path: Path) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "baseline server not started"
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> BaselineProcess:
        """Start the process and wait (bounded) until /health answers."""
        from pmcluster.tools.localcluster import (
            spawn,  # the harness's start: log file, parent-death signal
        )

        argv = [sys.executable, "-m", "pmcluster.tools.bench.baseline"]
        argv += ["--host", self.host, "--port", str(self.port)]
        self._proc = spawn(argv, self.log_path)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"baseline server exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1.0):
                    return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"baseline server not ready in {timeout}s; see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGKILL by PID and reap."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._proc is not None:
            self._proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
