"""``veilleuse alerts tail``: follow ``alerts.v1`` for the person on call, disturbing nobody.

The tail joins no consumer group and commits nothing: it takes every partition itself, so a
notifier's or a sink's group and their offsets never see it. It reads ``read_committed``, as
every consumer of ``alerts.v1`` must (the workers write in transactions), and decodes with the
schemas package, as any other consumer would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.clients import client_options
from pipeline.errors import RecordError, VeilleuseError
from pipeline.settings import Settings
from pipeline.topics import ALERTS, topic_name
from schemas import alert_kind

# Short enough that a committed alert shows up well within a second of its append when the
# topic is otherwise idle (the broker answers a fetch early as soon as there is data).
FETCH_MAX_WAIT_MS = 100
# aiokafka reconnects by itself and raises nothing while the brokers are away: its fetches just
# come back empty, as on a quiet topic. So a tail asks the cluster for its metadata this often
# to tell the two apart (one small request; a refused connection fails it at once), and takes
# it for gone after this many failures in a row (one slow answer of a busy broker is not an
# outage: a board saying "not connected" for nothing teaches staff to ignore it).
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 3.0
PROBE_FAILURES = 2


@dataclass(frozen=True)
class AlertFilter:
    """Which alerts to show: any of ``sites`` and any of ``kinds`` (empty: all). A kind matches
    the alert's kind by name (``kind_name``, for kinds added since) or as read (``unknown``)."""

    sites: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()

    def matches(self, alert: Mapping[str, Any]) -> bool:
        return (not self.sites or alert.get("site_id") in self.sites) and (
            not self.kinds or alert_kind(alert) in self.kinds or alert.get("kind") in self.kinds
        )


def alert_kinds() -> list[str]:
    """The kinds this checkout's ``alert.v1`` reader lists in its ``AlertKind`` enum."""
    import schemas

    (kind,) = [f for f in schemas.schema("alert.v1").parsed["fields"] if f["name"] == "kind"]
    return list(kind["type"]["symbols"])


def unlisted_kinds_note(kinds: Iterable[str]) -> str | None:
    """A note on ``--kind`` values that ``AlertKind`` does not list. Not refused: a rule added
    since writes its kind by name (``kind_name``); but a typo would show nothing, silently."""
    known = alert_kinds()
    unlisted = sorted(set(kinds) - set(known))
    if not unlisted:
        return None
    return (
        f"note: {', '.join(unlisted)}: not among alert.v1's kinds ({', '.join(known)}); only"
        " alerts of a kind added since, named so in kind_name, will match"
    )


@dataclass(frozen=True)
class Position:
    """Where a record is on the cluster (named by every message about it)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True)
class TailedAlert:
    position: Position
    alert: dict[str, Any]


@dataclass(frozen=True)
class Undecodable:
    """A record of the topic that is not an alert of any known schema: reported, skipped."""

    error: RecordError


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        moment = value
    else:  # a timestamp-millis that came through as an int (no logical type applied)
        moment = datetime.fromtimestamp(int(value) / 1000, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_line(alert: Mapping[str, Any]) -> str:
    """One readable line: when, where, what, how bad, which step, which alert, its facts."""
    details = alert.get("details") or {}
    facts = " ".join(f"{key}={details[key]}" for key in sorted(details))
    fields = [
        _iso(alert["emitted_at"]),
        str(alert["site_id"]),
        str(alert["lamp_id"]),
        f"{alert_kind(alert):<14}",
        f"{alert['severity']:<8}",
        f"{alert['state']:<8}",
        str(alert["alert_id"]),
    ]
    return "  ".join(fields + ([facts] if facts else []))


def format_json(tailed: TailedAlert) -> str:
    """One JSON object per line: the alert's fields (times in ISO 8601, UTC) and, under
    ``kafka``, where the record is."""
    alert = {
        key: _iso(value) if key in ("emitted_at", "incident_started_at") else value
        for key, value in tailed.alert.items()
    }
    where = tailed.position
    alert["kafka"] = {
        "topic": where.topic,
        "partition": where.partition,
        "offset": where.offset,
        "timestamp": _iso(where.timestamp_ms),
    }
    return json.dumps(alert, ensure_ascii=False, default=str)


def decode_record(record: Any) -> TailedAlert | Undecodable:
    """An aiokafka ``ConsumerRecord`` as an alert, or the reason it is not one."""
    import schemas

    where = Position(record.topic, record.partition, record.offset, record.timestamp)
    if record.value is None:
        reason = "empty record (no value)"
    else:
        try:
            _, alert = schemas.decode(record.value)
        except schemas.SchemaError as exc:
            reason = str(exc)
        else:
            return TailedAlert(where, alert)
    return Undecodable(
        RecordError(reason, topic=where.topic, partition=where.partition, offset=where.offset)
    )


async def follow(
    settings: Settings,
    *,
    from_beginning: bool = False,
    alert_filter: AlertFilter = AlertFilter(),
    on_ready: Callable[[str, list[int]], None] | None = None,
    on_health: Callable[[bool], None] | None = None,
) -> AsyncIterator[TailedAlert | Undecodable]:
    """Every alert of ``alerts.v1`` that passes ``alert_filter``, as it is committed, and every
    undecodable record; ``on_ready(topic, partitions)`` once the start positions are fixed
    (from then on nothing appended is missed); ``on_health(False)`` when the cluster stops
    answering (the tail keeps its positions and goes on by itself once it answers again, which
    ``on_health(True)`` tells: nothing committed meanwhile is missed)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    topic = topic_name(settings, ALERTS)
    consumer = AIOKafkaConsumer(
        group_id=None,  # no group: never a member of anyone's, never commits
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        isolation_level="read_committed",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        **client_options(settings),
    )
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise VeilleuseError(
            f"Kafka at {settings.kafka.bootstrap_servers} unavailable: {exc}"
        ) from exc
    try:
        if topic not in await consumer.topics():
            raise VeilleuseError(f"topic {topic} does not exist (run `veilleuse setup`)")
        consumer.subscribe([topic])  # without a group: every partition, followed as it grows
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        partitions = sorted(tp.partition for tp in consumer.assignment())
        for tp in consumer.assignment():
            await consumer.position(tp)  # resolves "latest"/"earliest" now, not at first fetch
        if on_ready is not None:
            on_ready(topic, partitions)
        answering, failures = True, 0
        next_probe = time.monotonic() + PROBE_EVERY_S
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            if on_health is not None and (batch or time.monotonic() >= next_probe):
                # Records fetched: the cluster answers (said before they are handed out).
                failures = 0 if batch or await _answers(consumer) else failures + 1
                if answering != (failures < PROBE_FAILURES):
                    answering = not answering
                    on_health(answering)
                next_probe = time.monotonic() + PROBE_EVERY_S
            # In append order across partitions too, as far as one fetch can tell.
            records = sorted(
                (record for part in batch.values() for record in part),
                key=lambda r: (r.timestamp, r.partition, r.offset),
            )
            for record in records:
                item = decode_record(record)
                if isinstance(item, Undecodable) or alert_filter.matches(item.alert):
                    yield item
    finally:
        await consumer.stop()


async def _answers(consumer: Any) -> bool:
    """Whether the cluster answers a metadata request now (``consumer.topics()`` asks it)."""
    from aiokafka.errors import KafkaError

    try:
        await asyncio.wait_for(consumer.topics(), PROBE_TIMEOUT_S)
    except (KafkaError, OSError, TimeoutError):
        return False
    return True
