"""A loopback TCP proxy for fault tests: forward, refuse, or blackhole one client's traffic.

Every node reaches ZooKeeper (or a peer) at the same address, so to cut *one* of them off, give
it its own proxy and switch the proxy's mode (RECIPES, "cutting one node off"):

- `forward`: bytes flow both ways;
- `refuse`: open connections are closed and new ones closed at once (like a dead server);
- `blackhole`: connections are accepted and bytes are swallowed, nothing comes back (like a
  partition: only the client's timeouts notice).

`reply_delay` (seconds, 0 by default) holds each chunk coming back from the target that long
before forwarding it: a slow server, to make a client re-send (Storm's client re-sends a request
unanswered after 1 s with the same message id).

Threads only (no event loop), so it works under sync and async tests alike.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Literal, Self

Mode = Literal["forward", "refuse", "blackhole"]
_CHUNK = 65536


class TcpProxy:
    """Listens on `host:port` (a free port by default) and relays to `target`."""

    def __init__(self, target: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self._mode: Mode = "forward"
        self.reply_delay = 0.0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)

    @property
    def address(self) -> str:
        """`host:port` clients connect to."""
        return f"{self.host}:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def start(self) -> Self:
        self._thread.start()
        return self

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; `refuse` also drops every open connection."""
        with self._lock:
            self._mode = mode
            doomed = list(self._open) if mode == "refuse" else []
        for sock in doomed:
            self._drop(sock)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        if self._thread.is_alive():
            self._thread.join(5.0)
        with self._lock:
            doomed = list(self._open)
        for sock in doomed:
            self._drop(sock)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed
            mode = self._mode
            if mode == "refuse":
                client.close()
                continue
            upstream: socket.socket | None = None
            if mode == "forward":
                try:
                    upstream = socket.create_connection(self.target, timeout=2.0)
                except OSError:
                    client.close()  # the target is down: so are we
                    continue
                upstream.settimeout(None)
            self._track(client, upstream)

    def _track(self, client: socket.socket, upstream: socket.socket | None) -> None:
        with self._lock:
            self._open.add(client)
            if upstream is not None:
                self._open.add(upstream)
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        if upstream is not None:
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket | None, replies: bool) -> None:
        try:
            while chunk := src.recv(_CHUNK):
                if replies and (delay := self.reply_delay) > 0:
                    time.sleep(min(delay, 30.0))
                if dst is not None and self._mode == "forward":
                    dst.sendall(chunk)
        except OSError:
            pass
        finally:
            self._drop(src)
            if dst is not None:
                self._drop(dst)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
