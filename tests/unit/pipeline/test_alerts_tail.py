"""``veilleuse alerts tail``'s pure parts: filtering, the two output formats, decoding."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

import schemas
from cli.main import cli
from pipeline.alerts_tail import (
    AlertFilter,
    TailedAlert,
    Undecodable,
    alert_kinds,
    decode_record,
    format_json,
    format_line,
    unlisted_kinds_note,
)
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
EMITTED_MS = 1_796_204_563_908  # 2026-12-02T09:42:43.908Z


def alert(**changes: Any) -> dict[str, Any]:
    return {
        "alert_id": "65b6c2fc-8558-5737-a6fa-ec0944553ec2",
        "kind": "fall",
        "severity": "critical",
        "state": "raised",
        "site_id": "fr-lyon-12",
        "lamp_id": "L-000123",
        "incident_started_at": EMITTED_MS - 30_000,
        "emitted_at": EMITTED_MS,
        "details": {"zone": "floor", "confidence": "0.80"},
        **changes,
    }


def record(value: bytes | None, offset: int = 7) -> Any:
    """An aiokafka ConsumerRecord's fields that the tail reads."""
    return SimpleNamespace(
        topic="alerts.v1", partition=3, offset=offset, timestamp=EMITTED_MS + 5, value=value
    )


@pytest.mark.parametrize(
    ("chosen", "shown"),
    [
        (AlertFilter(), True),
        (AlertFilter(sites=frozenset({"fr-lyon-12"})), True),
        (AlertFilter(sites=frozenset({"fr-nice-1"})), False),
        (AlertFilter(sites=frozenset({"fr-nice-1", "fr-lyon-12"})), True),
        (AlertFilter(kinds=frozenset({"fall"})), True),
        (AlertFilter(kinds=frozenset({"help_requested"})), False),
        (AlertFilter(frozenset({"fr-lyon-12"}), frozenset({"help_requested"})), False),
        (AlertFilter(frozenset({"fr-lyon-12"}), frozenset({"fall", "inactivity"})), True),
    ],
)
def test_a_filter_keeps_any_of_its_sites_and_any_of_its_kinds(
    chosen: AlertFilter, shown: bool
) -> None:
    assert chosen.matches(alert()) is shown


@pytest.mark.parametrize(
    ("kinds", "shown"),
    [({"bed_exit"}, True), ({"unknown"}, True), ({"fall"}, False)],
)
def test_a_kind_added_since_matches_by_its_name_or_as_unknown(kinds: set[str], shown: bool) -> None:
    """A rule newer than AlertKind writes ``unknown``, its kind by name in ``kind_name``."""
    newer = alert(kind="unknown", kind_name="bed_exit")
    assert AlertFilter(kinds=frozenset(kinds)).matches(newer) is shown


def test_a_line_names_a_kind_added_since() -> None:
    line = format_line(alert(kind="unknown", kind_name="bed_exit"))
    assert "  bed_exit  " in line


def test_a_line_says_when_where_what_how_bad_which_step_and_the_facts() -> None:
    _, decoded = schemas.decode(schemas.encode(schemas.schema("alert.v1"), alert()))
    line = format_line(decoded)
    assert re.fullmatch(
        r"2026-12-02T09:42:43\.908Z  fr-lyon-12  L-000123  fall +critical +raised +"
        r"65b6c2fc-8558-5737-a6fa-ec0944553ec2  confidence=0\.80 zone=floor",
        line,
    ), line


def test_the_docs_show_the_line_the_tail_prints() -> None:
    _, decoded = schemas.decode(schemas.encode(schemas.schema("alert.v1"), alert()))
    assert format_line(decoded) in (ROOT / "docs/consuming-alerts.md").read_text()


def test_a_line_without_facts_ends_with_the_alert_id() -> None:
    assert format_line(alert(details={})).endswith("65b6c2fc-8558-5737-a6fa-ec0944553ec2")


def test_json_has_the_alert_iso_times_and_where_the_record_is() -> None:
    item = decode_record(record(schemas.encode(schemas.schema("alert.v1"), alert())))
    assert isinstance(item, TailedAlert)
    shown = json.loads(format_json(item))
    assert shown == {
        **item.alert,  # every field of the reader schema, as decoded
        "incident_started_at": "2026-12-02T09:42:13.908Z",
        "emitted_at": "2026-12-02T09:42:43.908Z",
        "kafka": {
            "topic": "alerts.v1",
            "partition": 3,
            "offset": 7,
            "timestamp": "2026-12-02T09:42:43.913Z",
        },
    }
    assert datetime.fromisoformat(shown["emitted_at"]) == datetime.fromtimestamp(
        EMITTED_MS / 1000, UTC
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"kind": "fall"}', "not Avro single-object encoding"),
        (b"\xc3\x01" + bytes(8) + b"\x00", "unknown writer schema fingerprint"),
        (None, "empty record"),
    ],
)
def test_an_undecodable_record_is_named_by_topic_partition_and_offset(
    value: bytes | None, reason: str
) -> None:
    item = decode_record(record(value, offset=42))
    assert isinstance(item, Undecodable)
    message = str(item.error)
    assert reason in message
    assert "topic=alerts.v1, partition=3, offset=42" in message


def test_the_command_is_listed_with_its_options() -> None:
    shown = CliRunner().invoke(cli, ["alerts", "tail", "--help"], obj=Settings())
    assert shown.exit_code == 0, shown.output
    for option in ("--site", "--kind", "--from-beginning", "--json"):
        assert option in shown.output


def test_the_java_consumer_uses_the_stacks_kafka_client_version() -> None:
    pom = (ROOT / "examples/java-alerts-consumer/pom.xml").read_text()
    version = re.search(r"<kafka.version>(.+)</kafka.version>", pom)
    assert version is not None
    assert version.group(1) == Settings().stack.kafka_version


def test_a_kind_alert_v1_does_not_list_gets_a_note_not_a_refusal() -> None:
    """A typo in --kind would show nothing, silently; a kind added since is legitimate."""
    assert unlisted_kinds_note(["fall", "help_requested"]) is None
    note = unlisted_kinds_note(["falls", "fall"])
    assert note is not None
    assert note.startswith("note: falls: not among alert.v1's kinds (fall, fall_recovered, ")


def test_the_docs_list_every_kind() -> None:
    (row,) = [
        line
        for line in (ROOT / "docs/consuming-alerts.md").read_text().splitlines()
        if line.startswith("| `--kind K` |")
    ]
    assert [kind for kind in alert_kinds() if f"`{kind}`" not in row] == []
