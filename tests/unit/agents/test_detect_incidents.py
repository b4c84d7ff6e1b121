"""The detection agent's adapter: records in; Avro alerts, side outputs and changelog out."""

from __future__ import annotations

import orjson

from agents.detect_incidents import DetectIncidents
from agents.testing import T0_MS
from pipeline.records import KafkaRecord
from pipeline.settings import load_settings
from schemas import decode, encode, millis, schema

SETTINGS = load_settings(kafka={"topic_prefix": "x."})


def record(
    offset: int,
    payload: object,
    *,
    key: bytes = b"L-1",
    topic: str = "x.lamp.messages.v1",
    at_ms: int = T0_MS,
) -> KafkaRecord:
    value = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return KafkaRecord(
        topic, 2, offset, at_ms, key, value, (("mqtt.topic", b"lamps/s-1/L-1/events"),)
    )


def message(seq: int, kind: str, at_ms: int = T0_MS, **fields: object) -> dict[str, object]:
    return {"v": 1, "lamp_id": "L-1", "seq": seq, "ts": at_ms, "type": kind, **fields}


def agent(wall_ms: list[int]) -> DetectIncidents:
    detect = DetectIncidents(SETTINGS, wall_clock=lambda: wall_ms[0])
    detect.assign([2], [])
    return detect


def test_a_help_request_becomes_an_avro_alert_keyed_by_lamp_with_its_state_changelogged() -> None:
    wall = [T0_MS]
    detect = agent(wall)
    detect.process(2, [record(0, message(0, "button", accessory_id="p", action="press"))])
    result = detect.take_result()
    (alert,) = [p for p in result.produce if p.topic == "x.alerts.v1"]
    assert alert.key == b"L-1"
    writer, body = decode(alert.value)
    assert writer.name == "alert.v1"
    assert (body["kind"], body["severity"], body["state"]) == (
        "help_requested",
        "critical",
        "raised",
    )
    assert millis(body["incident_started_at"]) == T0_MS
    assert list(result.changelog) == [2] and list(result.changelog[2]) == [b"L-1"]
    assert orjson.loads(result.changelog[2][b"L-1"].partition(b"\x00")[0])["lamp_id"] == "L-1"
    assert detect.take_result().produce == []


def test_junk_is_dead_lettered_with_its_reason_and_origin() -> None:
    detect = agent([T0_MS])
    detect.process(2, [record(7, b"{oops")])
    (dead,) = detect.take_result().produce
    headers = dict(dead.headers)
    assert dead.topic == "x.lamp.dlq.v1" and dead.value == b"{oops"
    assert headers["reject.reason"] == b"not_json"
    assert headers["source.offset"] == b"7" and headers["source.partition"] == b"2"


def test_a_silent_lamps_fall_is_raised_by_advance_with_its_deadline_reported() -> None:
    wall = [T0_MS]
    detect = agent(wall)
    detect.process(2, [record(0, message(0, "fall_suspected", confidence=0.9, zone="floor"))])
    detect.take_result()
    wall[0] = T0_MS + 29_000
    detect.advance(2, wall[0])
    assert detect.take_result().produce == []
    wall[0] = T0_MS + 30_100
    detect.advance(2, wall[0])
    result = detect.take_result()
    assert [decode(p.value)[1]["kind"] for p in result.produce] == ["fall"]
    assert result.deadlines_ms == [T0_MS + 30_000]


def test_an_acknowledgement_on_the_acks_topic_closes_the_incident() -> None:
    detect = agent([T0_MS])
    detect.process(2, [record(0, message(0, "button", accessory_id="p", action="press"))])
    raised = decode(detect.take_result().produce[0].value)[1]
    ack = encode(
        schema("alert_ack.v1"),
        {
            "alert_id": raised["alert_id"],
            "lamp_id": "L-1",
            "acknowledged_by": "nurse",
            "acknowledged_at": T0_MS + 60_000,
        },
    )
    detect.process(2, [record(0, ack, topic="x.alerts.acks.v1")])
    (resolved,) = [decode(p.value)[1] for p in detect.take_result().produce]
    assert (resolved["alert_id"], resolved["state"]) == (raised["alert_id"], "resolved")
    assert resolved["details"]["acknowledged_by"] == "nurse"


def test_a_bad_acknowledgement_is_dead_lettered() -> None:
    detect = agent([T0_MS])
    detect.process(2, [record(0, b"not avro", topic="x.alerts.acks.v1")])
    (dead,) = detect.take_result().produce
    assert dead.topic == "x.lamp.dlq.v1" and dict(dead.headers)["reject.reason"] == b"bad_ack"


def test_revoking_a_partition_forgets_its_lamps() -> None:
    detect = agent([T0_MS])
    detect.revoke(2)
    assert detect.engines == {}


def test_assign_sorts_the_stored_states_by_partition_and_restores_deadlines() -> None:
    """One pass over every stored state: each partition gets its lamps, and the lamps with
    deadlines are scheduled at once (a silent lamp's fall must still fire), without decoding
    them until their deadline fires (lazy restore)."""
    wall = [T0_MS]
    first = agent(wall)
    first.process(2, [record(0, message(0, "fall_suspected", confidence=0.9, zone="floor"))])
    stored = list(first.take_result().changelog[2].values())
    other = DetectIncidents(SETTINGS, wall_clock=lambda: wall[0])
    other.assign([1, 2], [*stored, b"garbage"])
    assert set(other.engines) == {1, 2}
    assert other.engines[1].lamps == {}
    assert "L-1" not in other.engines[2].lamps  # still encoded ...
    assert "L-1" in other.engines[2].scheduled  # ... but its deadline is scheduled
    assert other.counts["state_unreadable"] == 1
    wall[0] = T0_MS + 30_100
    other.advance(2, wall[0])
    assert [decode(p.value)[1]["kind"] for p in other.take_result().produce] == ["fall"]
