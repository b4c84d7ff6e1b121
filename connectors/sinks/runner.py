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

Outages: the store down, the batch is retried (capped back-off, partitions paused); Kafka down,
dead letters wait in the :class:`~pipeline.kafka_producer.ResilientProducer` until Kafka has them
(the batch is not committed before), and an offset commit that fails is kept and sent with the
next one (a restart meanwhile re-reads records the store already has: idempotent). Either way
the process stays up; its :class:`~pipeline.health.Health` (``/readyz``, ``/livez`` beside
``/metrics``) turns not ready once records wait with no batch written for
``health.stall_after_s``, with the reason, and logs one line when the store answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline import clients
from pipeline.errors import VeilleuseError
from pipeline.health import Health
from pipeline.kafka_producer import ResilientProducer
from pipeline.records import KafkaRecord
from pipeline.retry import Backoff
from pipeline.settings import HealthSettings, Settings
from pipeline.topics import SINK_DLQ, topic_name

log = logging.getLogger(__name__)

# Longest wait between two attempts to reach Kafka (consumer start, a fetch that failed).
KAFKA_RETRY_MAX_S = 10.0
# An offset commit waits at most this long: Kafka down, it is sent again with the next batch.
COMMIT_TIMEOUT_S = 15.0
# What a fetch waits for at the broker (with a linger): this many bytes, or the linger. With
# aiokafka's default (1 byte) every record the connector writes ends a fetch at once: at
# 100 msg/s the Elasticsearch sink sent ~90 fetches a second and each one cost CPU in the sink
# and in Kafka (BENCHMARKS.md, "Where the CPU goes"). Below a batch's worth, so that a fast
# stream still ends fetches by size.
FETCH_MIN_BYTES = 256 * 1024
# aiokafka's default fetch wait, and the longest kept: a fetch that waits is also how soon the
# consumer sees a rebalance or a stop.
FETCH_MAX_WAIT_MS = 500


def fetch_options(linger_ms: int, batch_max_bytes: int) -> dict[str, int]:
    """The consumer's fetch settings for a sink that lingers ``linger_ms``: the broker holds a
    fetch until it has a batch's bytes or the linger has passed, so that a slow stream is read
    in one fetch per linger instead of one per record written. No linger: aiokafka's defaults
    (a fetch ends as soon as anything is there)."""
    if linger_ms <= 0:
        return {}
    return {
        "fetch_min_bytes": min(FETCH_MIN_BYTES, batch_max_bytes),
        "fetch_max_wait_ms": min(linger_ms, FETCH_MAX_WAIT_MS),
    }


