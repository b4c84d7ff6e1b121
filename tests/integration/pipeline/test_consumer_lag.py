"""Consumer lag (pipeline.metrics) against the real Kafka: transactional input, whose commit
markers take offsets that never reach the consumer, and open transactions, which a
read_committed consumer cannot read yet."""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client import CollectorRegistry

from pipeline import clients
from pipeline.metrics import ConsumerLag, aiokafka_offsets
from pipeline.settings import Settings
from pipeline.topics import TopicSpec, ensure_topics


async def test_lag_is_what_remains_to_process_and_zero_once_done_despite_commit_markers(
    require: Any, settings: Settings
) -> None:
    require("kafka")
    topic = f"obs-lag-{uuid.uuid4().hex[:8]}"
    scoped = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topic_prefix": "", "topic_partitions": 1})
        }
    )
    await ensure_topics(scoped, (TopicSpec(topic, "lag test", retention_ms=3_600_000),))
    producer = clients.producer(scoped, transactional_id=f"{topic}-tx")
    consumer = clients.consumer(
        scoped,
        topic,
        group_id=f"{topic}-group",
        isolation_level="read_committed",
    )
    await producer.start()
    try:
        for batch in range(2):  # two transactions of 5: offsets 0-4, marker 5, 6-10, marker 11
            async with producer.transaction():
                for i in range(5):
                    await producer.send(topic, f"{batch}-{i}".encode())
        await producer.begin_transaction()  # an open one: not readable, not lag
        await producer.send_and_wait(topic, b"pending")
        await consumer.start()
        lag = ConsumerLag("test", CollectorRegistry())
        read = aiokafka_offsets(consumer)

        assert await lag_of(lag, read, consumer, topic) == 12  # nothing read yet: 0 .. LSO 12
        taken = []
        while len(taken) < 4:
            fetched = await consumer.getmany(timeout_ms=2000, max_records=4 - len(taken))
            for records in fetched.values():
                if records:
                    lag.taken(topic, 0, records[0].offset)
                taken += records
        # Four records taken, none finished: all twelve offsets still to do.
        assert await lag_of(lag, read, consumer, topic) == 12
        lag.finished(topic, 0)
        assert await lag_of(lag, read, consumer, topic) == 8
        rest = []
        while len(rest) < 6:
            fetched = await consumer.getmany(timeout_ms=2000)
            for records in fetched.values():
                rest += records
        assert [r.value for r in rest][-1] == b"1-4"
        # Everything committed was read: the markers do not count as lag.
        assert await lag_of(lag, read, consumer, topic) == 0
        await producer.commit_transaction()
        # "pending" is readable now; its marker counts until the consumer steps over it.
        assert await lag_of(lag, read, consumer, topic) == 2
        last = []
        while not last:
            fetched = await consumer.getmany(timeout_ms=2000)
            last = [r.value for records in fetched.values() for r in records]
        assert last == [b"pending"]
        assert await lag_of(lag, read, consumer, topic) == 0
    finally:
        await consumer.stop()
        await producer.stop()


async def lag_of(lag: ConsumerLag, read: Any, consumer: Any, topic: str) -> int:
    if not consumer.assignment():
        await consumer.getmany(timeout_ms=100)  # let the group assign the partition
    ends, positions = await read()
    return lag.publish(ends, positions)[topic, 0]
