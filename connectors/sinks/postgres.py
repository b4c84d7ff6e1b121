"""The PostgreSQL sink: activity.hourly.v1, activity.nightly.v1 and alerts.v1 into tables,
exactly once in effect.

Each batch is one transaction: the rows (``activity_hourly`` upserted per lamp and hour,
``activity_daily`` recomputed for every lamp and day the batch touched, ``night_summaries``
upserted per lamp and night, ``alerts`` and its ``alert_events``, ``lamps``) and the Kafka
offsets the batch covers (``sink_offsets``). The runner resumes each partition from those
offsets; and since the transaction first locks the partitions' offset rows and drops the records
they already cover, a batch read twice (a crash between the database commit and the Kafka
commit, a rebalance, a zombie instance) is written once. See docs/postgres.md.

The mapping from records to rows (:func:`decode_batch`, :func:`latest_activity`,
:func:`latest_nights`, :func:`lamp_facts`, :func:`daily_keys`, :func:`first_steps`,
:func:`alert_upserts`) is pure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection, AsyncCursor, errors

from connectors.sinks.runner import Batch, Rejected, SinkError, StoreUnavailableError, WriteResult
from pipeline import migrations
from pipeline.records import KafkaRecord
from pipeline.settings import Settings
from pipeline.topics import ACTIVITY_HOURLY, ACTIVITY_NIGHTLY, ALERTS, topic_name
from schemas import SchemaError, alert_kind, decode, millis

log = logging.getLogger(__name__)

ACTIVITY_SCHEMA = "activity_hourly.v1"
ALERT_SCHEMA = "alert.v1"
NIGHT_SCHEMA = "night_summary.v1"
HOUR_MS = 3_600_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)
ZERO = timedelta(0)
COMPONENT = "sink-postgres"


class MigrationsPendingError(SinkError):
    """The database's schema is not the one this code writes: run ``veilleuse migrate``."""


class RowError(ValueError):
    """A record that cannot become a row, with the reason the dead-letter header carries."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# -- rows (pure) -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivityRow:
    """One activity.hourly.v1 record, as a row of ``activity_hourly``."""

    lamp_id: str
    site_id: str
    hour_start: datetime
    messages: int
    motion_events: int
    active_minutes: int
    minutes_in_bed: int
    minutes_absent: int
    bathroom_visits: int
    falls: int
    help_requests: int
    temperature_readings: int
    temperature_min: float | None
    temperature_mean: float | None
    temperature_max: float | None
    last_seen_at: datetime
    firmware: str | None
    emitted_at: datetime
    source_partition: int
    source_offset: int


# activity_hourly's columns, in ActivityRow's order.
ACTIVITY_COLUMNS: tuple[str, ...] = tuple(ActivityRow.__slots__)
ACTIVITY_COUNTS = (
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


@dataclass(frozen=True, slots=True)
class AlertStep:
    """One alerts.v1 record: one step (raised or resolved) of one alert."""

    alert_id: str
    kind: str
    severity: str
    state: str
    site_id: str
    lamp_id: str
    incident_started_at: datetime
    emitted_at: datetime
    details: dict[str, str]
    source_topic: str
    source_partition: int
    source_offset: int


@dataclass(frozen=True, slots=True)
class NightRow:
    """One activity.nightly.v1 record (``night_summary.v1``), as a row of ``night_summaries``."""

    lamp_id: str
    night_of: date
    site_id: str
    time_zone: str
    night_start: datetime
    night_end: datetime
    night_minutes: int
    covered_minutes: int
    messages: int
    minutes_in_bed: int
    minutes_out_of_bed: int
    bed_exits: int
    bathroom_visits: int
    room_exits: int
    restless_motion_events: int
    restlessness_per_hour: float | None
    longest_still_minutes: int
    latest_return_to_bed: datetime | None
    latest_return_to_bed_local: str | None
    emitted_at: datetime
    source_partition: int
    source_offset: int


# night_summaries' columns, in NightRow's order.
NIGHT_COLUMNS: tuple[str, ...] = tuple(NightRow.__slots__)
NIGHT_COUNTS = (
    "night_minutes",
    "covered_minutes",
    "messages",
    "minutes_in_bed",
    "minutes_out_of_bed",
    "bed_exits",
    "bathroom_visits",
    "room_exits",
    "restless_motion_events",
    "longest_still_minutes",
)


Row = ActivityRow | AlertStep | NightRow


@dataclass
class Decoded:
    rows: list[tuple[KafkaRecord, Row]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def instant(value: Any) -> datetime:
    """A ``timestamp-millis`` field (an aware datetime from fastavro, or ms) as a UTC datetime."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value if value.utcoffset() == ZERO else value.astimezone(UTC)
    return datetime.fromtimestamp(millis(value) / 1000, tz=UTC)


def epoch_ms(moment: datetime) -> int:
    """What a timestamp column is sent as: dumping integers costs a tenth of datetimes."""
    return (moment - EPOCH) // MILLISECOND


