"""Consume alerts.v1 with aiokafka and the schemas package only (docs/consuming-alerts.md).

python examples/consume_alerts.py --bootstrap 127.0.0.1:9092 --group my-team-alerts
"""

import argparse
import asyncio
import contextlib
import json
import sys

from aiokafka import AIOKafkaConsumer

import schemas


async def consume(bootstrap: str, topic: str, group: str, count: int) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,  # your team's own group: its offsets are yours
        isolation_level="read_committed",  # the workers write alerts in transactions
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        handled = 0
        async for record in consumer:
            try:
                _, alert = schemas.decode(record.value)  # read with this checkout's schema
            except schemas.SchemaError as exc:  # say where it is, and go on
                where = f"{record.topic}[{record.partition}]@{record.offset}"
                print(f"skipped {where}: {exc}", file=sys.stderr)
                continue
            # Your handling here (schemas.alert_kind(alert): the kind by name, also one added
            # since your schema). Delivery is at least once: drop duplicates by alert_id.
            print(json.dumps(alert, default=lambda moment: moment.isoformat()), flush=True)
            await consumer.commit()  # after handling, never before
            handled += 1
            if handled == count:
                break
    finally:
        await consumer.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="alerts.v1")
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, default=0, help="stop after N alerts (0: never)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: offsets of what was handled are kept
        asyncio.run(consume(args.bootstrap, args.topic, args.group, args.count))
