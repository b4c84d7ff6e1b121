"""The sink runner's fetches at low rates: the broker holds a fetch for a batch's bytes or the
linger, and a record that waited at the broker does not wait a whole linger again in the sink
(the batch is written at most ``linger_ms`` after its first record was written to Kafka)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from connectors.sinks.runner import (
    FETCH_MAX_WAIT_MS,
    FETCH_MIN_BYTES,
    SinkRunner,
    fetch_options,
    linger_started,
)
from pipeline.settings import load_settings
from tests.unit.connectors.test_sink_runner_outages import NullSink


def test_a_lingering_sink_asks_the_broker_to_hold_its_fetches() -> None:
    assert fetch_options(500, 8 * 1024 * 1024) == {
        "fetch_min_bytes": FETCH_MIN_BYTES,
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
    }
    # Never longer than the linger, nor more bytes than a batch holds.
    assert fetch_options(100, 4096) == {"fetch_min_bytes": 4096, "fetch_max_wait_ms": 100}


def test_without_a_linger_a_fetch_ends_as_soon_as_anything_is_there() -> None:
    assert fetch_options(0, 8 * 1024 * 1024) == {}


def test_the_linger_starts_when_the_first_record_was_written_at_most_the_fetch_wait_ago() -> None:
    # Written 0.3 s ago, the fetch waited up to 0.5 s: the linger began 0.3 s ago.
    assert linger_started(100.0, 2_000.0, 1_999_700, 0.5) == pytest.approx(100.0 - 0.3)
    # An older record (a backlog): no more credit than the fetch could have waited.
    assert linger_started(100.0, 2_000.0, 1_000_000, 0.5) == 100.0 - 0.5
    # A timestamp ahead of this clock: now.
    assert linger_started(100.0, 2_000.0, 2_005_000, 0.5) == 100.0
    # No fetch wait (no linger): now, as before.
    assert linger_started(100.0, 2_000.0, 1_999_700, 0.0) == 100.0


def record(offset: int, timestamp_ms: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=offset,
        timestamp=timestamp_ms,
        timestamp_type=0,
        key=b"lamp",
        value=b"{}",
        checksum=None,
        serialized_key_size=4,
        serialized_value_size=2,
        headers=(),
    )


class Fetches:
    """A stand-in consumer: hands out ``first`` once, then nothing (each call waits its
    timeout, as aiokafka's does when nothing came)."""

    def __init__(self, first: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.pending = [first]

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        if self.pending:
            return {TopicPartition("t", 0): self.pending.pop(0)}
        await asyncio.sleep(timeout_ms / 1000)
        return {}


async def collect_seconds(first: list[ConsumerRecord[bytes, bytes]]) -> float:
    settings = load_settings()
    settings = settings.model_copy(
        update={"sink": settings.sink.model_copy(update={"linger_ms": 400})}
    )
    sink_runner = SinkRunner(settings, NullSink())
    sink_runner.consumer = Fetches(first)
    started = time.monotonic()
    batch = await sink_runner._collect(asyncio.Event())
    assert [r.offset for r in batch.records] == [r.offset for r in first]
    return time.monotonic() - started


async def test_records_that_waited_at_the_broker_are_written_without_lingering_again() -> None:
    now_ms = int(time.time() * 1000)
    assert await collect_seconds([record(0, now_ms - 400), record(1, now_ms - 10)]) < 0.2


async def test_fresh_records_still_linger_for_more() -> None:
    now_ms = int(time.time() * 1000)
    assert await collect_seconds([record(0, now_ms), record(1, now_ms)]) >= 0.35