def _text(field_name: str, value: Any, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise RowError("invalid", f"{field_name} is not a string")
    if "\x00" in value:
        raise RowError("invalid", f"{field_name} holds a NUL character")
    if not value and not empty_ok:
        raise RowError("invalid", f"{field_name} is empty")
    return value


def activity_row(record: KafkaRecord, data: dict[str, Any]) -> ActivityRow:
    hour_ms = millis(data["hour_start"])
    if hour_ms % HOUR_MS:
        raise RowError("invalid", f"hour_start {hour_ms} is not the start of an hour")
    for name in ACTIVITY_COUNTS:
        if int(data[name]) < 0:
            raise RowError("invalid", f"{name} is negative ({data[name]})")
    firmware = data.get("firmware")
    return ActivityRow(
        lamp_id=_text("lamp_id", data["lamp_id"]),
        site_id=_text("site_id", data["site_id"]),
        hour_start=instant(hour_ms),
        messages=int(data["messages"]),
        motion_events=int(data["motion_events"]),
        active_minutes=int(data["active_minutes"]),
        minutes_in_bed=int(data["minutes_in_bed"]),
        minutes_absent=int(data["minutes_absent"]),
        bathroom_visits=int(data["bathroom_visits"]),
        falls=int(data["falls"]),
        help_requests=int(data["help_requests"]),
        temperature_readings=int(data["temperature_readings"]),
        temperature_min=data.get("temperature_min"),
        temperature_mean=data.get("temperature_mean"),
        temperature_max=data.get("temperature_max"),
        last_seen_at=instant(data["last_seen_at"]),
        firmware=None if firmware is None else _text("firmware", firmware, empty_ok=True),
        emitted_at=instant(data["emitted_at"]),
        source_partition=record.partition,
        source_offset=record.offset,
    )


def night_row(record: KafkaRecord, data: dict[str, Any]) -> NightRow:
    for name in NIGHT_COUNTS:
        if int(data[name]) < 0:
            raise RowError("invalid", f"{name} is negative ({data[name]})")
    night_of = data["night_of"]
    if not isinstance(night_of, date):  # fastavro gives the date logical type as a date
        raise RowError("invalid", f"night_of is not a date ({night_of!r})")
    start, end = instant(data["night_start"]), instant(data["night_end"])
    if end <= start:
        raise RowError("invalid", f"night_end {end.isoformat()} is not after night_start")
    returned = data.get("latest_return_to_bed")
    local = data.get("latest_return_to_bed_local")
    restless = data.get("restlessness_per_hour")
    return NightRow(
        lamp_id=_text("lamp_id", data["lamp_id"]),
        night_of=night_of,
        site_id=_text("site_id", data["site_id"]),
        time_zone=_text("time_zone", data["time_zone"]),
        night_start=start,
        night_end=end,
        night_minutes=int(data["night_minutes"]),
        covered_minutes=int(data["covered_minutes"]),
        messages=int(data["messages"]),
        minutes_in_bed=int(data["minutes_in_bed"]),
        minutes_out_of_bed=int(data["minutes_out_of_bed"]),
        bed_exits=int(data["bed_exits"]),
        bathroom_visits=int(data["bathroom_visits"]),
        room_exits=int(data["room_exits"]),
        restless_motion_events=int(data["restless_motion_events"]),
        restlessness_per_hour=None if restless is None else float(restless),
        longest_still_minutes=int(data["longest_still_minutes"]),
        latest_return_to_bed=None if returned is None else instant(returned),
        latest_return_to_bed_local=(
            None if local is None else _text("latest_return_to_bed_local", local)
        ),
        emitted_at=instant(data["emitted_at"]),
        source_partition=record.partition,
        source_offset=record.offset,
    )


def alert_step(record: KafkaRecord, data: dict[str, Any]) -> AlertStep:
    details = data.get("details") or {}
    for key, value in details.items():
        _text("details key", key)
        _text(f"details[{key}]", value, empty_ok=True)
    return AlertStep(
        alert_id=_text("alert_id", data["alert_id"]),
        kind=_text("kind", alert_kind(data)),
        severity=_text("severity", data["severity"]),
        state=_text("state", data["state"]),
        site_id=_text("site_id", data["site_id"]),
        lamp_id=_text("lamp_id", data["lamp_id"]),
        incident_started_at=instant(data["incident_started_at"]),
        emitted_at=instant(data["emitted_at"]),
        details=dict(details),
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
    )


def to_row(record: KafkaRecord, expected: dict[str, str]) -> Row:
    """The row of one record; ``expected`` maps each topic to the schema its records must have.

    Raises :class:`RowError` (reason ``undecodable``, ``unexpected_schema`` or ``invalid``).
    """
    if not record.value:
        raise RowError("undecodable", "empty value")
    try:
        writer, data = decode(record.value)
    except (SchemaError, ValueError, TypeError, OverflowError) as exc:
        raise RowError("undecodable", str(exc)) from exc
    want = expected.get(record.topic)
    if writer.name != want:
        raise RowError("unexpected_schema", f"{writer.name} on {record.topic} (expects {want})")
    try:
        if writer.name == ACTIVITY_SCHEMA:
            return activity_row(record, data)
        if writer.name == NIGHT_SCHEMA:
            return night_row(record, data)
        return alert_step(record, data)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, RowError):
            raise
        raise RowError("invalid", f"{type(exc).__name__}: {exc}") from exc


