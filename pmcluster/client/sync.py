"""`SyncClusterClient`: the thread-safe blocking face of `ClusterClient` (CLI, ops, tests).

A private event loop in a daemon thread runs the async client; every call is bounded."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Coroutine, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any, Self, TypeVar

from pmcluster.client.cluster import (
    LIFECYCLE_SLACK_SECS,
    MAX_VERSION_RETRIES,
    ClusterClient,
    PulseInput,
)
from pmcluster.config import Config
from pmcluster.errors import ClusterUnavailable
from pmcluster.membership import MembershipSnapshot, MembershipSource
from pmcluster.protocol.pulse import Pulse

__all__ = ["SyncClusterClient"]

T = TypeVar("T")


class SyncClusterClient:
    """Thread-safe blocking façade: a private event loop in a daemon thread runs the client."""

    def __init__(self, config: Config, *, membership: MembershipSource | None = None) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pmcluster-client", daemon=True
        )
        self._thread.start()
        # One call may take a first try plus MAX_VERSION_RETRIES (an unversioned write whose
        # owners hold newer versions), each bounded by the request timeout.
        self._timeout = (
            (MAX_VERSION_RETRIES + 1) * config.request_timeout_secs
            + config.connect_timeout_secs
            + 1.0
        )
        # Starting and stopping may wait for ZooKeeper (session set-up, a clean close).
        self._lifecycle_timeout = self._timeout + LIFECYCLE_SLACK_SECS
        self._closed = False
        try:
            self._client = self._run(self._make(membership), self._lifecycle_timeout)
        except BaseException:
            self._stop_loop()
            raise

    async def _make(self, membership: MembershipSource | None) -> ClusterClient:
        client = ClusterClient(self.config, membership=membership)
        try:
            await client.start()
        except BaseException:
            await client.close()
            raise
        return client

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        limit = self._timeout if timeout is None else timeout
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(limit)
        except FutureTimeout:
            future.cancel()
            raise ClusterUnavailable(f"no answer within {limit:.1f}s") from None

    @property
    def stats(self) -> Counter[str]:
        return self._client.stats

    def send_pulse(self, path: str, data: bytes, version: int | None = None) -> None:
        self._run(self._client.send_pulse(path, data, version))

    def send_pulses(self, pulses: Sequence[PulseInput]) -> None:
        self._run(self._client.send_pulses(pulses))

    def get_pulse(self, path: str) -> Pulse | None:
        return self._run(self._client.get_pulse(path))

    def exists(self, path: str) -> bool:
        return self._run(self._client.exists(path))

    def get_all_nodes_for_path(self, path: str) -> list[str]:
        return self._run(self._client.get_all_nodes_for_path(path))

    def get_all_pulse_for_path(self, path: str) -> list[Pulse]:
        return self._run(self._client.get_all_pulse_for_path(path))

    def delete_path(self, path: str) -> None:
        self._run(self._client.delete_path(path))

    def delete_pulse_id(self, path: str) -> None:
        self._run(self._client.delete_pulse_id(path))

    def create_path(self, path: str) -> None:
        self._run(self._client.create_path(path))

    def members(self) -> MembershipSnapshot:
        return self._run(self._client.members())

    def members_view(self) -> dict[str, Any]:
        return self._run(self._client.members_view())

    def close(self) -> None:
        """Close the client, stop the loop and join its thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.close(), self._lifecycle_timeout)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