def linger_started(
    now_monotonic: float, now_wall_s: float, oldest_ms: int, waited_s: float
) -> float:
    """When (monotonic) the linger of a batch started: its first record's write to Kafka (the
    record's timestamp), at most ``waited_s`` (the fetch's wait at the broker) before now. So
    a record that waited at the broker does not wait a whole linger again in the sink: the
    batch is written at most ``linger_ms`` after its first record arrived, as without the
    fetch wait. A timestamp in the future (another clock) counts as now."""
    age = min(max(now_wall_s - oldest_ms / 1000, 0.0), waited_s)
    return now_monotonic - age


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
    def __init__(self, name: str, health: HealthSettings | None = None) -> None:
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
        health = health or HealthSettings()
        # veilleuse_sink_<name>_ready and ..._last_progress_timestamp_seconds: with the lag,
        # what shows a stalled sink.
        self.health = Health(
            f"sink-{name}",
            stall_after_s=health.stall_after_s,
            stuck_after_s=health.stuck_after_s,
            registry=r,
        )

    def serve(self, port: int) -> None:
        from pipeline.metrics import serve

        serve(self.registry, port, self.health)


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
        self.metrics = SinkMetrics(sink.name, settings.health)
        self.health = self.metrics.health
        self.component = f"sink-{sink.name}"
        self.metrics_port = metrics_port
        self.consumer: Any = None
        self.producer = ResilientProducer(settings, component=self.component, health=self.health)
        self.written = 0
        self.attempts = 0
        self.in_hand = 0  # records of the batch being written
        # Offsets written but not committed to Kafka yet (a commit failed: Kafka down).
        self._uncommitted: dict[tuple[str, int], int] = {}
        self._commit_backoff = Backoff(0.5, KAFKA_RETRY_MAX_S)
        self._commit_again_at = 0.0
        self.health.backlog = lambda: self.in_hand + self.metrics.lag.total()

    # -- lifecycle -------------------------------------------------------------------------

    async def run_supervised(self, stop: asyncio.Event) -> None:
        """:meth:`run` as a process does: with the watchdog that exits a stuck process (see
        :mod:`pipeline.health`) and the event loop's heartbeat."""
        self.health.watch()
        beating = asyncio.create_task(self.health.beat_forever())
        try:
            await self.run(stop)
        finally:
            beating.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        from aiokafka.abc import ConsumerRebalanceListener
        from aiokafka.errors import KafkaError

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
        await self.producer.start()  # while Kafka is down, waits for it

        def new_consumer() -> Any:
            consumer = clients.consumer(
                self.settings,
                group_id=self.group_id,
                isolation_level="read_committed",
                max_poll_records=self.config.batch_max_records,
                **fetch_options(self.config.linger_ms, self.config.batch_max_bytes),
            )
            consumer.subscribe(list(self.sink.topics), listener=_Seek())
            return consumer

        if not await self._start_consumer(new_consumer, stop):
            await self.producer.stop()
            await self.sink.stop()
            return
        self.health.start()
        log.info(
            "sink %s consuming %s as %s",
            self.sink.name,
            self.sink.topics,
            self.group_id,
            extra={"component": f"sink-{self.sink.name}"},
        )
        lag = asyncio.create_task(self.metrics.lag.watch(aiokafka_offsets(self.consumer), stop))
        fetch_backoff = Backoff(0.5, KAFKA_RETRY_MAX_S)
        try:
            while not stop.is_set():
                try:
                    batch = await self._collect(stop)
                    fetch_backoff.reset()
                except KafkaError as exc:  # read again from the same positions
                    wait = fetch_backoff.next()
                    self._kafka_problem(exc, "fetch", wait)
                    await _wait(stop, wait)
                    continue
                if batch.records and not await self._write(batch, stop):
                    break  # stopped while the store was down: nothing committed, no loss
                if not batch.records and self._uncommitted:
                    await self._commit_pending()
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

    async def _start_consumer(self, new_consumer: Callable[[], Any], stop: asyncio.Event) -> bool:
        """Join the group as ``self.consumer``; while Kafka is down, try again with a fresh
        consumer (a failed one is stopped, and a stopped one does not start again). False:
        stopped first."""
        backoff = Backoff(0.5, KAFKA_RETRY_MAX_S)
        while not stop.is_set():
            self.consumer = new_consumer()
            try:
                await self.consumer.start()
                self.health.ok("kafka")
                return True
            except Exception as exc:  # noqa: BLE001 - Kafka not reachable: wait, never die
                wait = backoff.next()
                self._kafka_problem(exc, "consumer start", wait)
                with contextlib.suppress(Exception):
                    await self.consumer.stop()
                await _wait(stop, wait)
        return False

    def _kafka_problem(self, exc: BaseException, what: str, wait_s: float) -> None:
        self.health.problem("kafka", f"{type(exc).__name__}: {exc}")
        log.warning(
            "sink %s: Kafka %s failed (%s: %s); trying again in %.1f s",
            self.sink.name,
            what,
            type(exc).__name__,
            exc,
            wait_s,
            extra={"component": self.component, "throttle": True},
        )

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
            oldest_ms: int | None = None
            for messages in fetched.values():
                if messages:
                    first = messages[0]
                    self.metrics.lag.taken(first.topic, first.partition, first.offset)
                    if oldest_ms is None or first.timestamp < oldest_ms:
                        oldest_ms = first.timestamp
                for m in messages:
                    records.append(KafkaRecord.of(m))
                    size += len(m.value or b"")
            if records and first_at is None:
                waited_s = fetch_options(config.linger_ms, config.batch_max_bytes).get(
                    "fetch_max_wait_ms", 0
                )
                first_at = linger_started(
                    time.monotonic(), time.time(), oldest_ms or 0, waited_s / 1000
                )
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
        self.in_hand = len(batch.records)
        try:
            while True:
                self.attempts += 1
                started = time.perf_counter()
                try:
                    result = await self.sink.write(batch)
                    break
                except StoreUnavailableError as exc:
                    self.metrics.errors.labels("unavailable", exc.reason).inc()
                    self.health.problem(self.sink.name, f"{exc.reason}: {exc}")
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
                        extra={
                            "component": self.component,
                            "reason": exc.reason,
                            "throttle": True,  # once per retry while the store is down
                        },
                    )
                    delay = min(config.retry_max_s, delay * 2)
                    # Keep polling (nothing comes: paused) so that the group keeps us.
                    deadline = time.monotonic() + wait
                    while time.monotonic() < deadline:
                        if stop.is_set():
                            return False
                        fetched = await self.consumer.getmany(
                            timeout_ms=min(200, int(wait * 1000) + 1)
                        )
                        # Only a partition assigned meanwhile (not paused) returns records:
                        # not this batch's, so read them again later rather than drop them.
                        for tp, messages in fetched.items():
                            if messages:
                                self.consumer.seek(tp, messages[0].offset)
        finally:
            if paused:
                self.consumer.resume(*self.consumer.assignment())
        self.health.ok(self.sink.name)
        self.metrics.write_seconds.observe(time.perf_counter() - started)
        await self._dead_letter_all(result.rejected)
        await self._commit(batch)
        self.written += len(batch.records)
        self.in_hand = 0
        self.metrics.records.inc(len(batch.records))
        self.metrics.batch_records.observe(len(batch.records))
        for topic, partition in batch.offsets:
            self.metrics.lag.finished(topic, partition)
        self.health.progress()
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
        # Until Kafka has it (a broker restart: a fresh producer, the record sent again); the
        # batch is committed only after.
        await self.producer.send_and_wait(self.dlq_topic, r.value, key=r.key, headers=headers)
        self.metrics.rejected.labels(rejected.reason).inc()
        log.warning(
            "sink %s refused a record: %s %s",
            self.sink.name,
            rejected.reason,
            rejected.detail[:200],
            extra={
                "component": self.component,
                "lamp_id": _lamp_id(r),
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "reason": rejected.reason,
                "throttle": True,  # one per record: a flood of junk must not flood the log
            },
        )

    async def _commit(self, batch: Batch) -> None:
        for key, offset in batch.offsets.items():
            self._uncommitted[key] = max(self._uncommitted.get(key, 0), offset)
        await self._commit_pending(force=True)

    async def _commit_pending(self, *, force: bool = False) -> None:
        """Commit the offsets written so far. Kafka down: kept, and sent again with the next
        batch's (or, idle, after a back-off); a restart meanwhile re-reads records the store
        already has, which the sinks' idempotent writes absorb."""
        from aiokafka import TopicPartition
        from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

        if not force and time.monotonic() < self._commit_again_at:
            return
        assigned = self.consumer.assignment()
        offsets = {
            TopicPartition(topic, partition): offset
            for (topic, partition), offset in self._uncommitted.items()
            if TopicPartition(topic, partition) in assigned
        }
        if not offsets:
            self._uncommitted.clear()
            return
        try:
            await asyncio.wait_for(self.consumer.commit(offsets), COMMIT_TIMEOUT_S)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took partitions away meanwhile: their new owner rewrites what this
            # batch wrote, which the sinks' idempotent writes absorb.
            log.warning(
                "sink %s: offsets not committed (%s)",
                self.sink.name,
                exc,
                extra={"component": self.component},
            )
            self._uncommitted.clear()
        except (KafkaError, TimeoutError) as exc:
            wait = self._commit_backoff.next()
            self._commit_again_at = time.monotonic() + wait
            self._kafka_problem(exc, "offset commit", wait)
        else:
            self._uncommitted.clear()
            self._commit_backoff.reset()
            self.health.ok("kafka")


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def run_sink(settings: Settings, sink: Sink, metrics_port: int) -> None:
    """Run ``sink`` until SIGTERM or SIGINT (the batch in progress is finished first)."""
    from pipeline.process import run_until_stopped

    async def main(stop: asyncio.Event) -> None:
        await SinkRunner(settings, sink, metrics_port=metrics_port).run_supervised(stop)

    run_until_stopped(main)