def decode_batch(records: Iterable[KafkaRecord], expected: dict[str, str]) -> Decoded:
    decoded = Decoded()
    for record in records:
        try:
            decoded.rows.append((record, to_row(record, expected)))
        except RowError as exc:
            decoded.rejected.append(Rejected(record, exc.reason, exc.detail))
    return decoded


def latest_activity(rows: Iterable[ActivityRow]) -> list[ActivityRow]:
    """The last version of each (lamp, hour), in the order given (a lamp's records come in the
    order of their partition: its key is lamp_id)."""
    latest: dict[tuple[str, datetime], ActivityRow] = {}
    for row in rows:
        latest[(row.lamp_id, row.hour_start)] = row
    return list(latest.values())


def latest_nights(rows: Iterable[NightRow]) -> list[NightRow]:
    """Per (lamp, night), the record emitted last (same emitted_at: the later offset, a copy);
    the database keeps a stored night unless a record was emitted after it."""
    latest: dict[tuple[str, date], NightRow] = {}
    for row in rows:
        key = (row.lamp_id, row.night_of)
        seen = latest.get(key)
        if seen is None or row.emitted_at >= seen.emitted_at:
            latest[key] = row
    return list(latest.values())


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def daily_keys(rows: Iterable[ActivityRow]) -> list[tuple[str, date]]:
    """The (lamp, UTC day of hour_start) pairs whose roll-up the rows change, sorted."""
    return sorted({(row.lamp_id, utc_day(row.hour_start)) for row in rows})


@dataclass(frozen=True, slots=True)
class LampFacts:
    """What activity records say of a lamp; merged into ``lamps`` with the same rules."""

    lamp_id: str
    site_id: str  # of the record with the greatest last_seen_at (ties: the later one)
    last_seen_at: datetime  # the greatest
    firmware: str | None  # of the latest hour with a firmware (same hour: the later record)
    firmware_hour: datetime | None


def lamp_facts(rows: Iterable[ActivityRow]) -> list[LampFacts]:
    facts: dict[str, LampFacts] = {}
    for row in rows:
        seen = facts.get(row.lamp_id)
        if seen is None:
            facts[row.lamp_id] = LampFacts(
                row.lamp_id,
                row.site_id,
                row.last_seen_at,
                row.firmware,
                row.hour_start if row.firmware is not None else None,
            )
            continue
        site_id, last_seen_at = seen.site_id, seen.last_seen_at
        if row.last_seen_at >= last_seen_at:
            site_id, last_seen_at = row.site_id, row.last_seen_at
        firmware, firmware_hour = seen.firmware, seen.firmware_hour
        if row.firmware is not None and (firmware_hour is None or row.hour_start >= firmware_hour):
            firmware, firmware_hour = row.firmware, row.hour_start
        facts[row.lamp_id] = LampFacts(row.lamp_id, site_id, last_seen_at, firmware, firmware_hour)
    return list(facts.values())


def first_steps(steps: Iterable[AlertStep]) -> list[AlertStep]:
    """The first record of each (alert_id, state): later copies are duplicates."""
    first: dict[tuple[str, str], AlertStep] = {}
    for step in steps:
        first.setdefault((step.alert_id, step.state), step)
    return list(first.values())


@dataclass(frozen=True, slots=True)
class AlertUpsert:
    """One ``alerts`` row as the batch's steps of that alert make it."""

    alert_id: str
    kind: str
    severity: str
    site_id: str
    lamp_id: str
    incident_started_at: datetime
    state: str
    raised_at: datetime | None
    resolved_at: datetime | None
    details: dict[str, str]


def alert_upserts(steps: Iterable[AlertStep]) -> list[AlertUpsert]:
    """Per alert, from its first step of each state: resolved if a resolved step came, the
    details of its latest step (resolved over raised)."""
    by_alert: dict[str, list[AlertStep]] = {}
    for step in first_steps(steps):
        by_alert.setdefault(step.alert_id, []).append(step)
    upserts = []
    for alert_id, alert_steps in by_alert.items():
        first = alert_steps[0]
        raised = next((s for s in alert_steps if s.state == "raised"), None)
        resolved = next((s for s in alert_steps if s.state == "resolved"), None)
        latest = resolved or raised or first
        upserts.append(
            AlertUpsert(
                alert_id=alert_id,
                kind=first.kind,
                severity=first.severity,
                site_id=first.site_id,
                lamp_id=first.lamp_id,
                incident_started_at=first.incident_started_at,
                state="resolved" if resolved is not None else first.state,
                raised_at=raised.emitted_at if raised else None,
                resolved_at=resolved.emitted_at if resolved else None,
                details=latest.details,
            )
        )
    return upserts


