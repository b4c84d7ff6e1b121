"""Hourly activity figures through a real worker, checked against figures the test computes
itself from the messages it sent."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson

from connectors.sinks.postgres import PostgresSink
from connectors.sinks.runner import SinkRunner
from pipeline.topics import ACTIVITY_HOURLY, LAMP_MESSAGES, topic_name
from schemas import decode, millis
from tests.integration.agents.conftest import DetectionRun, read_records
from tests.integration.sinks.test_postgres_sink import read_tables, scratch_database

SITE = "it-home-4"
HOUR = 3_600_000
LEAD_MS = 20_000  # the lamps' clocks stand this long before the end of the hour


def life(rng: random.Random, lamp: str, hour_start: int, count: int) -> list[dict[str, Any]]:
    """``count`` messages of one lamp spread over the hour, the last one LEAD_MS before its end."""
    times = sorted(rng.randrange(hour_start, hour_start + HOUR - LEAD_MS) for _ in range(count))
    times[-1] = hour_start + HOUR - LEAD_MS
    messages = []
    for seq, ts in enumerate(times):
        kind = rng.choice(["motion", "motion", "posture", "posture", "temperature", "heartbeat",
                           "fall_suspected", "button"])  # fmt: skip
        body: dict[str, Any] = {"v": 1, "lamp_id": lamp, "seq": seq, "ts": ts, "type": kind}
        if kind == "motion":
            body |= {"zone": rng.choice(["room", "bathroom", "bed"]), "level": 20}
        elif kind == "posture":
            body |= {
                "posture": rng.choice(["lying", "sitting", "standing", "absent"]),
                "zone": rng.choice(["bed", "room", "bathroom"]),
                "confidence": 0.9,
                "persons": 1,
            }
        elif kind == "temperature":
            body |= {"celsius": round(rng.uniform(18, 26), 1)}
        elif kind == "heartbeat":
            body |= {"fw": f"1.{seq}", "uptime_s": 10_000 + (ts - hour_start) // 1000, "rssi": -50}
        elif kind == "fall_suspected":
            body |= {"confidence": rng.choice([0.3, 0.8]), "zone": "floor"}
        else:
            body |= {"accessory_id": "p", "action": rng.choice(["press", "cancel"])}
        messages.append(body)
    return messages


def expected_figures(messages: list[dict[str, Any]], hour_start: int) -> dict[str, Any]:
    """The protocol's figures, computed plainly from what was sent (in sending order)."""
    active, bed, absent = set(), set(), set()
    motion = bathroom = falls = helps = 0
    temps: list[float] = []
    firmware, last_zone = None, ""
    for m in messages:
        minute = (m["ts"] - hour_start) // 60_000
        zone = m.get("zone")
        if m["type"] == "motion":
            motion += 1
            active.add(minute)
        if m["type"] == "posture":
            if zone == "bed" and m["posture"] in ("lying", "sitting"):
                bed.add(minute)
            elif m["posture"] == "absent":
                absent.add(minute)
        if m["type"] in ("motion", "posture"):
            bathroom += zone == "bathroom" and last_zone != "bathroom"
            last_zone = zone
        falls += m["type"] == "fall_suspected" and m["confidence"] >= 0.6
        helps += m["type"] == "button" and m["action"] == "press"
        if m["type"] == "temperature":
            temps.append(m["celsius"])
        if m["type"] == "heartbeat":
            firmware = m["fw"]  # the sending order is the ts order here
    return {
        "messages": len(messages),
        "motion_events": motion,
        "active_minutes": len(active),
        "minutes_in_bed": len(bed),
        "minutes_absent": len(absent),
        "bathroom_visits": bathroom,
        "falls": falls,
        "help_requests": helps,
        "temperature_readings": len(temps),
        "temperature_min": min(temps) if temps else None,
        "temperature_max": max(temps) if temps else None,
        "temperature_mean": round(sum(temps) / len(temps), 3) if temps else None,
        "firmware": firmware,
        "last_seen_at": max(m["ts"] for m in messages),
    }


async def test_hourly_figures_match_an_independent_computation(
    detection_run: DetectionRun, require: Any
) -> None:
    """Messages → worker → activity.hourly.v1 → PostgreSQL sink → activity_hourly and
    activity_daily, each compared with what the test computes from the messages it sent."""
    require("kafka", "postgres")
    run = detection_run
    worker = run.worker("w1", VEILLEUSE_DETECTION__WINDOW_GRACE_S="5")
    await asyncio.to_thread(run.wait_for_assignment, [worker])
    rng = random.Random(4)
    now = int(time.time() * 1000)
    hour_start = now - now % HOUR - 2 * HOUR  # an hour of the past, on the lamps' clocks
    lamps = {f"L-act-{i}": life(rng, f"L-act-{i}", hour_start, rng.randrange(20, 120))
             for i in range(40)}  # fmt: skip
    from pipeline import clients

    producer = clients.producer(run.settings)
    await producer.start()
    try:
        topic = topic_name(run.settings, LAMP_MESSAGES)
        for lamp, messages in lamps.items():
            headers = [("mqtt.topic", f"lamps/{SITE}/{lamp}/events".encode())]
            for n, m in enumerate(messages):
                # Every fifth message twice, as QoS 1 redelivers: counted once.
                for _ in range(2 if n % 5 == 0 else 1):
                    await producer.send(topic, orjson.dumps(m), key=lamp.encode(), headers=headers)
        await producer.flush()
    finally:
        await producer.stop()
    records = await read_records(
        run.settings, topic_name(run.settings, ACTIVITY_HOURLY), len(lamps), timeout_s=90
    )
    got: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        got[record.key.decode()].append(decode(record.value)[1])
    assert sorted(got) == sorted(lamps), worker.log_tail()
    for lamp, messages in lamps.items():
        (figures,) = got[lamp]  # exactly one record per lamp and hour
        assert millis(figures["hour_start"]) == hour_start
        assert figures["site_id"] == SITE
        expected = expected_figures(messages, hour_start)
        figures["last_seen_at"] = millis(figures["last_seen_at"])
        assert {k: figures[k] for k in expected} == expected, lamp

    # The same figures in PostgreSQL, through the sink.
    with scratch_database(run.settings) as scoped:
        sink = PostgresSink(scoped)
        stop = asyncio.Event()
        runner = SinkRunner(scoped, sink)
        task = asyncio.create_task(runner.run(stop))
        try:
            deadline = time.monotonic() + 60
            while runner.written < len(records) and time.monotonic() < deadline:
                assert not task.done(), task
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await task
        tables = read_tables(scoped.postgres.conninfo())
    assert len(tables["hourly"]) == len(lamps)
    for lamp, messages in lamps.items():
        row = tables["hourly"][(lamp, hour_start)]
        expected = expected_figures(messages, hour_start)
        assert {k: row[k] for k in expected} == expected, lamp
        day = tables["daily"][(lamp, datetime.fromtimestamp(hour_start / 1000, UTC).date())]
        assert (day["motion_events"], day["falls"]) == (
            expected["motion_events"],
            expected["falls"],
        )
