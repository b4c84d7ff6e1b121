"""The sink framework: everything a sink needs except writing a batch.

A sink implements :class:`Sink` (its one job: ``write(batch)``); :class:`SinkRunner` owns the
rest: consuming its topics (``read_committed``), batching by count, bytes and time, retries
with jittered exponential backoff while the store is down (reading stops meanwhile: memory
stays bounded to one batch plus the consumer's fetch buffer), records the store refused for
good to ``sink.dlq.v1`` with the reason, offsets, and metrics.

Offsets: by default committed to Kafka once the batch is written (at least once; sinks make
that exactly-once in effect with idempotent writes, e.g. deterministic document ids). A sink
with ``offsets_in_store`` writes the batch's offsets in the same transaction as its data, and
the runner starts each assigned partition from the offsets the store holds: exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline import clients
from pipeline.errors import VeilleuseError
from pipeline.records import KafkaRecord
from pipeline.settings import Settings
from pipeline.topics import SINK_DLQ, topic_name

log = logging.getLogger(__name__)


class SinkError(VeilleuseError):
    """A sink failed in a way the runner cannot retry."""


class StoreUnavailableError(SinkError):
    """The store is down, overloaded or timed out: the same batch is retried later.

    ``reason`` labels the sink's error counter: ``connect``, ``timeout``, ``overloaded``,
    ``unavailable``…
    """

    def __init__(self, message: str, *, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Rejected:
    """A record the store refused for good (retrying cannot help), with the reason."""

    record: KafkaRecord
    reason: str
    detail: str


def _lamp_id(record: KafkaRecord) -> str | None:
    """The record's key: its lamp on the lamp topics and alerts.v1 (None if absent or binary)."""
    try:
        return record.key.decode() if record.key else None
    except UnicodeDecodeError:
        return None


async def _no_dead_letters(rejected: Sequence[Rejected]) -> None:
    if rejected:
        raise SinkError("this batch has no dead-letter channel")


@dataclass(frozen=True)
class Batch:
    records: Sequence[KafkaRecord]
    # (topic, partition) -> the next offset to read once this batch is written
    offsets: dict[tuple[str, int], int]
    # Sends records to sink.dlq.v1 and waits for Kafka's ack. A sink that stores its offsets
    # calls it before its own commit: once the offsets are stored, nothing rereads those
    # records, so their dead letters must already be safe. Others return them instead.
    dead_letter: Callable[[Sequence[Rejected]], Awaitable[None]] = _no_dead_letters


@dataclass
class WriteResult:
    rejected: list[Rejected] = field(default_factory=list)


