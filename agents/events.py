"""Typed lamp events decoded from ``lamp.messages.v1`` records: the workers' adapter to
``schemas.lamp_protocol``. Pure.

The connector already rejected most junk, but records may come from elsewhere (a replay, a
test, a new connector), so decoding checks the record again with the same protocol model
(:mod:`schemas.lamp_protocol`): a payload the connector would refuse is refused here with the
same reason code. Beyond it, a worker checks what only it knows: the record's key and time.
Unknown extra fields are kept in ``payload``.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from schemas.lamp_protocol import ProtocolError, Reason, decode, message_type, parse_topic

# The protocol's error and reason codes, under the names the engine uses.
DecodeError = ProtocolError
DecodeReason = Reason

# The payload as a plain dict, unknown fields included, once the model accepted it.
_AS_DICT: Final = msgspec.json.Decoder(dict[str, Any])


class LampEvent(msgspec.Struct, frozen=True, gc=False):
    """One lamp message. ``ts`` is the lamp's clock; ``ingest_ms`` the Kafka record time.

    A Struct, not a dataclass: one is built per record, and a frozen dataclass's ``__init__``
    cost as much as the decoding (``benchmarks/lamp_protocol.py``). Untracked by the garbage
    collector (``gc=False``): its payload never refers back to it.
    """

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


def site_from_mqtt_topic(topic: str | None) -> str | None:
    """``lamps/{site_id}/{lamp_id}/{channel}`` → site_id."""
    where = parse_topic(topic)
    return where.site_id if where else None


def decode_event(
    key: bytes | None,
    value: bytes | None,
    mqtt_topic: str | None,
    ingest_ms: int,
    max_future_ms: int,
) -> LampEvent:
    """Decode one record of ``lamp.messages.v1``, or raise :class:`DecodeError` saying why.

    ``mqtt_topic`` is the record's ``mqtt.topic`` header: the site comes from it.
    """
    where, message = decode(mqtt_topic, value)
    lamp_id, ts = message.lamp_id, message.ts
    if key is not None and key != lamp_id.encode():
        raise DecodeError(
            Reason.LAMP_ID_MISMATCH, f"key {key!r:.60} but lamp_id {lamp_id!r}", where
        )
    kind = message_type(message)
    if ts - ingest_ms > max_future_ms and not (kind == "status" and ts == 0):
        raise DecodeError(
            Reason.TS_IN_FUTURE, f"ts is {(ts - ingest_ms) / 1000:.0f} s ahead of ingest", where
        )
    # The model accepted these bytes: the second, untyped pass cannot fail.
    payload = _AS_DICT.decode(value) if value is not None else {}
    return LampEvent(lamp_id, where.site_id, message.seq, ts, kind, payload, ingest_ms)
