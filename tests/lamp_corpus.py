"""The lamp messages the tests play, valid and junk, with the reason code each junk must get.

One corpus for every place a lamp message is judged: the connector's validation
(tests/unit/connectors/test_validation.py), the workers' decoding (tests/unit/agents/
test_events.py), the protocol model and its JSON Schema (tests/unit/schemas/
test_lamp_protocol.py, which also feeds every case to both and compares), and the junk the
integration tests publish (:func:`junk_kinds`, :func:`restart_junk`) and the simulator sends.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from devtools.simulator import network
from schemas.lamp_protocol import MAX_PAYLOAD_BYTES, Reason

TOPIC = "lamps/fr-lyon-12/L-000123/events"
LAMP = "L-000123"
TS = 1_764_230_400_123  # the protocol's example; the workers' tests ingest at INGEST_MS
INGEST_MS = TS + 1_000
DROP = object()  # a field left out of the message


def message(**changes: Any) -> dict[str, Any]:
    """The protocol's example (a fall_suspected), changed; DROP removes a field."""
    body: dict[str, Any] = {
        "v": 1,
        "lamp_id": LAMP,
        "seq": 4812,
        "ts": TS,
        "type": "fall_suspected",
        "confidence": 0.82,
        "zone": "floor",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not DROP}


def of_type(kind: str, **fields: Any) -> dict[str, Any]:
    """A message of ``kind`` with only its own fields."""
    return {"v": 1, "lamp_id": LAMP, "seq": 1, "ts": TS, "type": kind, **fields}


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


VALID: list[dict[str, Any]] = [
    message(),
    of_type("motion", zone="bed", level=0),
    of_type("motion", zone="bathroom", level=100),
    of_type("posture", posture="on_floor", zone="floor", confidence=1, persons=2),
    of_type("posture", posture="absent", zone="room", confidence=0.0, persons=0),
    of_type("fall_suspected", confidence=0.6, zone="entrance"),
    of_type("button", accessory_id="P-1", action="long_press"),
    of_type("button", accessory_id="cord", action="cancel"),
    of_type("temperature", celsius=16.5),
    of_type("temperature", celsius=31, humidity=55.5),
    of_type("temperature", celsius=-3.5, humidity=0),
    of_type("heartbeat", fw="1.2.3", uptime_s=10, rssi=-67),
    of_type("status", online=True),
    {**of_type("status", online=False), "seq": 0, "ts": 0},  # the broker's last will
    of_type("motion", zone="room", level=3, new_firmware_field=[1, {"x": None}]),
    message(seq=2**32 - 1),
    message(battery=87, fw_flags={"beta": True}),
]


@dataclass(frozen=True)
class Junk:
    name: str
    payload: bytes
    reason: Reason
    topic: str = TOPIC

    def __str__(self) -> str:  # the test id
        return self.name


def _fields(name: str, reason: Reason, **changes: Any) -> Junk:
    return Junk(name, encode(message(**changes)), reason)


def junk_kinds(lamp_id: str, seq: int, good: bytes) -> list[tuple[Reason, bytes]]:
    """The connector's integration test junk (tests/integration/connectors/test_mqtt_source.py):
    one of each kind, for ``lamp_id``, from ``good``, a valid motion message of it."""
    body = json.loads(good)
    return [
        (Reason.NOT_JSON, b"\x00garbage" + str(seq).encode()),
        (Reason.NOT_JSON, good[:-7]),  # truncated
        (Reason.WRONG_TYPE, json.dumps({**body, "seq": str(seq)}).encode()),
        (Reason.UNKNOWN_TYPE, json.dumps({**body, "type": "selfie"}).encode()),
        (Reason.LAMP_ID_MISMATCH, json.dumps({**body, "lamp_id": "L-other"}).encode()),
        (Reason.OVERSIZED, json.dumps({**body, "pad": "x" * MAX_PAYLOAD_BYTES}).encode()),
        (Reason.MISSING_FIELD, json.dumps({k: v for k, v in body.items() if k != "ts"}).encode()),
        (Reason.NOT_UTF8, b'{"v": 1, "lamp_id": "\xff"}'),
        (Reason.NOT_OBJECT, b"[]"),
        (Reason.BAD_VALUE, json.dumps({**body, "level": 101}).encode()),
    ]


