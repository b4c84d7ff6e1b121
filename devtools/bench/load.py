"""The bench's lamp traffic: a fleet publishing protocol-shaped messages over real MQTT.

Until the fleet simulator's generator lands, this is the bench's own small generator. Each
lamp of the fleet publishes what the protocol says a lamp publishes, in its proportions: a
``posture`` every 5 s while a person is seen, ``motion`` (at most 1/s, about 0.3/s on average),
``temperature`` and ``heartbeat`` every 60 s on ``telemetry`` (QoS 0), the rest on ``events``
(QoS 1). A step plays this mix at an asked total rate, spread over the whole fleet, so a rate
stands for ``rate / PER_LAMP_RATE`` lamps at protocol rates.

Fall lamps are provisioned apart from the fleet: each sends one ``fall_suspected``
(confidence 0.9) and then nothing more, so its fall alert is due the fall rule's ``confirm_s``
(``VEILLEUSE_RULES__FALL__CONFIRM_S``) later (rules 1 and 6): the latency measured is from that
deadline to the alert.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# Messages per second one lamp sends under the protocol (see the module docstring).
KINDS: tuple[tuple[str, str, float], ...] = (
    ("posture", "events", 1 / 5),
    ("motion", "events", 0.3),
    ("temperature", "telemetry", 1 / 60),
    ("heartbeat", "telemetry", 1 / 60),
)
PER_LAMP_RATE = sum(rate for _, _, rate in KINDS)
POSTURES = (
    ("lying", "bed"),
    ("sitting", "room"),
    ("standing", "room"),
    ("standing", "bathroom"),
    ("sitting", "room"),
)
ZONES = ("bed", "room", "bathroom", "entrance", "room")
QOS = {"events": 1, "telemetry": 0}


@dataclass(frozen=True)
class Message:
    lamp_id: str
    channel: str  # events | telemetry
    payload: bytes

    @property
    def qos(self) -> int:
        return QOS[self.channel]


class Mix:
    """Protocol-shaped messages over ``lamp_ids``, deterministic for a seed."""

    def __init__(self, lamp_ids: Sequence[str], seed: int = 7) -> None:
        if not lamp_ids:
            raise ValueError("a mix needs at least one lamp")
        self.lamp_ids = list(lamp_ids)
        self.rng = random.Random(seed)  # noqa: S311 - test traffic, not secrets
        self.seq = dict.fromkeys(self.lamp_ids, 0)
        total = PER_LAMP_RATE
        bound, self.bounds = 0.0, []
        for kind, channel, rate in KINDS:
            bound += rate / total
            self.bounds.append((bound, kind, channel))

    def next(self, now_ms: int) -> Message:
        rng = self.rng
        lamp_id = self.lamp_ids[rng.randrange(len(self.lamp_ids))]
        r = rng.random()
        _, kind, channel = next((b for b in self.bounds if r < b[0]), self.bounds[-1])
        seq = self.seq[lamp_id]
        self.seq[lamp_id] = (seq + 1) % 2**32
        payload: dict[str, Any] = {"v": 1, "lamp_id": lamp_id, "seq": seq, "ts": now_ms}
        payload["type"] = kind
        if kind == "posture":
            posture, zone = POSTURES[rng.randrange(len(POSTURES))]
            payload.update(
                posture=posture, zone=zone, confidence=round(rng.uniform(0.6, 0.99), 2), persons=1
            )
        elif kind == "motion":
            payload.update(zone=ZONES[rng.randrange(len(ZONES))], level=rng.randrange(101))
        elif kind == "temperature":
            payload.update(celsius=round(rng.gauss(22.0, 1.0), 1), humidity=45.0)
        else:
            payload.update(fw="2.4.1", uptime_s=3600 + seq, rssi=-rng.randrange(40, 80))
        return Message(lamp_id, channel, orjson.dumps(payload))


def fall_message(lamp_id: str, now_ms: int) -> Message:
    payload = {
        "v": 1,
        "lamp_id": lamp_id,
        "seq": 0,
        "ts": now_ms,
        "type": "fall_suspected",
        "confidence": 0.9,
        "zone": "floor",
    }
    return Message(lamp_id, "events", orjson.dumps(payload))


def fall_times(seconds: float, confirm_s: float, count: int) -> list[float]:
    """When (seconds into a step) each fall lamp falls: evenly over the part of the step whose
    deadlines still fall under load (the last one at least 2 s before its end)."""
    last = seconds - confirm_s - 2
    if count <= 0 or last < 0:
        return []
    if count == 1:
        return [max(last / 2, 0.0)]
    first = min(1.0, last)
    return [first + (last - first) * i / (count - 1) for i in range(count)]


@dataclass
class StepSpec:
    """One step of load, handed to the publisher process."""

    broker: dict[str, Any]  # MqttBroker fields
    credentials: list[tuple[str, str, str]]  # site_id, lamp_id, password: the fleet
    fall_credentials: list[tuple[str, str, str]]
    rate: float
    seconds: float
    confirm_s: float
    seed: int


def publish_step(spec: StepSpec, progress: Any, falls_out: Any, go: Any) -> None:
    """A publisher process: connect its part of the fleet, say so, wait for ``go`` (every
    publisher connected), then play the step. ``progress`` is a shared array: [connected (1),
    then load started (epoch s); messages sent; QoS 1 acknowledged; QoS 0 sent; done; seconds
    the load lasted]."""
    asyncio.run(_publish(spec, progress, falls_out, go))


async def _publish(spec: StepSpec, progress: Any, falls_out: Any, go: Any) -> None:
    from paho.mqtt.enums import MQTTProtocolVersion

    from devtools.fleet import Fleet
    from pipeline.lamps import Credential
    from pipeline.settings import MqttBroker

    # MQTT 3.1.1: no MQTT 5 properties and reason-code objects per publish and acknowledgement
    # (about 15 % of the publisher's profile), and it shares the cores with what it measures.
    protocol = MQTTProtocolVersion.MQTTv311

    broker = MqttBroker(**spec.broker)
    creds = [Credential(*c) for c in spec.credentials]
    fall_creds = [Credential(*c) for c in spec.fall_credentials]
    fleet = Fleet(broker, [*creds, *fall_creds], max_inflight=1000, protocol=protocol)
    await fleet.connect()
    mix = Mix([c.lamp_id for c in creds], seed=spec.seed)
    schedule = list(
        zip(
            fall_times(spec.seconds, spec.confirm_s, len(fall_creds)),
            (c.lamp_id for c in fall_creds),
            strict=True,
        )
    )
    falls: list[tuple[str, int]] = []
    progress[0] = 1
    while not go.is_set():
        await asyncio.sleep(0.005)
    started = time.time()
    progress[0] = started
    sent = qos0 = 0
    next_report = started
    try:
        while True:
            now = time.time()
            elapsed = now - started
            if elapsed >= spec.seconds:
                break
            now_ms = int(now * 1000)
            while schedule and schedule[0][0] <= elapsed:
                _, lamp_id = schedule.pop(0)
                message = fall_message(lamp_id, now_ms)
                fleet.publish(lamp_id, message.channel, message.payload, qos=1)
                falls.append((lamp_id, now_ms))
                sent += 1
            # Catch up to the rate, a bounded burst at a time so the loop keeps breathing.
            due = min(int(spec.rate * elapsed) - sent, max(int(spec.rate / 20), 50))
            for _ in range(max(due, 0)):
                message = mix.next(now_ms)
                fleet.publish(message.lamp_id, message.channel, message.payload, qos=message.qos)
                qos0 += message.qos == 0
            sent += max(due, 0)
            if now >= next_report:  # fleet.acked walks every lamp: not on every pass
                progress[1], progress[2], progress[3] = sent, fleet.acked, qos0
                next_report = now + 0.1
            await asyncio.sleep(0.002)
        progress[5] = time.time() - started
        await fleet.wait_acked(120)
        progress[1], progress[2], progress[3] = sent, fleet.acked, qos0
    finally:
        falls_out.put(falls)
        progress[4] = 1
        await fleet.close()
