"""The night summary agent on the real Kafka, next to detection in the same workers: a night
fed while a second worker joins (a rebalance) and the first is SIGKILLed mid-night still gives
exactly one summary per lamp, with the figures the testing kit's run of the agent gives on the
very same messages."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from agents.summarise_nights import AGENT
from agents.testing import AgentDriver
from pipeline import clients
from pipeline.records import KafkaRecord
from pipeline.settings import Settings
from pipeline.topics import ACTIVITY_NIGHTLY, LAMP_MESSAGES, topic_name
from schemas import decode
from tests.integration.agents.conftest import DetectionRun, read_records

SITE = "it-home-nights"
PARIS = ZoneInfo("Europe/Paris")  # the default time zone of the sites
LAMPS = [f"L-night-{i}" for i in range(6)]  # spread over the partitions
STEP_MIN = 4  # a posture and a temperature reading every 4 min: below the 5 min of silence


def local_ms(evening: date, hour: int, minute: int = 0) -> int:
    """Epoch ms of ``hour:minute`` in Paris in the night of ``evening`` (mornings next day)."""
    day = evening + timedelta(days=int(hour < 12))
    return int(
        datetime(day.year, day.month, day.day, hour, minute, tzinfo=PARIS).timestamp() * 1000
    )


def a_night(evening: date, index: int) -> list[tuple[int, str, dict[str, Any]]]:
    """(ts, type, fields) of one lamp's night, in device order: in the room from 21:40, in bed
    from 23:0x, ``index % 3 + 1`` visits to the bathroom, a walk out of the room, motions in
    bed, up at 07:10; a temperature reading every 4 minutes all along."""
    minute = 60_000
    start, end = local_ms(evening, 21, 40), local_ms(evening, 7, 12)
    stays: list[tuple[int, str, str]] = [(start, "sitting", "room")]
    stays.append((local_ms(evening, 23, index), "lying", "bed"))
    for visit in range(index % 3 + 1):
        at = local_ms(evening, 1 + visit, 10 * index % 40)
        stays += [(at, "standing", "bathroom"), (at + 12 * minute, "lying", "bed")]
    out = local_ms(evening, 5, 5 * index)
    stays += [(out, "absent", "room"), (out + 20 * minute, "lying", "bed")]
    stays.append((local_ms(evening, 7, 10), "standing", "room"))
    plan: list[tuple[int, str, dict[str, Any]]] = []
    for (since, posture, zone), (until, *_) in zip(stays, [*stays[1:], (end, "", "")], strict=True):
        ts = since
        while ts < until:
            persons = 0 if posture == "absent" else 1
            fields = {"posture": posture, "zone": zone, "confidence": 0.9, "persons": persons}
            plan.append((ts, "posture", fields))
            if posture == "absent":
                break
            ts += STEP_MIN * minute
    for ts in range(start + 2 * minute, end, STEP_MIN * minute):
        plan.append((ts, "temperature", {"celsius": 21.0}))
    for hour in (0, 3, 4):
        motion = local_ms(evening, hour, 45 + index)  # in bed then: the visits end by :42
        plan.append((motion, "motion", {"zone": "bed", "level": 40}))
    return sorted(plan, key=lambda item: item[0])


class NightSender:
    """Writes lamp messages with the event times given, as the connector would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = topic_name(settings, LAMP_MESSAGES)
        self.seqs: Counter[str] = Counter()
        self.producer: Any = None

    async def __aenter__(self) -> NightSender:
        self.producer = clients.producer(self.settings)
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send(self, messages: list[tuple[str, int, str, dict[str, Any]]]) -> None:
        sent = []
        for lamp, ts, kind, fields in messages:
            seq = self.seqs[lamp]
            self.seqs[lamp] += 1
            payload = {"v": 1, "lamp_id": lamp, "seq": seq, "ts": ts, "type": kind, **fields}
            channel = "telemetry" if kind == "temperature" else "events"
            headers = [("mqtt.topic", f"lamps/{SITE}/{lamp}/{channel}".encode())]
            sent.append(
                await self.producer.send(
                    self.topic, orjson.dumps(payload), key=lamp.encode(), headers=headers
                )
            )
        await asyncio.gather(*sent)


def without_emission_time(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "emitted_at"}


async def test_one_summary_per_lamp_and_night_across_a_rebalance_and_a_sigkill(
    detection_run: DetectionRun,
) -> None:
    run = detection_run
    evening = datetime.now(PARIS).date() - timedelta(days=2)  # a night in the past
    nights = {lamp: a_night(evening, i) for i, lamp in enumerate(LAMPS)}
    # Three parts in event time: before the rebalance, before the kill, after it.
    cuts = [local_ms(evening, 0, 30), local_ms(evening, 4)]

    def part(index: int) -> list[tuple[str, int, str, dict[str, Any]]]:
        low = cuts[index - 1] if index else 0
        high = cuts[index] if index < len(cuts) else 2**63
        return [
            (lamp, ts, kind, fields)
            for lamp, plan in nights.items()
            for ts, kind, fields in plan
            if low <= ts < high
        ]

    # Both agents, as by default: detection and the night summary read the same topic.
    w1 = run.worker("w1", VEILLEUSE_DETECTION__STANDBY_REPLICAS="1")
    await asyncio.to_thread(run.wait_for_assignment, [w1])
    async with NightSender(run.settings) as lamps:
        await lamps.send(part(0))
        await asyncio.sleep(2)  # processed and committed by w1
        w2 = run.worker("w2", VEILLEUSE_DETECTION__STANDBY_REPLICAS="1")
        await asyncio.to_thread(run.wait_for_assignment, [w1, w2])
        await lamps.send(part(1))
        await asyncio.sleep(1)
        w1.kill()  # SIGKILL, mid-night: its partitions move to w2 with their night so far
        await lamps.send(part(2))
        await asyncio.to_thread(run.wait_for_assignment, [w2])

    nightly = topic_name(run.settings, ACTIVITY_NIGHTLY)
    records = await read_records(run.settings, nightly, len(LAMPS), timeout_s=45)
    await asyncio.sleep(3)  # a duplicate, if any, would be committed by now
    records = await read_records(run.settings, nightly, len(LAMPS) + 1, timeout_s=5)
    summaries = [decode(r.value)[1] for r in records]
    assert sorted(s["lamp_id"] for s in summaries) == LAMPS, w2.log_tail()
    assert {s["night_of"] for s in summaries} == {evening}
    assert [r.key for r in records] == [s["lamp_id"].encode() for s in summaries]

    # The same messages, as Kafka holds them, through the agent run by the testing kit.
    total = sum(len(plan) for plan in nights.values())
    inputs = await read_records(run.settings, topic_name(run.settings, LAMP_MESSAGES), total)
    assert len(inputs) == total
    kit = AgentDriver(AGENT, run.settings)
    kit.replay(KafkaRecord.of(r) for r in sorted(inputs, key=lambda r: (r.partition, r.offset)))
    kit.run_until(max(r.timestamp for r in inputs) + 3_600_000)
    expected = sorted(
        (without_emission_time(r) for r in kit.records(nightly)), key=lambda s: s["lamp_id"]
    )
    got = sorted((without_emission_time(s) for s in summaries), key=lambda s: s["lamp_id"])
    assert got == expected
    # And what the script of each night says, independently of the fold.
    for i, summary in enumerate(got):
        assert summary["bathroom_visits"] == i % 3 + 1, summary
        assert summary["room_exits"] == 1, summary
        assert summary["restless_motion_events"] == 3, summary
        assert summary["covered_minutes"] == summary["night_minutes"], summary
