"""Print ring figures: balance (max/mean keys per node), keys moved on a join, lookup cost.

Run: `.venv/bin/python scripts/ring_figures.py [--keys 100000] [--points 160]`.
Keys are synthetic heartbeat paths (`/workerbeats/topo-<i>/node<j>-<port>`).
"""

from __future__ import annotations

import argparse
import time

from uhashring import HashRing

from pmcluster.ring import Member, Ring, balance_summary, heartbeat_like_paths


def _members(n: int) -> list[Member]:
    return [Member.at(f"10.0.{i // 250}.{i % 250 + 1}", 6699) for i in range(n)]


def _per_call_us(fn: object, keys: list[str], rounds: int = 3) -> float:
    """Best of `rounds` timings of `fn(key)` over `keys`, in µs per call."""
    assert callable(fn)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for key in keys:
            fn(key)
        best = min(best, time.perf_counter() - start)
    return best / len(keys) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=160)
    args = parser.parse_args()
    keys = list(heartbeat_like_paths(args.keys))
    print(f"{args.keys} heartbeat-shaped keys, {args.points} points per node, md5 ring")

    print("\nbalance (primaries per node)")
    for n in (3, 10, 50, 200):
        ring = Ring(_members(n), "figures", points=args.points)
        summary = balance_summary(ring.balance(keys))
        print(
            f"  {n:4d} nodes: max/mean {summary['max_over_mean']:.3f}"
            f"  min/mean {summary['min_over_mean']:.3f}"
        )

    print("\nprimaries moved by one join (ideal 1/(N+1))")
    for n in (3, 5, 10):
        ms = _members(n + 1)
        before, after = Ring(ms[:n], "a", points=args.points), Ring(ms, "b", points=args.points)
        moved = sum(before.primary(k) != after.primary(k) for k in keys) / len(keys)
        print(f"  {n:4d} -> {n + 1}: moved {moved:.4f}  ideal {1 / (n + 1):.4f}")

    print("\nlookup cost, µs per call (best of 3 over 20k keys)")
    sample = keys[:20_000]
    for n in (10, 200):
        ms = _members(n)
        start = time.perf_counter()
        ring = Ring(ms, "figures", points=args.points)
        build_ms = (time.perf_counter() - start) * 1e3
        zoned = Ring(
            [Member.at(m.host, m.port, zone=f"z{i % 3}") for i, m in enumerate(ms)],
            "figures",
            points=args.points,
            replication=3,
        )
        reference = HashRing(nodes=[m.node_id for m in ms], vnodes=args.points)
        few = sample[:2_000]

        def uhashring_range(key: str, reference: HashRing = reference) -> list[object]:
            return list(reference.range(key, 2))

        print(
            f"  {n:4d} nodes: owners R=2 {_per_call_us(ring.owners, sample):.2f}"
            f"  primary {_per_call_us(ring.primary, sample):.2f}"
            f"  owners R=3 3 zones {_per_call_us(zoned.owners, sample):.2f}"
            f"  | uhashring get_node {_per_call_us(reference.get_node, sample):.2f}"
            f"  range(size=2) {_per_call_us(uhashring_range, few):.2f}"
            f"  | build {build_ms:.1f} ms"
        )


if __name__ == "__main__":
    main()
