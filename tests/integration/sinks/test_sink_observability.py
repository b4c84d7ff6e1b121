"""The sink framework's metrics on the real Kafka while its store is down: the lag keeps growing
although the paused consumer fetches nothing, the errors are counted by kind and reason, and
the sink turns not ready (the reason names the store) once it stalls with records waiting."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from connectors.sinks.postgres import PostgresSink
from connectors.sinks.runner import SinkRunner
from pipeline import clients
from pipeline.ports import free_port
from pipeline.settings import Settings
from pipeline.topics import ACTIVITY_HOURLY, ACTIVITY_NIGHTLY, ALERTS, ensure_topics, topic_name


async def test_the_lag_grows_while_the_store_is_down_and_errors_name_their_reason(
    require: Any, settings: Settings
) -> None:
    require("kafka")
    prefix = f"obs-sink-{uuid.uuid4().hex[:8]}."
    scoped = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"topic_prefix": prefix, "topic_partitions": 1}
            ),
            # Nothing listens there: every write fails to connect.
            "postgres": settings.postgres.model_copy(update={"port": free_port()}),
            "sink": settings.sink.model_copy(
                update={"linger_ms": 50, "retry_initial_s": 0.2, "retry_max_s": 0.5}
            ),
            "health": settings.health.model_copy(update={"stall_after_s": 1.0}),
        }
    )
    await ensure_topics(scoped, (ACTIVITY_HOURLY, ALERTS, ACTIVITY_NIGHTLY))
    topic = topic_name(scoped, ACTIVITY_HOURLY)
    producer = clients.producer(scoped)
    await producer.start()
    runner = SinkRunner(scoped, PostgresSink(scoped))
    registry = runner.metrics.registry
    started_at = time.time()
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(stop))

    def lag() -> float | None:
        return registry.get_sample_value(
            "veilleuse_sink_postgres_consumer_lag", {"topic": topic, "partition": "0"}
        )

    async def until(check: Any, what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert not running.done(), running
            assert time.monotonic() < deadline, f"{what}: lag {lag()}"
            await asyncio.sleep(0.2)

    try:
        for i in range(10):
            await producer.send_and_wait(topic, b"never written %d" % i, key=b"L-1")
        await until(lambda: lag() == 10, "the first ten records")
        # The consumer is paused (the batch is retried); new records still count.
        for i in range(15):
            await producer.send_and_wait(topic, b"later %d" % i, key=b"L-1")
        await until(lambda: lag() == 25, "fifteen more while paused")
        errors = registry.get_sample_value(
            "veilleuse_sink_postgres_errors_total", {"kind": "unavailable", "reason": "connect"}
        )
        assert errors is not None and errors >= 1
        assert registry.get_sample_value("veilleuse_sink_postgres_records_total") == 0
        # Stalled with records waiting: not ready, saying why; alive (waiting is not stuck).
        await until(
            lambda: registry.get_sample_value("veilleuse_sink_postgres_ready") == 0.0,
            "not ready",
        )
        verdict = runner.health.readiness()
        assert not verdict.ok
        assert "postgres down: connect" in verdict.reason, verdict.reason
        assert runner.health.liveness().ok
        last_progress = registry.get_sample_value(
            "veilleuse_sink_postgres_last_progress_timestamp_seconds"
        )
        assert last_progress is not None and last_progress < started_at + 5
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await producer.stop()
