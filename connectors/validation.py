"""Edge validation of lamp messages: the connector's adapter to ``schemas.lamp_protocol``. Pure.

A message is accepted when its MQTT topic is a lamp topic and its payload is what the protocol
model (:mod:`schemas.lamp_protocol`) accepts, with ``lamp_id`` equal to the topic's. Unknown
extra fields are kept: the payload is forwarded as it came. Everything else is rejected with
the protocol's reason code (the same a worker would write) and a detail.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.lamp_protocol import (
    MAX_PAYLOAD_BYTES,
    TOPIC,
    ProtocolError,
    Reason,
    decode,
    message_type,
)

__all__ = ["MAX_PAYLOAD_BYTES", "TOPIC", "Accepted", "Reason", "Rejected", "validate"]


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


def validate(topic: str, payload: bytes) -> Accepted | Rejected:
    try:
        where, message = decode(topic, payload)
    except ProtocolError as exc:
        return Rejected(exc.reason, exc.detail, exc.topic.lamp_id if exc.topic else None)
    return Accepted(
        where.site_id, where.lamp_id, where.channel, message_type(message), message.seq, message.ts
    )
