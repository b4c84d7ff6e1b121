"""The sink runner's Kafka paths while Kafka is down, with a stand-in consumer: an offset commit
that fails is kept and sent with the next one, never raised; the probes say why."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError

from connectors.sinks.runner import Batch, SinkRunner, WriteResult
from pipeline.settings import load_settings


class NullSink:
    name = "test"
    topics = ("t",)
    offsets_in_store = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write(self, batch: Batch) -> WriteResult:
        return WriteResult()

    async def stored_offsets(self, partitions: Any) -> dict[tuple[str, int], int]:
        return {}


class Consumer:
    def __init__(self) -> None:
        self.failures: list[Exception] = []
        self.committed: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("t", 0), TopicPartition("t", 1)}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.committed.append(dict(offsets))


def runner() -> tuple[SinkRunner, Consumer]:
    sink_runner = SinkRunner(load_settings(), NullSink())
    consumer = Consumer()
    sink_runner.consumer = consumer
    return sink_runner, consumer


def batch(offsets: dict[tuple[str, int], int]) -> Batch:
    return Batch([], offsets)


async def test_a_commit_while_kafka_is_down_is_kept_and_sent_with_the_next() -> None:
    sink_runner, consumer = runner()
    consumer.failures = [KafkaConnectionError("Unable to bootstrap")]

    await sink_runner._commit(batch({("t", 0): 10}))  # does not raise: the sink goes on
    assert consumer.committed == []
    assert "kafka" in sink_runner.health.problems

    await sink_runner._commit(batch({("t", 1): 4}))
    assert consumer.committed == [{TopicPartition("t", 0): 10, TopicPartition("t", 1): 4}]
    assert sink_runner.health.problems == {}
    assert sink_runner._uncommitted == {}


async def test_an_idle_sink_commits_what_is_pending_after_a_back_off() -> None:
    sink_runner, consumer = runner()
    consumer.failures = [KafkaConnectionError("down")]
    await sink_runner._commit(batch({("t", 0): 7}))
    await sink_runner._commit_pending()  # too soon: waits for its back-off
    assert consumer.committed == []
    sink_runner._commit_again_at = 0.0
    await sink_runner._commit_pending()
    assert consumer.committed == [{TopicPartition("t", 0): 7}]


async def test_a_rebalance_drops_the_pending_offsets_for_the_new_owner() -> None:
    sink_runner, consumer = runner()
    consumer.failures = [CommitFailedError("rebalanced")]
    await sink_runner._commit(batch({("t", 0): 7}))
    assert sink_runner._uncommitted == {}
    assert consumer.committed == []


async def test_offsets_of_partitions_no_longer_assigned_are_not_committed() -> None:
    sink_runner, consumer = runner()
    await sink_runner._commit(batch({("t", 0): 3, ("t", 9): 5}))
    assert consumer.committed == [{TopicPartition("t", 0): 3}]


def test_a_sink_stalled_with_records_in_hand_is_not_ready_and_says_why() -> None:
    now = [100.0]
    sink_runner, _ = runner()
    health = sink_runner.health
    health.clock = lambda: now[0]
    health.stall_after_s = 5
    health.start()
    sink_runner.in_hand = 200
    health.problem("test", "connect: refused")
    now[0] += 4
    assert health.readiness().ok
    now[0] += 2
    verdict = health.readiness()
    assert not verdict.ok
    assert "test down: connect: refused" in verdict.reason
    assert health.liveness().ok  # a store down: waiting, not wedged


class Starting:
    def __init__(self, fails: bool) -> None:
        self.fails = fails
        self.stopped = False

    async def start(self) -> None:
        if self.fails:
            raise KafkaConnectionError("Unable to bootstrap")

    async def stop(self) -> None:
        self.stopped = True


async def test_kafka_down_at_start_is_waited_for_with_a_fresh_consumer_each_time() -> None:
    sink_runner, _ = runner()
    made: list[Starting] = []

    def new_consumer() -> Starting:
        made.append(Starting(fails=len(made) < 2))
        return made[-1]

    assert await sink_runner._start_consumer(new_consumer, asyncio.Event())
    assert [c.stopped for c in made] == [True, True, False]
    assert sink_runner.consumer is made[-1]
    assert sink_runner.health.problems == {}
