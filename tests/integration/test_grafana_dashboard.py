"""`ops/deploy/grafana-dashboard.json` is a valid Grafana dashboard (it survives a round trip
through Grafana's own schema models, grafana-foundation-sdk), every query is valid PromQL
(promql-parser), and every metric a query names is exported by a running node's `/metrics`
(parsed by prometheus-client's strict text parser)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus, stat, timeseries
from grafana_foundation_sdk.models.dashboard import Dashboard, RowPanel
from prometheus_client.parser import text_string_to_metric_families

from pmcluster.node.metrics import STORM_ALIASES
from pmcluster.tools.localcluster import NodeProcess, free_port

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "deploy" / "grafana-dashboard.json"
GRID_COLUMNS = 24
# Grafana's built-in variables, and what it puts in their place before querying.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
OPTIONS = {"stat": stat.Options, "timeseries": timeseries.Options}


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(doc: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and the variables' label_values(...) queries."""
    exprs = [t["expr"] for p in panels(doc) for t in p.get("targets", [])]
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert found is not None, query
            exprs.append(found.group(1))
    return exprs


def substitute(expr: str, variables: set[str]) -> str:
    """The expression as Grafana sends it: `$var` / `${var}` replaced."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        assert name in variables, f"{expr}: ${name} is not a dashboard variable"
        return ".*"

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def assert_preserved(written: Any, decoded: Any, where: str = "") -> None:
    """Everything in `written` is in `decoded`, with the same value."""
    if isinstance(written, dict):
        assert isinstance(decoded, dict), where
        for key, value in written.items():
            assert key in decoded, f"{where}/{key} is not in Grafana's schema"
            assert_preserved(value, decoded[key], f"{where}/{key}")
    elif isinstance(written, list):
        assert isinstance(decoded, list) and len(decoded) == len(written), where
        for i, (w, d) in enumerate(zip(written, decoded, strict=True)):
            assert_preserved(w, d, f"{where}[{i}]")
    else:
        assert written == decoded, f"{where}: {written!r} became {decoded!r}"


def test_dashboard_survives_grafanas_schema_models() -> None:
    register_default_plugins()  # decode panel options and targets by plugin type
    doc = load()
    model = Dashboard.from_json(doc)
    # Every key we wrote is one Grafana's schema knows: nothing is dropped or changed (the
    # models add their defaults for what we left out).
    assert_preserved(doc, json.loads(json.dumps(model, cls=JSONEncoder)))
    assert model.uid == "pmcluster-overview" and model.schema_version is not None
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids))
    queries = 0
    for decoded, raw in zip(model.panels or [], doc["panels"], strict=True):
        if isinstance(decoded, RowPanel):
            continue
        assert isinstance(decoded.options, OPTIONS[raw["type"]]), raw["title"]
        assert decoded.targets, raw["title"]
        ref_ids = [t.ref_id for t in decoded.targets]
        assert len(ref_ids) == len(set(ref_ids)), raw["title"]
        for target in decoded.targets:
            assert isinstance(target, prometheus.Dataquery), raw["title"]
            assert target.expr, raw["title"]
            queries += 1
    assert queries >= 20


def test_dashboard_grid_has_no_overlaps() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels(load()):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The families a running node exports: {name: type}."""
    workdir = tmp_path_factory.mktemp("grafana")
    node = NodeProcess({"pacemaker.port": free_port()}, workdir=workdir)
    with node, urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    parsed = list(text_string_to_metric_families(text))  # strict: a bad line raises
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert len(parsed) == len(families)
    return families


def sample_names(families: dict[str, str]) -> set[str]:
    """Names a query can select: each family, and a histogram's _bucket, _sum and _count."""
    names = set(families)
    for name, kind in families.items():
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_every_metric_the_dashboard_queries_is_exported(exported: dict[str, str]) -> None:
    doc = load()
    variables = {v["name"] for v in doc["templating"]["list"]}
    queried: set[str] = set()
    for expr in expressions(doc):
        names = metric_names(substitute(expr, variables))
        assert names, f"no metric in {expr}"
        queried |= names
    missing = sorted(queried - sample_names(exported))
    assert missing == [], f"queried but not exported: {missing}"
    # Built from the Prometheus names, not Storm's aliases, and it shows every family.
    aliases = {alias for alias, _, _ in STORM_ALIASES}
    assert not queried & aliases
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in queried}
    unshown = sorted(n for n in exported if n.startswith("pmcluster_") and n not in shown)
    assert unshown == []
