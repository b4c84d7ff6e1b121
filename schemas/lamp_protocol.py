"""The lamp protocol v1 (``../shared/lamp-protocol.md``): one model of its messages. Pure.

The connector's validation (``connectors.validation``) and the workers' decoding
(``agents.events``) both check a lamp message here, so one payload gets one verdict and one
dead-letter reason code (:class:`Reason`) wherever it is refused. The firmware team gets the
same model as JSON Schema: ``python -m schemas.lamp_protocol > schemas/lamp-protocol.schema.json``
(a unit test checks the committed file). Reason codes: ``docs/lamp-protocol.md``.

Only msgspec and the errors' root (``schemas.errors``) are imported: a consumer of the schemas
does not install the pipeline.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from schemas.errors import VeilleuseError

PROTOCOL_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 4096
SEQ_MAX: Final = 2**32 - 1  # seq wraps at 2^32
TS_MAX: Final = 2**53  # epoch milliseconds; beyond, a double (and many JSON tools) loses digits
PERSONS_MAX: Final = 2**31
SITE_ID_PATTERN: Final = "[a-z0-9-]{1,32}"
LAMP_ID_PATTERN: Final = "[A-Za-z0-9_-]{1,40}"
CHANNELS: Final = ("events", "telemetry", "status")
TOPIC: Final = re.compile(
    rf"^lamps/({SITE_ID_PATTERN})/({LAMP_ID_PATTERN})/({'|'.join(CHANNELS)})$"
)


class Reason(StrEnum):
    """Why a lamp message was dead-lettered: the ``reject.reason`` header on ``lamp.dlq.v1``.

    The same fault gets the same code whether the connector or a worker finds it. When a
    message has several faults, the first one found in this order is reported: topic, size,
    encoding, JSON, then the fields as they appear in the payload, then the lamp_id.
    """

    BAD_TOPIC = "bad_topic"
    OVERSIZED = "oversized"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_VALUE = "bad_value"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"
    LAMP_ID_MISMATCH = "lamp_id_mismatch"
    TS_IN_FUTURE = "ts_in_future"
    BAD_ACK = "bad_ack"


@dataclass(frozen=True, slots=True)
class ReasonDoc:
    meaning: str
    checked_by: str  # "connector and worker", or "worker" (it needs a Kafka record)
    json_schema: bool  # whether the JSON Schema alone refuses such a payload


# The documentation of each code: docs/lamp-protocol.md's table is checked against it.
REASONS: Final[dict[Reason, ReasonDoc]] = {
    Reason.BAD_TOPIC: ReasonDoc(
        "the MQTT topic (for a worker: the record's `mqtt.topic` header) is missing or not "
        "`lamps/{site_id}/{lamp_id}/{channel}` with a channel `events`, `telemetry` or `status`",
        "connector and worker",
        False,
    ),
    Reason.OVERSIZED: ReasonDoc(
        f"the payload is larger than {MAX_PAYLOAD_BYTES} bytes", "connector and worker", False
    ),
    Reason.NOT_UTF8: ReasonDoc("the payload is not UTF-8", "connector and worker", False),
    Reason.NOT_JSON: ReasonDoc(
        "the payload is not JSON: garbage, truncated, or an empty record",
        "connector and worker",
        False,
    ),
    Reason.NOT_OBJECT: ReasonDoc(
        "the payload is JSON but not an object (an array, a string, a number, null)",
        "connector and worker",
        True,
    ),
    Reason.MISSING_FIELD: ReasonDoc(
        "a common field (`v`, `lamp_id`, `seq`, `ts`, `type`) or a required field of the "
        "message's type is absent",
        "connector and worker",
        True,
    ),
    Reason.WRONG_TYPE: ReasonDoc(
        "a field has the wrong JSON type (a string for a number, `true` for an integer, "
        "`1.5` or `1.0` for an integer, `0` for a boolean, a number for `type`); JSON Schema "
        "cannot tell `1.0` from `1`, so it lets an integer written `1.0` through",
        "connector and worker",
        True,
    ),
    Reason.BAD_VALUE: ReasonDoc(
        "a field has the right type but a value outside the protocol: a zone, posture or "
        "action it does not define, a number out of its range (`seq` beyond 2^32 - 1, "
        "`confidence` outside 0..1, `level` outside 0..100...), an empty `lamp_id` or one "
        "longer than 40 characters",
        "connector and worker",
        True,
    ),
    Reason.UNSUPPORTED_VERSION: ReasonDoc(
        f"`v` is an integer other than {PROTOCOL_VERSION}", "connector and worker", True
    ),
    Reason.UNKNOWN_TYPE: ReasonDoc(
        "`type` is a string the protocol does not define", "connector and worker", True
    ),
    Reason.LAMP_ID_MISMATCH: ReasonDoc(
        "the payload's `lamp_id` is not the topic's lamp (so also one not matching "
        f"`{LAMP_ID_PATTERN}`); for a worker, also: not the record's key",
        "connector and worker",
        False,
    ),
    Reason.TS_IN_FUTURE: ReasonDoc(
        "`ts` is further ahead of the Kafka record's time than the worker allows "
        "(`VEILLEUSE_DETECTION__MAX_FUTURE_SKEW_S`; the broker's last will, `ts` 0, is exempt)",
        "worker",
        False,
    ),
    Reason.BAD_ACK: ReasonDoc(
        "not a lamp message: a record of `alert_acks.v1` that does not decode as an "
        "acknowledgement; a worker sends it to the same dead-letter topic",
        "worker",
        False,
    ),
}


class ProtocolError(VeilleuseError, ValueError):
    """A lamp message the protocol refuses: ``reason`` is its dead-letter code.

    ``topic`` is the parsed MQTT topic when it was a lamp topic (the dead letter is keyed by
    its lamp), else None. The connector turns it into a ``Rejected`` verdict; the workers
    know it as ``agents.events.DecodeError``. A ValueError too, as that one always was.
    """

    def __init__(self, reason: Reason, detail: str, topic: LampTopic | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.topic = topic


class Zone(StrEnum):
    BED = "bed"
    ROOM = "room"
    BATHROOM = "bathroom"
    ENTRANCE = "entrance"
    FLOOR = "floor"


class Posture(StrEnum):
    STANDING = "standing"
    SITTING = "sitting"
    LYING = "lying"
    ON_FLOOR = "on_floor"
    ABSENT = "absent"


class ButtonAction(StrEnum):
    PRESS = "press"
    LONG_PRESS = "long_press"
    CANCEL = "cancel"


class MessageType(StrEnum):
    MOTION = "motion"
    POSTURE = "posture"
    FALL_SUSPECTED = "fall_suspected"
    BUTTON = "button"
    TEMPERATURE = "temperature"
    HEARTBEAT = "heartbeat"
    STATUS = "status"


Unit = Annotated[float, Meta(ge=0, le=1, description="0..1")]


class LampMessageBase(Struct, kw_only=True, frozen=True, gc=False, tag_field="type"):
    """The common fields of every lamp message. Unknown extra fields are allowed (ignored)."""

    v: Annotated[Literal[1], Meta(description="protocol version")]
    # Not matched against LAMP_ID_PATTERN here (a regex costs half of the decoding): it must
    # equal the topic's lamp, which was. The JSON Schema carries the pattern.
    lamp_id: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=40,
            description="the lamp; must equal the lamp_id of the MQTT topic",
        ),
    ]
    seq: Annotated[
        int,
        Meta(ge=0, le=SEQ_MAX, description="per-lamp counter; wraps at 2^32, 0 after a reboot"),
    ]
    ts: Annotated[
        int, Meta(ge=0, le=TS_MAX, description="device event time, epoch milliseconds UTC")
    ]


class MotionMessage(LampMessageBase, tag=MessageType.MOTION.value, frozen=True):
    """Motion seen, at most once a second (topic ``events``)."""

    zone: Zone
    level: Annotated[int, Meta(ge=0, le=100)]


class PostureMessage(LampMessageBase, tag=MessageType.POSTURE.value, frozen=True):
    """The resident's posture, on every change and every 5 s while a person is seen."""

    posture: Posture
    zone: Zone
    confidence: Unit
    persons: Annotated[int, Meta(ge=0, le=PERSONS_MAX, description="people seen in the room")]


