"""Prometheus metrics: the worker's, the consumer lag every Kafka-consuming component shares, and
the one way a component serves its registry.

Every name is ``veilleuse_<component>_…`` with HELP text. The ground floor imports no component:
the tests build each component's registry (tests/unit/pipeline/components.py) to list the names
and to check the Grafana dashboard (k8s/observability/grafana-dashboard.json), so that neither a
rename nor the dashboard can drift silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

if TYPE_CHECKING:
    from pipeline.health import Health

log = logging.getLogger(__name__)

# How often each component asks Kafka for its partitions' end offsets. Prometheus scrapes every
# 15 to 30 s; asking more often only loads the broker.
LAG_INTERVAL_S = 5.0

Partition = tuple[str, int]
Offsets = Mapping[Partition, int | None]


def serve(registry: CollectorRegistry, port: int, health: Health | None = None) -> Any:
    """Serve ``registry`` on ``0.0.0.0:port``/metrics (Prometheus scrapes the pod's address),
    and with ``health`` its probes on ``/readyz`` and ``/livez`` (200 or 503, JSON reason).
    Returns the server (``shutdown()`` stops it), served from a daemon thread."""
    # The process's memory, CPU and file descriptors, which a custom registry lacks.
    with contextlib.suppress(ValueError):  # already registered: served twice in one process
        ProcessCollector(registry=registry)
    if health is None:
        server, _ = start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104
        return server
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/readyz", "/livez"):
            verdict = health.readiness() if path == "/readyz" else health.liveness()
            body = verdict.body(component=health.component)
            status = "200 OK" if verdict.ok else "503 Service Unavailable"
            start_response(
                status,
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return list(metrics_app(environ, start_response))

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            """Probes every few seconds are not news."""

    server = make_server("0.0.0.0", port, app, ThreadingWSGIServer, handler_class=_Quiet)  # noqa: S104
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class ConsumerLag:
    """``veilleuse_<component>_consumer_lag{topic,partition}``: records not finished yet.

    For each assigned partition: its end offset (the last stable offset: every consumer here
    reads ``read_committed``) minus the first offset the component has not finished with. The
    component reports what it took (:meth:`taken`) and what it finished (:meth:`finished`);
    without anything unfinished the consumer's position counts, which also steps over the
    transaction markers that never reach the component. End offsets are asked of Kafka
    (:meth:`watch`) rather than taken from the last fetch: a consumer paused while its store is
    down fetches nothing, and its lag must still grow.
    """

    def __init__(self, component: str, registry: CollectorRegistry) -> None:
        self.gauge = Gauge(
            f"veilleuse_{component}_consumer_lag",
            "Records of an assigned partition not processed yet (end offset minus the first "
            "unfinished offset).",
            ["topic", "partition"],
            registry=registry,
        )
        self.unfinished: dict[Partition, int] = {}
        self._shown: set[Partition] = set()
        self._lags: dict[Partition, int] = {}

    def total(self) -> int:
        """The lag last published, over every partition (a component's backlog for its probes;
        records in hand count until they are finished)."""
        return sum(self._lags.values())

    def taken(self, topic: str, partition: int, first_offset: int) -> None:
        """Records of ``topic[partition]`` from ``first_offset`` on are in the component's hands."""
        self.unfinished.setdefault((topic, partition), first_offset)

    def finished(self, topic: str, partition: int, next_offset: int | None = None) -> None:
        """Everything taken from ``topic[partition]`` is done; ``next_offset``: except from there
        on (records taken meanwhile)."""
        if next_offset is None:
            self.unfinished.pop((topic, partition), None)
        else:
            self.unfinished[topic, partition] = next_offset

    def forget(self, partitions: Iterable[Partition]) -> None:
        """``partitions`` were revoked: what was taken from them is someone else's now."""
        revoked = set(partitions)
        for key in revoked:
            self.unfinished.pop(key, None)
        # Replaced, not changed in place: the probes' thread may be summing it.
        self._lags = {key: lag for key, lag in self._lags.items() if key not in revoked}

    def publish(self, ends: Offsets, positions: Offsets) -> dict[Partition, int]:
        """Set the gauge from end offsets and positions (both by partition); returns it."""
        lags: dict[Partition, int] = {}
        for key, end in ends.items():
            candidates = [
                o for o in (positions.get(key), self.unfinished.get(key)) if o is not None
            ]
            if end is None or not candidates:
                continue
            lags[key] = max(0, end - min(candidates))
        for topic, partition in self._shown - lags.keys():
            with contextlib.suppress(KeyError):
                self.gauge.remove(topic, str(partition))
        for (topic, partition), lag in lags.items():
            self.gauge.labels(topic, str(partition)).set(lag)
        self._shown = set(lags)
        self._lags = lags
        return lags

    async def watch(
        self,
        read: Callable[[], Awaitable[tuple[Offsets, Offsets]]],
        stop: asyncio.Event | None = None,
        interval_s: float = LAG_INTERVAL_S,
    ) -> None:
        """Every ``interval_s``, ``read()`` end offsets and positions and publish them, until
        ``stop`` is set or the task is cancelled. A failed read (Kafka down, a rebalance) keeps
        the last values: Kafka being down is reported by the component's own errors."""
        while stop is None or not stop.is_set():
            pause = interval_s
            try:
                ends, positions = await asyncio.wait_for(read(), timeout=max(interval_s, 10.0))
                if not self.publish(ends, positions):
                    # Nothing assigned yet (a group joining): look again soon.
                    pause = min(interval_s, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never let a metric stop a component
                log.debug("consumer lag not read: %s", exc)
            if stop is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)


def aiokafka_offsets(consumer: Any) -> Callable[[], Awaitable[tuple[Offsets, Offsets]]]:
    """The reader :meth:`ConsumerLag.watch` needs, for an ``aiokafka.AIOKafkaConsumer``."""

    async def read() -> tuple[Offsets, Offsets]:
        assigned = list(consumer.assignment())
        if not assigned:
            return {}, {}
        # With read_committed, ListOffsets answers the last stable offset.
        ends = await consumer.end_offsets(assigned)
        positions: dict[Partition, int | None] = {}
        for tp in assigned:
            try:
                positions[tp.topic, tp.partition] = await consumer.position(tp)
            except Exception:  # noqa: BLE001 - revoked meanwhile: skipped this time
                positions[tp.topic, tp.partition] = None
        return {(tp.topic, tp.partition): o for tp, o in ends.items()}, positions

    return read


class WorkerMetrics:
    """``veilleuse worker``: throughput, batches, commits, alerts, dead letters, deadline latency,
    consumer lag."""

    def __init__(self, agent: Any, registry: CollectorRegistry | None = None) -> None:
        self.agent = agent
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "veilleuse_worker_records", "Input records processed (events/s).", registry=r
        )
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
        self.alerts = Counter(
            "veilleuse_worker_alerts",
            "Alert records committed to alerts.v1, by kind, severity and state (raised, resolved).",
            ["kind", "severity", "state"],
            registry=r,
        )
        self.dead_letters = Counter(
            "veilleuse_worker_dead_letters",
            "Records sent to lamp.dlq.v1 by the worker, by reason.",
            ["reason"],
            registry=r,
        )
        self.late = Counter(
            "veilleuse_worker_late_records",
            "Records sent to lamp.late.v1 (too late for their window), by reason.",
            ["reason"],
            registry=r,
        )
        self.deadline_latency = Histogram(
            "veilleuse_worker_deadline_to_alert_seconds",
            "From a deadline (wall time) to its alert being committed.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.engine_counts = Gauge(
            "veilleuse_worker_engine_events",
            "Engine counters by name (duplicates, dead.<reason>, late, alert.<kind>.<state>...).",
            ["name"],
            registry=r,
        )
        self.lag = ConsumerLag("worker", r)
        self.latencies_ms: list[float] = []

    def observe_batch(self, records: int, seconds: float, result: Any) -> None:
        self.records.inc(records)
        if records:
            self.batch_records.observe(records)
        self.batch_seconds.observe(seconds)
        # Counters of the detection agent and its engines; an agent may keep none (agents.api).
        totals: dict[str, int] = dict(getattr(self.agent, "counts", {}))
        for engine in getattr(self.agent, "engines", {}).values():
            for name, value in engine.counts.items():
                totals[name] = totals.get(name, 0) + value
        for name, value in totals.items():
            self.engine_counts.labels(name).set(value)

    def observe_commit(self, seconds: float, result: Any) -> None:
        """After the batch's transaction committed: what it made visible."""
        self.commit_seconds.observe(seconds)
        for item in result.produce:
            self.outputs.labels(item.topic).inc()
            for name, value in item.headers:
                if name == "reject.reason":
                    self.dead_letters.labels(value.decode(errors="replace")).inc()
                elif name == "late.reason":
                    self.late.labels(value.decode(errors="replace")).inc()
        for kind, severity, state in result.alerts:
            self.alerts.labels(kind, severity, state).inc()
        now_ms = time.time() * 1000
        for deadline in result.deadlines_ms:
            latency = max(0.0, now_ms - deadline)
            self.deadline_latency.observe(latency / 1000)
            self.latencies_ms.append(latency)

    def serve(self, port: int, health: Health | None = None) -> None:
        serve(self.registry, port, health)


def metric_names(registry: CollectorRegistry) -> dict[str, str]:
    """The metric families of ``registry`` (as Prometheus names them, without the sample
    suffixes), with their type."""
    return {family.name: family.type for family in registry.collect()}
