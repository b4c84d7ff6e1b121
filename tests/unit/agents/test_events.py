"""decode_event: protocol v1 records decoded, junk refused with the reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.events import DecodeError, DecodeReason, decode_event, site_from_mqtt_topic
from schemas.lamp_protocol import Reason
from tests import lamp_corpus as corpus

INGEST = 1_764_230_400_000
FUTURE_MS = 300_000
TOPIC = "lamps/fr-lyon-12/L-000123/events"
DROP = object()  # a field left out of the message


def message(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "lamp_id": "L-000123",
        "seq": 4812,
        "ts": INGEST - 1_000,
        "type": "fall_suspected",
        "confidence": 0.82,
        "zone": "floor",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


def decode(
    payload: Any, key: bytes | None = b"L-000123", topic: str | None = TOPIC, raw: bool = False
) -> Any:
    value = payload if raw else orjson.dumps(payload)
    return decode_event(key, value, topic, INGEST, FUTURE_MS)


def reason_of(payload: Any, **kw: Any) -> DecodeReason:
    with pytest.raises(DecodeError) as info:
        decode(payload, **kw)
    return info.value.reason


def test_valid_message_decodes() -> None:
    """The protocol's example: every field where the rules expect it."""
    event = decode(message())
    assert (event.lamp_id, event.site_id, event.seq) == ("L-000123", "fr-lyon-12", 4812)
    assert (event.ts, event.type, event.ingest_ms) == (INGEST - 1_000, "fall_suspected", INGEST)
    assert event.number("confidence") == 0.82
    assert event.str_field("zone") == "floor"
    assert not event.is_last_will


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "motion", "zone": "bed", "level": 40},
        {"type": "posture", "posture": "on_floor", "zone": "floor", "confidence": 1, "persons": 0},
        {"type": "button", "accessory_id": "pendant-1", "action": "long_press"},
        {"type": "temperature", "celsius": 21},
        {"type": "temperature", "celsius": 21.5, "humidity": 40.0},
        {"type": "heartbeat", "fw": "1.4.2", "uptime_s": 1, "rssi": -60},
        {"type": "status", "online": True},
    ],
)
def test_every_type_decodes(fields: dict[str, Any]) -> None:
    """Each message type of the protocol with its fields."""
    payload = {"v": 1, "lamp_id": "L-000123", "seq": 1, "ts": INGEST, **fields}
    assert decode(payload).type == fields["type"]


def test_unknown_extra_fields_are_kept() -> None:
    """Newer firmware adds fields: kept in the payload, not rejected."""
    event = decode(message(battery=87, fw_flags={"beta": True}))
    assert event.payload["battery"] == 87
    assert event.payload["fw_flags"] == {"beta": True}


def test_last_will_with_ts_0_is_accepted() -> None:
    """The broker's last will (seq 0, ts 0) decodes and is recognised."""
    payload = {"v": 1, "lamp_id": "L-000123", "seq": 0, "ts": 0, "type": "status", "online": False}
    event = decode(payload, topic="lamps/fr-lyon-12/L-000123/status")
    assert event.is_last_will
    assert event.payload["online"] is False


def test_status_with_real_ts_is_not_a_last_will() -> None:
    """A lamp's own online: false carries its time: not the last will."""
    event = decode(message(type="status", online=False, confidence=DROP, zone=DROP))
    assert not event.is_last_will


def test_seq_at_the_top_of_its_range_is_accepted() -> None:
    """seq runs 0..2^32 - 1."""
    assert decode(message(seq=2**32 - 1)).seq == 2**32 - 1


def test_an_empty_record_is_not_json() -> None:
    """A record without a value (a tombstone) is no message."""
    with pytest.raises(DecodeError) as info:
        decode_event(b"L-000123", None, TOPIC, INGEST, FUTURE_MS)
    assert info.value.reason is DecodeReason.NOT_JSON


@pytest.mark.parametrize("junk", corpus.JUNK, ids=str)
def test_junk_is_refused_with_its_reason(junk: corpus.Junk) -> None:
    """Every junk payload of the tests' corpus (tests/lamp_corpus.py), with its reason code:
    the connector's (tests/unit/connectors/test_validation.py)."""
    key = junk.topic.split("/")[2].encode() if junk.reason is not Reason.BAD_TOPIC else None
    with pytest.raises(DecodeError) as info:
        decode_event(key, junk.payload, junk.topic, corpus.INGEST_MS, FUTURE_MS)
    assert info.value.reason is junk.reason, info.value.detail


@pytest.mark.parametrize("body", corpus.VALID, ids=lambda b: str(b["type"]))
def test_the_corpus_valid_messages_decode(body: dict[str, Any]) -> None:
    event = decode_event(b"L-000123", orjson.dumps(body), corpus.TOPIC, corpus.INGEST_MS, FUTURE_MS)
    assert (event.type, event.seq, event.ts) == (body["type"], body["seq"], body["ts"])
    assert event.payload == body


def test_lamp_id_not_matching_the_record_key() -> None:
    """The record key is the lamp_id."""
    assert reason_of(message(), key=b"L-000999") is DecodeReason.LAMP_ID_MISMATCH


def test_lamp_id_not_matching_the_topic() -> None:
    """A payload lamp_id that is not the topic's is junk (protocol: payload)."""
    topic = "lamps/fr-lyon-12/L-000999/events"
    assert reason_of(message(), topic=topic) is DecodeReason.LAMP_ID_MISMATCH


def test_record_without_key_is_checked_against_the_topic() -> None:
    """No key: the topic still names the lamp."""
    assert decode(message(), key=None).lamp_id == "L-000123"


@pytest.mark.parametrize("topic", [None, "", "lamps/FR-LYON/L-000123/events"])
def test_no_lamp_topic_header(topic: str | None) -> None:
    """The site comes from the mqtt.topic header: without a valid one, refused."""
    assert reason_of(message(), topic=topic) is DecodeReason.BAD_TOPIC


def test_site_from_mqtt_topic() -> None:
    """lamps/{site}/{lamp}/{channel} -> site."""
    assert site_from_mqtt_topic("lamps/fr-lyon-12/L-1/telemetry") == "fr-lyon-12"
    assert site_from_mqtt_topic("lamps/" + "a" * 33 + "/L-1/events") is None


def test_ts_too_far_in_the_future() -> None:
    """A ts more than max_future_ms ahead of ingest is refused; at the limit it passes."""
    assert reason_of(message(ts=INGEST + FUTURE_MS + 1)) is DecodeReason.TS_IN_FUTURE
    assert decode(message(ts=INGEST + FUTURE_MS)).ts == INGEST + FUTURE_MS


def test_clock_120_s_ahead_is_accepted() -> None:
    """The protocol allows device clocks off by 120 s."""
    assert decode(message(ts=INGEST + 120_000)).ts == INGEST + 120_000


def test_every_reason_is_tested() -> None:
    """Each reason code has a case in the corpus, or a test above (ts_in_future); bad_ack is
    not a lamp message's (tests/unit/agents/test_detect_incidents.py)."""
    tested = {j.reason for j in corpus.JUNK} | {DecodeReason.TS_IN_FUTURE, DecodeReason.BAD_ACK}
    assert tested == set(DecodeReason)