class FallSuspectedMessage(LampMessageBase, tag=MessageType.FALL_SUSPECTED.value, frozen=True):
    """The lamp's on-device fall detector fired (it has false positives)."""

    confidence: Unit
    zone: Zone


class ButtonMessage(LampMessageBase, tag=MessageType.BUTTON.value, frozen=True):
    """A pendant or pull cord paired with the lamp."""

    accessory_id: str
    action: ButtonAction


class TemperatureMessage(LampMessageBase, tag=MessageType.TEMPERATURE.value, frozen=True):
    """Room temperature, every 60 s (topic ``telemetry``)."""

    celsius: float
    humidity: Annotated[float, Meta(ge=0, le=100)] | UnsetType = UNSET


class HeartbeatMessage(LampMessageBase, tag=MessageType.HEARTBEAT.value, frozen=True):
    """Every 60 s (topic ``telemetry``)."""

    fw: str
    uptime_s: int
    rssi: Annotated[int, Meta(description="dBm")]


class StatusMessage(LampMessageBase, tag=MessageType.STATUS.value, frozen=True):
    """Retained on ``status``; the broker publishes ``online: false``, seq 0, ts 0, as the
    lamp's last will."""

    online: bool


LampMessage = (
    MotionMessage
    | PostureMessage
    | FallSuspectedMessage
    | ButtonMessage
    | TemperatureMessage
    | HeartbeatMessage
    | StatusMessage
)
MESSAGE_CLASSES: Final[tuple[type[LampMessageBase], ...]] = (
    MotionMessage,
    PostureMessage,
    FallSuspectedMessage,
    ButtonMessage,
    TemperatureMessage,
    HeartbeatMessage,
    StatusMessage,
)
_TYPE_OF: Final[dict[type[LampMessageBase], str]] = {
    cls: str(cls.__struct_config__.tag) for cls in MESSAGE_CLASSES
}
_DECODER: Final = msgspec.json.Decoder(LampMessage)


