"""The anchor: ZooKeeper 3.8 through kazoo, as Storm uses it for heartbeats without Pacemaker.

The bench starts its own standalone server (`ManagedZooKeeper`) with a production tickTime
(2 s) and a data dir on disk, so every heartbeat goes through ZooKeeper's transaction log
(fsync on, as shipped). Writers are `set_data` on existing znodes (a worker rewriting its
heartbeat) with N requests in flight per kazoo session; the read round is what Nimbus does:
list the topologies, list each topology's workers, read every worker's znode
(`get_async` for all of them at once).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pmcluster.tools.bench.load import Control, Outcome
from pmcluster.tools.localcluster import ManagedZooKeeper

__all__ = ["ZkSpec", "populate_zookeeper", "start_zookeeper", "zk_load", "zk_read_round"]

PRODUCTION_TICK_MS = 2000
_CREATE_IN_FLIGHT = 512
_KAZOO_TIMEOUT_SECS = 30.0


def start_zookeeper(workdir: Path) -> ManagedZooKeeper:
    """A ZooKeeper with tickTime 2000 and its data dir (txn log, snapshots) under `workdir`."""
    return ManagedZooKeeper(workdir / "zookeeper", tick_ms=PRODUCTION_TICK_MS).start()


def _client(hosts: str) -> Any:
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts, timeout=_KAZOO_TIMEOUT_SECS)
    client.start(timeout=_KAZOO_TIMEOUT_SECS)
    return client


def populate_zookeeper(hosts: str, paths: Sequence[str], payload: int) -> None:
    """Create every znode in `paths` (parents first) holding `payload` bytes."""
    client = _client(hosts)
    try:
        for parent in sorted({path.rsplit("/", 1)[0] for path in paths}):
            client.ensure_path(parent)
        data = b"x" * payload
        pending: list[Any] = []
        for path in paths:
            pending.append(client.create_async(path, data))
            if len(pending) >= _CREATE_IN_FLIGHT:
                _settle(pending)
        _settle(pending)
    finally:
        client.stop()
        client.close()


def _settle(pending: list[Any]) -> None:
    from kazoo.exceptions import NodeExistsError

    for result in pending:
        with contextlib.suppress(NodeExistsError):
            result.get(timeout=_KAZOO_TIMEOUT_SECS)
    pending.clear()


@dataclass(frozen=True)
class ZkSpec:
    """One process's kazoo session: `in_flight` `set_async` calls over its own `paths`."""

    hosts: str
    paths: tuple[str, ...]
    payload: int
    in_flight: int


def zk_load(spec: ZkSpec, ctl: Control) -> Outcome:
    """The `drive` target for ZooKeeper: set_async with N in flight, reissued on completion."""
    client = _client(spec.hosts)
    try:
        data = bytes(spec.payload)
        outcome = Outcome()
        lock = threading.Lock()
        finished = threading.Event()
        state = {"next": 0, "done": 0, "open": spec.in_flight}
        t0, t1 = ctl.wait_window()

        def issue() -> None:
            with lock:
                index = state["next"]
                state["next"] = (index + 1) % len(spec.paths)
            started = time.monotonic()
            result = client.set_async(spec.paths[index], data)
            result.rawlink(lambda res: completed(res, started))

        def completed(result: Any, started: float) -> None:
            now = time.monotonic()
            ok = result.successful()
            with lock:
                state["done"] += 1
                if state["done"] % 256 == 0:
                    ctl.progress(state["done"])
                if t0 <= now <= t1:
                    outcome.count(ok, 1, now - started)
                if now >= t1:
                    state["open"] -= 1
                    if state["open"] == 0:
                        finished.set()
                    return
            issue()

        for _ in range(spec.in_flight):
            issue()
        if not finished.wait(t1 - time.monotonic() + _KAZOO_TIMEOUT_SECS):
            raise TimeoutError("kazoo requests still outstanding 30 s after the window")
        ctl.progress(state["done"])
        return outcome
    finally:
        client.stop()
        client.close()


def zk_read_round(hosts: str, root: str) -> tuple[float, int, int]:
    """One Nimbus round: (seconds, heartbeats read, bytes read)."""
    client = _client(hosts)
    try:
        started = time.monotonic()
        count = size = 0
        for topology in client.get_children(root):
            parent = f"{root}/{topology}"
            results = [client.get_async(f"{parent}/{w}") for w in client.get_children(parent)]
            for result in results:
                data, _ = result.get(timeout=_KAZOO_TIMEOUT_SECS)
                count += 1
                size += len(data)
        return time.monotonic() - started, count, size
    finally:
        client.stop()
        client.close()
