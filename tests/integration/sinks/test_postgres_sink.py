"""The PostgreSQL sink against the real Kafka and PostgreSQL, as a real process.

Each test has its own topics (a unique ``kafka.topic_prefix``) and its own database (created,
migrated, dropped at the end). The tests send realistic activity.hourly.v1 and alerts.v1
records (200 lamps over 6 hours across a UTC midnight, several versions of some lamp-hours,
alerts raised and resolved with duplicates) and compare every table with what they compute
themselves from the records they sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from connectors.sinks.postgres import PostgresSink
from connectors.sinks.runner import Batch, StoreUnavailableError
from devtools.processes import PipelineProcess
from devtools.stack import manager
from pipeline import clients
from pipeline.ports import free_port
from pipeline.records import KafkaRecord
from pipeline.settings import Settings
from pipeline.topics import (
    ACTIVITY_HOURLY,
    ACTIVITY_NIGHTLY,
    ALERTS,
    SINK_DLQ,
    ensure_topics,
    topic_name,
)
from schemas import MARKER, encode, registry, schema
from tests.integration import databases
from tests.integration.api.conftest import start_api
from tests.integration.health import LOG_LIMIT, Outage, api_status, probe

HOUR_MS = 3_600_000
# 2025-11-27 21:00 UTC: six hours cross midnight, so every lamp has two UTC days.
BASE_MS = 1_764_277_200_000
HOURS = 6
LAMPS = 200
SITES = tuple(f"fr-site-{i:02d}" for i in range(5))
ALERT_NAMESPACE = uuid.UUID("6f1c8c1e-9a43-4b1f-8c55-2b5f3e0d7a10")
KINDS = {
    "fall": "critical",
    "help_requested": "critical",
    "environment": "warning",
    "inactivity": "warning",
    "lamp_offline": "warning",
}


# -- the records a test sends, and what the tables must then hold ------------------------------


@dataclass(frozen=True)
class Sent:
    kind: str  # "activity" or "alert"
    lamp_id: str
    record: dict[str, Any]


def activity_records(rng: random.Random) -> list[Sent]:
    """Every lamp's hours, first versions in hour order, with later corrections of some."""
    out: list[Sent] = []
    corrections: list[Sent] = []
    for hour in range(HOURS):
        hour_ms = BASE_MS + hour * HOUR_MS
        out.extend(corrections)
        corrections = []
        for n in range(LAMPS):
            lamp = f"L-{n:06d}"
            site = SITES[n % len(SITES)]
            if n == 0 and hour >= 3:
                site = "fr-site-moved"  # lamp 0 moves to another home
            versions = 1 + (rng.random() < 0.35) + (rng.random() < 0.1)
            for version in range(versions):
                readings = 0 if rng.random() < 0.2 else rng.randint(30, 60)
                low = round(rng.uniform(16, 22), 2)
                record = {
                    "lamp_id": lamp,
                    "site_id": site,
                    "hour_start": hour_ms,
                    "messages": rng.randint(100, 3000),
                    "motion_events": rng.randint(0, 400),
                    "active_minutes": rng.randint(0, 60),
                    "minutes_in_bed": rng.randint(0, 60),
                    "minutes_absent": rng.randint(0, 60),
                    "bathroom_visits": rng.randint(0, 4),
                    "falls": int(rng.random() < 0.02),
                    "help_requests": int(rng.random() < 0.05),
                    "temperature_readings": readings,
                    "temperature_min": low if readings else None,
                    "temperature_mean": round(low + rng.uniform(0, 2), 3) if readings else None,
                    "temperature_max": round(low + rng.uniform(2, 4), 2) if readings else None,
                    "last_seen_at": hour_ms + rng.randint(0, HOUR_MS - 1),
                    "firmware": rng.choice(["2.4.1", "2.5.0"]) if rng.random() < 0.3 else None,
                    "emitted_at": hour_ms + HOUR_MS + 120_000 + version * 60_000,
                }
                sent = Sent("activity", lamp, record)
                (out if version == 0 else corrections).append(sent)
    out.extend(corrections)
    return out