def columns(rows: Sequence[Any], names: Sequence[str]) -> list[list[Any]]:
    """Column-wise lists of ``rows``' attributes: the arrays of an ``unnest`` insert; times as
    epoch milliseconds (see :func:`ts`)."""
    out = []
    for name in names:
        values = [getattr(row, name) for row in rows]
        if any(isinstance(v, datetime) for v in values):
            values = [None if v is None else epoch_ms(v) for v in values]
        out.append(values)
    return out


def ts(column: str) -> str:
    """SQL: the timestamptz of an epoch-milliseconds bigint column (exact, no float)."""
    return f"(timestamptz 'epoch' + {column} * interval '1 millisecond')"


def json_text(details: dict[str, str]) -> str:
    return orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()


# -- SQL ---------------------------------------------------------------------------------------
# Every batch statement takes column arrays (one parameter per column, whatever the batch size):
# one round trip and one plan per statement, COPY-like cost per row. Times travel as epoch
# milliseconds (bigint[]), turned into timestamptz by the server (ts()). The only values in
# these strings are column names; the data are always parameters.

UPSERT_HOURLY = """
INSERT INTO activity_hourly AS h (
    lamp_id, site_id, hour_start, messages, motion_events, active_minutes, minutes_in_bed,
    minutes_absent, bathroom_visits, falls, help_requests, temperature_readings,
    temperature_min, temperature_mean, temperature_max, last_seen_at, firmware, emitted_at,
    source_partition, source_offset)
SELECT k.lamp_id, k.site_id, {hour_start}, k.messages, k.motion_events, k.active_minutes,
       k.minutes_in_bed, k.minutes_absent, k.bathroom_visits, k.falls, k.help_requests,
       k.temperature_readings, k.temperature_min, k.temperature_mean, k.temperature_max,
       {last_seen_at}, k.firmware, {emitted_at}, k.source_partition, k.source_offset
FROM unnest(
    %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::int[], %s::int[],
    %s::int[], %s::int[], %s::int[], %s::int[], %s::int[],
    %s::float8[], %s::float8[], %s::float8[], %s::bigint[], %s::text[], %s::bigint[],
    %s::int[], %s::bigint[])
    AS k (lamp_id, site_id, hour_start, messages, motion_events, active_minutes,
          minutes_in_bed, minutes_absent, bathroom_visits, falls, help_requests,
          temperature_readings, temperature_min, temperature_mean, temperature_max,
          last_seen_at, firmware, emitted_at, source_partition, source_offset)
ON CONFLICT (lamp_id, hour_start) DO UPDATE SET
    site_id = EXCLUDED.site_id,
    messages = EXCLUDED.messages,
    motion_events = EXCLUDED.motion_events,
    active_minutes = EXCLUDED.active_minutes,
    minutes_in_bed = EXCLUDED.minutes_in_bed,
    minutes_absent = EXCLUDED.minutes_absent,
    bathroom_visits = EXCLUDED.bathroom_visits,
    falls = EXCLUDED.falls,
    help_requests = EXCLUDED.help_requests,
    temperature_readings = EXCLUDED.temperature_readings,
    temperature_min = EXCLUDED.temperature_min,
    temperature_mean = EXCLUDED.temperature_mean,
    temperature_max = EXCLUDED.temperature_max,
    last_seen_at = EXCLUDED.last_seen_at,
    firmware = EXCLUDED.firmware,
    emitted_at = EXCLUDED.emitted_at,
    source_partition = EXCLUDED.source_partition,
    source_offset = EXCLUDED.source_offset,
    written_at = now()
""".format(
    hour_start=ts("k.hour_start"), last_seen_at=ts("k.last_seen_at"), emitted_at=ts("k.emitted_at")
)

# The day's figures, recomputed from all its hours (not only the batch's).
UPSERT_DAILY = """
INSERT INTO activity_daily AS d (
    lamp_id, day, site_id, hours, messages, motion_events, active_minutes, minutes_in_bed,
    minutes_absent, bathroom_visits, falls, help_requests, temperature_readings,
    temperature_min, temperature_mean, temperature_max, last_seen_at, updated_at)
SELECT
    k.lamp_id,
    k.day,
    (array_agg(h.site_id ORDER BY h.hour_start DESC))[1],
    count(*),
    sum(h.messages)::bigint,
    sum(h.motion_events)::bigint,
    sum(h.active_minutes),
    sum(h.minutes_in_bed),
    sum(h.minutes_absent),
    sum(h.bathroom_visits),
    sum(h.falls),
    sum(h.help_requests),
    sum(h.temperature_readings),
    min(h.temperature_min),
    sum(h.temperature_mean * h.temperature_readings)
        FILTER (WHERE h.temperature_mean IS NOT NULL AND h.temperature_readings > 0)
      / NULLIF(sum(h.temperature_readings)
        FILTER (WHERE h.temperature_mean IS NOT NULL AND h.temperature_readings > 0), 0),
    max(h.temperature_max),
    max(h.last_seen_at),
    now()
FROM unnest(%s::text[], %s::text[]::date[]) AS k (lamp_id, day)
JOIN activity_hourly AS h
  ON h.lamp_id = k.lamp_id
 AND h.hour_start >= (k.day::timestamp AT TIME ZONE 'UTC')
 AND h.hour_start < ((k.day + 1)::timestamp AT TIME ZONE 'UTC')
GROUP BY k.lamp_id, k.day
ON CONFLICT (lamp_id, day) DO UPDATE SET
    site_id = EXCLUDED.site_id,
    hours = EXCLUDED.hours,
    messages = EXCLUDED.messages,
    motion_events = EXCLUDED.motion_events,
    active_minutes = EXCLUDED.active_minutes,
    minutes_in_bed = EXCLUDED.minutes_in_bed,
    minutes_absent = EXCLUDED.minutes_absent,
    bathroom_visits = EXCLUDED.bathroom_visits,
    falls = EXCLUDED.falls,
    help_requests = EXCLUDED.help_requests,
    temperature_readings = EXCLUDED.temperature_readings,
    temperature_min = EXCLUDED.temperature_min,
    temperature_mean = EXCLUDED.temperature_mean,
    temperature_max = EXCLUDED.temperature_max,
    last_seen_at = EXCLUDED.last_seen_at,
    updated_at = now()
"""

