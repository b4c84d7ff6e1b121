"""Sustained documents/s of one Elasticsearch sink process (``veilleuse sink elasticsearch``).

Runs against the local stack (``veilleuse stack up``), on topics and indices of its own (a
unique prefix), removed afterwards. A backlog of lamp messages is written to Kafka first, then
the sink is started as a real process and timed until its consumer group has committed all of
it (a commit follows the bulk request that covered it); the documents are then counted.

    .venv/bin/python -m devtools.bench.elasticsearch_sink [--messages 200000] [--lamps 300]
        [--batch-size 5000] [--keep]

It prints what it measured; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid

import orjson

from connectors.sinks.elasticsearch import async_client
from pipeline import clients
from pipeline.settings import Settings, load_settings
from pipeline.topics import LAMP_MESSAGES, TOPICS, ensure_topics, topic_name


def isolated(settings: Settings, tag: str) -> Settings:
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topic_prefix": f"b{tag}."}),
            "sink": settings.sink.model_copy(
                update={"elasticsearch_index_prefix": f"b{tag}-lamp-messages"}
            ),
        }
    )


async def produce(settings: Settings, messages: int, lamps: int) -> float:
    producer = clients.producer(settings, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    topic = topic_name(settings, LAMP_MESSAGES)
    now = int(time.time() * 1000)
    started = time.perf_counter()
    try:
        futures = []
        for n in range(messages):
            lamp, seq = f"L-{n % lamps:06d}", n // lamps
            ts = now - 3_600_000 + n // 10
            payload = {
                "v": 1,
                "lamp_id": lamp,
                "seq": seq,
                "ts": ts,
                "type": "posture",
                "posture": "sitting",
                "zone": "room",
                "confidence": 0.91,
                "persons": 1,
            }
            headers = [
                ("mqtt.topic", f"lamps/site-{n % lamps % 12}/{lamp}/events".encode()),
                ("mqtt.qos", b"1"),
                ("source.broker", b"local"),
                ("received.at.ms", str(ts + 250).encode()),
            ]
            futures.append(
                await producer.send(
                    topic, orjson.dumps(payload), key=lamp.encode(), headers=headers
                )
            )
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def committed(settings: Settings, group: str) -> int:
    admin = clients.admin_client(settings)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)


async def cleanup(settings: Settings) -> None:
    prefix = settings.sink.elasticsearch_index_prefix
    es = async_client(settings)
    try:
        rows = await es.cat.indices(
            index=f"{prefix}*", h="index", format="json", expand_wildcards="all"
        )
        names = [row["index"] for row in rows.body]  # type: ignore[index]
        for start in range(0, len(names), 40):
            await es.indices.delete(index=",".join(names[start : start + 40]))
        found = await es.indices.get_index_template(name=f"{prefix}*")
        for template in found["index_templates"]:
            await es.indices.delete_index_template(name=template["name"])
    finally:
        await es.close()
    admin = clients.admin_client(settings)
    await admin.start()
    try:
        await admin.delete_topics([topic_name(settings, spec) for spec in TOPICS])
    finally:
        await admin.close()


async def count(settings: Settings) -> int:
    es = async_client(settings)
    try:
        alias = settings.sink.elasticsearch_index_prefix
        await es.indices.refresh(index=alias)
        return int((await es.count(index=alias))["count"])
    finally:
        await es.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--lamps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=None, help="sink.batch_max_records")
    parser.add_argument("--keep", action="store_true", help="keep the topics and indices")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    settings = isolated(load_settings(), tag)
    await ensure_topics(settings)
    group = f"{settings.kafka.topic_prefix}veilleuse-sink-elasticsearch"
    try:
        seconds = await produce(settings, args.messages, args.lamps)
        print(f"produced {args.messages:,} messages in {seconds:.1f} s")
        env = {
            **os.environ,
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX": settings.sink.elasticsearch_index_prefix,
            "VEILLEUSE_SINK__ELASTICSEARCH_METRICS_PORT": "0",
            "VEILLEUSE_LOG_LEVEL": "WARNING",
        }
        if args.batch_size:
            env["VEILLEUSE_SINK__BATCH_MAX_RECORDS"] = str(args.batch_size)
        with tempfile.NamedTemporaryFile("w+b", suffix=".log") as log:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "sink", "elasticsearch"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            first_at: float | None = None
            first_done = 0
            samples: list[tuple[float, int]] = []
            try:
                while True:
                    done = await committed(settings, group)
                    now = time.perf_counter()
                    samples.append((now, done))
                    if done and first_at is None:
                        first_at, first_done = now, done
                    if done >= args.messages:
                        break
                    if proc.poll() is not None:
                        log.seek(0)
                        raise SystemExit(f"the sink exited:\n{log.read().decode()[-3000:]}")
                    await asyncio.sleep(0.25)
            finally:
                proc.terminate()
                proc.wait(30)
        finished = samples[-1][0]
        total = finished - started
        if first_at is None:
            raise SystemExit("nothing was committed")
        sustained = (args.messages - first_done) / (finished - first_at)
        indexed = await count(settings)
    finally:
        if not args.keep:
            await cleanup(settings)

    batch = args.batch_size or settings.sink.batch_max_records
    stack = settings.stack
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, Elasticsearch {stack.elasticsearch_version}, "
        f"Kafka {stack.kafka_version}"
    )
    print(f"batch_max_records={batch}, linger_ms={settings.sink.linger_ms}")
    print(f"indexed {indexed:,} documents (expected {args.messages:,})")
    rate = args.messages / total
    print(f"start to all committed: {total:.1f} s ({rate:,.0f} docs/s, start-up included)")
    print(f"sustained (first commit to last): {sustained:,.0f} docs/s")


if __name__ == "__main__":
    asyncio.run(main())
