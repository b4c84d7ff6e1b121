from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.validation import MAX_PAYLOAD_BYTES, Accepted, Reason, Rejected, validate

TOPIC = "lamps/fr-lyon-12/L-000123/events"


def message(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "lamp_id": "L-000123",
        "seq": 4812,
        "ts": 1764230400123,
        "type": "fall_suspected",
        "confidence": 0.82,
        "zone": "floor",
    }
    body.update(overrides)
    return body


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def test_the_protocol_example_is_accepted() -> None:
    verdict = validate(TOPIC, encode(message()))
    assert verdict == Accepted(
        "fr-lyon-12", "L-000123", "events", "fall_suspected", 4812, 1764230400123
    )


@pytest.mark.parametrize(
    "body",
    [
        {"type": "motion", "zone": "bed", "level": 0},
        {"type": "motion", "zone": "bathroom", "level": 100},
        {"type": "posture", "posture": "on_floor", "zone": "floor", "confidence": 1, "persons": 2},
        {"type": "button", "accessory_id": "P-1", "action": "long_press"},
        {"type": "temperature", "celsius": 16.5},
        {"type": "temperature", "celsius": 31, "humidity": 55.5},
        {"type": "heartbeat", "fw": "1.2.3", "uptime_s": 10, "rssi": -67},
        {"type": "status", "online": False, "seq": 0, "ts": 0},  # the broker's last will
        {"type": "motion", "zone": "room", "level": 3, "new_firmware_field": [1, 2]},
        {"type": "motion", "zone": "room", "level": 3, "seq": 2**32 - 1},
    ],
)
def test_valid_messages_of_every_type(body: dict[str, Any]) -> None:
    full = message(**body)
    for key in ("confidence", "zone"):
        if key not in body:
            full.pop(key, None)
    assert isinstance(validate(TOPIC, encode(full)), Accepted)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("lamps/fr-lyon-12/L-000123/commands", encode(message()), Reason.TOPIC),
        ("lamps/FR/L-000123/events", encode(message()), Reason.TOPIC),
        (TOPIC, b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", Reason.OVERSIZED),
        (TOPIC, b"\xff\xfe{}", Reason.NOT_UTF8),
        (TOPIC, b"not json at all", Reason.NOT_JSON),
        (TOPIC, encode(message())[:-5], Reason.NOT_JSON),  # truncated
        (TOPIC, b"[1, 2]", Reason.NOT_OBJECT),
        (TOPIC, encode({k: v for k, v in message().items() if k != "seq"}), Reason.MISSING_FIELD),
        (TOPIC, encode(message(seq="12")), Reason.WRONG_TYPE),
        (TOPIC, encode(message(seq=True)), Reason.WRONG_TYPE),  # a boolean is not a number
        (TOPIC, encode(message(ts=1.5)), Reason.WRONG_TYPE),
        (TOPIC, encode(message(v=2)), Reason.BAD_VALUE),
        (TOPIC, encode(message(seq=2**32)), Reason.BAD_VALUE),
        (TOPIC, encode(message(seq=-1)), Reason.BAD_VALUE),
        (TOPIC, encode(message(lamp_id="L-999999")), Reason.LAMP_MISMATCH),
        (TOPIC, encode(message(type="teleport")), Reason.UNKNOWN_TYPE),
        (TOPIC, encode(message(confidence=1.01)), Reason.BAD_VALUE),
        (TOPIC, encode(message(zone="garden")), Reason.BAD_VALUE),
        (TOPIC, encode({k: v for k, v in message().items() if k != "zone"}), Reason.MISSING_FIELD),
        (TOPIC, encode(message(type="status", online="yes")), Reason.WRONG_TYPE),
    ],
)
def test_junk_is_rejected_with_its_reason(topic: str, payload: bytes, reason: Reason) -> None:
    verdict = validate(topic, payload)
    assert isinstance(verdict, Rejected)
    assert verdict.reason is reason, verdict.detail
    assert verdict.detail
    if reason is not Reason.TOPIC:
        assert verdict.lamp_id == "L-000123"  # so the DLQ record is keyed by the topic's lamp


def test_exactly_4_kib_is_allowed() -> None:
    body = encode(message())
    padded = body[:-1] + b" " * (MAX_PAYLOAD_BYTES - len(body)) + b"}"
    assert len(padded) == MAX_PAYLOAD_BYTES
    assert isinstance(validate(TOPIC, padded), Accepted)
