"""Prometheus metrics of the workers: throughput, batches, commits, alerts, deadline latency."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class WorkerMetrics:
    def __init__(self, agent: Any, registry: CollectorRegistry | None = None) -> None:
        self.agent = agent
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter("veilleuse_worker_records", "Input records processed.", registry=r)
        self.batch_records = Histogram(
            "veilleuse_worker_batch_records",
            "Records per batch.",
            buckets=(1, 10, 100, 500, 1000, 5000, 10000, 20000),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "veilleuse_worker_batch_seconds", "Time to process and commit a batch.", registry=r
        )
        self.commit_seconds = Histogram(
            "veilleuse_worker_commit_seconds", "Time of the batch's Kafka transaction.", registry=r
        )
        self.outputs = Counter(
            "veilleuse_worker_outputs", "Records produced, by topic.", ["topic"], registry=r
        )
        self.deadline_latency = Histogram(
            "veilleuse_deadline_to_alert_seconds",
            "From a deadline (wall time) to its alert being committed.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5),
            registry=r,
        )
        self.engine_counts = Gauge(
            "veilleuse_worker_engine_events",
            "Engine counters by name (duplicates, dead.<reason>, late, alert.<kind>.<state>...).",
            ["name"],
            registry=r,
        )
        self.latencies_ms: list[float] = []

    def observe_batch(self, records: int, seconds: float, result: Any) -> None:
        self.records.inc(records)
        if records:
            self.batch_records.observe(records)
        self.batch_seconds.observe(seconds)
        totals: dict[str, int] = dict(self.agent.counts)
        for engine in self.agent.engines.values():
            for name, value in engine.counts.items():
                totals[name] = totals.get(name, 0) + value
        for name, value in totals.items():
            self.engine_counts.labels(name).set(value)

    def observe_commit(self, seconds: float, result: Any) -> None:
        import time

        self.commit_seconds.observe(seconds)
        for item in result.produce:
            self.outputs.labels(item.topic).inc()
        now_ms = time.time() * 1000
        for deadline in result.deadlines_ms:
            latency = max(0.0, now_ms - deadline)
            self.deadline_latency.observe(latency / 1000)
            self.latencies_ms.append(latency)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)  # noqa: S104
