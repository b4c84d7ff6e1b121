"""Observability of a real component against the real services: an error the notifier catches
and logs (its Redis is unreachable, its Kafka and PostgreSQL are real) still reaches Sentry
(a local stand-in); its log lines are JSON; its /metrics serves the consumer lag."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from devtools.processes import PipelineProcess
from pipeline.ports import free_port
from pipeline.settings import Settings
from pipeline.topics import ALERT_ACKS, ALERTS, ensure_topics, topic_name
from tests.integration.databases import scratch_database
from tests.sentry_server import sentry_stand_in


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


async def test_a_caught_and_logged_error_reaches_sentry_and_lag_is_served(
    require: Any, settings: Settings, tmp_path: Path
) -> None:
    require("kafka", "postgres")
    prefix = f"obs-{uuid.uuid4().hex[:8]}."
    scoped = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})}
    )
    await ensure_topics(scoped, (ALERTS, ALERT_ACKS))
    metrics_port = free_port()
    with scratch_database(scoped, "obs") as db, sentry_stand_in() as sentry:
        notifier = PipelineProcess(
            ["notifier"],
            {
                "VEILLEUSE_KAFKA__TOPIC_PREFIX": prefix,
                "VEILLEUSE_POSTGRES__DATABASE": db.postgres.database,
                "VEILLEUSE_REDIS__PORT": str(free_port()),  # nothing listens there
                "VEILLEUSE_NOTIFIER__METRICS_PORT": str(metrics_port),
                "VEILLEUSE_NOTIFIER__POLL_INTERVAL_S": "0.5",
                "VEILLEUSE_SENTRY__DSN": sentry.dsn,
                "VEILLEUSE_LOG_FORMAT": "json",
            },
            tmp_path / "notifier.log",
        ).start()
        try:
            deadline = time.monotonic() + 60
            lag_lines: list[str] = []
            while time.monotonic() < deadline:
                assert notifier.alive(), notifier.output()[-3000:]
                logged = [e for e in sentry.events() if "logentry" in e]
                try:
                    text = scrape(metrics_port)
                    lag_lines = [
                        line
                        for line in text.splitlines()
                        if line.startswith("veilleuse_notifier_consumer_lag{")
                    ]
                except OSError:
                    pass
                if logged and lag_lines:
                    break
                await asyncio.sleep(0.5)
        finally:
            notifier.stop()
    assert logged, notifier.output()[-3000:]
    event = logged[0]
    # The first failure of the outage is the error; its repeats are rate-limited warnings.
    assert event["logentry"]["message"].startswith("timer poll failed, redis unavailable")
    assert event["logger"] == "notifier.service"
    assert event["tags"]["component"] == "notifier"
    assert event["environment"] == settings.environment
    exception = event["exception"]["values"][-1]
    assert exception["module"].startswith("redis") and "Connection" in exception["type"]
    # Both alert topics' partitions, read to their end: no lag.
    partitions = {
        (topic_name(scoped, spec), p)
        for spec in (ALERTS, ALERT_ACKS)
        for p in range(settings.kafka.topic_partitions)
    }
    shown = {
        (line.split('topic="')[1].split('"')[0], int(line.split('partition="')[1].split('"')[0]))
        for line in lag_lines
    }
    assert shown == partitions
    assert all(line.endswith(" 0.0") for line in lag_lines), lag_lines
    # The same error as a JSON log line naming its component.
    lines = [json.loads(line) for line in notifier.output().splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["msg"].startswith("timer poll failed, redis")]
    assert failed and failed[0]["component"] == "notifier" and failed[0]["level"] == "error"
    assert "ConnectionError" in failed[0]["exc"]


def test_an_error_the_cli_turns_into_a_message_is_still_reported(
    require: Any, settings: Settings, tmp_path: Path
) -> None:
    require("postgres")
    with scratch_database(settings, "obs", migrate=False) as db, sentry_stand_in() as sentry:
        notifier = PipelineProcess(
            ["notifier"],
            {
                "VEILLEUSE_POSTGRES__DATABASE": db.postgres.database,
                "VEILLEUSE_SENTRY__DSN": sentry.dsn,
            },
            tmp_path / "notifier.log",
        ).start()
        assert notifier.proc is not None
        assert notifier.proc.wait(60) == 1
        events = sentry.events()
    assert "error: " in notifier.output() and "pending" in notifier.output()
    (event,) = events
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "MigrationError"
    assert event["tags"]["component"] == "notifier"