def restart_junk(lamp_id: str, other: str, n: int, good: bytes) -> list[tuple[Reason, bytes]]:
    """The junk of tests/integration/pipeline/test_kafka_restart.py, with its reasons."""
    valid = {"v": 1, "lamp_id": lamp_id, "seq": 10_000 + n, "ts": TS}
    return [
        (Reason.NOT_JSON, good[:-7]),  # truncated
        (Reason.NOT_UTF8, b"\xff\xfe\x00junk" + str(n).encode()),  # binary
        (Reason.NOT_OBJECT, json.dumps([lamp_id, n]).encode()),
        (
            Reason.WRONG_TYPE,
            json.dumps({**valid, "type": "motion", "zone": "room", "level": str(n)}).encode(),
        ),
        (Reason.UNKNOWN_TYPE, json.dumps({**valid, "type": f"teleport{n}"}).encode()),
        # Another lamp's id, and no heartbeat fields: the payload's fault is found first.
        (
            Reason.MISSING_FIELD,
            json.dumps({**valid, "lamp_id": other, "type": "heartbeat"}).encode(),
        ),
        (
            Reason.MISSING_FIELD,
            json.dumps({"v": 1, "seq": n, "ts": 1, "type": "motion", "zone": "room"}).encode(),
        ),
        (
            Reason.BAD_VALUE,
            json.dumps({**valid, "type": "motion", "zone": "room", "level": 10**30}).encode(),
        ),
        (Reason.MISSING_FIELD, (b'{"a":' * 200) + str(n).encode() + b"}" * 200),  # deep nesting
        (
            Reason.NOT_JSON,
            b'{"v":1,"lamp_id":"' + lamp_id.encode() + b'","seq":NaN,"n":' + str(n).encode() + b"}",
        ),
    ]


# What each kind of the simulator's junk (devtools/simulator/network.py) must be refused for.
SIMULATOR_REASONS: dict[str, Reason] = {
    "not_json": Reason.NOT_JSON,
    "truncated": Reason.NOT_JSON,
    "not_utf8": Reason.NOT_UTF8,
    "wrong_type": Reason.WRONG_TYPE,
    "unknown_type": Reason.UNKNOWN_TYPE,
    "lamp_id_mismatch": Reason.LAMP_ID_MISMATCH,
    "oversized": Reason.OVERSIZED,
    "not_object": Reason.NOT_OBJECT,
}


