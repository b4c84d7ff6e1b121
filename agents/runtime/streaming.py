"""The batch path on faust-streaming: whole fetches processed at once, committed atomically.

faust's per-event stream path (an event-loop pass, a future and an ack per message; a table
write producing one changelog record per event) tops out near 10,000 events/s on one core.
This module keeps what faust is good at and replaces the inner loop:

kept from faust
    the consumer group and its partition assignor (co-partitioning of the input topics and
    table changelogs, standby replicas), table recovery from the changelog before a partition
    is processed, pausing and flow control during rebalances, the worker lifecycle.
replaced
    faust's per-record fetch loop and conductor for the topics of the worker's agents
    (:class:`BatchAgent`): each fetch is buffered per partition and handed, in batches, to
    every agent that reads its topic; hot state lives in the agents' memory; changed keys are
    written to each agent's own table changelog once per batch, in the same Kafka transaction
    as the outputs of every agent of the worker and the batch's consumer offsets.

Several agents may read one topic (as the sub-topologies of one Kafka Streams application
do): the worker's one consumer group reads it once, each agent sees every record of it, and
one offset per input partition is committed in the transaction that also holds what every
agent made of the batch.

So a batch is all or nothing, for all the agents together: after a crash the next owner of a
partition restores the changelogs (read with ``read_committed``) and resumes from the committed
offsets, with state and offsets that match, and consumers reading ``read_committed`` never see
an output twice. The cost: outputs become visible when their batch commits (every
``linger_ms`` or tick), and faust's per-event features (``app.agent`` streams, table
``__setitem__``) are not used for these topics.

Every private name of faust and aiokafka this needs lives in :mod:`agents.runtime.faust_internals`
(with why, and a contract test each); ``docs/runtime.md`` has the measurements behind the batch
path. Nothing here touches one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import faust
from faust.types import TP
from mode import Service

from agents.runtime.faust_internals import (
    BatchRoutingApp,
    CommitFencedError,
    FencingProducer,
    GroupMembership,
    applied_offset,
    fetch_position,
    group_membership,
    mirror_committed,
    preload_changelog,
    stored_values,
    written_span,
)
from pipeline.clients import client_options
from pipeline.errors import VeilleuseError
from pipeline.health import Health
from pipeline.records import KafkaRecord
from pipeline.settings import Settings

log = logging.getLogger(__name__)

# A batch whose transaction failed on a Kafka error is sent again, by a fresh producer, this
# many times in all, waiting 0.5, 1, 2, 4 s between: a partition leader elected meanwhile lets
# it through; after that the worker stops and its partitions move to another worker.
COMMIT_RETRY_FIRST_S = 0.5
# The broker aborts (and fences) a transaction left open this long; a worker that died
# mid-transaction holds read_committed readers of its partitions back for at most as long.
TRANSACTION_TIMEOUT_MS = 60_000
COMMIT_RETRY_MAX_S = 4.0
# On SIGTERM, how long the batch in flight may take to commit before the worker leaves the
# group anyway (a rolling restart waits for the exit; a typical commit takes 5-50 ms).
DRAIN_TIMEOUT_S = 5.0
# At most this long reading the changelogs before joining the group (BatchProcessor._preload).
PRELOAD_TIMEOUT_S = 120.0


class StreamingError(VeilleuseError):
    """The batch path could not commit; the worker stops and its partitions move on."""


@dataclass
class Produce:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    # Logged once the batch committed, with the record's topic, partition and offset added to
    # the context: (message, extra). An alert is only news once it is visible.
    log: tuple[str, dict[str, Any]] | None = None


@dataclass
class BatchResult:
    """What one batch leaves to commit, besides its offsets."""

    produce: list[Produce] = field(default_factory=list)
    # changelog partition -> key -> value (None deletes)
    changelog: dict[int, dict[bytes, bytes | None]] = field(default_factory=dict)
    # wall time (ms) of the deadlines whose firing produced outputs in this batch
    deadlines_ms: list[int] = field(default_factory=list)
    # (kind, severity, state) of each alert in ``produce``, for the metrics
    alerts: list[tuple[str, str, str]] = field(default_factory=list)


class BatchAgent(Protocol):
    """An agent on the batch path. All calls happen on the event loop, one at a time."""

    name: str
    topics: tuple[str, ...]  # co-partitioned inputs; the first drives the partition clock

    def assign(self, partitions: Sequence[int], stored: Iterable[bytes]) -> None:
        """``partitions`` are ours, their table state recovered (``stored``: every value)."""

    def revoke(self, partition: int) -> None:
        """``partition`` moved away: forget its hot state."""

    def process(self, partition: int, records: list[KafkaRecord]) -> None:
        """Handle records of one partition, in offset order per topic."""

    def advance(self, partition: int, wall_ms: int) -> None:
        """The partition's clock reached ``wall_ms``: fire what is due."""

    def take_result(self) -> BatchResult:
        """Everything produced since the last call."""


