"""The PostgreSQL sink's pure part for activity.nightly.v1: a night summary to its row."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from connectors.sinks.postgres import (
    NIGHT_COLUMNS,
    NightRow,
    columns,
    decode_batch,
    latest_nights,
    to_row,
)
from pipeline.records import KafkaRecord
from schemas import encode, schema

NIGHTLY_TOPIC = "t.activity.nightly.v1"
ACTIVITY_TOPIC = "t.activity.hourly.v1"
EXPECTED = {NIGHTLY_TOPIC: "night_summary.v1", ACTIVITY_TOPIC: "activity_hourly.v1"}
# The night of 2025-11-27 in Europe/Paris: 21:00 UTC to 06:00 UTC.
START = 1_764_277_200_000
END = START + 9 * 3_600_000


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def night(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "lamp_id": "L-000123",
        "site_id": "fr-lyon-12",
        "night_of": date(2025, 11, 27),
        "time_zone": "Europe/Paris",
        "night_start": START,
        "night_end": END,
        "night_minutes": 540,
        "covered_minutes": 530,
        "messages": 7300,
        "minutes_in_bed": 470,
        "minutes_out_of_bed": 60,
        "bed_exits": 2,
        "bathroom_visits": 2,
        "room_exits": 0,
        "restless_motion_events": 94,
        "restlessness_per_hour": 12.0,
        "longest_still_minutes": 131,
        "latest_return_to_bed": START + 6 * 3_600_000 + 420_000,
        "latest_return_to_bed_local": "04:07",
        "emitted_at": END + 125_000,
    }
    record.update(fields)
    return record


def kafka(value: bytes, topic: str = NIGHTLY_TOPIC, offset: int = 7) -> KafkaRecord:
    return KafkaRecord(topic, 1, offset, 0, b"L-000123", value)


def encoded(**fields: Any) -> bytes:
    return encode(schema("night_summary.v1"), night(**fields))


def test_a_night_summary_becomes_its_row() -> None:
    row = to_row(kafka(encoded()), EXPECTED)
    assert row == NightRow(
        lamp_id="L-000123",
        night_of=date(2025, 11, 27),
        site_id="fr-lyon-12",
        time_zone="Europe/Paris",
        night_start=at(START),
        night_end=at(END),
        night_minutes=540,
        covered_minutes=530,
        messages=7300,
        minutes_in_bed=470,
        minutes_out_of_bed=60,
        bed_exits=2,
        bathroom_visits=2,
        room_exits=0,
        restless_motion_events=94,
        restlessness_per_hour=12.0,
        longest_still_minutes=131,
        latest_return_to_bed=at(START + 6 * 3_600_000 + 420_000),
        latest_return_to_bed_local="04:07",
        emitted_at=at(END + 125_000),
        source_partition=1,
        source_offset=7,
    )


def test_a_night_without_return_to_bed_keeps_its_nulls() -> None:
    value = encoded(
        restlessness_per_hour=None, latest_return_to_bed=None, latest_return_to_bed_local=None
    )
    row = to_row(kafka(value), EXPECTED)
    assert isinstance(row, NightRow)
    assert (row.restlessness_per_hour, row.latest_return_to_bed) == (None, None)
    assert row.latest_return_to_bed_local is None


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"bed_exits": -1}, "bed_exits is negative"),
        ({"night_end": START}, "is not after night_start"),
        ({"lamp_id": ""}, "lamp_id is empty"),
        ({"time_zone": "Europe/\x00Paris"}, "time_zone holds a NUL"),
    ],
)
def test_a_night_the_table_cannot_hold_is_invalid(fields: dict[str, Any], detail: str) -> None:
    decoded = decode_batch([kafka(encoded(**fields))], EXPECTED)
    assert decoded.rows == []
    [rejected] = decoded.rejected
    assert rejected.reason == "invalid"
    assert detail in rejected.detail


def test_a_night_summary_on_the_hourly_topic_is_refused() -> None:
    decoded = decode_batch([kafka(encoded(), topic=ACTIVITY_TOPIC)], EXPECTED)
    [rejected] = decoded.rejected
    assert rejected.reason == "unexpected_schema"
    assert "night_summary.v1 on t.activity.hourly.v1" in rejected.detail


def test_the_night_emitted_last_wins_and_a_copy_changes_nothing() -> None:
    first = to_row(kafka(encoded(bed_exits=1), offset=1), EXPECTED)
    later = to_row(kafka(encoded(bed_exits=3, emitted_at=END + 300_000), offset=2), EXPECTED)
    stale = to_row(kafka(encoded(bed_exits=9, emitted_at=END), offset=3), EXPECTED)
    copy = to_row(kafka(encoded(bed_exits=3, emitted_at=END + 300_000), offset=4), EXPECTED)
    other = to_row(kafka(encoded(night_of=date(2025, 11, 28)), offset=5), EXPECTED)
    rows = [first, later, stale, copy, other]
    assert all(isinstance(row, NightRow) for row in rows)
    kept = latest_nights(rows)  # type: ignore[arg-type]
    assert [(r.night_of.day, r.bed_exits, r.source_offset) for r in kept] == [
        (27, 3, 4),
        (28, 2, 5),
    ]


def test_night_columns_are_ready_for_unnest() -> None:
    row = to_row(kafka(encoded()), EXPECTED)
    params = columns([row], NIGHT_COLUMNS)
    by_name = dict(zip(NIGHT_COLUMNS, params, strict=True))
    assert by_name["night_start"] == [START]
    assert by_name["latest_return_to_bed"] == [START + 6 * 3_600_000 + 420_000]
    assert by_name["night_of"] == [date(2025, 11, 27)]
