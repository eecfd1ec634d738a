"""Storm's own Pacemaker protocol against a node: pipelined SEND_PULSE and the Nimbus round.

A node serves Storm's framed Thrift protocol on its HTTP port (the first byte tells them
apart). `storm_load` is what many Storm workers talking to one Pacemaker do: several TCP
connections per process, each carrying many requests in flight (`StormClient` pipelines them
and writes a loop iteration's requests in one send). `storm_read_round` is Nimbus over the
same protocol: GET_ALL_NODES_FOR_PATH on the root, then GET_ALL_PULSE_FOR_PATH per topology.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pmcluster.bench.load import Control, Outcome

__all__ = ["StormSpec", "storm_load", "storm_populate", "storm_read_round"]

_TIMEOUT_SECS = 30.0


@dataclass(frozen=True)
class StormSpec:
    """One process: `connections` Storm connections sharing `in_flight` SEND_PULSE calls."""

    host: str
    port: int
    paths: tuple[str, ...]
    payload: int
    in_flight: int
    connections: int


def storm_load(spec: StormSpec, ctl: Control) -> Outcome:
    """The `drive` target for the Storm protocol."""
    from pmcluster.storm.client import StormClient

    data = os.urandom(spec.payload)

    async def main() -> Outcome:
        outcome = Outcome()
        clients = [
            StormClient(spec.host, spec.port, timeout=_TIMEOUT_SECS, max_in_flight=spec.in_flight)
            for _ in range(max(1, spec.connections))
        ]
        for client in clients:
            await client.connect()
        try:
            t0, t1 = await asyncio.to_thread(ctl.wait_window)
            done = 0
            cursor = 0

            async def worker(client: StormClient) -> None:
                nonlocal done, cursor
                while (started := time.monotonic()) < t1:
                    path = spec.paths[cursor]
                    cursor = (cursor + 1) % len(spec.paths)
                    ok = True
                    try:
                        await client.send_pulse(path, data)
                    except Exception:
                        ok = False
                    now = time.monotonic()
                    done += 1
                    if done % 512 == 0:
                        ctl.progress(done)
                    if t0 <= now <= t1:
                        outcome.requests += 1
                        if ok:
                            outcome.heartbeats += 1
                            outcome.latencies.append(now - started)
                        else:
                            outcome.errors += 1

            workers = [worker(clients[i % len(clients)]) for i in range(spec.in_flight)]
            await asyncio.gather(*workers)
            ctl.progress(done)
        finally:
            for client in clients:
                await client.close()
        return outcome

    return asyncio.run(main())


async def storm_populate(host: str, port: int, paths: Sequence[str], payload: int) -> None:
    """Store every path with `payload` bytes over one pipelined Storm connection."""
    from pmcluster.storm.client import StormClient

    data = b"s" * payload
    async with StormClient(host, port, timeout=_TIMEOUT_SECS) as client:
        await asyncio.gather(*(client.send_pulse(path, data) for path in paths))


async def storm_read_round(host: str, port: int, root: str) -> tuple[float, int, int]:
    """One Nimbus round over the Storm protocol: (seconds, heartbeats read, bytes read)."""
    from pmcluster.storm.client import StormClient

    async with StormClient(host, port, timeout=_TIMEOUT_SECS) as client:
        started = time.monotonic()
        topologies = await client.get_all_nodes_for_path(root)
        results = await asyncio.gather(
            *(client.get_all_pulse_for_path(f"{root}/{t}") for t in topologies)
        )
        seconds = time.monotonic() - started
    pulses = [p for result in results for p in result]
    return seconds, len(pulses), sum(len(data) for _, data in pulses)
