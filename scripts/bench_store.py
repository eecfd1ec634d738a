"""Measure `PulseStore` costs on a large and a 10x smaller store with the same answer sizes.

Keys look like Storm's: `/workerbeats/topo-<t>/node<j>-<port>`. The large store has 1000
topologies of 1000 keys (10^6 keys), the small one 100 topologies of 1000 keys (10^5), so a
topology listing or delete answers ~1000 in both: if the times match, cost follows the
answer size, not the store size. Listing `/workerbeats` answers 1000 vs 100 (it is O(children)).

It also times the pulse-list codec (`pmcluster.protocol.pulsecodec`) on 1 KiB entries, and the
per-entry cost of `POST /v1/batch`'s store work in its steady state: bodies of 100 x 1 KiB
heartbeats rewriting 10,000 keys, each body decoded then stored with
`send_pulses(..., trusted=True)` under a memory cap (as a node does), plus single
`send_pulse` rewrites and `get_pulse` reads of the same keys.

    .venv/bin/python scripts/bench_store.py [--keys 1000000] [--payload 16]
    .venv/bin/python scripts/bench_store.py --entries-only   # just the per-entry costs
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable

from pmcluster.protocol import pulsecodec
from pmcluster.store import PulseStore

NODES_PER_TOPOLOGY = 1000
PORTS = (6700, 6701, 6702, 6703)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _key(topology: int, j: int) -> str:
    return f"/workerbeats/topo-{topology}/node{j // 4}-{PORTS[j % 4]}"


def _timed(fn: Callable[[], object], repeat: int = 5) -> tuple[float, object]:
    """Median wall time of `fn` over `repeat` runs, and its last answer."""
    times = []
    answer: object = None
    for _ in range(repeat):
        start = time.perf_counter()
        answer = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), answer


def bench(keys: int, payload: bytes) -> dict[str, tuple[float, int]]:
    """Build a store of `keys` keys and time the operations; name -> (seconds, answer size)."""
    topologies = keys // NODES_PER_TOPOLOGY
    paths = [_key(t, j) for j in range(NODES_PER_TOPOLOGY) for t in range(topologies)]
    store = PulseStore()
    gc.collect()
    rss_before = _rss_bytes()
    start = time.perf_counter()
    for path in paths:
        store.send_pulse(path, payload)
    insert = time.perf_counter() - start
    gc.collect()
    rss = _rss_bytes() - rss_before
    del paths
    probe = _key(topologies // 2, 123)
    results: dict[str, tuple[float, int]] = {
        "insert (per key)": (insert / keys, keys),
        "RSS per key (bytes)": (rss / keys, keys),
    }
    get_time, _ = _timed(lambda: store.get_pulse(probe), repeat=1001)
    results["get_pulse"] = (get_time, 1)
    topo = f"/workerbeats/topo-{topologies // 2}"
    t, answer = _timed(lambda: store.get_all_nodes_for_path(topo))
    results["list topology"] = (t, len(answer))  # type: ignore[arg-type]
    t, answer = _timed(lambda: store.get_all_nodes_for_path("/workerbeats"))
    results["list /workerbeats"] = (t, len(answer))  # type: ignore[arg-type]
    t, answer = _timed(lambda: store.get_all_pulse_for_path(topo))
    results["get_all_pulse topology"] = (t, len(answer))  # type: ignore[arg-type]
    t, answer = _timed(lambda: store.children_versions("/workerbeats"))
    results["children_versions /workerbeats"] = (t, len(answer[0]))  # type: ignore[index]
    delete_times = []
    for victim in range(5):  # five different topologies: a delete cannot be repeated
        start = time.perf_counter()
        removed = store.delete_path(f"/workerbeats/topo-{victim}")
        delete_times.append(time.perf_counter() - start)
    results["delete_path topology"] = (statistics.median(delete_times), removed)
    assert store.key_count == keys - 5 * removed
    return results


def bench_codec(entries: int = 100_000, size: int = 1024) -> tuple[float, float]:
    """Best-of-5 encode and decode rates (entries/s) for `entries` pulses of `size` bytes."""
    data = os.urandom(size)
    pulses = [
        (_key(i % 1000, i // 1000), data, 1_718_000_000_000_000_000 + i) for i in range(entries)
    ]
    encode_time, body = _timed(lambda: pulsecodec.encode(pulses))
    assert isinstance(body, bytes)
    decode_times = []
    for _ in range(5):
        start = time.perf_counter()
        decoded = pulsecodec.decode(body)
        decode_times.append(time.perf_counter() - start)
        assert len(decoded) == entries
        del decoded
    return entries / encode_time, entries / min(decode_times)


def _batch_key(i: int, topologies: int = 10) -> str:
    """The load generator's heartbeat paths (`pmcluster.tools.loadgen`)."""
    return f"/workerbeats/topo-{i % topologies}-1700000000/node-{i // 4:03d}-{6700 + i % 4}"