def message_type(message: LampMessageBase) -> str:
    """The message's ``type`` (the tag msgspec reads, not kept as an attribute)."""
    return _TYPE_OF[type(message)]


class LampTopic(Struct, frozen=True, gc=False):
    """A lamp topic's parts (a Struct: built per message, it must be cheap)."""

    site_id: str
    lamp_id: str
    channel: str  # events | telemetry | status


def parse_topic(topic: str | None) -> LampTopic | None:
    """``lamps/{site_id}/{lamp_id}/{channel}``, or None if it is not a lamp topic."""
    match = TOPIC.match(topic) if topic else None
    return None if match is None else LampTopic(*match.groups())


def _reason_of(error: msgspec.ValidationError) -> Reason:
    """The reason code of a msgspec validation error, from its message.

    msgspec reports the first fault in document order as "<what> - at `$.<field>`". The
    messages are pinned by the tests of every reason (tests/unit/schemas), so a msgspec
    upgrade that rewords them fails there, not in production.
    """
    text = str(error)
    _, _, path = text.partition(" - at `$.")
    field = path.rstrip("`")
    if not path:  # about the whole payload
        if text.startswith("Object missing required field"):
            reason = Reason.MISSING_FIELD
        elif text.startswith("Expected `object`"):
            reason = Reason.NOT_OBJECT
        else:
            reason = Reason.BAD_VALUE
    elif field == "type":
        reason = Reason.UNKNOWN_TYPE if text.startswith("Invalid value") else Reason.WRONG_TYPE
    elif field == "v" and text.startswith("Invalid enum value"):
        reason = Reason.UNSUPPORTED_VERSION
    elif ", got `" in text:
        reason = Reason.WRONG_TYPE
    else:  # Invalid enum value, Expected `int` >= 0, Number out of range, a string too long...
        reason = Reason.BAD_VALUE
    return reason


