"""The PostgreSQL sink's pure part: records to rows, and what a batch makes of them."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from connectors.sinks.postgres import (
    ACTIVITY_COLUMNS,
    ActivityRow,
    AlertStep,
    AlertUpsert,
    alert_upserts,
    columns,
    daily_keys,
    decode_batch,
    epoch_ms,
    first_steps,
    json_text,
    lamp_facts,
    latest_activity,
    to_row,
)
from pipeline.records import KafkaRecord
from schemas import MARKER, encode, schema

ACTIVITY_TOPIC = "t.activity.hourly.v1"
ALERTS_TOPIC = "t.alerts.v1"
EXPECTED = {ACTIVITY_TOPIC: "activity_hourly.v1", ALERTS_TOPIC: "alert.v1"}
HOUR_MS = 3_600_000
# 2025-11-27 22:00 UTC: the next hour is on the next UTC day.
H0 = 1_764_280_800_000


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def activity(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "lamp_id": "L-000123",
        "site_id": "fr-lyon-12",
        "hour_start": H0,
        "messages": 1500,
        "motion_events": 40,
        "active_minutes": 12,
        "minutes_in_bed": 35,
        "minutes_absent": 5,
        "bathroom_visits": 2,
        "falls": 0,
        "help_requests": 1,
        "temperature_readings": 60,
        "temperature_min": 19.5,
        "temperature_mean": 20.25,
        "temperature_max": 21.0,
        "last_seen_at": H0 + 3_599_000,
        "firmware": "2.4.1",
        "emitted_at": H0 + HOUR_MS + 125_000,
    }
    record.update(fields)
    return record


def alert(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "alert_id": "0b8e6a52-6ad5-5d0e-9d43-8a8f7c3c1a11",
        "kind": "fall",
        "severity": "critical",
        "state": "raised",
        "site_id": "fr-lyon-12",
        "lamp_id": "L-000123",
        "incident_started_at": H0 + 600_000,
        "emitted_at": H0 + 631_000,
        "details": {"confidence": "0.82", "zone": "floor"},
    }
    record.update(fields)
    return record


def kafka(topic: str, value: bytes | None, offset: int = 7, partition: int = 3) -> KafkaRecord:
    return KafkaRecord(topic, partition, offset, 0, b"L-000123", value)


def activity_record(offset: int = 7, **fields: Any) -> KafkaRecord:
    return kafka(ACTIVITY_TOPIC, encode(schema("activity_hourly.v1"), activity(**fields)), offset)


def alert_record(offset: int = 7, **fields: Any) -> KafkaRecord:
    return kafka(ALERTS_TOPIC, encode(schema("alert.v1"), alert(**fields)), offset)


def test_an_activity_record_becomes_its_hourly_row() -> None:
    row = to_row(activity_record(), EXPECTED)
    assert row == ActivityRow(
        lamp_id="L-000123",
        site_id="fr-lyon-12",
        hour_start=datetime(2025, 11, 27, 22, tzinfo=UTC),
        messages=1500,
        motion_events=40,
        active_minutes=12,
        minutes_in_bed=35,
        minutes_absent=5,
        bathroom_visits=2,
        falls=0,
        help_requests=1,
        temperature_readings=60,
        temperature_min=19.5,
        temperature_mean=20.25,
        temperature_max=21.0,
        last_seen_at=datetime(2025, 11, 27, 22, 59, 59, tzinfo=UTC),
        firmware="2.4.1",
        emitted_at=datetime(2025, 11, 27, 23, 2, 5, tzinfo=UTC),
        source_partition=3,
        source_offset=7,
    )
    assert ACTIVITY_COLUMNS[:3] == ("lamp_id", "site_id", "hour_start")
    assert ACTIVITY_COLUMNS[-2:] == ("source_partition", "source_offset")


def test_an_hour_without_temperature_or_heartbeat_keeps_its_nulls() -> None:
    row = to_row(
        activity_record(
            temperature_readings=0,
            temperature_min=None,
            temperature_mean=None,
            temperature_max=None,
            firmware=None,
        ),
        EXPECTED,
    )
    assert isinstance(row, ActivityRow)
    assert (row.temperature_min, row.temperature_mean, row.temperature_max) == (None, None, None)
    assert row.firmware is None


def test_an_alert_record_becomes_one_step() -> None:
    step = to_row(alert_record(offset=11), EXPECTED)
    assert step == AlertStep(
        alert_id="0b8e6a52-6ad5-5d0e-9d43-8a8f7c3c1a11",
        kind="fall",
        severity="critical",
        state="raised",
        site_id="fr-lyon-12",
        lamp_id="L-000123",
        incident_started_at=at(H0 + 600_000),
        emitted_at=at(H0 + 631_000),
        details={"confidence": "0.82", "zone": "floor"},
        source_topic=ALERTS_TOPIC,
        source_partition=3,
        source_offset=11,
    )


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (b"not avro at all", "no C3 01 marker"),
        (None, "empty value"),
        (b"", "empty value"),
        (MARKER + b"\x00" * 8 + b"\x02", "unknown writer schema fingerprint"),
        (encode(schema("activity_hourly.v1"), activity())[:-9], "corrupt"),
    ],
)
def test_undecodable_records_are_refused_with_the_reason(value: bytes | None, detail: str) -> None:
    decoded = decode_batch([kafka(ACTIVITY_TOPIC, value)], EXPECTED)
    assert decoded.rows == []
    (rejected,) = decoded.rejected
    assert rejected.reason == "undecodable"
    assert detail in rejected.detail


def test_a_record_of_another_schema_on_a_topic_is_refused() -> None:
    wrong = kafka(ACTIVITY_TOPIC, encode(schema("alert.v1"), alert()))
    (rejected,) = decode_batch([wrong], EXPECTED).rejected
    assert rejected.reason == "unexpected_schema"
    assert "alert.v1" in rejected.detail


@pytest.mark.parametrize(
    ("record", "detail"),
    [
        (activity_record(hour_start=H0 + 60_000), "not the start of an hour"),
        (activity_record(messages=-1), "messages is negative"),
        (activity_record(lamp_id=""), "lamp_id is empty"),
        (activity_record(site_id="fr\x00lyon"), "NUL"),
        (alert_record(details={"zone": "fl\x00or"}), "NUL"),
    ],
)
def test_records_the_tables_cannot_hold_are_refused_as_invalid(
    record: KafkaRecord, detail: str
) -> None:
    (rejected,) = decode_batch([record], EXPECTED).rejected
    assert rejected.reason == "invalid"
    assert detail in rejected.detail


def test_a_batch_keeps_the_good_records_beside_the_refused_ones() -> None:
    good, bad, alarm = activity_record(1), kafka(ACTIVITY_TOPIC, b"junk", 2), alert_record(3)
    decoded = decode_batch([good, bad, alarm], EXPECTED)
    assert [record.offset for record, _ in decoded.rows] == [1, 3]
    assert [r.record.offset for r in decoded.rejected] == [2]


def rows(*records: KafkaRecord) -> list[Any]:
    decoded = decode_batch(records, EXPECTED)
    assert not decoded.rejected
    return [row for _, row in decoded.rows]


def test_the_last_version_of_a_lamp_hour_wins() -> None:
    hourly = rows(
        activity_record(1, messages=10),
        activity_record(2, messages=20, hour_start=H0 + HOUR_MS, last_seen_at=H0 + HOUR_MS),
        activity_record(3, messages=30),
        activity_record(4, messages=40, lamp_id="L-2"),
    )
    latest = latest_activity(hourly)
    assert [(r.lamp_id, r.hour_start, r.messages) for r in latest] == [
        ("L-000123", at(H0), 30),
        ("L-000123", at(H0 + HOUR_MS), 20),
        ("L-2", at(H0), 40),
    ]


def test_daily_keys_are_the_utc_days_of_the_hours() -> None:
    hourly = rows(
        activity_record(1),
        activity_record(2, hour_start=H0 + HOUR_MS, last_seen_at=H0 + HOUR_MS),
        activity_record(3, hour_start=H0 + 2 * HOUR_MS, last_seen_at=H0 + 2 * HOUR_MS),
    )
    assert daily_keys(hourly) == [
        ("L-000123", date(2025, 11, 27)),
        ("L-000123", date(2025, 11, 28)),
    ]


def test_lamp_facts_keep_the_greatest_last_seen_and_the_latest_firmware() -> None:
    later = H0 + HOUR_MS
    facts = lamp_facts(
        rows(
            activity_record(1, hour_start=later, last_seen_at=later + 10, firmware=None),
            activity_record(2, firmware="2.4.1", site_id="fr-old"),
            activity_record(3, hour_start=H0 - HOUR_MS, last_seen_at=H0 - 5, firmware="2.3.0"),
            activity_record(
                4, hour_start=later, last_seen_at=later + 10, site_id="fr-new", firmware="2.5.0"
            ),
        )
    )
    (lamp,) = facts
    assert lamp.last_seen_at == at(later + 10)
    assert lamp.site_id == "fr-new"  # the same greatest last_seen_at again: the later record
    # The latest hour with a firmware (offset 1's hour had none; offset 3's is older).
    assert (lamp.firmware, lamp.firmware_hour) == ("2.5.0", at(later))


def test_first_steps_drop_duplicates_of_a_step() -> None:
    steps = rows(
        alert_record(1),
        alert_record(2, emitted_at=H0 + 900_000),  # re-emitted later: a duplicate
        alert_record(3, state="resolved", emitted_at=H0 + 960_000),
        alert_record(4, state="resolved", emitted_at=H0 + 990_000),
    )
    assert [(s.state, s.source_offset) for s in first_steps(steps)] == [
        ("raised", 1),
        ("resolved", 3),
    ]


def test_columns_and_details_are_ready_for_unnest() -> None:
    hourly = rows(activity_record(1, messages=10), activity_record(2, lamp_id="L-2"))
    table = columns(hourly, ("lamp_id", "messages", "hour_start"))
    # Times go as epoch milliseconds (the server turns them back into timestamptz).
    assert table == [["L-000123", "L-2"], [10, 1500], [H0, H0]]
    assert epoch_ms(at(H0 + 1)) == H0 + 1
    assert json_text({"zone": "floor", "confidence": "0.82"}) == (
        '{"confidence":"0.82","zone":"floor"}'
    )


def test_an_alert_row_is_made_of_its_first_steps_and_its_latest_details() -> None:
    other = "5d1f0c3e-0000-5000-8000-000000000002"
    steps = rows(
        alert_record(1),
        alert_record(2, emitted_at=H0 + 900_000, details={"copy": "yes"}),
        alert_record(3, alert_id=other, kind="lamp_offline", severity="warning", details={}),
        alert_record(4, state="resolved", emitted_at=H0 + 960_000, details={"by": "standing"}),
    )
    first, second = alert_upserts(steps)
    assert first == AlertUpsert(
        alert_id="0b8e6a52-6ad5-5d0e-9d43-8a8f7c3c1a11",
        kind="fall",
        severity="critical",
        site_id="fr-lyon-12",
        lamp_id="L-000123",
        incident_started_at=at(H0 + 600_000),
        state="resolved",
        raised_at=at(H0 + 631_000),
        resolved_at=at(H0 + 960_000),
        details={"by": "standing"},
    )
    assert (second.alert_id, second.kind, second.state) == (other, "lamp_offline", "raised")
    assert (second.raised_at, second.resolved_at) == (at(H0 + 631_000), None)


def test_a_resolution_alone_makes_a_resolved_alert_without_raised_at() -> None:
    (only,) = alert_upserts(rows(alert_record(1, state="resolved", details={"by": "ack"})))
    assert (only.state, only.raised_at, only.resolved_at) == ("resolved", None, at(H0 + 631_000))
    assert only.details == {"by": "ack"}