def _junk() -> list[Junk]:
    cases = [
        # -- the topic ---------------------------------------------------------------------
        Junk("topic-commands", encode(message()), Reason.BAD_TOPIC, "lamps/fr-lyon-12/L-1/cmd"),
        Junk("topic-upper-site", encode(message()), Reason.BAD_TOPIC, "lamps/FR/L-000123/events"),
        Junk("topic-empty", encode(message()), Reason.BAD_TOPIC, ""),
        Junk("topic-short", encode(message()), Reason.BAD_TOPIC, "lamps/fr-lyon-12/L-000123"),
        Junk("topic-no-site", encode(message()), Reason.BAD_TOPIC, "lamps//L-000123/events"),
        Junk("topic-devices", encode(message()), Reason.BAD_TOPIC, "devices/fr/L-000123/events"),
        Junk("topic-extra", encode(message()), Reason.BAD_TOPIC, TOPIC + "/extra"),
        Junk("topic-long-site", encode(message()), Reason.BAD_TOPIC, f"lamps/{'a' * 33}/L/events"),
        # -- the bytes ---------------------------------------------------------------------
        Junk("oversized", b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", Reason.OVERSIZED),
        Junk("oversized-padding", encode(message(padding="x" * 4096)), Reason.OVERSIZED),
        Junk("not-utf8", b"\xff\xfe{}", Reason.NOT_UTF8),
        Junk("not-utf8-short", b"\xff\xfe", Reason.NOT_UTF8),
        Junk(
            "not-utf8-in-extra-field", encode(message())[:-1] + b', "x": "\xff"}', Reason.NOT_UTF8
        ),
        Junk("empty", b"", Reason.NOT_JSON),
        Junk("not-json", b"not json at all", Reason.NOT_JSON),
        Junk("truncated", encode(message())[:-5], Reason.NOT_JSON),
        Junk("truncated-head", b'{"v": 1, "lamp_id": ', Reason.NOT_JSON),
        Junk("not-json-brace", b"{not json", Reason.NOT_JSON),
        Junk("nan", encode(message())[:-1] + b', "x": NaN}', Reason.NOT_JSON),
        # -- JSON, not a message -----------------------------------------------------------
        Junk("array", b"[1, 2]", Reason.NOT_OBJECT),
        Junk("string", b'"text"', Reason.NOT_OBJECT),
        Junk("number", b"42", Reason.NOT_OBJECT),
        Junk("null", b"null", Reason.NOT_OBJECT),
        *(
            _fields(f"missing-{name}", Reason.MISSING_FIELD, **{name: DROP})
            for name in ("v", "lamp_id", "seq", "ts", "type", "confidence", "zone")
        ),
        Junk(
            "missing-humidity-ok-celsius-missing",
            encode(of_type("temperature", humidity=40)),
            Reason.MISSING_FIELD,
        ),
        # -- wrong JSON types --------------------------------------------------------------
        _fields("v-string", Reason.WRONG_TYPE, v="1"),
        _fields("v-bool", Reason.WRONG_TYPE, v=True),
        _fields("lamp_id-int", Reason.WRONG_TYPE, lamp_id=123),
        _fields("seq-string", Reason.WRONG_TYPE, seq="12"),
        _fields("seq-float", Reason.WRONG_TYPE, seq=1.5),
        _fields("seq-bool", Reason.WRONG_TYPE, seq=True),  # a boolean is not a number
        _fields("ts-float", Reason.WRONG_TYPE, ts=1.5),
        _fields("ts-integral-float", Reason.WRONG_TYPE, ts=1.5e12),
        _fields("ts-null", Reason.WRONG_TYPE, ts=None),
        _fields("type-int", Reason.WRONG_TYPE, type=3),
        _fields("confidence-string", Reason.WRONG_TYPE, confidence="high"),
        _fields("zone-int", Reason.WRONG_TYPE, zone=1),
        _fields(
            "persons-float",
            Reason.WRONG_TYPE,
            type="posture",
            posture="sitting",
            zone="room",
            confidence=1,
            persons=1.0,
        ),
        _fields("accessory-int", Reason.WRONG_TYPE, type="button", accessory_id=5, action="press"),
        Junk("level-string", encode(of_type("motion", zone="bed", level="40")), Reason.WRONG_TYPE),
        Junk("celsius-string", encode(of_type("temperature", celsius="21")), Reason.WRONG_TYPE),
        Junk(
            "humidity-null",
            encode(of_type("temperature", celsius=21, humidity=None)),
            Reason.WRONG_TYPE,
        ),
        Junk("fw-int", encode(of_type("heartbeat", fw=1, uptime_s=1, rssi=-1)), Reason.WRONG_TYPE),
        Junk("online-string", encode(of_type("status", online="false")), Reason.WRONG_TYPE),
        Junk("online-int", encode(of_type("status", online=0)), Reason.WRONG_TYPE),
        Junk("online-yes", encode(of_type("status", online="yes")), Reason.WRONG_TYPE),
        # -- right types, values outside the protocol --------------------------------------
        _fields("seq-negative", Reason.BAD_VALUE, seq=-1),
        _fields("seq-2^32", Reason.BAD_VALUE, seq=2**32),
        _fields("ts-negative", Reason.BAD_VALUE, ts=-1),
        _fields("confidence-above-1", Reason.BAD_VALUE, confidence=1.01),
        _fields("confidence-1.2", Reason.BAD_VALUE, confidence=1.2),
        _fields("confidence-negative", Reason.BAD_VALUE, confidence=-0.1),
        _fields("zone-garden", Reason.BAD_VALUE, zone="garden"),
        _fields("lamp_id-empty", Reason.BAD_VALUE, lamp_id=""),
        _fields(
            "posture-dancing",
            Reason.BAD_VALUE,
            type="posture",
            posture="dancing",
            zone="room",
            confidence=1,
            persons=1,
        ),
        _fields(
            "persons-negative",
            Reason.BAD_VALUE,
            type="posture",
            posture="sitting",
            zone="room",
            confidence=1,
            persons=-1,
        ),
        _fields(
            "action-double", Reason.BAD_VALUE, type="button", accessory_id="p", action="double"
        ),
        Junk("level-101", encode(of_type("motion", zone="bed", level=101)), Reason.BAD_VALUE),
        Junk(
            "humidity-above-100",
            encode(of_type("temperature", celsius=21, humidity=100.5)),
            Reason.BAD_VALUE,
        ),
        # -- version, type, lamp -----------------------------------------------------------
        _fields("v-0", Reason.UNSUPPORTED_VERSION, v=0),
        _fields("v-2", Reason.UNSUPPORTED_VERSION, v=2),
        _fields("type-reboot", Reason.UNKNOWN_TYPE, type="reboot"),
        _fields("type-teleport", Reason.UNKNOWN_TYPE, type="teleport"),
        _fields("lamp_id-other", Reason.LAMP_ID_MISMATCH, lamp_id="L-999999"),
        _fields("lamp_id-not-a-lamp-id", Reason.LAMP_ID_MISMATCH, lamp_id="L 000123"),
        Junk(
            "lamp_id-other-topic",
            encode(message()),
            Reason.LAMP_ID_MISMATCH,
            "lamps/fr-lyon-12/L-000999/events",
        ),
    ]
    good = json.dumps({"v": 1, "lamp_id": LAMP, "seq": 7, "ts": TS, "type": "motion",
                       "zone": "room", "level": 7}).encode()  # fmt: skip
    cases += [
        Junk(f"connector-it-{i}-{reason}", payload, reason)
        for i, (reason, payload) in enumerate(junk_kinds(LAMP, 7, good))
    ]
    cases += [
        Junk(f"restart-it-{i}-{reason}", payload, reason)
        for i, (reason, payload) in enumerate(restart_junk(LAMP, "L-000124", 3, good))
    ]
    rng = random.Random(7)
    cases += [
        Junk(f"simulator-{kind}-{n}", network.junk(kind, LAMP, n, TS, rng), reason)
        for kind, reason in SIMULATOR_REASONS.items()
        for n in range(3)  # "truncated" cuts at a random place
    ]
    return cases


JUNK = _junk()
