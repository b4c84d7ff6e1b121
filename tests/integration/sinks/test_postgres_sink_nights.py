"""The PostgreSQL sink on activity.nightly.v1, against the real Kafka and PostgreSQL.

Night summaries of 60 lamps over 4 nights, with copies of the same records (a producer's
retry), a night emitted again later with other figures (it replaces the stored one) and a stale
one emitted earlier (it does not), and malformed records among them: the table holds one row
per lamp and night, the one emitted last, across a SIGKILL of the sink; the malformed records
are dead-lettered with their reason and the sink keeps going.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from connectors.sinks.postgres import PostgresSink
from connectors.sinks.runner import Batch
from pipeline.records import KafkaRecord
from pipeline.settings import Settings
from pipeline.topics import ACTIVITY_NIGHTLY, topic_name
from schemas import MARKER, encode, schema
from tests.integration.sinks.test_postgres_sink import (
    READY,
    SinkRun,
    open_sink_run,
    scratch_database,
)

LAMPS = 60
NIGHTS = 4
SITES = ("fr-site-00", "fr-site-01", "fr-site-02")
# The night of 2025-11-24 in Europe/Paris starts at 21:00 UTC.
FIRST_NIGHT = date(2025, 11, 24)
FIRST_START_MS = 1_764_018_000_000
DAY_MS = 86_400_000
NIGHT_MS = 9 * 3_600_000


def summary(rng: random.Random, lamp: int, night: int, emitted_after_ms: int) -> dict[str, Any]:
    start = FIRST_START_MS + night * DAY_MS
    in_bed = rng.randint(0, 540)
    returned = start + rng.randint(0, NIGHT_MS - 1) if rng.random() < 0.7 else None
    local = None
    if returned is not None:
        local = datetime.fromtimestamp(returned / 1000, UTC).strftime("%H:%M")
    restless = rng.randint(0, 200)
    return {
        "lamp_id": f"L-{lamp:06d}",
        "site_id": SITES[lamp % len(SITES)],
        "night_of": FIRST_NIGHT + timedelta(days=night),
        "time_zone": "Europe/Paris",
        "night_start": start,
        "night_end": start + NIGHT_MS,
        "night_minutes": 540,
        "covered_minutes": rng.randint(1, 540),
        "messages": rng.randint(100, 9000),
        "minutes_in_bed": in_bed,
        "minutes_out_of_bed": 540 - in_bed,
        "bed_exits": rng.randint(0, 6),
        "bathroom_visits": rng.randint(0, 4),
        "room_exits": rng.randint(0, 2),
        "restless_motion_events": restless,
        "restlessness_per_hour": round(restless * 60 / in_bed, 1) if in_bed else None,
        "longest_still_minutes": rng.randint(0, in_bed),
        "latest_return_to_bed": returned,
        "latest_return_to_bed_local": local,
        "emitted_at": start + NIGHT_MS + 120_000 + emitted_after_ms,
    }


def scenario(seed: int) -> list[dict[str, Any]]:
    """Every lamp's nights in night order; copies, later re-emissions and stale ones among
    them."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for night in range(NIGHTS):
        for lamp in range(LAMPS):
            record = summary(rng, lamp, night, 0)
            out.append(record)
            if rng.random() < 0.2:
                out.append(record)  # the same record again (a producer's retry)
            if rng.random() < 0.15:
                # Emitted again later (a worker restored from an older changelog, say).
                out.append(summary(rng, lamp, night, 60_000))
                if rng.random() < 0.5:
                    out.append(summary(rng, lamp, night, -60_000))  # stale: ignored
    return out


def expected(records: list[dict[str, Any]]) -> dict[tuple[str, date], dict[str, Any]]:
    """Per lamp and night, the record emitted last (the first of equals: copies are equal)."""
    want: dict[tuple[str, date], dict[str, Any]] = {}
    for record in records:
        key = (record["lamp_id"], record["night_of"])
        if key not in want or record["emitted_at"] > want[key]["emitted_at"]:
            want[key] = record
    return want


def ms(value: Any) -> Any:
    return round(value.timestamp() * 1000) if isinstance(value, datetime) else value


def read_nights(conninfo: str) -> dict[tuple[str, date], dict[str, Any]]:
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM night_summaries").fetchall()
    return {
        (row["lamp_id"], row["night_of"]): {
            k: ms(v)
            for k, v in row.items()
            if k not in {"source_partition", "source_offset", "written_at"}
        }
        for row in rows
    }


def written_at(conninfo: str) -> dict[tuple[str, date], datetime]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT lamp_id, night_of, written_at FROM night_summaries")
        return {(lamp, night): at for lamp, night, at in rows}


@pytest.fixture
async def night_run(settings: Settings, tmp_path: Path, require: Any) -> AsyncIterator[SinkRun]:
    require("kafka", "postgres")
    async with open_sink_run(settings, tmp_path) as run:
        yield run


