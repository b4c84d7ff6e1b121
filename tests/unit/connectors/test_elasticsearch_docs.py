"""The pure parts of the Elasticsearch sink: ids, index names, documents, bulk results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from connectors.sinks.elasticsearch import (
    DATE_MAX_MS,
    MAPPINGS,
    ElasticsearchSink,
    IndexNames,
    SearchMetrics,
    bulk_body,
    chunk_by_size,
    classify,
    dlq_action,
    encode,
    error_text,
    message_action,
    sort_items,
    ts_usable,
)
from connectors.sinks.reindex import Progress
from connectors.sinks.runner import Batch, StoreUnavailableError
from pipeline.records import KafkaRecord
from pipeline.settings import load_settings

NAMES = IndexNames("lamp-messages")
TS = int(datetime(2026, 11, 24, 23, 59, 59, 500000, tzinfo=UTC).timestamp() * 1000)
RECEIVED = TS + 800  # the next day, UTC: 2026-11-25 00:00:00.300


def record(
    payload: Any = None,
    *,
    value: bytes | None = None,
    offset: int = 7,
    topic: str = "lamp.messages.v1",
    mqtt_topic: str | None = "lamps/fr-lyon-12/L-000123/events",
    received: bytes | None = str(RECEIVED).encode(),
    extra_headers: Sequence[tuple[str, bytes]] = (),
) -> KafkaRecord:
    if value is None and payload is not None:
        value = orjson.dumps(payload)
    headers: list[tuple[str, bytes]] = []
    if mqtt_topic is not None:
        headers.append(("mqtt.topic", mqtt_topic.encode()))
    if received is not None:
        headers.append(("received.at.ms", received))
    headers += extra_headers
    return KafkaRecord(topic, 3, offset, RECEIVED + 5, b"L-000123", value, tuple(headers))


def fall(**changes: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "lamp_id": "L-000123",
        "seq": 4812,
        "ts": TS,
        "type": "fall_suspected",
        "confidence": 0.82,
        "zone": "floor",
        **changes,
    }


# -- names and ids -------------------------------------------------------------------------------


def test_index_names_are_daily_for_messages_monthly_for_the_dlq_in_utc() -> None:
    assert NAMES.messages_index(3, TS) == "lamp-messages-g3-2026.11.24"
    assert NAMES.messages_index(3, RECEIVED) == "lamp-messages-g3-2026.11.25"
    assert NAMES.dlq_index(1, RECEIVED) == "lamp-messages-dlq-g1-2026.11"
    assert NAMES.messages_alias == "lamp-messages"
    assert NAMES.dlq_alias == "lamp-messages-dlq"
    assert NAMES.messages_pattern(2) == "lamp-messages-g2-*"
    assert NAMES.dlq_pattern(2) == "lamp-messages-dlq-g2-*"
    # The patterns of the two kinds never overlap (templates with overlapping patterns clash).
    assert not NAMES.dlq_index(2, TS).startswith("lamp-messages-g2-")


def test_a_message_is_identified_by_lamp_seq_and_ts_and_indexed_by_its_event_day() -> None:
    action = message_action(record(fall()), NAMES, 1)
    assert action.doc_id == f"L-000123:4812:{TS}"
    assert action.index == "lamp-messages-g1-2026.11.24"  # ts, not the receive time (next day)
    doc = action.source
    assert doc["lamp_id"] == "L-000123"
    assert doc["site_id"] == "fr-lyon-12"
    assert doc["channel"] == "events"
    assert doc["type"] == "fall_suspected"
    assert doc["seq"] == 4812
    assert doc["ts"] == TS
    assert doc["received_at"] == RECEIVED
    assert doc["event_time"] == TS
    assert doc["ts_usable"] is True
    assert doc["payload"]["zone"] == "floor"
    assert orjson.loads(doc["raw"]) == fall()
    assert doc["kafka"] == {"topic": "lamp.messages.v1", "partition": 3, "offset": 7}
    # Every field of the document is in the strict mapping.
    assert set(doc) <= set(MAPPINGS["properties"])


def test_network_duplicates_collapse_into_one_document() -> None:
    first = message_action(record(fall(), offset=7), NAMES, 1)
    again = message_action(
        record(fall(), offset=9_001, received=str(RECEIVED + 25_000).encode()), NAMES, 1
    )
    assert (again.index, again.doc_id) == (first.index, first.doc_id)
    rebooted = message_action(record(fall(seq=4812, ts=TS + 60_000)), NAMES, 1)
    assert rebooted.doc_id != first.doc_id


@pytest.mark.parametrize(
    ("ts", "stored"),
    [
        (0, 0),  # the last will: seq 0, ts 0, every time the lamp drops
        ("1764230400123", None),
        (True, None),
        (-5, None),
        (DATE_MAX_MS + 1, None),
        (1.5e12, None),
        (RECEIVED - 8 * 24 * 3600 * 1000, RECEIVED - 8 * 24 * 3600 * 1000),  # a broken clock
        (RECEIVED + 2 * 24 * 3600 * 1000, RECEIVED + 2 * 24 * 3600 * 1000),
    ],
)
def test_an_unusable_ts_falls_back_to_the_receive_time_and_the_kafka_position(
    ts: Any, stored: int | None
) -> None:
    action = message_action(record(fall(ts=ts, seq=0), offset=42), NAMES, 1)
    assert action.doc_id == "lamp.messages.v1:3:42"
    assert action.index == "lamp-messages-g1-2026.11.25"
    assert action.source["event_time"] == RECEIVED
    assert action.source["ts_usable"] is False
    assert action.source.get("ts") == stored
    assert action.source["payload"]["ts"] == ts  # the lamp's value is kept as sent


@pytest.mark.parametrize(
    "changes",
    [
        {"seq": -1},
        {"seq": 2**32},
        {"seq": "12"},
        {"lamp_id": "L 000123/../x"},
        {"lamp_id": "L-" + "0" * 40},
    ],
)
def test_a_message_without_a_clean_identity_is_identified_by_its_kafka_position(
    changes: dict[str, Any],
) -> None:
    action = message_action(record(fall(**changes)), NAMES, 1)
    assert action.doc_id == "lamp.messages.v1:3:7"
    assert action.index == "lamp-messages-g1-2026.11.24"  # ts is still fine


@pytest.mark.parametrize(
    "value", [b"\xff\xfe not json", b"[1, 2, 3]", b'{"truncated": ', b"", b"null"]
)
def test_junk_bytes_still_give_a_searchable_document(value: bytes) -> None:
    action = message_action(record(value=value), NAMES, 1)
    assert action.doc_id == "lamp.messages.v1:3:7"
    assert action.index == "lamp-messages-g1-2026.11.25"
    doc = action.source
    assert "payload" not in doc
    assert doc["lamp_id"] == "L-000123"  # from the MQTT topic
    assert doc["raw"] == value.decode("utf-8", "replace")
    assert doc["size"] == len(value)
    orjson.dumps(doc)  # serialisable whatever the input


def test_a_junk_receive_header_falls_back_to_the_kafka_timestamp() -> None:
    for header in (b"yesterday", None, b"-1"):
        action = message_action(record(value=b"x", received=header), NAMES, 1)
        assert action.source["received_at"] == RECEIVED + 5


def test_a_message_without_mqtt_topic_takes_its_lamp_from_the_payload() -> None:
    doc = message_action(record(fall(), mqtt_topic=None), NAMES, 1).source
    assert doc["lamp_id"] == "L-000123"
    assert "site_id" not in doc
    bad = message_action(record(fall(), mqtt_topic="not/a/lamp/topic/at/all"), NAMES, 1).source
    assert "site_id" not in bad
    # A lamp_id of the wrong type: the topic's lamp stands in (the payload keeps the junk).
    wrong = message_action(record(fall(lamp_id=123)), NAMES, 1)
    assert wrong.source["lamp_id"] == "L-000123"
    assert wrong.source["payload"]["lamp_id"] == 123


def test_a_dlq_record_is_identified_by_its_kafka_position_and_keeps_the_reason() -> None:
    action = dlq_action(
        record(
            value=b"\x00garbage",
            topic="lamp.dlq.v1",
            offset=11,
            extra_headers=[
                ("reject.reason", b"not_json"),
                ("reject.detail", b"Expecting value: line 1 column 1"),
                ("payload.truncated", b"true"),
                ("payload.size", b"70000"),
            ],
        ),
        NAMES,
        2,
    )
    assert action.doc_id == "lamp.dlq.v1:3:11"
    assert action.index == "lamp-messages-dlq-g2-2026.11"
    doc = action.source
    assert doc["reject"] == {"reason": "not_json", "detail": "Expecting value: line 1 column 1"}
    assert doc["raw"] == "\x00garbage"
    assert doc["size"] == 70000
    assert doc["truncated"] is True
    assert doc["lamp_id"] == "L-000123"
    assert set(doc) <= set(MAPPINGS["properties"])


def test_ts_usable_window() -> None:
    assert ts_usable(RECEIVED - 600_000, RECEIVED)  # replayed 10 minutes late
    assert ts_usable(RECEIVED + 120_000, RECEIVED)  # a clock 2 minutes ahead
    assert not ts_usable(None, RECEIVED)
    assert not ts_usable(0, RECEIVED)


def test_the_bulk_body_is_ndjson_of_create_actions() -> None:
    actions = [message_action(record(fall(seq=s), offset=s), NAMES, 1) for s in range(3)]
    lines = bulk_body(actions).split(b"\n")
    assert lines[-1] == b""
    parsed = [orjson.loads(line) for line in lines[:-1]]
    assert [p["create"]["_id"] for p in parsed[0::2]] == [a.doc_id for a in actions]
    assert parsed[1] == actions[0].source


# -- bulk results --------------------------------------------------------------------------------

MAPPING_ERROR = {
    "type": "document_parsing_exception",
    "reason": "[1:169] failed to parse field [payload] of type [flattened]",
    "caused_by": {
        "type": "illegal_argument_exception",
        "reason": "The provided [flattened] field [payload] exceeds the maximum depth limit",
    },
}


@pytest.mark.parametrize(
    ("status", "error", "verdict"),
    [
        (201, None, "ok"),
        (200, None, "ok"),
        (409, {"type": "version_conflict_engine_exception"}, "ok"),
        (429, {"type": "es_rejected_execution_exception"}, "retry"),
        (503, {"type": "unavailable_shards_exception"}, "retry"),
        (500, None, "retry"),
        (400, MAPPING_ERROR, "reject"),
        (400, {"type": "strict_dynamic_mapping_exception", "reason": "x"}, "reject"),
        (400, {"type": "validation_exception", "reason": "too many shards"}, "retry"),
        (403, {"type": "cluster_block_exception", "reason": "read-only"}, "retry"),
        (404, {"type": "index_not_found_exception"}, "retry"),
    ],
)
def test_bulk_item_verdicts(status: int, error: Any, verdict: str) -> None:
    assert classify(status, error) == verdict


def test_sort_items_keeps_positions_and_explains_rejections() -> None:
    items = [
        {"create": {"status": 201}},
        {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}},
        {"create": {"status": 400, "error": MAPPING_ERROR}},
        {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
        {"create": {"status": 503, "error": {"type": "unavailable_shards_exception"}}},
    ]
    outcome = sort_items(items)
    assert outcome.retry == [1, 4]
    assert [p for p, _ in outcome.rejected] == [2]
    detail = outcome.rejected[0][1]
    assert "document_parsing_exception" in detail
    assert "maximum depth limit" in detail
    assert outcome.duplicates == 1
    assert error_text("plain") == "plain"


# -- write(): per-item retries with a scripted client ----------------------------------------


@dataclass
class Response:
    body: dict[str, Any]


@dataclass
class FakeIndices:
    created: list[str] = field(default_factory=list)

    async def create(self, *, index: str, **_: Any) -> None:
        self.created.append(index)


@dataclass
class FakeClient:
    """Answers each bulk request with the next scripted status list (one status per item)."""

    script: list[list[int] | Exception]
    requests: list[list[str]] = field(default_factory=list)
    indices: FakeIndices = field(default_factory=FakeIndices)

    async def bulk(self, *, operations: bytes, **_: Any) -> Response:
        lines = operations.split(b"\n")
        self.requests.append([orjson.loads(line)["create"]["_id"] for line in lines[0:-1:2]])
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        items: list[dict[str, Any]] = []
        for status in step:
            result: dict[str, Any] = {"status": status}
            if status == 400:
                result["error"] = MAPPING_ERROR
            elif status >= 300:
                result["error"] = {"type": "es_rejected_execution_exception", "reason": "busy"}
            items.append({"create": result})
        return Response({"errors": any(s >= 300 for s in step), "items": items})

    async def close(self) -> None:
        return None


def sink_with(script: list[list[int] | Exception]) -> tuple[ElasticsearchSink, FakeClient]:
    client = FakeClient(script)
    sink = ElasticsearchSink(
        load_settings(),
        generation=1,
        item_retries=2,
        item_retry_initial_s=0.001,
        client=client,  # type: ignore[arg-type]
    )
    return sink, client


def batch(n: int) -> Batch:
    records = [record(fall(seq=s), offset=s) for s in range(n)]
    return Batch(records, {("lamp.messages.v1", 3): n})


async def test_write_retries_only_the_refused_items_and_rejects_mapping_errors() -> None:
    from prometheus_client import CollectorRegistry

    sink, client = sink_with([[201, 429, 400, 503], [201, 409]])
    registry = CollectorRegistry()
    sink.metrics = SearchMetrics(registry)
    result = await sink.write(batch(4))
    assert registry.get_sample_value("veilleuse_sink_elasticsearch_item_retries_total") == 2
    assert registry.get_sample_value("veilleuse_sink_elasticsearch_duplicates_total") == 1
    assert len(client.requests) == 2
    assert client.requests[1] == [client.requests[0][1], client.requests[0][3]]
    assert [r.record.offset for r in result.rejected] == [2]
    assert result.rejected[0].reason == "mapping_error"
    assert "maximum depth limit" in result.rejected[0].detail
    assert client.indices.created == ["lamp-messages-g1-2026.11.24"]


async def test_write_gives_up_to_the_runner_when_items_stay_refused() -> None:
    sink, client = sink_with([[201, 429], [429], [429]])
    with pytest.raises(StoreUnavailableError, match="still refused after 3 attempts"):
        await sink.write(batch(2))
    assert len(client.requests) == 3


async def test_a_connection_failure_is_store_unavailable() -> None:
    from elastic_transport import ConnectionError as TransportConnectionError

    sink, _ = sink_with([TransportConnectionError("connection refused")])
    with pytest.raises(StoreUnavailableError, match="ConnectionError"):
        await sink.write(batch(1))


async def test_large_batches_are_split_into_bounded_bulk_requests() -> None:
    sink, client = sink_with([[201] * n for n in (3, 3, 3, 1)])
    one = len(encode(message_action(record(fall(seq=1)), NAMES, 1)))
    sink.max_bulk_bytes = 3 * one + 2
    await sink.write(batch(10))
    assert sorted(len(r) for r in client.requests) == [1, 3, 3, 3]
    assert sorted(i for r in client.requests for i in r) == sorted(
        f"L-000123:{s}:{TS}" for s in range(10)
    )


def test_chunks_by_size_keep_order_and_let_a_big_item_go_alone() -> None:
    assert chunk_by_size([5, 5, 5, 20, 5], [0, 1, 2, 3, 4], 10) == [[0, 1], [2], [3], [4]]
    assert chunk_by_size([5, 5, 5], [2, 0], 10) == [[2, 0]]
    assert chunk_by_size([5], [], 10) == []


# -- progress ------------------------------------------------------------------------------------


def test_progress_line_shows_count_rate_and_eta() -> None:
    line = Progress.line("reindex g2", 50_000, 200_000, 10_000.0)
    assert line == "reindex g2: 50,000/200,000 ( 25.0%) 10,000 docs/s ETA 0:00:15"
    assert Progress.line("x", 5, 5, 0.0).endswith("ETA 0:00:00")
    assert Progress.line("x", 0, 5, 0.0).endswith("ETA ?")


def test_the_cli_has_the_sink_and_reindex_commands() -> None:
    import click

    from cli.main import cli

    sink = cli.commands["sink"]
    assert isinstance(sink, click.Group)
    assert "elasticsearch" in sink.commands
    assert "reindex" in cli.commands
