"""The metrics registry and its Prometheus text exposition (format 0.0.4)."""

from __future__ import annotations

import re

import pytest

from pmcluster.config import Config
from pmcluster.node.app import make_app
from pmcluster.node.appstate import METRICS_KEY
from pmcluster.node.limits import ConnectionCap
from pmcluster.node.metrics import (
    OPS,
    STORM_ALIASES,
    Histogram,
    Metrics,
    Registry,
    format_value,
)
from pmcluster.node.stormfront import storm_factory

SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\["\\n])*",?)*\})? \S+$'
)


def _samples(text: str) -> dict[str, str]:
    """Sample lines of an exposition as {"name{labels}": "value"}; checks every line's shape."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*$", line), line
            continue
        assert SAMPLE.match(line), line
        key, value = line.rsplit(" ", 1)
        out[key] = value
    return out


def test_counter_and_gauge_render_with_help_and_type() -> None:
    registry = Registry()
    hits = registry.counter("app_hits", "Hits\nwith a newline and \\ backslash.", ["route"])
    hits.labels("a").inc()
    hits.labels(route="a").inc(2)
    hits.labels('we"ird\\').inc()
    level = registry.gauge("app_level", "A level.")
    level.labels().set(2.5)
    text = registry.render()
    assert text.endswith("\n")
    assert "# HELP app_hits Hits\\nwith a newline and \\\\ backslash." in text
    assert "# TYPE app_hits counter" in text
    assert "# TYPE app_level gauge" in text
    samples = _samples(text)
    assert samples['app_hits{route="a"}'] == "3"
    assert samples['app_hits{route="we\\"ird\\\\"}'] == "1"
    assert samples["app_level"] == "2.5"


def test_callback_gauge_is_read_at_render_time() -> None:
    registry = Registry()
    gauge = registry.gauge("app_keys", "Keys.").labels()
    box = [1]
    gauge.set_function(lambda: box[0])
    assert _samples(registry.render())["app_keys"] == "1"
    box[0] = 42
    assert _samples(registry.render())["app_keys"] == "42"


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    registry = Registry()
    family = registry.histogram("app_size", "Sizes.", ["op"], buckets=(1, 10, 100))
    child = family.labels("put")
    for value in (0.5, 1, 5, 10, 11, 1000):
        child.observe(value)
    samples = _samples(registry.render())
    assert samples['app_size_bucket{op="put",le="1"}'] == "2"  # 0.5 and 1 (le is inclusive)
    assert samples['app_size_bucket{op="put",le="10"}'] == "4"
    assert samples['app_size_bucket{op="put",le="100"}'] == "5"
    assert samples['app_size_bucket{op="put",le="+Inf"}'] == "6"
    assert samples['app_size_count{op="put"}'] == "6"
    assert float(samples['app_size_sum{op="put"}']) == pytest.approx(1027.5)
    assert child.count == 6


def test_observe_many_counts_like_observe_one_by_one() -> None:
    registry = Registry()
    family = registry.histogram("app_size", "Sizes.", ["op"], buckets=(1, 10, 100))
    one, many = family.labels("one"), family.labels("many")
    values = (0.5, 1, 5, 10, 11, 1000)
    for value in values:
        one.observe(value)
    many.observe_many(values)
    assert (many.counts, many.sum) == (one.counts, one.sum)


def test_received_many_is_a_batch_of_received() -> None:
    single, batched = Metrics(), Metrics()
    for size in (10, 2000, 70000):
        single.received(size)
    batched.received_many([10, 2000, 70000])
    assert batched.render() == single.render()


def test_histogram_rejects_unsorted_buckets_and_le_label() -> None:
    with pytest.raises(ValueError):
        Histogram("h", "h", buckets=(2, 1))
    with pytest.raises(ValueError):
        Histogram("h", "h", ["le"])


def test_labels_must_match_the_declared_names() -> None:
    family = Registry().counter("c", "c", ["op"])
    with pytest.raises(ValueError):
        family.labels()
    with pytest.raises(ValueError):
        family.labels(status="1")
    with pytest.raises(ValueError):
        family.labels("a", op="b")


def test_duplicate_names_are_refused() -> None:
    registry = Registry()
    registry.counter("x", "x")
    with pytest.raises(ValueError):
        registry.gauge("x", "x")


def test_format_value() -> None:
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(float("inf")) == "+Inf"
    assert format_value(float("-inf")) == "-Inf"
    assert format_value(float("nan")) == "NaN"


def test_node_metrics_names_and_types() -> None:
    metrics = Metrics()
    metrics.bind_store(lambda: 7, lambda: 1234)
    metrics.received(100)
    metrics.received(5000)
    metrics.sent(64)
    metrics.record("send_pulse", 0.001, 204)
    metrics.record("get_pulse", 0.002, 404)  # absent is a normal answer, not an error
    metrics.record("batch", 0.003, 400)
    metrics.record("no-such-op", 0.004, 200)  # unknown ops are counted as "other"
    text = metrics.render()
    for name, kind in (
        ("pmcluster_pulses_received_total", "counter"),
        ("pmcluster_received_bytes_total", "counter"),
        ("pmcluster_pulse_size_bytes", "histogram"),
        ("pmcluster_pulse_reads_total", "counter"),
        ("pmcluster_sent_bytes_total", "counter"),
        ("pmcluster_stored_keys", "gauge"),
        ("pmcluster_requests_total", "counter"),
        ("pmcluster_request_duration_seconds", "histogram"),
        ("pmcluster_errors_total", "counter"),
        ("pmcluster_stored_bytes", "gauge"),
    ):
        assert f"# TYPE {name} {kind}\n" in text
    samples = _samples(text)
    assert samples["pmcluster_pulses_received_total"] == "2"
    assert samples["pmcluster_received_bytes_total"] == "5100"
    assert samples["pmcluster_sent_bytes_total"] == "64"
    assert samples['pmcluster_pulse_size_bytes_bucket{le="1024"}'] == "1"
    assert samples["pmcluster_stored_keys"] == "7"
    assert samples["pmcluster_stored_bytes"] == "1234"
    for op in OPS:  # every op's series exists from the start, so rates never start missing
        assert f'pmcluster_requests_total{{op="{op}"}}' in samples
    assert samples['pmcluster_requests_total{op="send_pulse"}'] == "1"
    assert samples['pmcluster_requests_total{op="other"}'] == "1"
    assert samples['pmcluster_errors_total{op="batch",status="400"}'] == "1"
    assert not any(k.startswith('pmcluster_errors_total{op="get_pulse"') for k in samples)
    assert samples['pmcluster_request_duration_seconds_count{op="get_pulse"}'] == "1"


def test_storm_names_are_aliases_with_the_same_samples() -> None:
    metrics = Metrics()
    metrics.bind_store(lambda: 7, lambda: 1234)
    metrics.received(100)
    metrics.received(5000)
    metrics.sent(64)
    metrics.get_pulse_count.inc()
    text = metrics.render()
    samples = _samples(text)
    assert len(STORM_ALIASES) == 6
    for alias, storm_name, canonical in STORM_ALIASES:
        kind = re.search(rf"^# TYPE {canonical} (\w+)$", text, re.M)
        assert kind is not None, canonical
        assert f"# TYPE {alias} {kind.group(1)}\n" in text
        assert storm_name in text  # the HELP line names Storm's own spelling
        own = {k[len(canonical) :]: v for k, v in samples.items() if k.startswith(canonical)}
        aliased = {k[len(alias) :]: v for k, v in samples.items() if k.startswith(alias)}
        assert own and own == aliased, alias
    assert samples["pacemaker_send_pulse_count"] == "2"
    assert samples['pacemaker_heartbeat_size_bucket{le="1024"}'] == "1"
    assert samples["pacemaker_size_total_keys"] == "7"


# Prometheus naming (https://prometheus.io/docs/practices/naming/): counters end in `_total`,
# a unit is a plural base-unit suffix, and no name reuses a type's own suffix.
_UNIT_WORDS = ("seconds", "bytes")
_BAD_SUFFIXES = ("_count", "_sum", "_bucket", "_size", "_ms", "_milliseconds", "_kb")


def test_every_pmcluster_family_follows_prometheus_naming() -> None:
    app = make_app(Config())
    storm_factory(app)  # the Storm front end's families join /metrics
    ConnectionCap(10, app[METRICS_KEY])
    text = app[METRICS_KEY].render()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    aliases = {alias for alias, _, _ in STORM_ALIASES}
    own = {name: kind for name, kind in types.items() if name not in aliases}
    assert len(own) >= 16
    for name, kind in own.items():
        assert re.fullmatch(r"pmcluster_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert not name.endswith(_BAD_SUFFIXES), name
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith(tuple(f"_{u}" for u in _UNIT_WORDS)), name