def decode_payload(payload: bytes, topic: LampTopic | None = None) -> LampMessage:
    """Check one payload against the protocol, or raise :class:`ProtocolError` saying why.

    ``topic`` only rides along in the error (it names the lamp of the dead letter).
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(Reason.OVERSIZED, f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}", topic)
    if not payload.isascii():  # the common case is ASCII: UTF-8 already
        # msgspec does not check the UTF-8 of the strings it reads or skips.
        try:
            payload.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError(Reason.NOT_UTF8, str(exc)[:200], topic) from None
    try:
        return _DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        raise ProtocolError(_reason_of(exc), str(exc)[:200], topic) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(Reason.NOT_JSON, str(exc)[:200], topic) from None


def decode(topic: str | None, payload: bytes | None) -> tuple[LampTopic, LampMessage]:
    """A lamp message as it arrived on ``topic``: the checks the connector and a worker share.

    Topic, then payload, then the payload's lamp_id against the topic's. Raises
    :class:`ProtocolError` with the reason code.
    """
    where = parse_topic(topic)
    if where is None:
        raise ProtocolError(Reason.BAD_TOPIC, f"not a lamp topic: {(topic or '')[:120]!r}")
    if payload is None:
        raise ProtocolError(Reason.NOT_JSON, "empty record", where)
    message = decode_payload(payload, where)
    if message.lamp_id != where.lamp_id:
        raise ProtocolError(
            Reason.LAMP_ID_MISMATCH,
            f"payload lamp_id {message.lamp_id!r} on {where.lamp_id}'s topic",
            where,
        )
    return where, message


JSON_SCHEMA_ID: Final = "https://veilleuse.example/schemas/lamp-protocol.schema.json"


def json_schema() -> dict[str, Any]:
    """The protocol as JSON Schema (draft 2020-12), for the firmware team's own tooling.

    What JSON Schema cannot say is left to the pipeline: the payload's size and encoding, the
    topic's lamp, the time; and an integer written ``1.0`` is an integer to JSON Schema but
    ``wrong_type`` here (see ``docs/lamp-protocol.md``).
    """
    body = msgspec.json.schema(LampMessage)
    # "discriminator" is OpenAPI's keyword: strict validators (ajv) refuse unknown keywords,
    # and each branch's "type" enum already selects it.
    body.pop("discriminator", None)
    # The topic's lamp_id pattern, which the pipeline checks through the topic.
    for definition in body["$defs"].values():
        lamp_id = definition.get("properties", {}).get("lamp_id")
        if lamp_id is not None:
            lamp_id["pattern"] = f"^{LAMP_ID_PATTERN}$"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": JSON_SCHEMA_ID,
        "title": f"Veilleuse lamp protocol v{PROTOCOL_VERSION} message",
        "description": (
            f"One MQTT payload of a lamp (UTF-8 JSON, at most {MAX_PAYLOAD_BYTES} bytes), on "
            "lamps/{site_id}/{lamp_id}/{events|telemetry|status}. Unknown extra fields are "
            "allowed. Generated from schemas/lamp_protocol.py: do not edit."
        ),
        **body,
    }


def json_schema_text() -> str:
    """The committed file's exact text."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def reasons_markdown() -> str:
    """The table of reason codes in ``docs/lamp-protocol.md`` (a unit test compares them)."""
    lines = [
        "| `reject.reason` | meaning | checked by | JSON Schema refuses it |",
        "|---|---|---|---|",
    ]
    for reason, doc in REASONS.items():
        schema = "yes" if doc.json_schema else "no"
        lines.append(f"| `{reason.value}` | {doc.meaning} | {doc.checked_by} | {schema} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """``python -m schemas.lamp_protocol [--reasons]``: the JSON Schema, or the reasons table."""
    sys.stdout.write(reasons_markdown() if "--reasons" in argv else json_schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
