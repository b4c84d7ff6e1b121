"""Junk payloads, of every kind the protocol says arrives now and then. Pure."""

from __future__ import annotations

import random

import orjson

JUNK_REASONS = (
    "not_json",
    "truncated",
    "not_utf8",
    "wrong_type",
    "unknown_type",
    "lamp_id_mismatch",
    "oversized",
    "not_object",
)


def junk(  # noqa: PLR0911 - one return per kind of junk
    reason: str, lamp_id: str, seq: int, ts: int, rng: random.Random
) -> bytes:
    """A payload the connector must reject (to ``lamp.dlq.v1``) for ``reason``."""
    body = {
        "v": 1,
        "lamp_id": lamp_id,
        "seq": seq,
        "ts": ts,
        "type": "motion",
        "zone": "room",
        "level": 30,
    }
    if reason == "not_json":
        return b"motion room 30 " + str(ts).encode()
    if reason == "truncated":
        data = orjson.dumps(body)
        return data[: rng.randrange(5, len(data) - 2)]
    if reason == "not_utf8":
        return b'{"v":1,"lamp_id":"' + lamp_id.encode() + b'\xff\xfe"}'
    if reason == "wrong_type":
        return orjson.dumps({**body, "seq": str(seq)})
    if reason == "unknown_type":
        return orjson.dumps({**body, "type": "selfie"})
    if reason == "lamp_id_mismatch":
        return orjson.dumps({**body, "lamp_id": lamp_id + "X"})
    if reason == "oversized":
        return orjson.dumps({**body, "debug": "x" * 5_000})
    if reason == "not_object":
        return orjson.dumps([body])
    raise ValueError(f"unknown junk reason {reason!r}")
