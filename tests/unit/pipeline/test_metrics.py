"""Every component's metric names (a rename must show up here), their HELP text, consumer lag."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from agents.runtime.streaming import BatchResult, Produce
from pipeline.metrics import (
    ConsumerLag,
    Offsets,
    WorkerMetrics,
    metric_names,
)
from tests.unit.pipeline.components import component_registries

# Prometheus family names (counters without ``_total``), by component. The Grafana dashboard
# (k8s/observability/grafana-dashboard.json) and docs/observability.md use these.
EXPECTED = {
    "connector": {
        "veilleuse_connector_received": "counter",
        "veilleuse_connector_produced": "counter",
        "veilleuse_connector_rejected": "counter",
        "veilleuse_connector_redelivered": "counter",
        "veilleuse_connector_retained_replays": "counter",
        "veilleuse_connector_subscribed": "gauge",
        "veilleuse_connector_in_flight": "gauge",
        "veilleuse_connector_reading_paused": "gauge",
        "veilleuse_connector_kafka_errors": "counter",
        "veilleuse_connector_mqtt_connects": "counter",
        "veilleuse_connector_ack_latency_seconds": "histogram",
    },
    "worker": {
        "veilleuse_worker_records": "counter",
        "veilleuse_worker_batch_records": "histogram",
        "veilleuse_worker_batch_seconds": "histogram",
        "veilleuse_worker_commit_seconds": "histogram",
        "veilleuse_worker_outputs": "counter",
        "veilleuse_worker_alerts": "counter",
        "veilleuse_worker_dead_letters": "counter",
        "veilleuse_worker_late_records": "counter",
        "veilleuse_worker_deadline_to_alert_seconds": "histogram",
        "veilleuse_worker_engine_events": "gauge",
        "veilleuse_worker_consumer_lag": "gauge",
    },
    **{
        f"sink-{name}": {
            f"veilleuse_sink_{name}_records": "counter",
            f"veilleuse_sink_{name}_batch_records": "histogram",
            f"veilleuse_sink_{name}_write_seconds": "histogram",
            f"veilleuse_sink_{name}_errors": "counter",
            f"veilleuse_sink_{name}_rejected": "counter",
            f"veilleuse_sink_{name}_consumer_lag": "gauge",
            f"veilleuse_sink_{name}_ready": "gauge",
            f"veilleuse_sink_{name}_last_progress_timestamp_seconds": "gauge",
        }
        for name in ("postgres", "elasticsearch")
    },
    "notifier": {
        "veilleuse_notifier_records": "counter",
        "veilleuse_notifier_deliveries": "counter",
        "veilleuse_notifier_steps": "counter",
        "veilleuse_notifier_lost_claims": "counter",
        "veilleuse_notifier_alerts": "counter",
        "veilleuse_notifier_consumer_lag": "gauge",
        "veilleuse_notifier_ready": "gauge",
        "veilleuse_notifier_last_progress_timestamp_seconds": "gauge",
    },
    "api": {
        "veilleuse_api_requests": "counter",
        "veilleuse_api_request_seconds": "histogram",
        "veilleuse_api_acknowledgements": "counter",
    },
}
EXPECTED["sink-elasticsearch"] |= {
    "veilleuse_sink_elasticsearch_item_retries": "counter",
    "veilleuse_sink_elasticsearch_duplicates": "counter",
    "veilleuse_sink_elasticsearch_generation": "gauge",
}


def test_every_components_metric_names_and_types() -> None:
    registries = component_registries()
    assert {c: metric_names(r) for c, r in registries.items()} == EXPECTED


def test_every_metric_is_named_after_its_component_and_has_help_text() -> None:
    for component, registry in component_registries().items():
        prefix = "veilleuse_" + component.replace("-", "_") + "_"
        for family in registry.collect():
            assert family.name.startswith(prefix), family.name
            assert len(family.documentation) > 10, family.name


def test_consumer_lag_counts_from_the_first_unfinished_record_or_else_the_position() -> None:
    lag = ConsumerLag("worker", CollectorRegistry())
    ends: Offsets = {("t", 0): 100, ("t", 1): 50, ("t", 2): 7}
    # Partition 0: records 40.. are being processed although the consumer fetched up to 90.
    lag.taken("t", 0, 40)
    lag.taken("t", 0, 60)  # a later fetch of the same partition changes nothing
    positions: Offsets = {("t", 0): 90, ("t", 1): 50, ("t", 2): None}
    assert lag.publish(ends, positions) == {("t", 0): 60, ("t", 1): 0}
    lag.finished("t", 0, next_offset=85)  # 40..84 committed, 85..89 waiting
    assert lag.publish(ends, positions)[("t", 0)] == 15
    lag.finished("t", 0)
    assert lag.publish(ends, positions)[("t", 0)] == 10


def test_consumer_lag_drops_the_partitions_no_longer_assigned() -> None:
    registry = CollectorRegistry()
    lag = ConsumerLag("notifier", registry)
    lag.publish({("a", 0): 10, ("a", 1): 10}, {("a", 0): 4, ("a", 1): 10})
    assert (
        registry.get_sample_value(
            "veilleuse_notifier_consumer_lag", {"topic": "a", "partition": "0"}
        )
        == 6
    )
    lag.taken("a", 0, 5)
    lag.forget([("a", 0)])
    lag.publish({("a", 1): 12}, {("a", 1): 10})
    assert (
        registry.get_sample_value(
            "veilleuse_notifier_consumer_lag", {"topic": "a", "partition": "0"}
        )
        is None
    )
    assert lag.unfinished == {}


async def test_consumer_lag_watch_publishes_until_stopped_and_survives_failed_reads() -> None:
    registry = CollectorRegistry()
    lag = ConsumerLag("sink_postgres", registry)
    stop = asyncio.Event()
    reads = 0

    async def read() -> tuple[Offsets, Offsets]:
        nonlocal reads
        reads += 1
        if reads == 1:
            raise ConnectionError("Kafka down")
        if reads == 3:
            stop.set()
        return {("t", 0): 10 * reads}, {("t", 0): 5}

    await asyncio.wait_for(lag.watch(read, stop, interval_s=0.01), 5)
    assert reads == 3
    labels = {"topic": "t", "partition": "0"}
    assert registry.get_sample_value("veilleuse_sink_postgres_consumer_lag", labels) == 25


def test_worker_counts_what_a_committed_batch_made_visible() -> None:
    metrics = WorkerMetrics(agent=None)
    result = BatchResult(
        produce=[
            Produce("alerts.v1", b"L-1", b"a", [("alert.kind", b"fall")]),
            Produce("lamp.dlq.v1", b"L-1", b"x", [("reject.reason", b"not_json")]),
            Produce("lamp.dlq.v1", b"L-2", b"y", [("reject.reason", b"not_json")]),
            Produce("lamp.late.v1", b"L-3", b"z", [("late.reason", b"window_closed")]),
        ],
        alerts=[("fall", "critical", "raised")],
    )
    metrics.observe_commit(0.01, result)
    r = metrics.registry
    labels = {"kind": "fall", "severity": "critical", "state": "raised"}
    assert r.get_sample_value("veilleuse_worker_alerts_total", labels) == 1
    assert r.get_sample_value("veilleuse_worker_dead_letters_total", {"reason": "not_json"}) == 2
    assert (
        r.get_sample_value("veilleuse_worker_late_records_total", {"reason": "window_closed"}) == 1
    )
    assert r.get_sample_value("veilleuse_worker_outputs_total", {"topic": "lamp.dlq.v1"}) == 2


def test_consumer_lag_total_is_the_last_published_lag_of_the_assigned_partitions() -> None:
    lag = ConsumerLag("sink_test", CollectorRegistry())
    assert lag.total() == 0
    lag.taken("t", 0, 5)
    lag.publish({("t", 0): 15, ("t", 1): 7}, {("t", 0): 12, ("t", 1): 3})
    assert lag.total() == 10 + 4  # from the first unfinished record, else the position
    lag.forget([("t", 1)])
    assert lag.total() == 10