async def test_nights_are_stored_once_each_across_a_sigkill_and_junk_is_dead_lettered(
    night_run: SinkRun,
) -> None:
    records = scenario(seed=11)
    nightly = topic_name(night_run.settings, ACTIVITY_NIGHTLY)
    writer = schema("night_summary.v1")
    bad: list[tuple[bytes, str]] = [
        (b"not avro at all", "undecodable"),
        (MARKER + bytes.fromhex("0123456789abcdef") + b"\x02", "undecodable"),
        (encode(schema("activity_hourly.v1"), hourly_record()), "unexpected_schema"),
        (encode(writer, {**records[0], "bed_exits": -2}), "invalid"),
    ]
    first = night_run.sink(VEILLEUSE_SINK__BATCH_MAX_RECORDS="20", VEILLEUSE_SINK__LINGER_MS="20")
    await first.wait_for_log(READY)

    async def produce() -> None:
        junk = iter(bad)
        for i, record in enumerate(records):
            # Keyed by lamp as the worker keys them: a lamp's nights stay in order.
            await night_run.send_raw(nightly, encode(writer, record), record["lamp_id"].encode())
            if i % 60 == 30:
                value, _ = next(junk, (b"", ""))
                if value:
                    await night_run.send_raw(nightly, value, b"L-JUNK")
            if i % 10 == 0:
                await asyncio.sleep(0.05)

    producing = asyncio.create_task(produce())
    deadline = time.monotonic() + 60
    while night_run.written() < len(records) // 4:
        assert time.monotonic() < deadline, first.output()[-3000:]
        await asyncio.sleep(0.05)
    assert not producing.done(), "every record was sent before the kill: not mid-run"
    first.kill()
    second = night_run.sink(VEILLEUSE_SINK__BATCH_MAX_RECORDS="20", VEILLEUSE_SINK__LINGER_MS="20")
    await producing
    await night_run.wait_until_written()
    assert second.alive(), second.output()[-3000:]

    got = read_nights(night_run.conninfo)
    want = expected(records)
    assert len(got) == LAMPS * NIGHTS
    assert got == want
    dead = await night_run.dead_letters()
    assert sorted(dict(r.headers)["reject.reason"].decode() for r in dead) == sorted(
        reason for _, reason in bad
    )
    for record in dead:
        headers = dict(record.headers)
        assert headers["source.topic"].decode() == nightly
        assert headers["reject.stage"] == b"sink-postgres"
        assert headers["reject.detail"]


def hourly_record() -> dict[str, Any]:
    return {
        "lamp_id": "L-JUNK",
        "site_id": SITES[0],
        "hour_start": FIRST_START_MS,
        "messages": 1,
        "motion_events": 0,
        "active_minutes": 0,
        "minutes_in_bed": 0,
        "minutes_absent": 0,
        "bathroom_visits": 0,
        "falls": 0,
        "help_requests": 0,
        "temperature_readings": 0,
        "temperature_min": None,
        "temperature_mean": None,
        "temperature_max": None,
        "last_seen_at": FIRST_START_MS,
        "firmware": None,
        "emitted_at": FIRST_START_MS + 3_720_000,
    }


async def test_nights_redelivered_past_the_offsets_change_nothing(
    settings: Settings, require: Any
) -> None:
    """Even read again by a sink whose offsets do not cover them (another consumer group, or
    a store restored from a backup), records already stored leave every row as it was: a copy
    has the stored emitted_at, and only a later emission replaces a night."""
    require("postgres")
    records = scenario(seed=12)
    writer = schema("night_summary.v1")
    with scratch_database(settings) as scoped:
        conninfo = scoped.postgres.conninfo()
        first = PostgresSink(scoped, consumer_group="first")
        topic = next(t for t in first.topics if t.endswith(ACTIVITY_NIGHTLY.name))
        batch = [
            KafkaRecord(topic, 0, offset, 0, r["lamp_id"].encode(), encode(writer, r))
            for offset, r in enumerate(records)
        ]
        await first.start()
        try:
            for i in range(0, len(batch), 50):
                part = batch[i : i + 50]
                await first.write(Batch(part, {(topic, 0): part[-1].offset + 1}))
        finally:
            await first.stop()
        stored, stamps = read_nights(conninfo), written_at(conninfo)
        assert stored == expected(records)

        again = PostgresSink(scoped, consumer_group="again")
        await again.start()
        try:
            # All of it in one batch, in reverse: the stale and older versions come last.
            await again.write(Batch(batch[::-1], {(topic, 0): len(batch)}))
        finally:
            await again.stop()
        assert again.skipped == 0  # its offsets covered nothing: every record was written
        assert read_nights(conninfo) == stored
        assert written_at(conninfo) == stamps  # not even rewritten
