"""Typed lamp events decoded from ``lamp.messages.v1`` records (protocol v1). Pure.

The connector already rejected most junk, but records may come from elsewhere (a replay, a
test, a new connector), so decoding checks again what the rules rely on and says why it
refused. Unknown extra fields are kept in ``payload``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

ZONES = frozenset({"bed", "room", "bathroom", "entrance", "floor"})
POSTURES = frozenset({"standing", "sitting", "lying", "on_floor", "absent"})
BUTTON_ACTIONS = frozenset({"press", "long_press", "cancel"})
TYPES = frozenset(
    {"motion", "posture", "fall_suspected", "button", "temperature", "heartbeat", "status"}
)
SITE_PATTERN = re.compile(r"[a-z0-9-]{1,32}")
MAX_PAYLOAD_BYTES = 4096


class DecodeReason(StrEnum):
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    OVERSIZED = "oversized"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    LAMP_MISMATCH = "lamp_mismatch"
    NO_SITE = "no_site"
    TS_IN_FUTURE = "ts_in_future"


class DecodeError(ValueError):
    def __init__(self, reason: DecodeReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class LampEvent:
    """One lamp message. ``ts`` is the lamp's clock; ``ingest_ms`` the Kafka record time."""

    lamp_id: str
    site_id: str
    seq: int
    ts: int
    type: str
    payload: dict[str, Any]
    ingest_ms: int

    @property
    def is_last_will(self) -> bool:
        # The broker's last will carries no time of its own (seq 0, ts 0).
        return self.type == "status" and self.ts == 0 and self.seq == 0

    def str_field(self, name: str) -> str:
        return str(self.payload[name])

    def number(self, name: str) -> float:
        return float(self.payload[name])

    def integer(self, name: str) -> int:
        return int(self.payload[name])


