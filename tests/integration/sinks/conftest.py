"""Sinks against the real services: each test on its own topics, indices and consumer groups."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.sinks.elasticsearch import IndexNames, async_client
from pipeline import clients
from pipeline.settings import Settings
from pipeline.topics import LAMP_MESSAGES, TOPICS, ensure_topics, topic_name


@dataclass
class Message:
    """A protocol-shaped lamp message and the id its document must have."""

    site: str
    lamp: str
    seq: int
    ts: int
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def doc_id(self) -> str:
        return f"{self.lamp}:{self.seq}:{self.ts}"

    def payload(self) -> bytes:
        body = {"v": 1, "lamp_id": self.lamp, "seq": self.seq, "ts": self.ts, "type": "motion"}
        return orjson.dumps({**body, "zone": "room", "level": self.seq % 101, **self.fields})

    def headers(self, delay_ms: int = 300) -> list[tuple[str, bytes]]:
        return [
            ("mqtt.topic", f"lamps/{self.site}/{self.lamp}/events".encode()),
            ("mqtt.qos", b"1"),
            ("received.at.ms", str(self.ts + delay_ms).encode()),
        ]


def fleet_messages(
    lamps: int, per_lamp: int, *, days: int = 1, first_seq: int = 0, tag: str = "L"
) -> list[Message]:
    """``lamps`` x ``per_lamp`` messages, event times spread over the last ``days`` days."""
    now = int(time.time() * 1000)
    span = days * 24 * 3600 * 1000
    out = []
    for i in range(per_lamp):
        for lamp in range(lamps):
            ts = now - span + (i * span) // per_lamp + lamp
            out.append(Message(f"site-{lamp % 7}", f"{tag}-{lamp:06d}", first_seq + i, ts))
    return out


@dataclass
class EsRun:
    """Unique topic prefix, index prefix and consumer groups; everything removed afterwards."""

    base: Settings
    tmp_path: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.topic_prefix = f"t{self.tag}."
        self.index_prefix = f"t{self.tag}-lamp-messages"
        self.settings = self.base.model_copy(
            update={
                "kafka": self.base.kafka.model_copy(update={"topic_prefix": self.topic_prefix}),
                "sink": self.base.sink.model_copy(
                    update={"elasticsearch_index_prefix": self.index_prefix}
                ),
            }
        )
        self.names = IndexNames(self.index_prefix)
        self.es = async_client(self.settings)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": self.topic_prefix,
            "VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX": self.index_prefix,
            "VEILLEUSE_SINK__ELASTICSEARCH_METRICS_PORT": "0",
            "VEILLEUSE_LOG_FORMAT": "json",
            **extra,
        }

    @property
    def sink_group(self) -> str:
        return f"{self.topic_prefix}veilleuse-sink-elasticsearch"

    # -- Kafka -------------------------------------------------------------------------------

    async def produce(
        self,
        messages: Iterable[Message],
        *,
        topic: str | None = None,
        duplicate_every: int = 0,
    ) -> int:
        """Send fast (batched, not one round trip each); every n-th message twice."""
        producer = clients.producer(self.settings, linger_ms=20, max_batch_size=256 * 1024)
        await producer.start()
        sent = 0
        try:
            name = topic or topic_name(self.settings, LAMP_MESSAGES)
            futures = []
            for n, message in enumerate(messages):
                copies = 2 if duplicate_every and n % duplicate_every == 0 else 1
                for copy in range(copies):
                    futures.append(
                        await producer.send(
                            name,
                            message.payload(),
                            key=message.lamp.encode(),
                            headers=message.headers(300 + 5000 * copy),
                        )
                    )
                    sent += 1
                if len(futures) >= 5000:
                    for future in futures:
                        await future
                    futures.clear()
            for future in futures:
                await future
        finally:
            await producer.stop()
        return sent

    async def produce_raw(
        self, topic: str, values: list[tuple[bytes, list[tuple[str, bytes]]]]
    ) -> None:
        producer = clients.producer(self.settings)
        await producer.start()
        try:
            for value, headers in values:
                await producer.send_and_wait(topic, value, key=b"L-000001", headers=headers)
        finally:
            await producer.stop()

    async def committed(self, group: str) -> int:
        """Sum of the group's committed offsets over every partition."""
        admin = clients.admin_client(self.settings)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)

    async def end_offsets(self, *specs: Any) -> int:
        from aiokafka import TopicPartition

        consumer = clients.consumer(self.settings, group_id=None)
        await consumer.start()
        try:
            tps = [
                TopicPartition(topic_name(self.settings, spec), p)
                for spec in specs
                for p in range(self.settings.kafka.topic_partitions)
            ]
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        return sum(ends.values())

    # -- Elasticsearch -------------------------------------------------------------------------

    async def count(self, index: str) -> int:
        await self.es.indices.refresh(index=index, allow_no_indices=True, ignore_unavailable=True)
        response = await self.es.count(index=index, allow_no_indices=True, ignore_unavailable=True)
        return int(response["count"])

    async def ids(self, index: str) -> list[str]:
        """Every document id under ``index`` (an alias or a pattern), duplicates kept."""
        from elasticsearch.helpers import async_scan

        await self.es.indices.refresh(index=index, allow_no_indices=True, ignore_unavailable=True)
        return [
            hit["_id"]
            async for hit in async_scan(
                self.es, index=index, query={"query": {"match_all": {}}}, _source=False, size=5000
            )
        ]

    async def indices(self, pattern: str) -> list[str]:
        rows = await self.es.cat.indices(index=pattern, h="index", format="json")
        return sorted(row["index"] for row in rows.body)  # type: ignore[union-attr]

    async def alias_indices(self, alias: str) -> list[str]:
        from elasticsearch import NotFoundError

        try:
            return sorted((await self.es.indices.get_alias(name=alias)).body)
        except NotFoundError:
            return []

    async def cleanup(self) -> None:
        from elasticsearch import NotFoundError

        with contextlib.suppress(Exception):
            rows = await self.es.cat.indices(
                index=f"{self.index_prefix}*", h="index", format="json", expand_wildcards="all"
            )
            names = [row["index"] for row in rows.body]  # type: ignore[union-attr]
            for start in range(0, len(names), 40):
                await self.es.indices.delete(index=",".join(names[start : start + 40]))
        with contextlib.suppress(NotFoundError):
            found = await self.es.indices.get_index_template(name=f"{self.index_prefix}*")
            for template in found["index_templates"]:
                await self.es.indices.delete_index_template(name=template["name"])
        await self.es.close()
        admin = clients.admin_client(self.settings)
        await admin.start()
        try:
            with contextlib.suppress(Exception):
                await admin.delete_topics([topic_name(self.settings, spec) for spec in TOPICS])
        finally:
            await admin.close()


@pytest.fixture
async def es_run(settings: Settings, tmp_path: Path, require: Any) -> AsyncIterator[EsRun]:
    require("kafka", "elasticsearch")
    run = EsRun(settings, tmp_path)
    await ensure_topics(run.settings)
    try:
        yield run
    finally:
        await run.cleanup()
