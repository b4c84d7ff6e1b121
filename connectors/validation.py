"""Edge validation of lamp messages (``../shared/lamp-protocol.md``): pure, no I/O.

A message is accepted when its MQTT topic is a lamp topic, its payload is a UTF-8 JSON object of
at most 4 KiB, the common fields are present with their types, ``lamp_id`` equals the topic's,
``type`` is known and the type's own fields have their types. Unknown extra fields are kept:
newer firmware adds fields. Everything else is rejected with a reason code and a detail.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MAX_PAYLOAD_BYTES = 4096
SEQ_MAX = 2**32 - 1
TOPIC = re.compile(r"^lamps/([a-z0-9-]{1,32})/([A-Za-z0-9_-]{1,40})/(events|telemetry|status)$")


class Reason(StrEnum):
    TOPIC = "bad_topic"
    OVERSIZED = "oversized"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_VALUE = "bad_value"
    LAMP_MISMATCH = "lamp_id_mismatch"
    UNKNOWN_TYPE = "unknown_type"


@dataclass(frozen=True, slots=True)
class Accepted:
    site_id: str
    lamp_id: str
    channel: str  # events | telemetry | status
    type: str
    seq: int
    ts: int


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str
    lamp_id: str | None  # the topic's, when the topic is a lamp topic


# Field kinds: "int" excludes booleans (JSON true is not a number here), "num" is int or float.
ZONES = frozenset({"bed", "room", "bathroom", "entrance", "floor"})
POSTURES = frozenset({"standing", "sitting", "lying", "on_floor", "absent"})
ACTIONS = frozenset({"press", "long_press", "cancel"})

# type -> {field: (kind, required, allowed values or (min, max) or None)}
FieldSpec = tuple[str, bool, Any]
TYPE_FIELDS: dict[str, dict[str, FieldSpec]] = {
    "motion": {"zone": ("str", True, ZONES), "level": ("int", True, (0, 100))},
    "posture": {
        "posture": ("str", True, POSTURES),
        "zone": ("str", True, ZONES),
        "confidence": ("num", True, (0, 1)),
        "persons": ("int", True, (0, 2**31)),
    },
    "fall_suspected": {"confidence": ("num", True, (0, 1)), "zone": ("str", True, ZONES)},
    "button": {"accessory_id": ("str", True, None), "action": ("str", True, ACTIONS)},
    "temperature": {"celsius": ("num", True, None), "humidity": ("num", False, (0, 100))},
    "heartbeat": {
        "fw": ("str", True, None),
        "uptime_s": ("int", True, None),
        "rssi": ("int", True, None),
    },
    "status": {"online": ("bool", True, None)},
}
COMMON_FIELDS: dict[str, FieldSpec] = {
    "v": ("int", True, (1, 1)),
    "lamp_id": ("str", True, None),
    "seq": ("int", True, (0, SEQ_MAX)),
    "ts": ("int", True, (0, 2**53)),
    "type": ("str", True, None),
}


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "num":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    return isinstance(value, bool)


def _check_fields(body: dict[str, Any], specs: dict[str, FieldSpec]) -> Rejected | None:
    for name, (kind, required, allowed) in specs.items():
        if name not in body:
            if required:
                return Rejected(Reason.MISSING_FIELD, f"missing field {name!r}", None)
            continue
        value = body[name]
        if not _kind_ok(kind, value):
            return Rejected(
                Reason.WRONG_TYPE,
                f"field {name!r} must be {kind}, got {type(value).__name__}",
                None,
            )
        if isinstance(allowed, frozenset) and value not in allowed:
            return Rejected(Reason.BAD_VALUE, f"field {name!r} has unknown value {value!r}", None)
        if isinstance(allowed, tuple) and not allowed[0] <= value <= allowed[1]:
            return Rejected(
                Reason.BAD_VALUE,
                f"field {name!r}={value!r} outside {allowed[0]}..{allowed[1]}",
                None,
            )
    return None


def validate(topic: str, payload: bytes) -> Accepted | Rejected:  # noqa: PLR0911
    match = TOPIC.match(topic)
    if match is None:
        return Rejected(Reason.TOPIC, f"not a lamp topic: {topic[:120]!r}", None)
    site_id, topic_lamp, channel = match.groups()
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejected(Reason.OVERSIZED, f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}", topic_lamp)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(Reason.NOT_UTF8, str(exc)[:200], topic_lamp)
    try:
        body = json.loads(text)
    except ValueError as exc:
        return Rejected(Reason.NOT_JSON, str(exc)[:200], topic_lamp)
    if not isinstance(body, dict):
        return Rejected(Reason.NOT_OBJECT, f"JSON {type(body).__name__}, not an object", topic_lamp)
    problem = _check_fields(body, COMMON_FIELDS)
    if problem is None and body["lamp_id"] != topic_lamp:
        problem = Rejected(
            Reason.LAMP_MISMATCH,
            f"payload lamp_id {body['lamp_id'][:60]!r} on {topic_lamp}'s topic",
            None,
        )
    if problem is None:
        fields = TYPE_FIELDS.get(body["type"])
        if fields is None:
            problem = Rejected(Reason.UNKNOWN_TYPE, f"unknown type {body['type'][:60]!r}", None)
        else:
            problem = _check_fields(body, fields)
    if problem is not None:
        return Rejected(problem.reason, problem.detail, topic_lamp)
    return Accepted(site_id, topic_lamp, channel, body["type"], body["seq"], body["ts"])