def alert_records(rng: random.Random) -> list[Sent]:
    """Incidents raised and (mostly) resolved, with duplicates of both steps and late copies of
    'raised' after the resolution; lamp_offline incidents leave some lamps offline."""
    out: list[Sent] = []
    late: list[Sent] = []  # sent after every other alert: in later batches for certain
    for n in range(0, LAMPS, 2):
        lamp, site = f"L-{n:06d}", SITES[n % len(SITES)]
        incidents = 2 if n % 10 == 0 else 1
        for i in range(incidents):
            kind = "lamp_offline" if n % 10 == 0 else rng.choice(sorted(KINDS))
            started = BASE_MS + rng.randint(0, HOURS * HOUR_MS - 1) + i * 10 * HOUR_MS
            alert_id = str(uuid.uuid5(ALERT_NAMESPACE, f"{lamp}/{kind}/{started}"))

            def step(state: str, emitted: int, detail: str) -> Sent:
                return Sent(
                    "alert",
                    lamp,  # noqa: B023 - used at once
                    {
                        "alert_id": alert_id,  # noqa: B023
                        "kind": kind,  # noqa: B023
                        "severity": KINDS[kind],  # noqa: B023
                        "state": state,
                        "site_id": site,  # noqa: B023
                        "lamp_id": lamp,  # noqa: B023
                        "incident_started_at": started,  # noqa: B023
                        "emitted_at": emitted,
                        "details": {"step": state, "note": detail},
                    },
                )

            raised = step("raised", started + 30_000, "first")
            out.append(raised)
            if rng.random() < 0.25:
                out.append(raised)  # a duplicate delivery
            # The last incident of every tenth lamp stays open: it is offline at the end.
            resolved = not (n % 10 == 0 and i == incidents - 1) and rng.random() < 0.75
            if resolved:
                done = step("resolved", started + rng.randint(60_000, 600_000), "done")
                out.append(done)
                if rng.random() < 0.15:
                    out.append(done)
                if rng.random() < 0.1:
                    late.append(done)
                if rng.random() < 0.2:  # a worker re-emits 'raised' after a restart
                    late.append(step("raised", started + 700_000, "re-emitted"))
    return out + late


