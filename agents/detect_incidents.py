"""The detection agent: the rules of :mod:`agents.rules` over ``lamp.messages.v1``.

A thin adapter between the batch path (:mod:`agents.runtime.streaming`) and the pure engine
(:mod:`agents.detection`): one engine per assigned partition, alerts encoded as Avro on
``alerts.v1``, records too late for their window to ``lamp.late.v1``, undecodable ones to
``lamp.dlq.v1`` with the reason, acknowledgements read from ``alerts.acks.v1``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agents.api import AgentSpec, Output, StateTable
from agents.detection import PartitionEngine, restore_engines
from agents.rules import build_rules, installed_rules
from agents.rules.base import Rule
from agents.runtime.streaming import BatchResult, Produce
from pipeline.records import KafkaRecord
from pipeline.settings import Settings
from pipeline.topics import (
    ALERT_ACKS,
    ALERTS,
    LAMP_DLQ,
    LAMP_LATE,
    LAMP_MESSAGES,
    topic_name,
)
from schemas import Schema, SchemaError, decode, encode, millis, schema
from schemas.lamp_protocol import Reason

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def _lamp_id(record: KafkaRecord) -> str | None:
    """The record's key, which is its lamp on every lamp topic (None if absent or not text)."""
    try:
        return record.key.decode() if record.key else None
    except UnicodeDecodeError:
        return None


def alert_kinds(alert_schema: Schema) -> frozenset[str]:
    """The symbols of ``AlertKind`` in the writer schema (the kinds it may name directly)."""
    (kind,) = [f for f in alert_schema.raw["fields"] if f["name"] == "kind"]
    return frozenset(kind["type"]["symbols"]) - {"unknown"}


