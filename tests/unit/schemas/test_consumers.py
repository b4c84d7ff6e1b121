"""The pipeline's own consumers of alerts.v1 read records of every released version, and an
alert kind they do not know ('unknown', the enum's default) is stored and notified, not dropped.

The API reads the alerts from PostgreSQL, where the sink wrote them: its part is the sink's
(and the integration test through the real sink, tests/integration/sinks/test_postgres_sink.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from connectors.sinks.postgres import AlertStep, to_row
from pipeline.records import KafkaRecord
from schemas import Schema, encode, registry
from tests.unit.notifier.test_notifier_service import T0, notifier

TOPIC = "alerts.v1"


def alert(**fields: Any) -> dict[str, Any]:
    return {
        "alert_id": "a-1",
        "kind": "fall",
        "severity": "critical",
        "state": "raised",
        "site_id": "fr-lyon-12",
        "lamp_id": "L-1",
        "incident_started_at": T0 - 30_000,
        "emitted_at": T0,
        "details": {"zone": "floor"},
        **fields,
    }


def record(writer: Schema, **fields: Any) -> KafkaRecord:
    return KafkaRecord(TOPIC, 0, 7, T0, b"L-1", encode(writer, alert(**fields)))


VERSIONS = [s.version for s in registry().released["alert.v1"]]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_postgres_sink_writes_alerts_of_every_released_version(version: int) -> None:
    row = to_row(record(registry().version("alert.v1", version)), {TOPIC: "alert.v1"})
    assert isinstance(row, AlertStep)
    assert (row.alert_id, row.kind, row.severity, row.details) == (
        "a-1",
        "fall",
        "critical",
        {"zone": "floor"},
    )


def test_the_postgres_sink_stores_an_unknown_kind_as_such() -> None:
    row = to_row(record(registry().schema("alert.v1"), kind="unknown"), {TOPIC: "alert.v1"})
    assert isinstance(row, AlertStep)
    assert row.kind == "unknown"


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_notifier_notifies_alerts_of_every_released_version(version: int) -> None:
    service, _, journal, channel, _ = notifier()
    await service.apply(record(registry().version("alert.v1", version)))
    await service.run_due()
    assert [(n.kind, n.slot) for _, n in channel.sent] == [("fall", 1)]
    assert journal.life("a-1") == [("raised", 1, T0), ("notified", 1, T0)]


async def test_the_notifier_forwards_an_unknown_kind_by_its_severity() -> None:
    """A newer producer's kind, read through the enum default, still pages the staff."""
    service, _, _, channel, _ = notifier()
    await service.apply(record(registry().schema("alert.v1"), kind="unknown"))
    await service.run_due()
    assert [(n.kind, n.severity, n.slot) for _, n in channel.sent] == [("unknown", "critical", 1)]