def scenario(seed: int) -> list[Sent]:
    """Alerts among the activity records, in a stable order."""
    rng = random.Random(seed)
    activity, alerts = activity_records(rng), alert_records(rng)
    merged: list[Sent] = []
    every = max(1, len(activity) // len(alerts))
    for i, sent in enumerate(activity):
        merged.append(sent)
        if i % every == 0 and alerts:
            merged.append(alerts.pop(0))
    merged.extend(alerts)
    return merged


def utc_day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def expected_tables(sent: list[Sent]) -> dict[str, Any]:
    """The tables as the documented rules make them, computed here from the records alone."""
    hourly: dict[tuple[str, int], dict[str, Any]] = {}
    lamps: dict[str, dict[str, Any]] = {}
    for s in sent:
        if s.kind != "activity":
            continue
        r = s.record
        hourly[(r["lamp_id"], r["hour_start"])] = r  # the last version wins
        lamp = lamps.setdefault(
            r["lamp_id"], {"site_id": None, "last_seen_at": -1, "firmware": None, "fw_hour": -1}
        )
        if r["last_seen_at"] >= lamp["last_seen_at"]:
            lamp["site_id"], lamp["last_seen_at"] = r["site_id"], r["last_seen_at"]
        if r["firmware"] is not None and r["hour_start"] >= lamp["fw_hour"]:
            lamp["firmware"], lamp["fw_hour"] = r["firmware"], r["hour_start"]

    by_day: dict[tuple[str, date], list[dict[str, Any]]] = {}
    for (lamp_id, hour_ms), r in sorted(hourly.items()):
        by_day.setdefault((lamp_id, utc_day(hour_ms)), []).append(r)
    daily = {}
    for key, hours in by_day.items():
        with_temp = [h for h in hours if h["temperature_mean"] is not None]
        readings = sum(h["temperature_readings"] for h in with_temp)
        daily[key] = {
            "site_id": max(hours, key=lambda h: h["hour_start"])["site_id"],
            "hours": len(hours),
            **{
                name: sum(h[name] for h in hours)
                for name in (
                    "messages",
                    "motion_events",
                    "active_minutes",
                    "minutes_in_bed",
                    "minutes_absent",
                    "bathroom_visits",
                    "falls",
                    "help_requests",
                    "temperature_readings",
                )
            },
            "temperature_min": min((h["temperature_min"] for h in with_temp), default=None),
            "temperature_mean": (
                sum(h["temperature_mean"] * h["temperature_readings"] for h in with_temp) / readings
                if readings
                else None
            ),
            "temperature_max": max((h["temperature_max"] for h in with_temp), default=None),
            "last_seen_at": max(h["last_seen_at"] for h in hours),
        }

    alerts: dict[str, dict[str, Any]] = {}
    events: dict[tuple[str, str], dict[str, Any]] = {}
    for s in sent:
        if s.kind != "alert":
            continue
        r = s.record
        key = (r["alert_id"], r["state"])
        if key in events:
            continue  # a duplicate of a step already received
        events[key] = {"emitted_at": r["emitted_at"], "details": r["details"]}
        alert = alerts.setdefault(
            r["alert_id"],
            {
                **{k: r[k] for k in ("kind", "severity", "site_id", "lamp_id")},
                "incident_started_at": r["incident_started_at"],
                "state": r["state"],
                "raised_at": None,
                "resolved_at": None,
                "details": r["details"],
            },
        )
        if r["state"] == "raised":
            alert["raised_at"] = r["emitted_at"]
        else:
            alert["resolved_at"] = r["emitted_at"]
            alert["state"] = "resolved"
            alert["details"] = r["details"]
        if r["lamp_id"] not in lamps:
            lamps[r["lamp_id"]] = {
                "site_id": r["site_id"],
                "last_seen_at": None,
                "firmware": None,
                "fw_hour": None,
            }
    offline = {
        a["lamp_id"]
        for a in alerts.values()
        if a["kind"] == "lamp_offline" and a["state"] == "raised"
    }
    lamp_rows = {
        lamp_id: (
            f["site_id"],
            f["last_seen_at"],
            f["firmware"],
            f["fw_hour"] if f["firmware"] is not None else None,
            lamp_id not in offline,
        )
        for lamp_id, f in lamps.items()
    }
    return {
        "hourly": {k: {n: v for n, v in r.items() if n != "lamp_id"} for k, r in hourly.items()},
        "daily": daily,
        "alerts": alerts,
        "events": events,
        "lamps": lamp_rows,
    }


# -- what the tables hold -----------------------------------------------------------------------


def ms(value: datetime | None) -> int | None:
    return None if value is None else round(value.timestamp() * 1000)


HOURLY_EXTRA = ("lamp_id", "source_partition", "source_offset", "written_at")
DAILY_EXTRA = ("lamp_id", "day", "updated_at")


def read_tables(conninfo: str) -> dict[str, Any]:
    """The sink's tables, times in ms, without the bookkeeping columns."""
    from psycopg.rows import dict_row

    def plain(row: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
        return {k: ms(v) if isinstance(v, datetime) else v for k, v in row.items() if k not in drop}

    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        hourly = {
            (row["lamp_id"], ms(row["hour_start"])): plain(row, HOURLY_EXTRA)
            for row in conn.execute("SELECT * FROM activity_hourly")
        }
        daily = {
            (row["lamp_id"], row["day"]): plain(row, DAILY_EXTRA)
            for row in conn.execute("SELECT * FROM activity_daily")
        }
        alerts = {
            row["alert_id"]: plain(row, ("alert_id", "created_at", "updated_at"))
            for row in conn.execute("SELECT * FROM alerts")
        }
        events_rows = conn.execute("SELECT * FROM alert_events").fetchall()
        lamps = {
            row["lamp_id"]: (
                row["site_id"],
                ms(row["last_seen_at"]),
                row["firmware"],
                ms(row["firmware_hour"]),
                row["online"],
            )
            for row in conn.execute("SELECT * FROM lamps")
        }
        offsets = {
            (row["topic"], row["partition"]): row["next_offset"]
            for row in conn.execute("SELECT * FROM sink_offsets")
        }
    events: dict[tuple[str, str], Any] = {}
    for row in events_rows:
        key = (row["alert_id"], row["step"])
        assert key not in events, f"two rows for step {key[1]} of {key[0]}"
        assert row["occurrence"] == 1
        events[key] = {"emitted_at": ms(row["emitted_at"]), "details": row["details"]}
    return {
        "hourly": hourly,
        "daily": daily,
        "alerts": alerts,
        "events": events,
        "lamps": lamps,
        "offsets": offsets,
    }


def assert_tables_match(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["hourly"].keys() == want["hourly"].keys()
    for key, row in want["hourly"].items():
        assert got["hourly"][key] == row, key
    assert got["daily"].keys() == want["daily"].keys()
    for key, row in want["daily"].items():
        have = dict(got["daily"][key])
        mean, have_mean = row["temperature_mean"], have.pop("temperature_mean")
        assert have == {k: v for k, v in row.items() if k != "temperature_mean"}, key
        assert have_mean == (None if mean is None else pytest.approx(mean, rel=1e-12)), key
    assert got["alerts"] == want["alerts"]
    assert got["events"] == want["events"]
    assert got["lamps"] == want["lamps"]


# -- the run: topics, database, producer, sink processes ----------------------------------------


@dataclass
class SinkRun:
    settings: Settings  # with the run's topic prefix and database
    tmp_path: Path
    producer: Any = None
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    sinks: list[PipelineProcess] = field(default_factory=list)

    @property
    def conninfo(self) -> str:
        return self.settings.postgres.conninfo()

    def topic(self, kind: str) -> str:
        return topic_name(self.settings, ACTIVITY_HOURLY if kind == "activity" else ALERTS)

    def sink(self, **env: str) -> PipelineProcess:
        process = PipelineProcess(
            ["sink", "postgres"],
            {
                "VEILLEUSE_KAFKA__TOPIC_PREFIX": self.settings.kafka.topic_prefix,
                "VEILLEUSE_POSTGRES__DATABASE": self.settings.postgres.database,
                "VEILLEUSE_SINK__POSTGRES_METRICS_PORT": "0",
                "VEILLEUSE_LOG_FORMAT": "json",
                **env,
            },
            self.tmp_path / f"sink-{len(self.sinks)}.log",
        )
        self.sinks.append(process)
        process.start()
        return process

    async def send_raw(
        self, topic: str, value: bytes, key: bytes, partition: int | None = None
    ) -> None:
        meta = await self.producer.send_and_wait(topic, value, key=key, partition=partition)
        tp = (meta.topic, meta.partition)
        self.end_offsets[tp] = max(self.end_offsets.get(tp, 0), meta.offset + 1)

    async def send(self, records: list[Sent]) -> None:
        writers = {"activity": schema("activity_hourly.v1"), "alert": schema("alert.v1")}
        futures = [
            await self.producer.send(
                self.topic(s.kind), encode(writers[s.kind], s.record), key=s.lamp_id.encode()
            )
            for s in records
        ]
        for meta in await asyncio.gather(*futures):
            tp = (meta.topic, meta.partition)
            self.end_offsets[tp] = max(self.end_offsets.get(tp, 0), meta.offset + 1)
        self.sent.extend(records)

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        with psycopg.connect(self.conninfo) as conn:
            rows = conn.execute("SELECT topic, partition, next_offset FROM sink_offsets")
            return {(t, p): o for t, p, o in rows}

    def written(self) -> int:
        return sum(self.stored_offsets().values())

    async def wait_until_written(self, timeout_s: float = 90) -> None:
        """Until the database's offsets reach the end of everything sent."""
        deadline = time.monotonic() + timeout_s
        while self.stored_offsets() != self.end_offsets:
            for sink in self.sinks:
                if sink.proc is not None and sink.proc.poll() not in (None, -9):
                    raise AssertionError(f"a sink exited:\n{sink.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"offsets {self.stored_offsets()} != {self.end_offsets}:\n"
                    f"{self.sinks[-1].output()[-3000:]}"
                )
            await asyncio.sleep(0.25)

    async def dead_letters(self, timeout_s: float = 15) -> list[Any]:
        """Every record of the run's sink.dlq.v1."""
        from aiokafka import TopicPartition

        topic = topic_name(self.settings, SINK_DLQ)
        consumer = clients.consumer(self.settings, group_id=None, isolation_level="read_committed")
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(self.settings.kafka.topic_partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            records: list[Any] = []
            deadline = time.monotonic() + timeout_s
            while len(records) < sum(ends.values()) and time.monotonic() < deadline:
                for part in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(part)
            return records
        finally:
            await consumer.stop()

    def check(self) -> None:
        got = read_tables(self.conninfo)
        assert got["offsets"] == self.end_offsets
        assert_tables_match(got, expected_tables(self.sent))


@contextlib.contextmanager
def scratch_database(settings: Settings) -> Iterator[Settings]:
    """A new database, migrated; dropped afterwards. Yields the settings that point at it."""
    with databases.scratch_database(settings, "sink") as scoped:
        yield scoped


# The topics the sink reads (it waits for every one to exist, activity.nightly.v1 included) and
# its dead letters.
SINK_TOPICS = (ACTIVITY_HOURLY, ALERTS, ACTIVITY_NIGHTLY, SINK_DLQ)


@contextlib.asynccontextmanager
async def open_sink_run(settings: Settings, tmp_path: Path) -> AsyncIterator[SinkRun]:
    """A ``SinkRun`` on topics and a database of its own, with a started producer; its sinks
    stopped and its topics deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    isolated = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})}
    )
    await ensure_topics(isolated, SINK_TOPICS)
    with scratch_database(isolated) as scoped:
        run = SinkRun(scoped, tmp_path)
        run.producer = clients.producer(scoped)
        await run.producer.start()
        try:
            yield run
        finally:
            for sink in run.sinks:
                sink.stop()
            await run.producer.stop()
            admin = clients.admin_client(scoped)
            await admin.start()
            try:
                await admin.delete_topics([topic_name(scoped, spec) for spec in SINK_TOPICS])
            finally:
                await admin.close()


@pytest.fixture
async def sink_run(settings: Settings, tmp_path: Path, require: Any) -> AsyncIterator[SinkRun]:
    require("kafka", "postgres")
    async with open_sink_run(settings, tmp_path) as run:
        yield run


READY = r"resumes from the store's offsets"
STALL_AFTER_S = 5


# -- the tests ----------------------------------------------------------------------------------


async def test_the_tables_are_exact_across_a_sigkill(sink_run: SinkRun) -> None:
    """Killed mid-run and restarted, the sink leaves exactly what the records say, each once."""
    records = scenario(seed=1)
    first = sink_run.sink(VEILLEUSE_SINK__BATCH_MAX_RECORDS="40", VEILLEUSE_SINK__LINGER_MS="20")
    await first.wait_for_log(READY)

    async def produce() -> None:
        for i in range(0, len(records), 40):
            await sink_run.send(records[i : i + 40])
            await asyncio.sleep(0.05)

    producing = asyncio.create_task(produce())
    deadline = time.monotonic() + 60
    while sink_run.written() < len(records) // 4:
        assert time.monotonic() < deadline, first.output()[-3000:]
        await asyncio.sleep(0.05)
    assert not producing.done(), "the records were all sent before the kill: not mid-run"
    first.kill()
    killed_at = sink_run.written()
    second = sink_run.sink(VEILLEUSE_SINK__BATCH_MAX_RECORDS="40", VEILLEUSE_SINK__LINGER_MS="20")
    await producing
    await sink_run.wait_until_written()
    assert killed_at < len(records)
    assert second.alive()
    sink_run.check()
    assert await sink_run.dead_letters(timeout_s=2) == []
    # The restart resumed from the offsets the database holds.
    assert re.search(r"resumes from the store's offsets \{\('t", second.output())


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_postgres_down_for_60_s_the_sink_backs_off_and_catches_up(
    sink_run: SinkRun, settings: Settings, restarts_services: None
) -> None:
    """PostgreSQL stopped for 60 s under the sink and the API: neither restarts, nothing is
    lost; the sink turns not ready (the reason names PostgreSQL), its metrics show the stall,
    the API answers 503 naming PostgreSQL; both are back by themselves after."""
    records = scenario(seed=2)
    port = free_port()
    sink = sink_run.sink(
        VEILLEUSE_SINK__POSTGRES_METRICS_PORT=str(port),
        VEILLEUSE_SINK__BATCH_MAX_RECORDS="200",
        VEILLEUSE_SINK__RETRY_MAX_S="4",
        VEILLEUSE_HEALTH__STALL_AFTER_S=str(STALL_AFTER_S),
    )
    await sink.wait_for_log(READY)
    api = await start_api(sink_run.settings, sink_run.tmp_path / "api.log")
    lamps = (api.url, api.tokens["support"], "/lamps")
    third = len(records) // 3
    await sink_run.send(records[:third])
    await sink_run.wait_until_written()
    assert probe(port, "/readyz")[0] == 200
    assert api_status(*lamps)[0] == 200

    stopped = False
    outage = Outage()
    try:
        await asyncio.to_thread(manager.down, settings, ("postgres",))
        stopped = True
        down_at = time.monotonic()
        down_wall = time.time()
        await sink_run.send(records[third : 2 * third])
        await sink.wait_for_log("store unavailable", timeout_s=30)
        assert metric(port, 'veilleuse_sink_postgres_errors_total{kind="unavailable"') >= 1
        sent_rest = False
        while time.monotonic() - down_at < 60:
            assert sink.alive(), sink.output()[-3000:]
            assert api.process.alive(), api.process.tail(40)
            await asyncio.to_thread(outage.sample, port, "sink_postgres", lamps)
            if not sent_rest and time.monotonic() - down_at > 30:
                await sink_run.send(records[2 * third :])
                sent_rest = True
            await asyncio.sleep(1)
        errors_while_down = metric(port, 'veilleuse_sink_postgres_errors_total{kind="unavailable"')
        assert sink.alive()
    finally:
        if stopped:
            await asyncio.to_thread(manager.up, settings, ("postgres",))
    await sink_run.wait_until_written(timeout_s=120)
    assert sink.alive(), "the sink must have waited, not crashed"
    assert errors_while_down >= 3, "retries back off, they do not stop"
    sink_run.check()
    assert await sink_run.dead_letters(timeout_s=2) == []
    assert metric(port, "veilleuse_sink_postgres_records_total") >= len(records)

    # While down: not ready with the reason, alive all along, the stall in the metrics.
    assert outage.not_ready, "the sink never reported not ready"
    assert all("postgres" in str(body["reason"]) for body in outage.not_ready), outage.not_ready
    assert outage.not_alive == []
    assert 0.0 in outage.ready_gauge
    assert max(p or 0 for p in outage.last_progress) < down_wall
    assert max(lag or 0 for lag in outage.lag) > 0
    statuses = {status for status, _ in outage.api}
    assert statuses <= {503}, outage.api  # never a 500 or a hang
    assert all("PostgreSQL" in body for _, body in outage.api), outage.api[:3]
    # After: ready again, progress shown, and the API answers without a restart.
    await until_true(lambda: probe(port, "/readyz")[0] == 200, 30, "the sink ready again")
    assert metric(port, "veilleuse_sink_postgres_ready ") == 1.0
    assert (metric(port, "veilleuse_sink_postgres_last_progress_timestamp_seconds ") or 0) > (
        down_wall
    )
    await until_true(lambda: api_status(*lamps)[0] == 200, 30, "the API answering again")
    assert "postgres answers again after" in sink.output()
    api.process.stop()
    for log_file in (sink.log_file, api.process.log_file):
        assert log_file.stat().st_size < LOG_LIMIT, log_file


async def until_true(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


async def test_refused_records_go_to_the_dlq_and_the_rest_of_the_batch_is_written(
    sink_run: SinkRun,
) -> None:
    """Undecodable records, a record of the wrong schema and one the database refuses (a CHECK
    constraint stands for any refusal) are dead-lettered with their reason; their neighbours
    in the same batch are written."""
    with psycopg.connect(sink_run.conninfo, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE activity_hourly ADD CONSTRAINT test_refuses_poison"
            " CHECK (lamp_id <> 'L-POISON')"
        )
    good = [s for s in scenario(seed=3) if s.kind == "activity"][:30]
    alert = next(s for s in scenario(seed=3) if s.kind == "alert")
    activity_topic = sink_run.topic("activity")
    writer = schema("activity_hourly.v1")
    bad: list[tuple[bytes, str]] = [
        (b"this is not avro", "undecodable"),
        (MARKER + bytes.fromhex("0123456789abcdef") + b"\x02", "undecodable"),
        (encode(schema("alert.v1"), alert.record), "unexpected_schema"),
        (encode(writer, {**good[0].record, "lamp_id": "L-POISON"}), "store_refused"),
    ]
    # All in one partition, among the good records, so that they share a batch.
    after = {3: 0, 10: 1, 17: 2, 24: 3}
    for i, s in enumerate(good):
        await sink_run.send_raw(activity_topic, encode(writer, s.record), s.lamp_id.encode(), 0)
        if i in after:
            await sink_run.send_raw(activity_topic, bad[after[i]][0], b"L-POISON", 0)
    sink_run.sent.extend(good)
    sink = sink_run.sink()
    await sink.wait_for_log(READY)
    await sink_run.wait_until_written()
    dead = await sink_run.dead_letters()
    assert sorted(dict(r.headers)["reject.reason"].decode() for r in dead) == sorted(
        reason for _, reason in bad
    )
    for record in dead:
        headers = dict(record.headers)
        assert headers["source.topic"].decode() == activity_topic
        assert headers["reject.stage"] == b"sink-postgres"
        assert headers["reject.detail"]
    got = read_tables(sink_run.conninfo)
    assert got["offsets"] == sink_run.end_offsets
    assert "L-POISON" not in got["lamps"]
    assert_tables_match(got, expected_tables(sink_run.sent))


async def test_alerts_of_every_released_version_reach_the_tables_and_the_api(
    sink_run: SinkRun,
) -> None:
    """Records written with each released version of alert.v1 (the first one predates the
    enum default) are read with the sink's current reader and written alike; an alert of a kind
    the reader does not know ('unknown', the enum's default) is stored and served by the API."""
    versions = registry().released["alert.v1"]
    assert len(versions) >= 2
    alerts = [s for s in scenario(seed=5) if s.kind == "alert"][:60]
    lamp = alerts[0].lamp_id
    newer = Sent(
        "alert",
        lamp,
        {**alerts[0].record, "alert_id": "newer-kind", "kind": "unknown", "details": {}},
    )
    topic = sink_run.topic("alert")
    for i, s in enumerate(alerts):
        writer = versions[i % len(versions)]
        await sink_run.send_raw(topic, encode(writer, s.record), s.lamp_id.encode())
    await sink_run.send_raw(topic, encode(schema("alert.v1"), newer.record), lamp.encode())
    sink_run.sent.extend([*alerts, newer])
    sink = sink_run.sink()
    await sink.wait_for_log(READY)
    await sink_run.wait_until_written()
    assert await sink_run.dead_letters(timeout_s=2) == []
    sink_run.check()

    api = await start_api(sink_run.settings, sink_run.tmp_path / "api.log")
    try:
        status, text = api_status(api.url, api.tokens["support"], "/alerts?kind=unknown")
        assert status == 200, text
        items = orjson.loads(text)["items"]
        assert [(a["alert_id"], a["kind"]) for a in items] == [("newer-kind", "unknown")]
        status, text = api_status(api.url, api.tokens["support"], f"/alerts?lamp={lamp}")
        assert status == 200, text
        want = {s.record["alert_id"] for s in [*alerts, newer] if s.lamp_id == lamp}
        assert {a["alert_id"] for a in orjson.loads(text)["items"]} == want
    finally:
        api.process.stop()


# -- in-process: redelivery, and an unreachable database --------------------------------------


def kafka_record(topic: str, offset: int, record: dict[str, Any]) -> KafkaRecord:
    value = encode(schema("activity_hourly.v1"), record)
    return KafkaRecord(topic, 0, offset, 0, record["lamp_id"].encode(), value)


async def test_a_batch_delivered_again_is_not_written_again(
    settings: Settings, require: Any
) -> None:
    """Records the database's offsets already cover are skipped: an older version of a
    lamp-hour redelivered after a newer one (a crash between the database commit and Kafka's)
    does not overwrite it."""
    require("postgres")
    with scratch_database(settings) as scoped:
        sink = PostgresSink(scoped, consumer_group="redelivery")
        topic = sink.topics[0]
        v1 = {**activity_records(random.Random(4))[0].record, "messages": 111}
        v2 = {**v1, "messages": 222}
        await sink.start()
        try:
            await sink.write(Batch([kafka_record(topic, 0, v1)], {(topic, 0): 1}))
            await sink.write(Batch([kafka_record(topic, 1, v2)], {(topic, 0): 2}))
            before = read_tables(scoped.postgres.conninfo())
            # Redelivered: the first record again, then both.
            await sink.write(Batch([kafka_record(topic, 0, v1)], {(topic, 0): 1}))
            await sink.write(
                Batch([kafka_record(topic, 0, v1), kafka_record(topic, 1, v2)], {(topic, 0): 2})
            )
            after = read_tables(scoped.postgres.conninfo())
        finally:
            await sink.stop()
    assert sink.skipped == 3
    assert after == before
    (row,) = after["hourly"].values()
    assert row["messages"] == 222
    assert after["offsets"] == {(topic, 0): 2}


async def test_an_unreachable_database_is_a_retriable_error(settings: Settings) -> None:
    closed = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"port": free_port()})}
    )
    sink = PostgresSink(closed)
    await sink.start()  # logs, and checks the schema once the database answers
    topic = sink.topics[0]
    record = kafka_record(topic, 0, activity_records(random.Random(5))[0].record)
    with pytest.raises(StoreUnavailableError, match="cannot connect") as refused:
        await sink.write(Batch([record], {(topic, 0): 1}))
    assert refused.value.reason == "connect"  # the label of the sink's error counter
    with pytest.raises(StoreUnavailableError):
        await sink.stored_offsets([(topic, 0)])
    await sink.stop()
