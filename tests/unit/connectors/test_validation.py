from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.validation import MAX_PAYLOAD_BYTES, Accepted, Reason, Rejected, validate
from tests.lamp_corpus import JUNK, Junk

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


@pytest.mark.parametrize("junk", JUNK, ids=str)
def test_junk_is_rejected_with_its_reason(junk: Junk) -> None:
    """Every junk payload of the tests' corpus (tests/lamp_corpus.py), with its reason code."""
    verdict = validate(junk.topic, junk.payload)
    assert isinstance(verdict, Rejected)
    assert verdict.reason is junk.reason, verdict.detail
    assert verdict.detail
    if junk.reason is Reason.BAD_TOPIC:
        assert verdict.lamp_id is None
    else:  # so the DLQ record is keyed by the topic's lamp
        assert verdict.lamp_id == junk.topic.split("/")[2]


def test_exactly_4_kib_is_allowed() -> None:
    body = encode(message())
    padded = body[:-1] + b" " * (MAX_PAYLOAD_BYTES - len(body)) + b"}"
    assert len(padded) == MAX_PAYLOAD_BYTES
    assert isinstance(validate(TOPIC, padded), Accepted)