class StreamingApp(BatchRoutingApp):
    """A faust app whose consumer reads committed data and routes batch topics to their
    :class:`BatchProcessor` (the faust side of it: :mod:`agents.runtime.faust_internals`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_processors: list[BatchProcessor] = []

    async def on_stop(self) -> None:
        """On SIGTERM: each batch processor finishes the batch in flight and starts no other
        before faust stops the consumer (which leaves the group). faust stops the consumer
        first, so the batch in flight was refused (its membership gone) and aborted: the next
        owner then read an aborted transaction in the changelog, which makes its store forget
        the partition (docs/runtime.md, "Failover")."""
        for processor in self.batch_processors:
            await processor.drain()
        await super().on_stop()


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """faust's broker settings from ours (same security as every other client)."""
    options = client_options(settings)
    url = ";".join(f"kafka://{server}" for server in options["bootstrap_servers"])
    conf: dict[str, Any] = {"broker": url}
    protocol = options["security_protocol"]
    if protocol == "SSL":
        conf["broker_credentials"] = faust.SSLCredentials(options["ssl_context"])
    elif protocol.startswith("SASL"):
        conf["broker_credentials"] = faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"],
            ssl_context=options.get("ssl_context"),
        )
    return conf


@dataclass(frozen=True)
class Lane:
    """One agent of a :class:`BatchProcessor` and the table it keeps (its own changelog)."""

    agent: BatchAgent
    table: Any


class AgentCounters:
    """The counters of a worker's agents, as :class:`pipeline.metrics.WorkerMetrics` reads one
    agent's (``counts``, and ``engines`` each with ``counts``): the first agent's under their
    own names (those of the dashboards and alerts), every other agent's prefixed with its name
    (``summarise_nights.late``), so that each agent's figures stay apart."""

    engines: Mapping[Any, Any] = {}  # read-only: the totals are in ``counts``

    def __init__(self, agents: Sequence[BatchAgent]) -> None:
        self.agents = tuple(agents)

    @property
    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for index, agent in enumerate(self.agents):
            prefix = f"{agent.name}." if index else ""
            sources = [getattr(agent, "counts", {})]
            sources += [engine.counts for engine in getattr(agent, "engines", {}).values()]
            for counts in sources:
                for name, value in counts.items():
                    totals[prefix + name] += value
        return dict(totals)


def merge_results(results: Iterable[BatchResult]) -> BatchResult:
    """What several agents' results make visible together (changelogs left out: each is its
    own table's), for the metrics."""
    merged = BatchResult()
    for result in results:
        merged.produce += result.produce
        merged.deadlines_ms += result.deadlines_ms
        merged.alerts += result.alerts
    return merged


