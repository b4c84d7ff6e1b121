"""A fleet's state for the detection workers: every lamp heard several times on the lamps' topic,
each round in batches of its own, so that each lamp's state goes to the agents' changelogs once
per round (what a fleet's changelog holds between compactions, which is what a recovery from
the start re-reads). Shared by the restore benchmark and the failover test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson


async def fill_fleet_state(
    producer: Any,
    topic: str,
    *,
    site: str,
    lamps: int,
    rounds: int,
    pause_s: float,
    lamp_prefix: str = "L-",
) -> int:
    """``lamps`` lamps of ``site`` (``<lamp_prefix><i>``) heard ``rounds`` times on ``topic`` as
    the connector writes them, through ``producer`` (a started aiokafka producer); each round
    acknowledged by Kafka, then ``pause_s`` of pause so that the workers commit it before the
    next. Returns the messages sent."""
    sent = 0
    for round_ in range(rounds):
        now = int(time.time() * 1000)
        futures = []
        for i in range(lamps):
            lamp = f"{lamp_prefix}{i}"
            payload = {
                "v": 1,
                "lamp_id": lamp,
                "seq": round_,
                "ts": now,
                "type": "posture",
                "posture": "sitting" if round_ % 2 else "standing",
                "zone": "room",
                "confidence": 0.9,
                "persons": 1,
            }
            headers = [("mqtt.topic", f"lamps/{site}/{lamp}/events".encode())]
            futures.append(
                await producer.send(
                    topic, orjson.dumps(payload), key=lamp.encode(), headers=headers
                )
            )
        await asyncio.gather(*futures)
        sent += lamps
        await asyncio.sleep(pause_s)
    return sent