class DetectIncidents:
    """The :class:`~agents.runtime.streaming.BatchAgent` raising alerts from lamp messages."""

    name = "detect_incidents"
    table_name = "lamp_state"

    def __init__(self, settings: Settings, wall_clock: object = wall_clock_ms) -> None:
        config = settings.detection
        self.config = config
        self.messages_topic = topic_name(settings, LAMP_MESSAGES)
        self.acks_topic = topic_name(settings, ALERT_ACKS)
        self.alerts_topic = topic_name(settings, ALERTS)
        self.late_topic = topic_name(settings, LAMP_LATE)
        self.dlq_topic = topic_name(settings, LAMP_DLQ)
        self.topics: tuple[str, ...] = (self.messages_topic, self.acks_topic)
        self.rules: tuple[Rule, ...] = build_rules(config, settings.rules)  # type: ignore[type-arg]
        # What the rules emit besides alerts, as they declare it: kind -> (topic, writer schema).
        self.emitted = {
            kind: (topic_name(settings, output.topic), output.writer())
            for rule in self.rules
            for kind, output in rule.emits.items()
        }
        self.wall_clock = wall_clock
        self.engines: dict[int, PartitionEngine] = {}
        self.alert_schema = schema("alert.v1")
        self.alert_kinds = alert_kinds(self.alert_schema)
        self.counts: Counter[str] = Counter()
        self._result = BatchResult()

    # -- partitions ---------------------------------------------------------------------------

    def assign(self, partitions: Sequence[int], stored: Iterable[bytes]) -> None:
        """New partitions, after recovery (see :func:`~agents.detection.restore_engines`)."""

        def new_engine(partition: int, load: Callable[[str], bytes | None]) -> PartitionEngine:
            return PartitionEngine(
                partition,
                self.rules,
                self.config,
                load,
                self.wall_clock,  # type: ignore[arg-type]
            )

        self.engines.update(restore_engines(partitions, stored, new_engine, self.counts, self.name))

    def revoke(self, partition: int) -> None:
        engine = self.engines.pop(partition, None)
        if engine is not None:
            self.counts.update(engine.counts)

    def live_activity(self, lamp_id: str) -> list[dict[str, Any]] | None:
        """What the lamp's rules have not emitted yet (the activity rule's open hours), shown
        live by the query API (None: the lamp is not held here)."""
        for engine in self.engines.values():
            lamp = engine.peek(lamp_id)
            if lamp is None:
                continue
            figures: list[dict[str, Any]] = []
            for rule in self.rules:
                figures += rule.live(lamp.rules[rule.name], lamp.lamp_id, lamp.site_id) or []
            return figures
        return None

    # -- records --------------------------------------------------------------------------

    def process(self, partition: int, records: list[KafkaRecord]) -> None:
        engine = self.engines[partition]
        for record in records:
            if record.topic == self.acks_topic:
                self._acknowledge(engine, record)
            else:
                engine.process(record)
        self._collect(engine)

    def _acknowledge(self, engine: PartitionEngine, record: KafkaRecord) -> None:
        try:
            _, ack = decode(record.value or b"")
            lamp_id, alert_id = str(ack["lamp_id"]), str(ack["alert_id"])
            by, at = str(ack["acknowledged_by"]), millis(ack["acknowledged_at"])
        except (SchemaError, KeyError, TypeError, ValueError) as exc:
            engine.outputs.dead.append((record, Reason.BAD_ACK.value, str(exc)[:200]))
            return
        if not engine.acknowledge(lamp_id, alert_id, by, at):
            log.info(
                "ack of %s matches no open incident (already closed?)",
                alert_id,
                extra={
                    "lamp_id": lamp_id,
                    "alert_id": alert_id,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "component": self.name,
                },
            )

    def advance(self, partition: int, wall_ms: int) -> None:
        engine = self.engines[partition]
        due = engine.next_due()
        if due is None or due > wall_ms:
            return
        engine.advance(wall_ms)
        self._collect(engine)

    def _collect(self, engine: PartitionEngine) -> None:
        outputs = engine.take_outputs()
        if not outputs:
            return
        result = self._result
        result.deadlines_ms += outputs.deadlines
        for alert in outputs.alerts:
            result.produce.append(
                Produce(
                    self.alerts_topic,
                    alert.lamp_id.encode(),
                    encode(self.alert_schema, alert.as_record(self.alert_kinds)),
                    [("alert.kind", alert.kind.encode()), ("alert.state", alert.state.encode())],
                    log=(
                        f"alert {alert.kind} {alert.state} {alert.alert_id}",
                        {
                            "lamp_id": alert.lamp_id,
                            "site_id": alert.site_id,
                            "alert_id": alert.alert_id,
                            "kind": alert.kind,
                            "severity": alert.severity,
                            "component": self.name,
                        },
                    ),
                )
            )
            result.alerts.append((alert.kind, alert.severity, alert.state))
        now_ms = self.wall_clock()  # type: ignore[operator]
        for kind, lamp_id, figures in outputs.records:
            topic, writer = self.emitted[kind]
            body = encode(writer, {**figures, "emitted_at": now_ms})
            result.produce.append(Produce(topic, lamp_id.encode(), body))
        for record, reason in outputs.late:
            result.produce.append(self._side_output(self.late_topic, record, "late.reason", reason))
        for record, reason, detail in outputs.dead:
            result.produce.append(
                self._side_output(
                    self.dlq_topic, record, "reject.reason", reason, [("reject.detail", detail)]
                )
            )
            log.warning(
                "dead-lettered %s: %s",
                reason,
                detail,
                extra={
                    "lamp_id": _lamp_id(record),
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "reason": reason,
                    "component": self.name,
                },
            )
        if outputs.changed:
            changelog = result.changelog.setdefault(engine.partition, {})
            for lamp_id in outputs.changed:
                changelog[lamp_id.encode()] = engine.encode_state(lamp_id)

    def _side_output(
        self,
        topic: str,
        record: KafkaRecord,
        header: str,
        reason: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> Produce:
        headers = [(k, v) for k, v in record.headers if k not in (header, "reject.detail")]
        headers += [
            (header, reason.encode()),
            ("reject.stage", self.name.encode()),
            ("source.topic", record.topic.encode()),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
        ]
        headers += [(k, v.encode()) for k, v in extra or ()]
        return Produce(topic, record.key, record.value or b"", headers)

    def take_result(self) -> BatchResult:
        result, self._result = self._result, BatchResult()
        return result


def _rule_outputs() -> tuple[Output, ...]:
    return tuple(output for rule in installed_rules() for output in rule.emits.values())


AGENT = AgentSpec(
    name=DetectIncidents.name,
    help="The protocol's alerting rules (agents/rules/) over every lamp's messages, in event "
    "time: alerts, late records, dead letters, and what the rules emit besides alerts.",
    reads=(LAMP_MESSAGES, ALERT_ACKS),
    table=StateTable(
        DetectIncidents.table_name,
        "Every lamp's detection state (clock, duplicates, rule states, deadlines).",
    ),
    build=lambda settings, _own, wall_clock: DetectIncidents(settings, wall_clock),
    emits=(Output(ALERTS, "alert.v1"), Output(LAMP_LATE, None), Output(LAMP_DLQ, None)),
    reads_settings=("detection", "rules"),
    more_emits=_rule_outputs,
    live=lambda agent: (agent.live_activity, lambda: sorted(agent.engines)),
)
