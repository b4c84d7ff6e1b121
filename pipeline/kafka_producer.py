"""The one way a component writes to Kafka outside a transaction: a producer that heals itself.

aiokafka's idempotent producer does not survive every broker event. When a produce request was
in flight as the broker stopped, or a partition's leader moved, the broker may answer a later
batch with ``OutOfOrderSequenceNumber``, ``UnknownProducerId`` or ``InvalidProducerEpoch``, and
then every batch that producer sends to that partition fails the same way: the producer is
wedged until it is replaced. A delivery that failed after aiokafka's own retries
(``KafkaTimeoutError`` while the broker was down) leaves its sequence numbers behind the broker's
in the same way.

:class:`ResilientProducer` therefore replaces its producer after any failed delivery (once per
producer, whatever the number of failures), fails every delivery still pending on the replaced
one with :class:`ProducerRestartedError` (the caller still holds those records and sends them again:
a duplicate, never a loss), and while Kafka is down waits for it with a capped, jittered
back-off. Callers keep their own rule: an MQTT message is acknowledged, a sink's offsets are
committed, an acknowledgement is answered, only once the future of its record succeeded.

The detection worker's transactional producer recovers the same way inside its transactions
(:mod:`agents.runtime.streaming`): it aborts and replays the whole batch with a fresh producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

from pipeline import clients
from pipeline.errors import VeilleuseError
from pipeline.health import Health
from pipeline.retry import Backoff
from pipeline.settings import Settings

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]


class KafkaWriteError(VeilleuseError):
    """A record was not acknowledged by Kafka; the caller still holds it and sends it again."""

    def __init__(self, message: str, *, topic: str | None = None) -> None:
        self.topic = topic
        super().__init__(f"{message} [topic={topic}]" if topic else message)


class ProducerRestartedError(KafkaWriteError):
    """The producer that held this record was replaced before Kafka acknowledged it."""


class ResilientProducer:
    """An idempotent, acks=all producer that replaces itself after a failed delivery.

    ``send`` hands a record over and returns a future that resolves to its ``RecordMetadata``
    once Kafka has it, or fails with :class:`KafkaWriteError`; ``send_and_wait`` retries until
    Kafka has it (bound it with ``asyncio.wait_for`` where a caller cannot wait).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        component: str,
        health: Health | None = None,
        max_backoff_s: float = 2.0,
        unanswered_after_s: float | None = None,
        **options: Any,
    ) -> None:
        self.settings = settings
        self.component = component
        self.health = health
        self.max_backoff_s = max_backoff_s
        # Default: twice the request timeout and 5 s: aiokafka answers or fails well before.
        self.unanswered_after_s = unanswered_after_s or (
            2 * float(options.get("request_timeout_ms", 40_000)) / 1000 + 5
        )
        self.options = options
        self.producer: Any = None
        self.generation = 0
        self.restarts = 0
        self._ready = asyncio.Event()
        # generation -> the deliveries it still owes, in the order they were handed over, with
        # the time each was (the first is the oldest)
        self._pending: dict[int, dict[asyncio.Future[Any], float]] = {}
        self._watching: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the first producer; while Kafka cannot be reached, keep trying (cancellable)."""
        await self._start_new()
        self._watching = asyncio.create_task(self._watch_unanswered())

    async def _watch_unanswered(self) -> None:
        """A delivery neither acknowledged nor failed long after the request timeout is a
        wedged producer too (seen after a broker's clean stop: one partition's batches never
        answered, every later record of it held behind them): replace it the same way."""
        while not self._closed:
            await asyncio.sleep(min(1.0, self.unanswered_after_s / 4))
            generation = self.generation
            pending = self._pending.get(generation)
            if not pending or self._restarting is not None:
                continue
            oldest = next(iter(pending.values()))
            waited = time.monotonic() - oldest
            if waited > self.unanswered_after_s:
                self._failed(
                    generation,
                    KafkaWriteError(
                        f"{len(pending)} deliveries unanswered, the oldest for {waited:.0f} s"
                    ),
                )

    async def stop(self) -> None:
        self._closed = True
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
        self._ready.set()  # wakes the sends that wait for a producer: they fail
        if self._restarting is not None:
            self._restarting.cancel()
            await asyncio.gather(self._restarting, return_exceptions=True)
        for generation in list(self._pending):
            self._fail_pending(generation, "the producer was stopped")
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), self._close_timeout_s())
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _close_timeout_s(self) -> float:
        return float(self.options.get("request_timeout_ms", 40_000)) / 1000 + 5

    async def _start_new(self) -> None:
        backoff = Backoff(min(0.1, self.max_backoff_s), self.max_backoff_s)
        while not self._closed:
            producer = clients.producer(self.settings, **self.options)
            try:
                await producer.start()
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            except Exception as exc:  # noqa: BLE001 - Kafka down: wait and try again, never die
                with contextlib.suppress(Exception):
                    await producer.stop()
                self._problem(exc)
                wait = backoff.next()
                log.warning(
                    "%s: Kafka not reachable (%s: %s); trying again in %.1f s",
                    self.component,
                    type(exc).__name__,
                    exc,
                    wait,
                    extra={"component": self.component, "throttle": True},
                )
                await asyncio.sleep(wait)
                continue
            self.generation += 1
            self.producer = producer
            self._ready.set()
            return

    # -- sending ------------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Hand one record to the producer (waiting while it is replaced); the returned future
        resolves once Kafka acknowledged the record, or fails with :class:`KafkaWriteError`."""
        while True:
            await self._ready.wait()
            if self._closed:
                raise KafkaWriteError("the producer is stopped", topic=topic)
            producer, generation = self.producer, self.generation
            try:
                # aiokafka bounds this wait itself (buffer full, metadata); this bounds it again
                # in case it does not, so that a wedged producer cannot hold the caller for ever.
                async with asyncio.timeout(self.unanswered_after_s):
                    inner = await producer.send(
                        topic, value, key=key, headers=list(headers or ()), partition=partition
                    )
            except Exception as exc:
                if generation != self.generation:  # replaced while this send waited: again
                    continue
                self._failed(generation, exc)
                raise KafkaWriteError(
                    f"not accepted by the producer: {type(exc).__name__}: {exc}", topic=topic
                ) from exc
            outer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending.setdefault(generation, {})[outer] = time.monotonic()
            inner.add_done_callback(functools.partial(self._settle, generation, outer, topic))
            return outer

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Any:
        """Send until Kafka has the record (a replay may duplicate it); its ``RecordMetadata``."""
        backoff = Backoff(min(0.1, self.max_backoff_s), self.max_backoff_s)
        while True:
            try:
                future = await self.send(
                    topic, value, key=key, headers=headers, partition=partition
                )
                return await future
            except KafkaWriteError:
                if self._closed:
                    raise
                await asyncio.sleep(backoff.next())

    async def partitions_for(self, topic: str) -> set[int]:
        """The partitions of ``topic`` (from the current producer's metadata)."""
        await self._ready.wait()
        if self._closed:
            raise KafkaWriteError("the producer is stopped", topic=topic)
        partitions: set[int] = await self.producer.partitions_for(topic)
        return partitions

    def _settle(
        self, generation: int, outer: asyncio.Future[Any], topic: str, inner: asyncio.Future[Any]
    ) -> None:
        pending = self._pending.get(generation)
        if pending is not None:
            pending.pop(outer, None)
        if outer.done():  # failed already, when its producer was replaced
            return
        if inner.cancelled():
            outer.set_exception(ProducerRestartedError("the delivery was cancelled", topic=topic))
            return
        exc = inner.exception()
        if exc is not None:
            self._failed(generation, exc)
            outer.set_exception(
                KafkaWriteError(f"delivery failed: {type(exc).__name__}: {exc}", topic=topic)
            )
            return
        outer.set_result(inner.result())
        if self.health is not None and self.health.problems.get("kafka"):
            self.health.ok("kafka")

    def _problem(self, exc: BaseException) -> None:
        if self.health is not None:
            self.health.problem("kafka", f"{type(exc).__name__}: {exc}")

    def _failed(self, generation: int, exc: BaseException) -> None:
        """A delivery of producer ``generation`` failed: replace that producer (once)."""
        self._problem(exc)
        if self._closed or generation != self.generation or self._restarting is not None:
            return
        self._ready.clear()
        self._restarting = asyncio.create_task(self._restart(generation, exc))

    def _fail_pending(self, generation: int, why: str) -> int:
        failed = 0
        for outer in self._pending.pop(generation, {}):
            if not outer.done():
                outer.set_exception(ProducerRestartedError(why))
                failed += 1
        return failed

    async def _restart(self, generation: int, exc: BaseException) -> None:
        old = self.producer
        unacknowledged = self._fail_pending(generation, "its producer was replaced")
        log.warning(
            "%s: Kafka delivery failed (%s: %s); replacing the producer, %d unacknowledged "
            "records are sent again",
            self.component,
            type(exc).__name__,
            exc,
            unacknowledged,
            extra={"component": self.component, "throttle": True},
        )
        closing = asyncio.create_task(self._close_quietly(old))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        try:
            await self._start_new()
            self.restarts += 1
            log.info(
                "%s: new Kafka producer started (replacement %d)",
                self.component,
                self.restarts,
                extra={"component": self.component, "throttle": True},
            )
        finally:
            self._restarting = None

    async def _close_quietly(self, producer: Any) -> None:
        # Its batches fail or land (a duplicate) within the request timeout; then it is gone.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), self._close_timeout_s())
