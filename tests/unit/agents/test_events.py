"""decode_event: protocol v1 records decoded, junk refused with the reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.events import DecodeError, DecodeReason, decode_event, site_from_mqtt_topic

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


@pytest.mark.parametrize("value", [None, b"", b"not json", b'{"v": 1, "lamp_id": ', b"\xff\xfe"])
def test_not_json(value: bytes | None) -> None:
    """Empty, truncated or non-UTF-8 records are not JSON."""
    with pytest.raises(DecodeError) as info:
        decode_event(b"L-000123", value, TOPIC, INGEST, FUTURE_MS)
    assert info.value.reason is DecodeReason.NOT_JSON


@pytest.mark.parametrize("payload", [[1, 2], "text", 42, None])
def test_not_an_object(payload: Any) -> None:
    """JSON that is not an object."""
    assert reason_of(payload) is DecodeReason.NOT_AN_OBJECT


def test_oversized() -> None:
    """More than 4 KiB is refused before parsing."""
    payload = message(padding="x" * 4096)
    assert reason_of(payload) is DecodeReason.OVERSIZED


@pytest.mark.parametrize("name", ["v", "lamp_id", "seq", "ts", "type", "confidence", "zone"])
def test_missing_field(name: str) -> None:
    """Every common field, and the type's own fields, are required."""
    assert reason_of(message(**{name: DROP})) is DecodeReason.MISSING_FIELD


@pytest.mark.parametrize(
    "changes",
    [
        {"v": "1"},
        {"v": True},
        {"lamp_id": 123},
        {"seq": "12"},
        {"seq": 1.5},
        {"seq": True},
        {"seq": -1},
        {"seq": 2**32},
        {"ts": 1.5e12},
        {"ts": None},
        {"type": 3},
        {"confidence": 1.2},
        {"confidence": -0.1},
        {"confidence": "high"},
        {"zone": "garden"},
        {"type": "posture", "posture": "dancing", "zone": "room", "confidence": 1, "persons": 1},
        {"type": "posture", "posture": "sitting", "zone": "room", "confidence": 1, "persons": -1},
        {"type": "posture", "posture": "sitting", "zone": "room", "confidence": 1, "persons": 1.0},
        {"type": "button", "accessory_id": 5, "action": "press"},
        {"type": "button", "accessory_id": "p", "action": "double"},
        {"type": "motion", "zone": "bed", "level": "40"},
        {"type": "temperature", "celsius": "21"},
        {"type": "heartbeat", "fw": 1},
        {"type": "status", "online": "false"},
        {"type": "status", "online": 0},
    ],
)
def test_wrong_type(changes: dict[str, Any]) -> None:
    """A field of the wrong JSON type or outside its values."""
    assert reason_of(message(**changes)) is DecodeReason.WRONG_TYPE


def test_unknown_type() -> None:
    """A type the protocol does not define."""
    assert reason_of(message(type="reboot")) is DecodeReason.UNKNOWN_TYPE


@pytest.mark.parametrize("version", [0, 2])
def test_unsupported_version(version: int) -> None:
    """Only protocol v1."""
    assert reason_of(message(v=version)) is DecodeReason.UNSUPPORTED_VERSION


def test_lamp_id_not_matching_the_record_key() -> None:
    """The record key is the lamp_id."""
    assert reason_of(message(), key=b"L-000999") is DecodeReason.LAMP_MISMATCH


def test_lamp_id_not_matching_the_topic() -> None:
    """A payload lamp_id that is not the topic's is junk (protocol: payload)."""
    topic = "lamps/fr-lyon-12/L-000999/events"
    assert reason_of(message(), topic=topic) is DecodeReason.LAMP_MISMATCH


def test_record_without_key_is_checked_against_the_topic() -> None:
    """No key: the topic still names the lamp."""
    assert decode(message(), key=None).lamp_id == "L-000123"


@pytest.mark.parametrize(
    "topic",
    [
        None,
        "",
        "lamps/fr-lyon-12/L-000123",
        "lamps/FR-LYON/L-000123/events",
        "lamps//L-000123/events",
        "devices/fr-lyon-12/L-000123/events",
        "lamps/fr-lyon-12/L-000123/events/extra",
    ],
)
def test_no_site(topic: str | None) -> None:
    """The site comes from the mqtt.topic header: without a valid one, refused."""
    assert reason_of(message(), topic=topic) is DecodeReason.NO_SITE


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
    """Each DecodeReason has a test above (keep this list in step with the enum)."""
    tested = {
        DecodeReason.NOT_JSON,
        DecodeReason.NOT_AN_OBJECT,
        DecodeReason.OVERSIZED,
        DecodeReason.MISSING_FIELD,
        DecodeReason.WRONG_TYPE,
        DecodeReason.UNKNOWN_TYPE,
        DecodeReason.UNSUPPORTED_VERSION,
        DecodeReason.LAMP_MISMATCH,
        DecodeReason.NO_SITE,
        DecodeReason.TS_IN_FUTURE,
    }
    assert tested == set(DecodeReason)