UPSERT_LAMPS_FROM_ACTIVITY = """
INSERT INTO lamps AS l (lamp_id, site_id, last_seen_at, firmware, firmware_hour)
SELECT k.lamp_id, k.site_id, {last_seen_at}, k.firmware, {firmware_hour}
FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::bigint[])
     AS k (lamp_id, site_id, last_seen_at, firmware, firmware_hour)
ON CONFLICT (lamp_id) DO UPDATE SET
    site_id = CASE WHEN l.last_seen_at IS NULL OR EXCLUDED.last_seen_at >= l.last_seen_at
                   THEN EXCLUDED.site_id ELSE l.site_id END,
    last_seen_at = GREATEST(l.last_seen_at, EXCLUDED.last_seen_at),
    firmware = CASE WHEN EXCLUDED.firmware_hour IS NOT NULL
                         AND (l.firmware_hour IS NULL OR EXCLUDED.firmware_hour >= l.firmware_hour)
                    THEN EXCLUDED.firmware ELSE l.firmware END,
    firmware_hour = GREATEST(l.firmware_hour, EXCLUDED.firmware_hour),
    updated_at = now()
""".format(last_seen_at=ts("k.last_seen_at"), firmware_hour=ts("k.firmware_hour"))

# An alert's identity is its first step's; raised_at and resolved_at are those of the first
# step of each state; once resolved, it stays resolved (a late duplicate of 'raised' is moot).
UPSERT_ALERTS = """
INSERT INTO alerts AS a (
    alert_id, kind, severity, site_id, lamp_id, incident_started_at, state, raised_at,
    resolved_at, details)
SELECT k.alert_id, k.kind, k.severity, k.site_id, k.lamp_id, {incident_started_at}, k.state,
       {raised_at}, {resolved_at}, k.details::jsonb
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[],
            %s::text[], %s::bigint[], %s::bigint[], %s::text[])
     AS k (alert_id, kind, severity, site_id, lamp_id, incident_started_at, state, raised_at,
           resolved_at, details)
ON CONFLICT (alert_id) DO UPDATE SET
    raised_at = COALESCE(a.raised_at, EXCLUDED.raised_at),
    resolved_at = COALESCE(a.resolved_at, EXCLUDED.resolved_at),
    state = CASE WHEN a.resolved_at IS NULL AND EXCLUDED.resolved_at IS NOT NULL
                 THEN 'resolved' ELSE a.state END,
    details = CASE WHEN a.resolved_at IS NULL AND EXCLUDED.resolved_at IS NOT NULL
                   THEN EXCLUDED.details ELSE a.details END,
    updated_at = now()
""".format(
    incident_started_at=ts("k.incident_started_at"),
    raised_at=ts("k.raised_at"),
    resolved_at=ts("k.resolved_at"),
)

INSERT_ALERT_EVENTS = """
INSERT INTO alert_events (
    alert_id, step, emitted_at, details, source_topic, source_partition, source_offset)
SELECT k.alert_id, k.step, {emitted_at}, k.details::jsonb, k.topic, k.part, k.off
FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::int[],
            %s::bigint[]) AS k (alert_id, step, emitted_at, details, topic, part, off)
ON CONFLICT (alert_id, step, occurrence) DO NOTHING
""".format(emitted_at=ts("k.emitted_at"))