def bench_entries(
    keys: int = 10_000, batch: int = 100, size: int = 1024, rounds: int = 7
) -> dict[str, float]:
    """Per-entry seconds (best of `rounds`) of the batch path and of single point operations.

    Every round rewrites all `keys` keys (the steady state: workers rewrite their
    heartbeats), one body of `batch` entries at a time as a node handles them: decode, then
    `send_pulses(trusted=True)`. Versions are 0 ("now"), as the load generator sends them.
    """
    data = os.urandom(size)
    paths = [_batch_key(i) for i in range(keys)]
    bodies = [
        pulsecodec.encode([(path, data, None) for path in paths[start : start + batch]])
        for start in range(0, keys, batch)
    ]
    store = PulseStore(max_bytes=1 << 40)  # a node always has a cap: its check is counted
    for body in bodies:
        store.send_pulses(pulsecodec.decode(body), trusted=True)
    decode_best = put_best = send_best = get_best = float("inf")
    clock = time.perf_counter
    for _ in range(rounds):
        decode_time = put_time = 0.0
        for body in bodies:
            start = clock()
            entries = pulsecodec.decode(body)
            middle = clock()
            store.send_pulses(entries, trusted=True)
            decode_time += middle - start
            put_time += clock() - middle
        decode_best = min(decode_best, decode_time)
        put_best = min(put_best, put_time)
        start = clock()
        for path in paths:
            store.send_pulse(path, data)
        send_best = min(send_best, clock() - start)
        start = clock()
        for path in paths:
            store.get_pulse(path)
        get_best = min(get_best, clock() - start)
    assert store.key_count == keys
    return {
        "decode (per entry)": decode_best / keys,
        "send_pulses trusted (per entry)": put_best / keys,
        "decode + send_pulses (per entry)": (decode_best + put_best) / keys,
        "send_pulse rewrite": send_best / keys,
        "get_pulse": get_best / keys,
    }


def print_entries() -> None:
    """Print `bench_entries` in microseconds."""
    print(
        "POST /v1/batch store work, 10,000 keys rewritten by bodies of 100 x 1 KiB entries "
        "(best of 7 rounds):"
    )
    for name, seconds in bench_entries().items():
        print(f"  {name:34} {seconds * 1e6:>7.3f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--payload", type=int, default=16, help="payload bytes per key")
    parser.add_argument(
        "--entries-only",
        action="store_true",
        help="only the per-entry costs of the batch path and of send_pulse/get_pulse",
    )
    args = parser.parse_args()
    if args.entries_only:
        print_entries()
        return
    payload = os.urandom(args.payload)
    small = bench(args.keys // 10, payload)
    large = bench(args.keys, payload)
    print(f"payload {args.payload} B; small store {args.keys // 10:,} keys, large {args.keys:,}")
    print(f"{'operation':34} {'small':>12} {'answer':>7} {'large':>12} {'answer':>7} {'ratio':>6}")
    for name, (small_t, small_n) in small.items():
        large_t, large_n = large[name]
        unit = "" if name.startswith("RSS") else " us"
        scale = 1.0 if name.startswith("RSS") else 1e6
        print(
            f"{name:34} {small_t * scale:>9.1f}{unit:3} {small_n:>7} "
            f"{large_t * scale:>9.1f}{unit:3} {large_n:>7} {large_t / small_t:>6.2f}"
        )
    encode_rate, decode_rate = bench_codec()
    print(
        f"pulsecodec, 100,000 x 1 KiB entries: encode {encode_rate:,.0f}/s (median of 5), "
        f"decode {decode_rate:,.0f}/s (best of 5)"
    )
    print_entries()


if __name__ == "__main__":
    main()
