"""Every Kafka topic of the pipeline, named ``<domain>.<entity>.v<N>``, and their creation.

Topics are created by ``veilleuse setup`` (the local broker refuses auto-creation), with the
partitions and replication of the settings. Faust creates its own internal topics (changelogs,
repartitions) itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from pipeline.clients import admin_client
from pipeline.errors import VeilleuseError
from pipeline.settings import Settings

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    purpose: str
    retention_ms: int
    config: dict[str, str] = field(default_factory=dict)


LAMP_MESSAGES = TopicSpec(
    "lamp.messages.v1",
    "every lamp message as received over MQTT, keyed by lamp_id",
    retention_ms=30 * DAY_MS,
)
LAMP_DLQ = TopicSpec(
    "lamp.dlq.v1", "rejected lamp messages, original bytes, reason in a header", 30 * DAY_MS
)
LAMP_LATE = TopicSpec("lamp.late.v1", "records too late for their event-time window", 30 * DAY_MS)
SINK_DLQ = TopicSpec(
    "sink.dlq.v1",
    "records a sink's store refused for good (e.g. a mapping error), reason in headers",
    30 * DAY_MS,
)
ALERTS = TopicSpec("alerts.v1", "alerts raised and resolved (Avro single-object)", 90 * DAY_MS)
ALERT_ACKS = TopicSpec(
    "alerts.acks.v1",
    "staff acknowledgements of alerts (Avro), keyed by lamp_id: close incidents",
    90 * DAY_MS,
)
ACTIVITY_HOURLY = TopicSpec(
    "activity.hourly.v1", "final activity figures per lamp and hour (Avro)", 90 * DAY_MS
)
ACTIVITY_NIGHTLY = TopicSpec(
    "activity.nightly.v1",
    "night summary per lamp and local night, 22:00-07:00 site time (Avro night_summary.v1)",
    90 * DAY_MS,
)

TOPICS: tuple[TopicSpec, ...] = (
    LAMP_MESSAGES,
    LAMP_DLQ,
    LAMP_LATE,
    ALERTS,
    ALERT_ACKS,
    ACTIVITY_HOURLY,
    ACTIVITY_NIGHTLY,
    SINK_DLQ,
)


def topic_name(settings: Settings, spec: TopicSpec) -> str:
    """The topic's name on the cluster: ``kafka.topic_prefix`` + its canonical name."""
    return settings.kafka.topic_prefix + spec.name


@dataclass(frozen=True)
class TopicResult:
    name: str
    created: bool
    partitions: int
    note: str = ""


async def ensure_topics(
    settings: Settings, specs: tuple[TopicSpec, ...] = TOPICS
) -> list[TopicResult]:
    """Create the missing topics; report (never alter) the existing ones."""
    from aiokafka.admin import NewTopic

    kafka = settings.kafka
    admin = admin_client(settings)
    await admin.start()
    try:
        names = {spec.name: topic_name(settings, spec) for spec in specs}
        existing = await admin.describe_topics(list(names.values()))
        partitions = {
            t["topic"]: len(t["partitions"]) for t in existing if t.get("error_code", 0) == 0
        }
        missing = [spec for spec in specs if names[spec.name] not in partitions]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        names[spec.name],
                        kafka.topic_partitions,
                        kafka.topic_replication_factor,
                        topic_configs={
                            "retention.ms": str(spec.retention_ms),
                            "min.insync.replicas": str(kafka.topic_min_insync_replicas),
                            **spec.config,
                        },
                    )
                    for spec in missing
                ]
            )
            errors = [
                (name, code, message)
                for name, code, message in response.topic_errors
                if code not in (0, 36)  # 36: TOPIC_ALREADY_EXISTS (a concurrent setup)
            ]
            if errors:
                raise VeilleuseError(f"creating topics failed: {errors}")
    finally:
        await admin.close()
    results = []
    for spec in specs:
        name = names[spec.name]
        if name in partitions:
            have = partitions[name]
            note = (
                f"has {have} partitions, settings say {kafka.topic_partitions} (left unchanged)"
                if have != kafka.topic_partitions
                else ""
            )
            results.append(TopicResult(name, False, have, note))
        else:
            results.append(TopicResult(name, True, kafka.topic_partitions))
    return results


def ensure_topics_sync(settings: Settings) -> list[TopicResult]:
    return asyncio.run(ensure_topics(settings))
