"""Every component's metric registry, as its command builds it (no service is contacted): for the
test that lists the metric names and for the Grafana dashboard's test. It lives with the tests,
not in pipeline/metrics.py: the ground floor must not import the components built on it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from api.deps import Metrics as ApiMetrics
from connectors.mqtt_source import ConnectorMetrics
from connectors.sinks.elasticsearch import SearchMetrics
from connectors.sinks.runner import SinkMetrics
from notifier.service import NotifierMetrics
from pipeline.metrics import WorkerMetrics


def component_registries() -> dict[str, CollectorRegistry]:
    """Every component's registry, as its command builds it (no service is contacted)."""
    connector = CollectorRegistry()
    ConnectorMetrics(connector)
    postgres = SinkMetrics("postgres")
    elasticsearch = SinkMetrics("elasticsearch")
    SearchMetrics(elasticsearch.registry)
    return {
        "connector": connector,
        "worker": WorkerMetrics(agent=None).registry,
        "sink-postgres": postgres.registry,
        "sink-elasticsearch": elasticsearch.registry,
        "notifier": NotifierMetrics().registry,
        "api": ApiMetrics().registry,
    }