class BatchProcessor(Service):
    """Runs a worker's agents (:class:`BatchAgent`) inside a faust worker, each with its own
    table, all fed from one buffer per input partition and committed in one transaction per
    batch."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        lanes: Sequence[Lane],
        *,
        instance_id: str | None = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not lanes:
            raise StreamingError("a batch processor needs at least one agent")
        names = [lane.agent.name for lane in lanes]
        tables = [lane.table.name for lane in lanes]
        if len(set(names)) < len(names) or len(set(tables)) < len(tables):
            raise StreamingError(f"agents and tables must be distinct: {names}, {tables}")
        self.app = app
        self.settings = settings
        self.lanes = tuple(lanes)
        # Every input topic, each once, in the agents' order; and which agents read each.
        self.topics: tuple[str, ...] = tuple(
            dict.fromkeys(topic for lane in lanes for topic in lane.agent.topics)
        )
        self.readers: dict[str, tuple[BatchAgent, ...]] = {
            topic: tuple(lane.agent for lane in lanes if topic in lane.agent.topics)
            for topic in self.topics
        }
        self.component = "+".join(names)
        self.metrics = metrics
        detection = settings.detection
        self.linger_s = detection.linger_ms / 1000
        self.tick_s = detection.tick_interval_s
        self.max_batch = detection.max_batch_records
        self.instance_id = instance_id or detection.instance_id or socket.gethostname()
        # One producer per worker: the agents' outputs and changelogs share its transactions.
        # Its id does not name the agents: a worker restarted with another set of agents must
        # still fence its predecessor at once, or the transaction that one left open holds
        # back every read_committed consumer (the alerts) until the broker times it out.
        self.transactional_id = f"{app.conf.id}-{self.instance_id}"
        self.buffers: dict[TP, list[Any]] = defaultdict(list)
        self.buffered = 0
        self.wakeup = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.lock = asyncio.Lock()
        self.ready: set[int] = set()
        # Partitions revoked by a rebalance whose agents' state is kept until the rebalance
        # ends: partition -> each table's applied changelog offset at the revocation. Given
        # back with nothing new in their changelogs, they are ready again at once, without
        # rebuilding their state (eager rebalancing revokes every partition, every time).
        self.suspended: dict[int, tuple[int | None, ...]] = {}
        self.next_offset: dict[TP, int] = {}
        # (main topic, partition) -> the newest ingest time seen: an agent's partition clock
        # while its first topic's partition is behind.
        self.ingest_clock: dict[TP, int] = {}
        self.producer: Any = None
        self.batches = 0
        self.draining = False  # stopping: no batch after the one in flight (drain)
        self.health = Health(
            "worker",
            stall_after_s=settings.health.stall_after_s,
            stuck_after_s=settings.health.stuck_after_s,
            registry=metrics.registry if metrics is not None else None,
        )
        self.health.backlog = lambda: (
            self.buffered + (metrics.lag.total() if metrics is not None else 0)
        )
        if not isinstance(app, StreamingApp):
            raise StreamingError("the app must be a StreamingApp")
        for topic in self.topics:
            if topic in app.batch_handlers:  # its offsets would be committed twice
                raise StreamingError(f"{topic} is already read by another batch processor")
            app.batch_handlers[topic] = self.on_records
            # Subscribed through faust's conductor, like an agent's topic.
            app.topics.add(
                app.topic(topic, acks=False, key_serializer="raw", value_serializer="raw")
            )
        app.batch_processors.append(self)
        app.on_partitions_revoked.connect(self._on_revoked)
        # faust calls these once every table recovered; the first call hands out the partitions.
        for lane in lanes:
            lane.table.on_recover(self._on_recovered)

    @property
    def agents(self) -> tuple[BatchAgent, ...]:
        return tuple(lane.agent for lane in self.lanes)

    # -- faust callbacks ----------------------------------------------------------------------

    async def on_records(self, tp: TP, records: list[Any]) -> None:
        """A fetch of one partition of our topics (aiokafka records): buffer it."""
        if self.metrics is not None and records:
            self.metrics.lag.taken(tp.topic, tp.partition, records[0].offset)
        self.buffers[tp].extend(records)
        self.buffered += len(records)
        self.wakeup.set()
        if self.buffered >= self.max_batch:
            self.room.clear()
            await self.room.wait()

    async def _on_revoked(self, app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs["revoked"]
        # faust has paused fetching; wait for the batch in progress to commit, then forget.
        async with self.lock:
            for tp in revoked:
                if tp.topic not in self.readers:
                    continue
                dropped = self.buffers.pop(tp, [])
                self.buffered -= len(dropped)
                if self.metrics is not None:
                    self.metrics.lag.forget([(tp.topic, tp.partition)])
                self.next_offset.pop(tp, None)
                self.ingest_clock.pop(tp, None)
                if tp.partition in self.ready:
                    self.ready.discard(tp.partition)
                    self.suspended[tp.partition] = self._applied(tp.partition)
            if self.buffered < self.max_batch:
                self.room.set()
        log.info("revoked %s", sorted({tp.partition for tp in revoked if tp.topic in self.readers}))

    async def _on_recovered(self) -> None:
        async with self.lock:
            # The inputs are co-partitioned: a partition number is ours for all of them.
            assigned = {
                tp.partition for tp in self.app.consumer.assignment() if tp.topic in self.readers
            }
            for partition in sorted(self.ready - assigned):
                self.ready.discard(partition)
                for agent in self.agents:
                    agent.revoke(partition)
            # A suspended partition given back keeps its state only if no changelog record
            # of it was applied meanwhile (nobody else wrote it; an unknown offset is a change).
            kept = []
            for partition, applied in sorted(self.suspended.items()):
                if (
                    partition in assigned
                    and None not in applied
                    and applied == self._applied(partition)
                ):
                    kept.append(partition)
                else:
                    for agent in self.agents:
                        agent.revoke(partition)
            self.suspended.clear()
            self.ready.update(kept)
            new = sorted(assigned - self.ready)
            if not new and not kept:
                return
            if new:
                for lane in self.lanes:
                    lane.agent.assign(new, stored_values(lane.table, new))
            self.ready.update(new)
            self._note_start_offsets(kept + new)
        log.info(
            "partitions ready: %s",
            sorted(kept + new),
            extra={"component": self.component, "kept": kept, "restored": new},
        )

    def _applied(self, partition: int) -> tuple[int | None, ...]:
        """Each table's applied changelog offset of ``partition`` (None: unknown)."""
        return tuple(applied_offset(lane.table, partition) for lane in self.lanes)

    def _note_start_offsets(self, partitions: Sequence[int]) -> None:
        """Where processing of partitions just handed out starts: faust keeps them paused from
        their assignment until recovered, so their fetch position, when known, is their
        committed offset (or a record of theirs is already buffered). A batch with outputs and
        no records (deadlines firing) sends these as its offsets, for the group coordinator to
        check the membership they come with (:meth:`_fence_offsets`). Read without awaiting:
        aiokafka's ``position()`` waits for a paused partition's position, which only comes
        once faust resumes it, after this callback (a deadlock, found by the fencing test)."""
        for tp in self.app.consumer.assignment():
            if tp.topic in self.readers and tp.partition in partitions:
                waiting = self.buffers.get(tp)
                start = waiting[0].offset if waiting else fetch_position(self.app, tp)
                if start is not None:
                    self.next_offset.setdefault(tp, start)

    # -- lifecycle -------------------------------------------------------------------------

    async def on_start(self) -> None:
        await self._start_producer()
        await self._preload()
        self.health.start()

    async def _preload(self) -> None:
        """Before the consumer joins the group (faust starts it after this service): read the
        tables' changelogs, so that the partitions this worker is handed on joining are warm
        (:func:`~agents.runtime.faust_internals.preload_changelog`). Only with standby replicas,
        where each worker holds a copy of most partitions anyway; best effort: what it could
        not read, the recovery after the join reads."""
        if self.settings.detection.standby_replicas < 1:
            return
        from pipeline.clients import consumer as new_consumer

        began = time.monotonic()
        reader = new_consumer(self.settings, group_id=None, isolation_level="read_committed")
        read: dict[str, int] = {}
        try:
            await reader.start()
            for lane in self.lanes:
                read[lane.table.name] = await preload_changelog(
                    lane.table, reader, PRELOAD_TIMEOUT_S
                )
        except Exception:  # the recovery after the join reads what is missing
            log.warning("changelog preload failed", exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                await reader.stop()
        log.info(
            "changelogs read before joining the group: %s in %.2f s",
            read,
            time.monotonic() - began,
            extra={"component": self.component, "preloaded": sum(read.values())},
        )

    async def _start_producer(self) -> None:
        """(Re)start the transactional producer: starting registers the transactional id,
        which aborts whatever its previous producer left open and fences that producer."""
        # aiokafka's producer, its transaction offsets sent with the consumer's group membership
        # (KIP-447): the group coordinator refuses those of a worker no longer in the group.
        self.producer = FencingProducer(
            acks="all",
            enable_idempotence=True,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            max_batch_size=1 << 20,
            linger_ms=0,
            **client_options(self.settings),
        )
        await self.producer.start()
        log.info("transactional producer %s started", self.transactional_id)

    async def _drop_producer(self) -> None:
        """After a failed delivery the producer's sequence numbers no longer match the broker's
        (the next send would fail with OutOfOrderSequenceNumber): the next attempt starts a
        fresh one (see pipeline/kafka_producer.py for the same rule outside transactions)."""
        old, self.producer = self.producer, None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), 10)

    async def drain(self) -> None:
        """Let the batch in flight commit (for at most ``DRAIN_TIMEOUT_S``: a commit retrying
        through a Kafka outage is left to be aborted), then process no more: the worker is
        stopping."""
        self.draining = True
        try:
            await asyncio.wait_for(self.lock.acquire(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("the batch in flight did not commit in %.0f s", DRAIN_TIMEOUT_S)
            return
        self.lock.release()
        log.info("batches stopped for shutdown", extra={"component": self.component})

    async def on_stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    @Service.task
    async def _run(self) -> None:
        while not self.should_stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=self.tick_s)
            if self.buffered and self.buffered < self.max_batch and self.linger_s:
                await asyncio.sleep(self.linger_s)
            async with self.lock:
                if self.draining:
                    return
                try:
                    await self._cycle()
                except Exception as exc:
                    log.exception(
                        "batch failed; stopping the worker so that its partitions move on",
                        extra={"component": self.component},
                    )
                    await self.crash(exc)
                    return

    @Service.task
    async def _beat(self) -> None:
        await self.health.beat_forever()

    @Service.task
    async def _watch_lag(self) -> None:
        if self.metrics is not None:
            await self.metrics.lag.watch(self._offsets)

    async def _offsets(self) -> tuple[dict[tuple[str, int], int | None], dict[Any, int | None]]:
        """End offsets (read_committed: the last stable ones) and positions of our partitions."""
        consumer = self.app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic in self.readers]
        if not assigned:
            return {}, {}
        ends = await consumer.highwaters(*assigned)
        positions: dict[Any, int | None] = {}
        for tp in assigned:
            positions[tp.topic, tp.partition] = await consumer.position(tp)
        return {(tp.topic, tp.partition): o for tp, o in ends.items()}, positions

    # -- one batch -------------------------------------------------------------------------

    async def _cycle(self) -> None:
        self.wakeup.clear()
        # The membership under which this batch is processed, sent with its offsets: the group
        # coordinator refuses them if the group moved on meanwhile (a worker paused past its
        # session, its partitions given to another). Without one (not joined yet, or aiokafka
        # reset it before rejoining) nothing processed could be committed: wait for the
        # rebalance that follows, which hands the partitions out again.
        membership = group_membership(self.app)
        if membership is None:
            return
        buffers, self.buffers = self.buffers, defaultdict(list)
        taken = self.buffered
        self.buffered = 0
        self.room.set()
        offsets: dict[TP, int] = {}
        started = time.perf_counter()
        for tp, messages in buffers.items():
            partition = tp.partition
            if partition not in self.ready:
                # Not recovered yet (faust pauses such partitions, so this is a race at most):
                # keep the records for the next batch rather than lose them.
                self.buffers[tp].extend(messages)
                self.buffered += len(messages)
                continue
            records = [KafkaRecord.of(m) for m in messages]
            for agent in self.readers[tp.topic]:
                agent.process(partition, records)
            offsets[tp] = records[-1].offset + 1
            latest = max(r.timestamp_ms for r in records)
            self.ingest_clock[tp] = max(self.ingest_clock.get(tp, 0), latest)
        self.next_offset.update(offsets)
        now_ms = int(time.time() * 1000)
        clocks: dict[TP, int | None] = {}
        for partition in sorted(self.ready):
            for agent in self.agents:
                main = TP(agent.topics[0], partition)
                if main not in clocks:
                    clocks[main] = await self._partition_clock(main, now_ms)
                wall = clocks[main]
                if wall is not None:
                    agent.advance(partition, wall)
        results = [(lane, lane.agent.take_result()) for lane in self.lanes]
        if await self._commit_batch(results, offsets, membership):
            self._batch_done(taken, time.perf_counter() - started, results, offsets)

    def _batch_done(
        self,
        taken: int,
        elapsed: float,
        results: Sequence[tuple[Lane, BatchResult]],
        offsets: Mapping[TP, int],
    ) -> None:
        """A batch committed: its figures, and progress if it consumed records."""
        if self.metrics is not None:
            for tp in offsets:
                waiting = self.buffers.get(tp)
                self.metrics.lag.finished(
                    tp.topic, tp.partition, waiting[0].offset if waiting else None
                )
        self.batches += 1
        if self.metrics is not None:
            self.metrics.observe_batch(taken, elapsed, merge_results(r for _, r in results))
        if offsets:
            self.health.progress()

    async def _commit_batch(
        self,
        results: Sequence[tuple[Lane, BatchResult]],
        offsets: Mapping[TP, int],
        membership: GroupMembership,
    ) -> bool:
        """Commit what the batch made, if anything; False if the group refused it."""
        if not (offsets or any(r.produce or any(r.changelog.values()) for _, r in results)):
            return True
        try:
            await self._commit_retrying(results, offsets or self._fence_offsets(), membership)
        except CommitFencedError as exc:
            self._forget_after_fence(exc)
            return False
        return True

    def _fence_offsets(self) -> dict[TP, int]:
        """The offsets of a batch with outputs and no records (deadlines firing): where the
        ready partitions stand, committed again unchanged. They carry the membership: without
        them the group coordinator would check nothing, and a cut-off worker could raise alerts
        for partitions it lost."""
        held = {tp: o for tp, o in self.next_offset.items() if tp.partition in self.ready}
        if not held:
            # No position was known when they were handed out: the fetch position of those with
            # nothing buffered (all they fetched is processed, unless a fetch is being handed
            # over right now: rare, and then only those records would be skipped after a crash).
            for tp in self.app.consumer.assignment():
                if tp.topic not in self.readers or tp.partition not in self.ready:
                    continue
                position = fetch_position(self.app, tp)
                if position is not None and not self.buffers.get(tp):
                    held[tp] = position
        if not held:
            raise StreamingError("a batch with outputs and no offset known to send with them")
        return held

    def _forget_after_fence(self, exc: CommitFencedError) -> None:
        """The group refused this batch: its transaction is aborted (outputs and changelog
        included), and every partition's state in memory, ahead of what was committed, goes.
        The partitions come back, from their committed state, when the group hands them out
        again (:meth:`_on_recovered`): the coordinator no longer knows this membership, so the
        consumer rejoins."""
        partitions = sorted(self.ready)
        for partition in partitions:
            for agent in self.agents:
                agent.revoke(partition)
        self.ready.clear()
        self.buffers.clear()
        self.buffered = 0
        self.room.set()
        if self.metrics is not None:
            self.metrics.lag.forget([(tp.topic, tp.partition) for tp in self.next_offset])
        self.next_offset.clear()
        self.ingest_clock.clear()
        log.warning(
            "commit refused, batch aborted: %s; state of partitions %s dropped until the group "
            "hands partitions out again",
            exc,
            partitions,
            extra={"component": self.component},
        )

    async def _partition_clock(self, tp: TP, now_ms: int) -> int | None:
        """Wall time up to which the input partition ``tp`` (an agent's first topic) is known:
        now, once caught up.

        While a backlog is processed, a lamp's silence is only as long as the records say:
        firing deadlines on the wall clock then would raise falls that the backlog disproves.
        """
        consumer = self.app.consumer
        try:
            highwater = consumer.highwater(tp)
        except (AssertionError, KeyError, AttributeError):
            highwater = None
        position = self.next_offset.get(tp)
        if position is None:
            try:
                position = await consumer.position(tp)
            except Exception:  # noqa: BLE001 - unassigned in a rebalance: no clock this time
                position = None
        caught_up = highwater is not None and position is not None and position >= highwater
        if caught_up and not self.buffers.get(tp):
            return now_ms
        log.debug("%s behind: position %s, highwater %s", tp, position, highwater)
        return self.ingest_clock.get(tp)

    async def _commit_retrying(
        self,
        results: Sequence[tuple[Lane, BatchResult]],
        offsets: Mapping[TP, int],
        membership: GroupMembership,
    ) -> None:
        """Commit the batch; a Kafka error (a partition without a leader for a while, the
        broker restarting) aborts the transaction and sends the same outputs again in a new
        one, from a fresh producer, for as long as Kafka may take to come back
        (``health.stuck_after_s``); past that the worker stops, for its supervisor to restart
        it and its partitions to move on."""
        from aiokafka.errors import KafkaError, ProducerFenced

        delay = COMMIT_RETRY_FIRST_S
        give_up = time.monotonic() + self.settings.health.stuck_after_s
        attempt = 0
        outage = fenced_again = False
        while True:
            attempt += 1
            began = time.monotonic()
            try:
                if self.producer is None:
                    await self._start_producer()
                await self._commit(results, offsets, membership)
                if self.health.problems:
                    self.health.ok("kafka")
                return
            except CommitFencedError:
                # aiokafka would end the transaction locally without telling the broker (see
                # FencingProducer): a fresh producer aborts it now, so that read_committed
                # readers of its partitions are not held back until it times out.
                await self._drop_producer()
                try:
                    await self._start_producer()
                except Exception:  # the next batch starts one (and aborts it then)
                    log.warning("no fresh producer after the refused commit", exc_info=True)
                    await self._drop_producer()
                raise
            except ProducerFenced as exc:
                # Without an outage: another process took this worker's identity, this one is
                # the zombie. After one (a failed attempt, or this transaction open past its
                # timeout while aiokafka retried), the broker itself fenced the transaction it
                # timed out: once, a fresh producer sends the batch again.
                timed_out = time.monotonic() - began > 0.8 * TRANSACTION_TIMEOUT_MS / 1000
                if not (outage or timed_out) or fenced_again:
                    raise
                fenced_again = True
                log.warning(
                    "transaction fenced after the Kafka outage (%s); sending the batch again",
                    exc,
                    extra={"component": self.component},
                )
                await self._drop_producer()
            except KafkaError as exc:
                outage = True
                if self.should_stop or time.monotonic() > give_up:
                    raise
                self.health.problem("kafka", f"{type(exc).__name__}: {exc}")
                log.warning(
                    "transaction aborted (%s: %s); sending the batch again in %.1f s (attempt %d)",
                    type(exc).__name__,
                    exc,
                    delay,
                    attempt,
                    extra={"component": self.component, "throttle": True},
                )
                await asyncio.sleep(delay)
                await self._drop_producer()
                delay = min(delay * 2, COMMIT_RETRY_MAX_S)

    async def _send_changelog(
        self, topic: str, partition: int, items: Mapping[bytes, bytes | None]
    ) -> list[tuple[asyncio.Future[Any], int]]:
        """Each delivery with its record count (the table's store needs the offsets written)."""
        # Whole batches rather than one send per record: the changelog is the bulk of what a
        # batch writes, and per-record sends would cost more than the rules themselves.
        producer = self.producer
        sent = []
        batch = producer.create_batch()
        count = 0
        for key, value in items.items():
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                sent.append((await producer.send_batch(batch, topic, partition=partition), count))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
                count = 0
            count += 1
        batch.close()
        sent.append((await producer.send_batch(batch, topic, partition=partition), count))
        return sent

    async def _commit(
        self,
        results: Sequence[tuple[Lane, BatchResult]],
        offsets: Mapping[TP, int],
        membership: GroupMembership,
    ) -> None:
        """One transaction: every agent's outputs and changelog, and the consumer offsets of a
        batch (one per input partition, whichever agents read it).

        aiokafka's public transaction calls (``begin_transaction``, ``commit_transaction``,
        ``abort_transaction``; the offsets through :class:`FencingProducer`, which sends them
        with the consumer's group membership), not its ``transaction()`` context: that
        one aborts on any exception and waits for the abort without a bound, also in an outage
        or after a failed commit. Here the abort happens only while the transaction is open
        (begun, not yet committing) and not fenced, bounded to 10 s; in every other case the
        next producer's start aborts what this one left open (see ``_commit_retrying``).
        """
        from aiokafka import TopicPartition
        from aiokafka.errors import ProducerFenced

        producer = self.producer
        began = time.perf_counter()
        await producer.begin_transaction()
        open_transaction = True
        logged: list[tuple[Produce, asyncio.Future[Any]]] = []
        deliveries: list[asyncio.Future[Any]] = []
        fenced_offsets = {TopicPartition(tp.topic, tp.partition): o for tp, o in offsets.items()}
        # (lane index, changelog partition) -> its deliveries and their record counts
        changelog_sent: dict[tuple[int, int], list[tuple[asyncio.Future[Any], int]]] = {}
        try:
            # The fence, first before anything is written: the group coordinator takes the
            # offsets only from the membership the batch was processed under (CommitFencedError
            # otherwise). A worker that was cut off between two batches, or while processing
            # one, is refused here and writes nothing: the changelogs it would have written
            # to do not end with its aborted records.
            await producer.send_fenced_offsets(fenced_offsets, self.app.conf.id, membership)
            for index, (lane, result) in enumerate(results):
                for item in result.produce:
                    sent = await producer.send(
                        item.topic, item.value, key=item.key, headers=item.headers
                    )
                    deliveries.append(sent)
                    if item.log is not None:
                        logged.append((item, sent))
                changelog_topic = lane.table.changelog_topic.get_topic_name()
                for partition, items in result.changelog.items():
                    if items:
                        sent_items = await self._send_changelog(changelog_topic, partition, items)
                        changelog_sent[index, partition] = sent_items
                        deliveries += [delivery for delivery, _ in sent_items]
            # aiokafka fails a batch whose partition has had no leader for request_timeout_ms
            # (NotLeaderForPartitionError) without failing the transaction, whose commit then
            # succeeds without that batch: an alert lost while its input's offset is committed.
            # Every delivery must have succeeded before the commit.
            await asyncio.gather(*deliveries)
            # And again as late as it can be (the same offsets, in the same transaction): for a
            # worker cut off while it was writing. What remains between this answer and the
            # commit is docs/runtime.md's "Fencing" window.
            await producer.send_fenced_offsets(fenced_offsets, self.app.conf.id, membership)
            # From here aiokafka's transaction is committing: an abort is no longer allowed.
            open_transaction = False
            await producer.commit_transaction()
        except BaseException as exc:
            # A fenced producer can no longer abort (the broker did, when it fenced it); after a
            # refused commit aiokafka would abort locally only (_commit_retrying starts a fresh
            # producer, which aborts it on the broker).
            if open_transaction and not isinstance(exc, ProducerFenced | CommitFencedError):
                try:
                    await asyncio.wait_for(producer.abort_transaction(), 10)
                except Exception:  # the next producer's start aborts it in any case
                    log.exception("abort failed", extra={"throttle": True})
            raise
        # Each table's store mirrors the committed changelog, with the offsets it was written at:
        # the next recovery of a partition this worker keeps resumes from there.
        for index, (lane, result) in enumerate(results):
            written = {
                partition: written_span([(f.result().offset, n) for f, n in sent])
                for (i, partition), sent in changelog_sent.items()
                if i == index
            }
            mirror_committed(lane.table, result.changelog, written)
        if self.metrics is not None:
            self.metrics.observe_commit(
                time.perf_counter() - began, merge_results(r for _, r in results)
            )
        await _log_committed(logged)


async def _log_committed(logged: Sequence[tuple[Produce, asyncio.Future[Any]]]) -> None:
    """Log the records that asked for it, where Kafka put them."""
    for item, sent in logged:
        message, context = item.log or ("", {})
        metadata = sent.result()  # delivered before the commit (see _commit)
        log.info(
            message,
            extra={
                **context,
                "topic": metadata.topic,
                "partition": metadata.partition,
                "offset": metadata.offset,
            },
        )