# A night is replaced only by a record emitted after the stored one: a copy redelivered after a
# crash (same emitted_at) or a stale one changes nothing (docs/postgres.md).
UPSERT_NIGHTS = """
INSERT INTO night_summaries AS n (
    lamp_id, night_of, site_id, time_zone, night_start, night_end, night_minutes,
    covered_minutes, messages, minutes_in_bed, minutes_out_of_bed, bed_exits, bathroom_visits,
    room_exits, restless_motion_events, restlessness_per_hour, longest_still_minutes,
    latest_return_to_bed, latest_return_to_bed_local, emitted_at, source_partition,
    source_offset)
SELECT k.lamp_id, k.night_of, k.site_id, k.time_zone, {night_start}, {night_end},
       k.night_minutes, k.covered_minutes, k.messages, k.minutes_in_bed, k.minutes_out_of_bed,
       k.bed_exits, k.bathroom_visits, k.room_exits, k.restless_motion_events,
       k.restlessness_per_hour, k.longest_still_minutes, {latest_return_to_bed},
       k.latest_return_to_bed_local, {emitted_at}, k.source_partition, k.source_offset
FROM unnest(
    %s::text[], %s::text[]::date[], %s::text[], %s::text[], %s::bigint[], %s::bigint[],
    %s::int[], %s::int[], %s::int[], %s::int[], %s::int[], %s::int[], %s::int[], %s::int[],
    %s::int[], %s::float8[], %s::int[], %s::bigint[], %s::text[], %s::bigint[], %s::int[],
    %s::bigint[])
    AS k (lamp_id, night_of, site_id, time_zone, night_start, night_end, night_minutes,
          covered_minutes, messages, minutes_in_bed, minutes_out_of_bed, bed_exits,
          bathroom_visits, room_exits, restless_motion_events, restlessness_per_hour,
          longest_still_minutes, latest_return_to_bed, latest_return_to_bed_local, emitted_at,
          source_partition, source_offset)
ON CONFLICT (lamp_id, night_of) DO UPDATE SET
    site_id = EXCLUDED.site_id,
    time_zone = EXCLUDED.time_zone,
    night_start = EXCLUDED.night_start,
    night_end = EXCLUDED.night_end,
    night_minutes = EXCLUDED.night_minutes,
    covered_minutes = EXCLUDED.covered_minutes,
    messages = EXCLUDED.messages,
    minutes_in_bed = EXCLUDED.minutes_in_bed,
    minutes_out_of_bed = EXCLUDED.minutes_out_of_bed,
    bed_exits = EXCLUDED.bed_exits,
    bathroom_visits = EXCLUDED.bathroom_visits,
    room_exits = EXCLUDED.room_exits,
    restless_motion_events = EXCLUDED.restless_motion_events,
    restlessness_per_hour = EXCLUDED.restlessness_per_hour,
    longest_still_minutes = EXCLUDED.longest_still_minutes,
    latest_return_to_bed = EXCLUDED.latest_return_to_bed,
    latest_return_to_bed_local = EXCLUDED.latest_return_to_bed_local,
    emitted_at = EXCLUDED.emitted_at,
    source_partition = EXCLUDED.source_partition,
    source_offset = EXCLUDED.source_offset,
    written_at = now()
WHERE EXCLUDED.emitted_at > n.emitted_at
""".format(
    night_start=ts("k.night_start"),
    night_end=ts("k.night_end"),
    latest_return_to_bed=ts("k.latest_return_to_bed"),
    emitted_at=ts("k.emitted_at"),
)

INSERT_LAMPS_FROM_ALERTS = """
INSERT INTO lamps (lamp_id, site_id)
SELECT * FROM unnest(%s::text[], %s::text[])
ON CONFLICT (lamp_id) DO NOTHING
"""

# A lamp is online unless one of its lamp_offline alerts is still open.
UPDATE_ONLINE = """
UPDATE lamps AS l SET online = s.online, updated_at = now()
FROM (
    SELECT k.lamp_id, NOT EXISTS (
        SELECT 1 FROM alerts AS a
        WHERE a.lamp_id = k.lamp_id AND a.kind = 'lamp_offline' AND a.state = 'raised'
    ) AS online
    FROM unnest(%s::text[]) AS k (lamp_id)
) AS s
WHERE l.lamp_id = s.lamp_id AND l.online IS DISTINCT FROM s.online
"""

# Makes sure each partition of the batch has an offset row, so that the next statement can lock
# it (a row inserted here and rolled back leaves nothing).
ENSURE_OFFSET_ROWS = """
INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset)
SELECT %s, k.topic, k.partition, 0 FROM unnest(%s::text[], %s::int[]) AS k (topic, partition)
ORDER BY k.topic, k.partition
ON CONFLICT (consumer_group, topic, partition) DO NOTHING
"""

# Locks the batch's partitions until commit: two writers of one partition take turns, and the
# second sees what the first wrote.
LOCK_OFFSETS = """
SELECT topic, partition, next_offset FROM sink_offsets
WHERE consumer_group = %s
  AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))
ORDER BY topic, partition
FOR UPDATE
"""

UPSERT_OFFSETS = """
INSERT INTO sink_offsets AS o (consumer_group, topic, partition, next_offset)
SELECT %s, k.topic, k.partition, k.next_offset
FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS k (topic, partition, next_offset)
ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET
    next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset),
    updated_at = now()
"""

SELECT_OFFSETS = """
SELECT topic, partition, next_offset FROM sink_offsets
WHERE consumer_group = %s
  AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))
"""


