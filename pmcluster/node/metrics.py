"""Counters, gauges and histograms rendered in Prometheus text exposition format 0.0.4.

Dependency-free and cheap on the hot path: a counter increment is an attribute add, a
histogram observation is one `bisect` plus two adds. Label lookups happen once (callers keep
the child objects), never per request. Everything is updated from the event loop thread, so
no locks are taken; a gauge callback runs only when `/metrics` is rendered.

`Registry` is the generic container; `Metrics` is the node's fixed set. Names follow
Prometheus's conventions (base units, a `_bytes`/`_seconds` unit suffix, `_total` on counters):
`pmcluster_*`. Storm Pacemaker's own metric names (`pacemaker:send-pulse-count`, ...) stay
exported as aliases in Prometheus spelling (`pacemaker_send_pulse_count`, ...): the same
samples under the old name, for dashboards built on Storm's names (`STORM_ALIASES`,
docs/http-api.md).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets (seconds) for request durations: 50 µs .. 10 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Pulse size buckets (bytes): 64 B .. 10 MiB, heartbeats are typically 1-15 KB.
SIZE_BUCKETS: tuple[float, ...] = (
    64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 10485760,
)  # fmt: skip

OPS: tuple[str, ...] = (
    "send_pulse",
    "get_pulse",
    "exists",
    "get_all_nodes_for_path",
    "get_all_pulse_for_path",
    "delete_path",
    "delete_pulse_id",
    "create_path",
    "batch",
    "members",
    "other",
)

# Storm Pacemaker's metric names: (Prometheus spelling exported as an alias, Storm's own name,
# the pmcluster metric it is an alias of).
STORM_ALIASES: tuple[tuple[str, str, str], ...] = (
    ("pacemaker_send_pulse_count", "pacemaker:send-pulse-count", "pmcluster_pulses_received_total"),
    ("pacemaker_total_receive_size", "pacemaker:total-receive-size",
     "pmcluster_received_bytes_total"),
    ("pacemaker_heartbeat_size", "pacemaker:heartbeat-size", "pmcluster_pulse_size_bytes"),
    ("pacemaker_get_pulse_count", "pacemaker:get-pulse=count", "pmcluster_pulse_reads_total"),
    ("pacemaker_total_sent_size", "pacemaker:total-sent-size", "pmcluster_sent_bytes_total"),
    ("pacemaker_size_total_keys", "pacemaker:size-total-keys", "pmcluster_stored_keys"),
)  # fmt: skip

# A 404 from these ops means "no such pulse", a normal answer rather than an error.
_ABSENT_IS_NORMAL = frozenset({"get_pulse", "exists"})


def format_value(value: float) -> str:
    """Render a sample value: integers without a fraction, infinities as `+Inf`/`-Inf`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class CounterChild:
    """One counter time series; `value` only goes up."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild:
    """One gauge time series: set directly, or computed by a callback at render time."""

    __slots__ = ("_function", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set_function(self, function: Callable[[], float] | None) -> None:
        """Compute the value with `function` whenever it is read (None: back to `set`)."""
        self._function = function

    def get(self) -> float:
        return float(self._function()) if self._function is not None else self.value


class HistogramChild:
    """One histogram time series with fixed upper bounds; counts are kept per bucket."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # `le` is inclusive: bisect_left puts value == bound into that bound's bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        """`observe` each of `values`, in one call (a batch's pulse sizes)."""
        counts, bounds, total = self.counts, self.bounds, 0.0
        # A batch's sizes repeat (workers' heartbeats are alike): bucket each distinct one once.
        for value, times in Tally(values).items():
            counts[bisect_left(bounds, value)] += times
            total += value * times
        self.sum += total

    @property
    def count(self) -> int:
        return sum(self.counts)


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class _Family(Generic[ChildT]):
    """A named metric with a fixed label set; `labels(...)` returns (and caches) a child."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], ChildT] = {}

    def _new_child(self) -> ChildT:
        raise NotImplementedError

    def labels(self, *values: str, **by_name: str) -> ChildT:
        """The child for these label values (positional, or by name); created on first use."""
        if by_name:
            if values:
                raise ValueError("pass label values positionally or by name, not both")
            if set(by_name) != set(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}")
            values = tuple(by_name[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def children(self) -> Iterator[tuple[tuple[str, ...], ChildT]]:
        return iter(sorted(self._children.items()))

    def _samples(self, labels: tuple[str, ...], child: ChildT) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for labels, child in self.children():
            lines.extend(self._samples(labels, child))
        return lines


class Counter(_Family[CounterChild]):
    """A monotonically increasing count (requests, bytes)."""

    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _samples(self, labels: tuple[str, ...], child: CounterChild) -> Iterable[str]:
        yield f"{self.name}{_label_text(self.labelnames, labels)} {format_value(child.value)}"


class Gauge(_Family[GaugeChild]):
    """A value that goes up and down, or is computed on demand by a callback."""

    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def _samples(self, labels: tuple[str, ...], child: GaugeChild) -> Iterable[str]:
        yield f"{self.name}{_label_text(self.labelnames, labels)} {format_value(child.get())}"


class Histogram(_Family[HistogramChild]):
    """Observations counted into fixed cumulative buckets, plus their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be strictly increasing and non-empty")
        if "le" in self.labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        self.bounds = bounds

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def _samples(self, labels: tuple[str, ...], child: HistogramChild) -> Iterable[str]:
        cumulative = 0
        for bound, count in zip((*child.bounds, math.inf), child.counts, strict=True):
            cumulative += count
            le = f'le="{format_value(bound)}"'
            yield f"{self.name}_bucket{_label_text(self.labelnames, labels, le)} {cumulative}"
        text = _label_text(self.labelnames, labels)
        yield f"{self.name}_sum{text} {format_value(child.sum)}"
        yield f"{self.name}_count{text} {cumulative}"


class Alias:
    """Another family's samples under a second name (Storm's metric names, kept for old
    dashboards): the same children, so the two can never disagree."""

    def __init__(self, name: str, target: Counter | Gauge | Histogram, help_text: str) -> None:
        self.name = name
        self.target = target
        self.help = help_text
        self.kind = target.kind

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        old = self.target.name
        for labels, child in self.target.children():
            for line in self.target._samples(labels, child):  # type: ignore[arg-type]
                lines.append(self.name + line[len(old) :])
        return lines


Family = Counter | Gauge | Histogram | Alias


class Registry:
    """An ordered set of metric families with unique names; `render()` exposes them all."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def _add(self, family: Family) -> None:
        if family.name in self._families:
            raise ValueError(f"metric {family.name!r} already registered")
        self._families[family.name] = family

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        family = Counter(name, help_text, labelnames)
        self._add(family)
        return family

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        family = Gauge(name, help_text, labelnames)
        self._add(family)
        return family

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        family = Histogram(name, help_text, labelnames, buckets=buckets)
        self._add(family)
        return family

    def alias(self, name: str, target: Counter | Gauge | Histogram, help_text: str) -> Alias:
        """Export `target`'s samples under `name` too (see `Alias`)."""
        family = Alias(name, target, help_text)
        self._add(family)
        return family

    def get(self, name: str) -> Family | None:
        return self._families.get(name)

    def render(self) -> str:
        """The whole registry in Prometheus text format 0.0.4 (ends with a newline)."""
        lines: list[str] = []
        for family in self._families.values():
            lines.extend(family.render())
        return "\n".join(lines) + "\n"


class Metrics:
    """The node's metrics. Attributes are pre-resolved children, so the hot path never
    looks up labels: `metrics.send_pulse_count.inc()`, `metrics.record(op, secs, status)`.
    """

    def __init__(self) -> None:
        self.registry = registry = Registry()
        received = registry.counter(
            "pmcluster_pulses_received_total",
            "Pulses received (one per stored or ignored pulse, PUT or batch entry).",
        )
        received_bytes = registry.counter(
            "pmcluster_received_bytes_total", "Bytes of pulse data received."
        )
        pulse_size = registry.histogram(
            "pmcluster_pulse_size_bytes", "Size in bytes of received pulses.", buckets=SIZE_BUCKETS
        )
        reads = registry.counter(
            "pmcluster_pulse_reads_total", "Pulse reads answered with a value (get_pulse)."
        )
        sent_bytes = registry.counter(
            "pmcluster_sent_bytes_total", "Bytes of pulse data sent in replies."
        )
        stored_keys = registry.gauge(
            "pmcluster_stored_keys", "Number of keys held in this node's store."
        )
        stored_bytes = registry.gauge(
            "pmcluster_stored_bytes", "Bytes of pulse data held in this node's store."
        )
        self.send_pulse_count = received.labels()
        self.total_receive_size = received_bytes.labels()
        self.heartbeat_size = pulse_size.labels()
        self.get_pulse_count = reads.labels()
        self.total_sent_size = sent_bytes.labels()
        self.size_total_keys = stored_keys.labels()
        self.stored_bytes = stored_bytes.labels()
        channels = registry.counter(
            "pmcluster_channel_connections_total",
            "Pulse channels (persistent node-to-node write connections) accepted.",
        )
        frames = registry.counter(
            "pmcluster_channel_frames_total", "Batches received over pulse channels."
        )
        self.channels_opened = channels.labels()
        self.channel_frames = frames.labels()
        requests = registry.counter("pmcluster_requests_total", "Requests handled, by op.", ["op"])
        duration = registry.histogram(
            "pmcluster_request_duration_seconds", "Request handling time, by op.", ["op"]
        )
        self.errors = registry.counter(
            "pmcluster_errors_total", "Requests answered with an error status.", ["op", "status"]
        )
        # Storm's own names (its StormMetricsRegistry), in Prometheus spelling, as aliases.
        for alias, storm_name, canonical in STORM_ALIASES:
            target = registry.get(canonical)
            assert isinstance(target, Counter | Gauge | Histogram), canonical
            registry.alias(alias, target, f"Storm's {storm_name}: an alias of {canonical}.")
        self._requests = {op: requests.labels(op) for op in OPS}
        self._durations = {op: duration.labels(op) for op in OPS}
        self._collectors: list[Callable[[], Iterable[str]]] = []

    def add_collector(self, collector: Callable[[], Iterable[str]]) -> None:
        """Append `collector()`'s lines (whole families in text format) to every render: how
        front ends with counters of their own (the Storm protocol) join `/metrics`."""
        self._collectors.append(collector)

    def record(self, op: str, seconds: float, status: int) -> None:
        """Count one request of `op` taking `seconds` and answered with `status`."""
        if op not in self._requests:
            op = "other"
        self._requests[op].value += 1
        self._durations[op].observe(seconds)
        if status >= 400 and not (status == 404 and op in _ABSENT_IS_NORMAL):
            self.errors.labels(op, str(status)).value += 1

    def received(self, size: int) -> None:
        """One pulse of `size` bytes arrived (PUT or one batch entry)."""
        self.send_pulse_count.value += 1
        self.total_receive_size.value += size
        self.heartbeat_size.observe(size)

    def received_many(self, sizes: Sequence[int]) -> None:
        """Pulses of these `sizes` arrived together (one batch): one call, not one per pulse."""
        self.send_pulse_count.value += len(sizes)
        self.total_receive_size.value += sum(sizes)
        self.heartbeat_size.observe_many(sizes)

    def sent(self, size: int) -> None:
        """`size` bytes of pulse data went out in a reply."""
        self.total_sent_size.value += size

    def pulse_read(self, size: int) -> None:
        """One pulse of `size` bytes was read and answered (GET, from either HTTP path)."""
        self.get_pulse_count.value += 1
        self.total_sent_size.value += size

    def bind_store(self, key_count: Callable[[], float], stored_bytes: Callable[[], float]) -> None:
        """Read the store's figures at render time rather than tracking them per write."""
        self.size_total_keys.set_function(key_count)
        self.stored_bytes.set_function(stored_bytes)

    def render(self) -> str:
        text = self.registry.render()
        extra = [line for collector in self._collectors for line in collector()]
        return text + "\n".join(extra) + "\n" if extra else text


def parse_metrics(text: str) -> dict[str, float]:
    """Sum each sample name of a text exposition over its labels (`_bucket` lines too): the
    figures `pmcluster status`, `pmcluster up` and the status page read."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out
