"""How long anti-entropy's passes over a store hold the event loop: the digests for every
peer, and the entries of 16 buckets, on a store of Storm-shaped keys.

    .venv/bin/python scripts/bench_antientropy.py [KEYS]
"""

from __future__ import annotations

import sys
import time

from pmcluster.node.antientropy import digests_by_peer
from pmcluster.ring import Member, Ring
from pmcluster.store import PulseStore
from pmcluster.store.digest import entries_in


def main() -> None:
    keys = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    members = [Member(f"127.0.0.{i}:6699", f"127.0.0.{i}", 6699) for i in range(1, 5)]
    ring = Ring(members, "bench", replication=2)
    store = PulseStore()
    for i in range(keys):
        path = f"/workerbeats/topo-{i % 200}-1700000000/node-{i // 4:05d}-{6700 + i % 4}"
        store.send_pulse(path, b"x" * 100, 10 + i)
    began = time.perf_counter()
    digests = digests_by_peer(store, ring, members[0].node_id)
    digest_ms = (time.perf_counter() - began) * 1000
    began = time.perf_counter()
    entries_in(store, list(range(16)), lambda _: True)
    entries_ms = (time.perf_counter() - began) * 1000
    buckets = sum(len(b) for b in digests.values())
    print(f"{keys} keys, 4 members: digests for {len(digests)} peers {digest_ms:.0f} ms")
    print(f"({buckets} non-empty buckets); one entries pass (16 buckets) {entries_ms:.0f} ms")


if __name__ == "__main__":
    main()