async def write_rows(cur: AsyncCursor[Any], rows: Sequence[Row]) -> None:
    """Write ``rows`` (in their partitions' order) to every table they concern."""
    activity = [row for row in rows if isinstance(row, ActivityRow)]
    steps = [row for row in rows if isinstance(row, AlertStep)]
    nights = [row for row in rows if isinstance(row, NightRow)]
    if nights:
        latest_night = latest_nights(nights)
        params = columns(latest_night, NIGHT_COLUMNS)
        params[1] = [day.isoformat() for day in params[1]]  # night_of: dates as text
        await cur.execute(UPSERT_NIGHTS, params)
    if activity:
        latest = latest_activity(activity)
        await cur.execute(UPSERT_HOURLY, columns(latest, ACTIVITY_COLUMNS))
        keys = daily_keys(latest)
        await cur.execute(UPSERT_DAILY, ([k[0] for k in keys], [k[1].isoformat() for k in keys]))
        facts = lamp_facts(activity)
        await cur.execute(
            UPSERT_LAMPS_FROM_ACTIVITY,
            columns(facts, ("lamp_id", "site_id", "last_seen_at", "firmware", "firmware_hour")),
        )
    if steps:
        alerts = alert_upserts(steps)
        params = columns(
            alerts,
            (
                "alert_id",
                "kind",
                "severity",
                "site_id",
                "lamp_id",
                "incident_started_at",
                "state",
                "raised_at",
                "resolved_at",
            ),
        )
        await cur.execute(UPSERT_ALERTS, [*params, [json_text(a.details) for a in alerts]])
        firsts = first_steps(steps)
        await cur.execute(
            INSERT_ALERT_EVENTS,
            (
                [s.alert_id for s in firsts],
                [s.state for s in firsts],
                [epoch_ms(s.emitted_at) for s in firsts],
                [json_text(s.details) for s in firsts],
                [s.source_topic for s in firsts],
                [s.source_partition for s in firsts],
                [s.source_offset for s in firsts],
            ),
        )
        sites: dict[str, str] = {}
        for step in steps:
            sites.setdefault(step.lamp_id, step.site_id)
        lamp_ids = sorted(sites)
        await cur.execute(INSERT_LAMPS_FROM_ALERTS, (lamp_ids, [sites[x] for x in lamp_ids]))
        await cur.execute(UPDATE_ONLINE, (lamp_ids,))


# -- the sink ----------------------------------------------------------------------------------


# Errors after which the same batch may succeed later: the store is down or busy.
# OperationalError covers connection failures, shutdowns, deadlocks, serialisation failures,
# timeouts and exhausted resources; a read-only server is a failover under way.
RETRIABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    errors.ReadOnlySqlTransaction,
)
# Errors a record's own data causes: retrying the same data cannot help.
REFUSED: tuple[type[Exception], ...] = (psycopg.DataError, psycopg.IntegrityError)