class Sink(Protocol):
    """What a sink implements. The runner calls ``write`` once per batch, never concurrently."""

    name: str
    topics: tuple[str, ...]
    offsets_in_store: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write(self, batch: Batch) -> WriteResult:
        """Write the batch (and, with ``offsets_in_store``, its offsets, atomically).

        Raise :class:`StoreUnavailableError` to have the whole batch retried; return the records
        refused for good in the result.
        """
        ...

    async def stored_offsets(
        self, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """With ``offsets_in_store``: where each partition resumes (absent: from Kafka's)."""
        ...


class SinkMetrics:
    def __init__(self, name: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        from pipeline.metrics import ConsumerLag

        self.registry = r = CollectorRegistry()
        prefix = f"veilleuse_sink_{name}"
        self.records = Counter(f"{prefix}_records", "Records written (events/s).", registry=r)
        self.batch_records = Histogram(
            f"{prefix}_batch_records",
            "Records per batch.",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.write_seconds = Histogram(
            f"{prefix}_write_seconds", "Time of a successful write.", registry=r
        )
        self.errors = Counter(
            f"{prefix}_errors",
            "Failed writes, by kind (unavailable: retried; fatal: the sink stopped) and reason.",
            ["kind", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            f"{prefix}_rejected",
            "Records refused for good (sent to sink.dlq.v1), by reason.",
            ["reason"],
            registry=r,
        )
        self.lag = ConsumerLag(f"sink_{name}", r)

    def serve(self, port: int) -> None:
        from pipeline.metrics import serve

        serve(self.registry, port)


class SinkRunner:
    """Runs one :class:`Sink` until ``stop`` is set."""

    def __init__(
        self, settings: Settings, sink: Sink, *, group_id: str | None = None, metrics_port: int = 0
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.config = settings.sink
        self.group_id = group_id or f"{settings.kafka.topic_prefix}veilleuse-sink-{sink.name}"
        self.dlq_topic = topic_name(settings, SINK_DLQ)
        self.metrics = SinkMetrics(sink.name)
        self.metrics_port = metrics_port
        self.consumer: Any = None
        self.producer: Any = None
        self.written = 0
        self.attempts = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        from aiokafka.abc import ConsumerRebalanceListener

        from pipeline.metrics import aiokafka_offsets

        runner = self

        class _Seek(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                runner.metrics.lag.forget((tp.topic, tp.partition) for tp in revoked)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                await runner._seek_to_stored(assigned)

        if self.metrics_port:
            self.metrics.serve(self.metrics_port)
        await self.sink.start()
        self.producer = clients.producer(self.settings)
        await self.producer.start()
        self.consumer = clients.consumer(
            self.settings,
            group_id=self.group_id,
            isolation_level="read_committed",
            max_poll_records=self.config.batch_max_records,
        )
        self.consumer.subscribe(list(self.sink.topics), listener=_Seek())
        await self.consumer.start()
        log.info(
            "sink %s consuming %s as %s",
            self.sink.name,
            self.sink.topics,
            self.group_id,
            extra={"component": f"sink-{self.sink.name}"},
        )
        lag = asyncio.create_task(self.metrics.lag.watch(aiokafka_offsets(self.consumer), stop))
        try:
            while not stop.is_set():
                batch = await self._collect(stop)
                if batch.records and not await self._write(batch, stop):
                    break  # stopped while the store was down: nothing committed, no loss
        except SinkError as exc:
            kind = "unavailable" if isinstance(exc, StoreUnavailableError) else "fatal"
            self.metrics.errors.labels(kind, getattr(exc, "reason", type(exc).__name__)).inc()
            raise
        finally:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)
            await self.consumer.stop()
            await self.producer.stop()
            await self.sink.stop()

    async def _seek_to_stored(self, assigned: Any) -> None:
        if not self.sink.offsets_in_store or not assigned:
            return
        stored = await self.sink.stored_offsets([(tp.topic, tp.partition) for tp in assigned])
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None:
                self.consumer.seek(tp, offset)
        log.info("sink %s resumes from the store's offsets %s", self.sink.name, stored)

    # -- batches ---------------------------------------------------------------------------

    async def _collect(self, stop: asyncio.Event) -> Batch:
        config = self.config
        records: list[KafkaRecord] = []
        size = 0
        first_at: float | None = None
        while not stop.is_set():
            wait_ms = 200
            if first_at is not None:
                left = config.linger_ms / 1000 - (time.monotonic() - first_at)
                if left <= 0:
                    break
                wait_ms = max(1, int(left * 1000))
            fetched = await self.consumer.getmany(
                timeout_ms=wait_ms, max_records=config.batch_max_records - len(records)
            )
            for messages in fetched.values():
                if messages:
                    first = messages[0]
                    self.metrics.lag.taken(first.topic, first.partition, first.offset)
                for m in messages:
                    records.append(KafkaRecord.of(m))
                    size += len(m.value or b"")
            if records and first_at is None:
                first_at = time.monotonic()
            if len(records) >= config.batch_max_records or size >= config.batch_max_bytes:
                break
        offsets: dict[tuple[str, int], int] = {}
        for r in records:
            key = (r.topic, r.partition)
            offsets[key] = max(offsets.get(key, 0), r.offset + 1)
        return Batch(records, offsets, self._dead_letter_all)

    async def _write(self, batch: Batch, stop: asyncio.Event) -> bool:
        """Write until it succeeds (True) or a stop is asked for while retrying (False);
        meanwhile the partitions are paused (no new records)."""
        config = self.config
        delay = config.retry_initial_s
        paused = False
        try:
            while True:
                self.attempts += 1
                started = time.perf_counter()
                try:
                    result = await self.sink.write(batch)
                    break
                except StoreUnavailableError as exc:
                    self.metrics.errors.labels("unavailable", exc.reason).inc()
                    if not paused:
                        self.consumer.pause(*self.consumer.assignment())
                        paused = True
                    wait = random.uniform(0, delay)  # noqa: S311 - jitter, not crypto
                    log.warning(
                        "sink %s: store unavailable (%s); retrying %d records in %.1f s",
                        self.sink.name,
                        exc,
                        len(batch.records),
                        wait,
                        extra={"component": f"sink-{self.sink.name}", "reason": exc.reason},
                    )
                    delay = min(config.retry_max_s, delay * 2)
                    # Keep polling (nothing comes: paused) so that the group keeps us.
                    deadline = time.monotonic() + wait
                    while time.monotonic() < deadline:
                        if stop.is_set():
                            return False
                        await self.consumer.getmany(timeout_ms=min(200, int(wait * 1000) + 1))
        finally:
            if paused:
                self.consumer.resume(*self.consumer.assignment())
        self.metrics.write_seconds.observe(time.perf_counter() - started)
        await self._dead_letter_all(result.rejected)
        await self._commit(batch)
        self.written += len(batch.records)
        self.metrics.records.inc(len(batch.records))
        self.metrics.batch_records.observe(len(batch.records))
        for topic, partition in batch.offsets:
            self.metrics.lag.finished(topic, partition)
        return True

    async def _dead_letter_all(self, rejected: Sequence[Rejected]) -> None:
        for item in rejected:
            await self._dead_letter(item)

    async def _dead_letter(self, rejected: Rejected) -> None:
        r = rejected.record
        headers = [(k, v) for k, v in r.headers if not k.startswith("reject.")]
        headers += [
            ("reject.reason", rejected.reason.encode()),
            ("reject.detail", rejected.detail[:1000].encode()),
            ("reject.stage", f"sink-{self.sink.name}".encode()),
            ("source.topic", r.topic.encode()),
            ("source.partition", str(r.partition).encode()),
            ("source.offset", str(r.offset).encode()),
        ]
        await self.producer.send_and_wait(self.dlq_topic, r.value, key=r.key, headers=headers)
        self.metrics.rejected.labels(rejected.reason).inc()
        log.warning(
            "sink %s refused a record: %s %s",
            self.sink.name,
            rejected.reason,
            rejected.detail[:200],
            extra={
                "component": f"sink-{self.sink.name}",
                "lamp_id": _lamp_id(r),
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "reason": rejected.reason,
            },
        )

    async def _commit(self, batch: Batch) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import CommitFailedError, IllegalStateError

        assigned = self.consumer.assignment()
        offsets = {
            TopicPartition(topic, partition): offset
            for (topic, partition), offset in batch.offsets.items()
            if TopicPartition(topic, partition) in assigned
        }
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took partitions away meanwhile: their new owner rewrites what this
            # batch wrote, which the sinks' idempotent writes absorb.
            log.warning("sink %s: offsets not committed (%s)", self.sink.name, exc)


def run_sink(settings: Settings, sink: Sink, metrics_port: int) -> None:
    """Run ``sink`` until SIGTERM or SIGINT (the batch in progress is finished first)."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await SinkRunner(settings, sink, metrics_port=metrics_port).run(stop)

    asyncio.run(main())