def _require(payload: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    if name not in payload:
        raise DecodeError(DecodeReason.MISSING_FIELD, f"{name} is missing")
    value = payload[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise DecodeError(DecodeReason.WRONG_TYPE, f"{name} must be {what}, got {value!r:.40}")
    return value


def _one_of(payload: dict[str, Any], name: str, allowed: frozenset[str]) -> None:
    value = _require(payload, name, (str,), "a string")
    if value not in allowed:
        raise DecodeError(DecodeReason.WRONG_TYPE, f"{name}={value!r:.40} is not one of the values")


def _unit(payload: dict[str, Any], name: str) -> None:
    value = _require(payload, name, (int, float), "a number")
    if not 0.0 <= value <= 1.0:
        raise DecodeError(DecodeReason.WRONG_TYPE, f"{name}={value} is outside 0..1")


def _check_type_fields(kind: str, payload: dict[str, Any]) -> None:
    if kind == "motion":
        _one_of(payload, "zone", ZONES)
        _require(payload, "level", (int,), "an integer")
    elif kind == "posture":
        _one_of(payload, "posture", POSTURES)
        _one_of(payload, "zone", ZONES)
        _unit(payload, "confidence")
        persons = _require(payload, "persons", (int,), "an integer")
        if persons < 0:
            raise DecodeError(DecodeReason.WRONG_TYPE, "persons is negative")
    elif kind == "fall_suspected":
        _unit(payload, "confidence")
        _one_of(payload, "zone", ZONES)
    elif kind == "button":
        _require(payload, "accessory_id", (str,), "a string")
        _one_of(payload, "action", BUTTON_ACTIONS)
    elif kind == "temperature":
        _require(payload, "celsius", (int, float), "a number")
    elif kind == "heartbeat":
        _require(payload, "fw", (str,), "a string")
    elif kind == "status":
        _require(payload, "online", (bool,), "a boolean")


def site_from_mqtt_topic(topic: str | None) -> str | None:
    """``lamps/{site_id}/{lamp_id}/{channel}`` → site_id."""
    if not topic:
        return None
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "lamps" or not SITE_PATTERN.fullmatch(parts[1]):
        return None
    return parts[1]


def _looks_valid(payload: dict[str, Any]) -> bool:
    """The common case, checked quickly; anything else takes the checks that say why."""
    kind = payload.get("type")
    if not (
        payload.get("v") == 1
        and type(payload.get("lamp_id")) is str
        and type(payload.get("seq")) is int
        and type(payload.get("ts")) is int
        and 0 <= payload["seq"] < 2**32
    ):
        return False
    get = payload.get
    if kind == "posture":
        confidence: Any = get("confidence")
        persons: Any = get("persons")
        return (
            get("posture") in POSTURES
            and get("zone") in ZONES
            and type(persons) is int
            and persons >= 0
            and type(confidence) in (int, float)
            and 0.0 <= confidence <= 1.0
        )
    if kind == "motion":
        return get("zone") in ZONES and type(get("level")) is int
    if kind in ("heartbeat", "temperature"):
        return (
            type(get("fw")) is str if kind == "heartbeat" else type(get("celsius")) in (int, float)
        )
    return False  # the rarer types take the full checks


def decode_event(
    key: bytes | None,
    value: bytes | None,
    mqtt_topic: str | None,
    ingest_ms: int,
    max_future_ms: int,
) -> LampEvent:
    """Decode one record of ``lamp.messages.v1``, or raise :class:`DecodeError` saying why."""
    if value is None:
        raise DecodeError(DecodeReason.NOT_JSON, "empty record")
    if len(value) > MAX_PAYLOAD_BYTES:
        raise DecodeError(DecodeReason.OVERSIZED, f"{len(value)} bytes")
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(DecodeReason.NOT_JSON, str(exc)[:120]) from None
    if not isinstance(payload, dict):
        raise DecodeError(DecodeReason.NOT_AN_OBJECT, type(payload).__name__)
    if _looks_valid(payload):
        lamp_id, seq, ts, kind = payload["lamp_id"], payload["seq"], payload["ts"], payload["type"]
        if key is not None and key != lamp_id.encode():
            raise DecodeError(
                DecodeReason.LAMP_MISMATCH, f"key {key!r:.60} but lamp_id {lamp_id!r}"
            )
    else:
        lamp_id, seq, ts, kind = _check(key, payload)
    return _with_site(lamp_id, seq, ts, kind, payload, mqtt_topic, ingest_ms, max_future_ms)


def _check(key: bytes | None, payload: dict[str, Any]) -> tuple[str, int, int, str]:
    if _require(payload, "v", (int,), "an integer") != 1:
        raise DecodeError(DecodeReason.UNSUPPORTED_VERSION, f"v={payload['v']}")
    lamp_id = _require(payload, "lamp_id", (str,), "a string")
    if key is not None and key != lamp_id.encode():
        raise DecodeError(DecodeReason.LAMP_MISMATCH, f"key {key!r:.60} but lamp_id {lamp_id!r}")
    seq = _require(payload, "seq", (int,), "an integer")
    ts = _require(payload, "ts", (int,), "an integer")
    if not 0 <= seq < 2**32:
        raise DecodeError(DecodeReason.WRONG_TYPE, f"seq={seq} is outside 0..2^32")
    kind = _require(payload, "type", (str,), "a string")
    if kind not in TYPES:
        raise DecodeError(DecodeReason.UNKNOWN_TYPE, f"type={kind!r:.40}")
    _check_type_fields(kind, payload)
    return lamp_id, seq, ts, kind


def _with_site(  # noqa: PLR0917 - the decoded fields, passed on once
    lamp_id: str,
    seq: int,
    ts: int,
    kind: str,
    payload: dict[str, Any],
    mqtt_topic: str | None,
    ingest_ms: int,
    max_future_ms: int,
) -> LampEvent:
    site_id = site_from_mqtt_topic(mqtt_topic)
    if site_id is None:
        raise DecodeError(DecodeReason.NO_SITE, f"no site in mqtt.topic header {mqtt_topic!r:.80}")
    topic_lamp = mqtt_topic.split("/")[2] if mqtt_topic else None
    if topic_lamp != lamp_id:
        raise DecodeError(
            DecodeReason.LAMP_MISMATCH,
            f"lamp_id {lamp_id!r:.60} on the topic of {topic_lamp!r:.60}",
        )
    if ts - ingest_ms > max_future_ms and not (kind == "status" and ts == 0):
        raise DecodeError(
            DecodeReason.TS_IN_FUTURE, f"ts is {(ts - ingest_ms) / 1000:.0f} s ahead of ingest"
        )
    return LampEvent(lamp_id, site_id, seq, ts, kind, payload, ingest_ms)