class PostgresSink:
    """``veilleuse sink postgres``: see the module's docstring. Run it with the SinkRunner."""

    name = "postgres"
    offsets_in_store = True

    def __init__(
        self,
        settings: Settings,
        *,
        consumer_group: str | None = None,
        migrations_folder: Path = migrations.MIGRATIONS_DIR,
        statement_timeout_s: float | None = None,
    ) -> None:
        from psycopg.conninfo import make_conninfo

        if statement_timeout_s is None:
            statement_timeout_s = settings.sink.postgres_statement_timeout_s

        activity, alerts = topic_name(settings, ACTIVITY_HOURLY), topic_name(settings, ALERTS)
        nightly = topic_name(settings, ACTIVITY_NIGHTLY)
        self.topics: tuple[str, ...] = (activity, alerts, nightly)
        self.expected = {activity: ACTIVITY_SCHEMA, alerts: ALERT_SCHEMA, nightly: NIGHT_SCHEMA}
        # The SinkRunner's default group: offsets are kept per group, as Kafka would.
        self.consumer_group = (
            consumer_group or f"{settings.kafka.topic_prefix}veilleuse-sink-{self.name}"
        )
        self.database = settings.postgres.database
        self.migrations = migrations.discover(migrations_folder)
        self.write_timeout_s = statement_timeout_s + 30
        self._conninfo = make_conninfo(
            settings.postgres.conninfo(),
            application_name=f"veilleuse-{COMPONENT}",
            options=f"-c statement_timeout={round(statement_timeout_s * 1000)}",
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        self._conn: AsyncConnection[Any] | None = None
        self._schema_checked = False
        self.skipped = 0  # records a batch held that the store already had (re-read)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the schema now if the database answers; otherwise at the first write."""
        try:
            await self._connection()
        except StoreUnavailableError as exc:
            log.warning(
                "PostgreSQL unavailable at start (%s): the schema is checked once it answers",
                exc,
                extra={"component": COMPONENT},
            )

    async def stop(self) -> None:
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except Exception as exc:  # noqa: BLE001 - a connection being dropped may fail anyhow
                log.debug("closing the connection failed: %s", exc)

    async def _connection(self) -> AsyncConnection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        await self._drop()
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except RETRIABLE as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL: {exc}", reason="connect"
            ) from exc
        try:
            if not self._schema_checked:
                await self._check_schema(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def _check_schema(self, conn: AsyncConnection[Any]) -> None:
        try:
            cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            row = await cur.fetchone()
            rows: list[Any] = []
            if row is not None and row[0]:
                rows = await (await conn.execute(migrations.SELECT_APPLIED)).fetchall()
        except RETRIABLE as exc:
            raise StoreUnavailableError(f"PostgreSQL unavailable: {exc}") from exc
        status = migrations.compare(self.migrations, migrations.applied_from_rows(rows))
        problem = status.problem()
        if problem is not None:
            raise MigrationsPendingError(
                f"database {self.database!r} is not ready for this sink: {problem}"
            )
        for unknown in status.unknown:
            log.warning(
                "migration %04d_%s is applied but unknown to this code (a newer version applied "
                "it): writing anyway",
                unknown.version,
                unknown.name,
                extra={"component": COMPONENT},
            )
        self._schema_checked = True
        log.info(
            "PostgreSQL database %r is at migration %04d",
            self.database,
            self.migrations[-1].version,
            extra={"component": COMPONENT},
        )

    # -- offsets ---------------------------------------------------------------------------

    async def stored_offsets(
        self, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """Read on a connection of its own: the write connection may be inside a batch's
        transaction (a rebalance runs beside it), whose offsets are not committed yet."""
        import psycopg

        if not partitions:
            return {}
        try:
            async with await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True
            ) as conn:
                cur = await conn.execute(
                    SELECT_OFFSETS,
                    (
                        self.consumer_group,
                        [topic for topic, _ in partitions],
                        [partition for _, partition in partitions],
                    ),
                )
                rows = await cur.fetchall()
        except RETRIABLE as exc:
            # Kafka's committed offsets are used instead; the batch transaction skips whatever
            # the store already has, so nothing is written twice.
            log.warning(
                "stored offsets unreadable (%s): resuming from Kafka's",
                exc,
                extra={"component": COMPONENT},
            )
            raise StoreUnavailableError(f"PostgreSQL unavailable: {exc}") from exc
        return {(str(topic), int(partition)): int(offset) for topic, partition, offset in rows}

    # -- writing ---------------------------------------------------------------------------

    async def write(self, batch: Batch) -> WriteResult:
        decoded = decode_batch(batch.records, self.expected)
        try:
            return await asyncio.wait_for(self._write(batch, decoded), self.write_timeout_s)
        except TimeoutError as exc:
            await self._drop()
            raise StoreUnavailableError(
                f"PostgreSQL did not answer within {self.write_timeout_s:.0f} s", reason="timeout"
            ) from exc
        except RETRIABLE as exc:
            await self._drop()
            raise StoreUnavailableError(f"PostgreSQL unavailable: {exc}") from exc
        except psycopg.Error as exc:
            await self._drop()
            raise SinkError(f"PostgreSQL refused the batch: {type(exc).__name__}: {exc}") from exc

    async def _write(self, batch: Batch, decoded: Decoded) -> WriteResult:
        conn = await self._connection()
        keys = sorted(batch.offsets)
        topics, partitions = [k[0] for k in keys], [k[1] for k in keys]
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(ENSURE_OFFSET_ROWS, (self.consumer_group, topics, partitions))
            await cur.execute(LOCK_OFFSETS, (self.consumer_group, topics, partitions))
            stored: dict[tuple[str, int], int] = {
                (str(t), int(p)): int(o) for t, p, o in await cur.fetchall()
            }

            def fresh(record: KafkaRecord) -> bool:
                return record.offset >= stored.get((record.topic, record.partition), 0)

            rows = [(record, row) for record, row in decoded.rows if fresh(record)]
            rejected = [r for r in decoded.rejected if fresh(r.record)]
            skipped = len(decoded.rows) + len(decoded.rejected) - len(rows) - len(rejected)
            if skipped:
                self.skipped += skipped
                log.info(
                    "skipped %d records the store already has (re-read after a restart or a "
                    "rebalance)",
                    skipped,
                    extra={"component": COMPONENT},
                )
            if rows:
                rejected += await self._write_rows(conn, cur, rows)
            # Before the offsets are stored: after that no one rereads these records.
            await batch.dead_letter(rejected)
            await cur.execute(
                UPSERT_OFFSETS,
                (
                    self.consumer_group,
                    topics,
                    partitions,
                    [batch.offsets[k] for k in keys],
                ),
            )
        return WriteResult()  # the rejected ones are dead-lettered already

    async def _write_rows(
        self,
        conn: AsyncConnection[Any],
        cur: AsyncCursor[Any],
        rows: list[tuple[KafkaRecord, Row]],
    ) -> list[Rejected]:
        """All rows at once; if the database refuses one of them, one by one (each in a
        savepoint) so that only the records it refuses are rejected."""
        try:
            async with conn.transaction():
                await write_rows(cur, [row for _, row in rows])
            return []
        except REFUSED as exc:
            log.warning(
                "PostgreSQL refused a row of the batch (%s): writing its %d records one by one",
                exc,
                len(rows),
                extra={"component": COMPONENT},
            )
        rejected = []
        for record, row in rows:
            try:
                async with conn.transaction():
                    await write_rows(cur, [row])
            except REFUSED as exc:
                rejected.append(Rejected(record, "store_refused", f"{type(exc).__name__}: {exc}"))
        return rejected
