"""Sustained throughput of the PostgreSQL sink (``veilleuse sink postgres``), in records/s.

Runs against the local stack (``make stack``), on topics of its own (a unique topic prefix,
deleted at the end) and a database of its own (created, migrated, dropped at the end unless
``--keep``). A backlog is written first: ``--records`` activity.hourly.v1 records, hour after
hour for ``--lamps`` lamps (as the aggregation emits them: every lamp's hour, then the next
hour), about 5 % of them a second version of a lamp-hour, plus ``--alert-share`` of alerts.v1
records (raised, then resolved). Then the real sink process is started, with
``VEILLEUSE_SINK__BATCH_MAX_RECORDS=--batch``, and the database's ``sink_offsets`` are polled
until they reach the end of the backlog.

Reported: records/s from the first batch written to the last (sustained: start-up and the
consumer group join excluded) and from the process start; rows in each table; the sink's own
metrics (batches, mean batch size, mean write time per batch).

    .venv/bin/python -m devtools.bench.postgres_sink [--records 200000] [--lamps 2000]
        [--alert-share 0.02] [--batch 5000] [--keep]

It prints what it measured; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from pipeline import clients, migrations
from pipeline.ports import free_port
from pipeline.settings import Settings, load_settings
from pipeline.topics import (
    ACTIVITY_HOURLY,
    ACTIVITY_NIGHTLY,
    ALERTS,
    SINK_DLQ,
    ensure_topics,
    topic_name,
)
from schemas import encode, schema

HOUR_MS = 3_600_000
START_MS = 1_764_201_600_000  # 2025-11-27 00:00 UTC
SPECS = (ACTIVITY_HOURLY, ALERTS, ACTIVITY_NIGHTLY, SINK_DLQ)  # every topic the sink reads


def scoped(settings: Settings, prefix: str, database: str) -> Settings:
    kafka = settings.kafka.model_copy(update={"topic_prefix": prefix})
    postgres = settings.postgres.model_copy(update={"database": database})
    return settings.model_copy(update={"kafka": kafka, "postgres": postgres})


def backlog(records: int, lamps: int, alert_share: float, seed: int = 7) -> list[tuple[str, Any]]:
    """(kind, record) pairs, in the order the pipeline would emit them."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    out: list[tuple[str, Any]] = []
    hour = 0
    open_alerts: list[dict[str, Any]] = []
    while len(out) < records:
        hour_ms = START_MS + hour * HOUR_MS
        for n in range(lamps):
            if len(out) >= records:
                break
            lamp, site = f"L-{n:06d}", f"bench-{n // 100:03d}"
            readings = 0 if rng.random() < 0.1 else 60
            low = round(rng.uniform(17, 22), 1)
            messages = rng.randint(500, 3000)
            record: dict[str, object] = {
                "lamp_id": lamp,
                "site_id": site,
                "hour_start": hour_ms,
                "messages": messages,
                "motion_events": rng.randint(0, 400),
                "active_minutes": rng.randint(0, 60),
                "minutes_in_bed": rng.randint(0, 60),
                "minutes_absent": rng.randint(0, 60),
                "bathroom_visits": rng.randint(0, 4),
                "falls": int(rng.random() < 0.01),
                "help_requests": int(rng.random() < 0.02),
                "temperature_readings": readings,
                "temperature_min": low if readings else None,
                "temperature_mean": low + 1.0 if readings else None,
                "temperature_max": low + 2.5 if readings else None,
                "last_seen_at": hour_ms + rng.randint(0, HOUR_MS - 1),
                "firmware": "2.4.1" if rng.random() < 0.5 else None,
                "emitted_at": hour_ms + HOUR_MS + 120_000,
            }
            out.append(("activity", record))
            if rng.random() < 0.05:
                out.append(("activity", {**record, "messages": messages + 1}))
            if rng.random() < alert_share:
                started = hour_ms + rng.randint(0, HOUR_MS - 1)
                alert = {
                    "alert_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{lamp}/{started}")),
                    "kind": "help_requested",
                    "severity": "critical",
                    "state": "raised",
                    "site_id": site,
                    "lamp_id": lamp,
                    "incident_started_at": started,
                    "emitted_at": started + 1_000,
                    "details": {"accessory_id": "pendant-1", "action": "press"},
                }
                out.append(("alert", alert))
                open_alerts.append(alert)
        for alert in open_alerts:
            out.append(("alert", {**alert, "state": "resolved", "emitted_at": hour_ms + HOUR_MS}))
        open_alerts = []
        hour += 1
    return out


