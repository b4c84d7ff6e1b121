"""The Grafana dashboard (k8s/observability/grafana-dashboard.json) against the code's metric
registries: a metric renamed or a label dropped in the code fails here, not on a wall screen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit.pipeline.components import component_registries

DASHBOARD = Path(__file__).parents[3] / "k8s" / "observability" / "grafana-dashboard.json"
# Labels Prometheus adds when it scrapes (and histogram buckets' ``le``).
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "container", "le"}
SUFFIXES = {"_bucket": "histogram", "_sum": "histogram", "_count": "histogram", "_total": "counter"}
REQUIRED_PANELS = {
    "Consumer lag by component and topic",
    "Events/s by component",
    "Alerts by kind",
    "Deadline → alert latency",
    "Sink errors",
    "Received, produced, rejected",
    "DLQ rates",
}


def families() -> dict[str, tuple[str, set[str]]]:
    """Every family of every component: name -> (type, label names)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for registry in component_registries().values():
        # A labelled family without children shows its label names only on its collector.
        for collector in registry._collector_to_names:
            name, kind = collector._name, collector._type  # type: ignore[attr-defined]
            found[name] = (kind, set(collector._labelnames))  # type: ignore[attr-defined]
    return found


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def test_the_dashboard_is_a_grafana_dashboard_on_the_prometheus_datasource_variable() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["uid"] and board["title"]
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
    assert {p["title"] for p in panels()} >= REQUIRED_PANELS


def problems(expr: str, known: dict[str, tuple[str, set[str]]]) -> list[str]:
    """What in ``expr`` does not match the code: unknown names, wrong suffixes, unknown labels."""
    found = []
    for name, selector in re.findall(r"\b(veilleuse_\w+)(\{[^}]*\})?", expr):
        family, kind = name, None
        for suffix, suffix_kind in SUFFIXES.items():
            if name.endswith(suffix) and name.removesuffix(suffix) in known:
                family, kind = name.removesuffix(suffix), suffix_kind
        if family not in known:
            found.append(f"{name} is not a metric of the code")
            continue
        family_kind, labels = known[family]
        if (kind or "gauge") != family_kind:
            found.append(f"{name}: {family} is a {family_kind}")
        matched = set(re.findall(r"(\w+)\s*[=!~]+", selector or ""))
        if not matched <= labels | SCRAPE_LABELS:
            found.append(f"{name}: no label {sorted(matched - labels - SCRAPE_LABELS)}")
    metric_labels = set().union(
        *(labels for f, (_, labels) in known.items() if re.search(rf"\b{f}(_\w+)?\b", expr))
    )
    for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        grouped = {label.strip() for label in grouping.split(",") if label.strip()}
        if not grouped <= metric_labels | SCRAPE_LABELS:
            found.append(f"grouped by unknown {sorted(grouped - metric_labels - SCRAPE_LABELS)}")
    return found


def test_every_metric_of_the_dashboard_exists_in_the_code_with_its_type_and_labels() -> None:
    known = families()
    assert {expr: problems(expr, known) for expr in expressions() if problems(expr, known)} == {}
    used = {f for expr in expressions() for f in known if re.search(rf"\b{f}(_\w+)?\b", expr)}
    for prefix in ("connector", "worker", "sink_postgres", "sink_elasticsearch", "notifier"):
        assert any(f.startswith(f"veilleuse_{prefix}_") for f in used), prefix


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(veilleuse_deadline_to_alert_seconds_bucket[5m])", "not a metric of the code"),
        ("rate(veilleuse_worker_alerts[5m])", "is a counter"),
        ("veilleuse_worker_consumer_lag_total", "is a gauge"),
        ('veilleuse_connector_rejected_total{cause="x"}', "no label ['cause']"),
        ("sum by (lamp_id) (rate(veilleuse_worker_alerts_total[5m]))", "grouped by unknown"),
    ],
)
def test_the_check_notices_drift(expr: str, problem: str) -> None:
    (found,) = problems(expr, families())
    assert problem in found


def test_quantiles_come_from_histogram_buckets_and_rates_from_counters() -> None:
    known = families()
    for expr in expressions():
        for quantile in re.findall(r"histogram_quantile\(([^,]+),", expr):
            assert 0 < float(quantile) < 1
        if "histogram_quantile" in expr:
            assert "_bucket[" in expr and "by (le)" in expr, expr
        for name in re.findall(r"(?:rate|increase)\((veilleuse_\w+)", expr):
            family = re.sub(r"_(total|bucket)$", "", name)
            assert known[family][0] in ("counter", "histogram"), expr