async def produce(settings: Settings, records: list[tuple[str, Any]]) -> dict[tuple[str, int], int]:
    writers = {"activity": schema("activity_hourly.v1"), "alert": schema("alert.v1")}
    topics = {
        "activity": topic_name(settings, ACTIVITY_HOURLY),
        "alert": topic_name(settings, ALERTS),
    }
    producer = clients.producer(settings, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    ends: dict[tuple[str, int], int] = {}
    try:
        for i in range(0, len(records), 5000):
            futures = [
                await producer.send(
                    topics[kind], encode(writers[kind], r), key=r["lamp_id"].encode()
                )
                for kind, r in records[i : i + 5000]
            ]
            for meta in await asyncio.gather(*futures):
                tp = (meta.topic, meta.partition)
                ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return ends


async def delete_topics(settings: Settings) -> None:
    admin = clients.admin_client(settings)
    await admin.start()
    try:
        await admin.delete_topics([topic_name(settings, spec) for spec in SPECS])
    finally:
        await admin.close()


def written(conninfo: str) -> dict[tuple[str, int], int]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT topic, partition, next_offset FROM sink_offsets")
        return {(str(t), int(p)): int(o) for t, p, o in rows}


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--lamps", type=int, default=2_000)
    parser.add_argument("--alert-share", type=float, default=0.02)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--keep", action="store_true", help="keep the database and topics")
    args = parser.parse_args()

    base = load_settings()
    run_id = uuid.uuid4().hex[:8]
    settings = scoped(base, f"bench{run_id}.", f"bench_sink_{run_id}")
    conninfo = settings.postgres.conninfo()
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.node()} {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    with psycopg.connect(base.postgres.conninfo("postgres"), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        conn.execute(f'CREATE DATABASE "{settings.postgres.database}"')
    print(f"PostgreSQL {version[0] if version else '?'}; database {settings.postgres.database}")
    migrations.migrate(conninfo)
    asyncio.run(ensure_topics(settings, SPECS))

    records = backlog(args.records, args.lamps, args.alert_share)
    activity = sum(1 for kind, _ in records if kind == "activity")
    started = time.perf_counter()
    ends = asyncio.run(produce(settings, records))
    total = sum(ends.values())
    print(
        f"backlog: {total} records ({activity} activity, {total - activity} alerts) over "
        f"{args.lamps} lamps, written in {time.perf_counter() - started:.1f} s"
    )

    port = free_port()
    env = {
        **os.environ,
        "VEILLEUSE_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "VEILLEUSE_POSTGRES__DATABASE": settings.postgres.database,
        "VEILLEUSE_SINK__POSTGRES_METRICS_PORT": str(port),
        "VEILLEUSE_SINK__BATCH_MAX_RECORDS": str(args.batch),
        "VEILLEUSE_LOG_LEVEL": "WARNING",
    }
    log_file = Path(tempfile.gettempdir()) / f"bench-sink-{run_id}.log"
    command = [sys.executable, "-m", "cli", "sink", "postgres"]
    print(f"sink: {' '.join(command)} (batch {args.batch}); log {log_file}")
    with log_file.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    t0 = time.perf_counter()
    first: tuple[float, int] | None = None
    done_at = None
    try:
        while time.perf_counter() - t0 < args.timeout_s:
            if proc.poll() is not None:
                sys.exit(f"the sink exited ({proc.returncode}); see {log_file}")
            now = written(conninfo)
            count = sum(now.values())
            if count and first is None:
                first = (time.perf_counter(), count)
            if now == ends:
                done_at = time.perf_counter()
                break
            time.sleep(0.1)
        metrics = scrape(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    if done_at is None or first is None:
        sys.exit(f"not done in {args.timeout_s:.0f} s; see {log_file}")

    sustained = (total - first[1]) / (done_at - first[0])
    print(
        f"sustained: {sustained:,.0f} records/s ({total - first[1]} records from the first "
        f"batch's commit to the last, {done_at - first[0]:.1f} s)"
    )
    print(
        f"from the process start: {total / (done_at - t0):,.0f} records/s "
        f"({done_at - t0:.1f} s, start-up and group join included)"
    )
    batches = metrics.get("veilleuse_sink_postgres_batch_records_count", 0.0)
    if batches:
        records_sum = metrics["veilleuse_sink_postgres_batch_records_sum"]
        write_sum = metrics["veilleuse_sink_postgres_write_seconds_sum"]
        print(
            f"sink metrics: {batches:.0f} batches, {records_sum / batches:,.0f} records per batch, "
            f"{write_sum / batches * 1000:,.0f} ms per write (transaction), "
            f"{records_sum / write_sum:,.0f} records/s inside the writes"
        )
    with psycopg.connect(conninfo) as conn:
        for table in ("activity_hourly", "activity_daily", "lamps", "alerts", "alert_events"):
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
            print(f"  {table:<16}{row[0] if row else 0:>10} rows")
    if not args.keep:
        asyncio.run(delete_topics(settings))
        with psycopg.connect(base.postgres.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{settings.postgres.database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
