"""The one module that touches private names of faust-streaming, mode and aiokafka.

The batch path (:mod:`agents.runtime.streaming`) keeps faust for group membership, partition
assignment, changelogged tables, standby replicas and recovery, and replaces faust's
per-record fetch loop (see ``docs/runtime.md``: 2.7 times faust's own stream on the same
machine). faust has no public hook for either half of that, so the few places where the batch
path has to reach inside faust or aiokafka are here, each behind a named class or function
whose docstring says why it is needed and which public API is missing. Every name is pinned by
``tests/unit/agents/runtime/test_faust_internals.py`` against the installed versions
(``constraints.txt``), and ``tests/unit/agents/runtime/test_private_names.py`` fails when any
other module of the code base reaches into those libraries.

Private names touched, by library (keep in step with :data:`PRIVATE_NAMES` and the docs):

faust
    ``AIOKafkaConsumerThread._create_worker_consumer``, ``Consumer._new_consumer_thread``,
    ``Consumer._wait_next_records``, ``Consumer._to_message``, ``Consumer._buffered_partitions``,
    ``Consumer._read_offset``, ``ThreadDelegateConsumer._thread``,
    ``AIOKafkaConsumerThread._ensure_consumer``, ``App._new_transport``,
    ``TableManager._recovery``, ``Recovery._set_recovery_started``,
    ``Recovery._active_events_received_at``, ``Recovery._set_recovery_ended``; and, public by
    name but used against their intent,
    ``Consumer.getmany`` and ``Recovery.need_recovery`` (overridden), ``Collection.data``
    (written without the changelog), ``Worker.spinner`` (cleared).
aiokafka
    ``AIOKafkaConsumer._isolation_level``, ``AIOKafkaConsumer._subscription``,
    ``AIOKafkaConsumer._group_instance_id``; for fencing,
    ``AIOKafkaConsumer._coordinator`` (its ``generation`` and ``member_id``),
    ``GroupCoordinator._group_instance_id``, ``AIOKafkaProducer._sender``,
    ``Sender._do_txn_offset_commit`` (overridden), ``Sender._find_coordinator``,
    ``Sender._txn_manager``, and ``TxnOffsetCommitHandler`` (extended: its ``handle_response``
    reads a v0 response).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.client import CoordinationType
from aiokafka.errors import GroupAuthorizationFailedError, IncompatibleBrokerVersion
from aiokafka.producer.sender import Sender, TxnOffsetCommitHandler
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from faust.stores import STORES
from faust.stores.memory import Store as MemoryStore
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from pipeline.errors import VeilleuseError

log = logging.getLogger(__name__)

# A batch topic's fetches go to its handler: (partition, aiokafka ConsumerRecords in offset order).
BatchHandler = Callable[[TP, list[Any]], Awaitable[None]]

# (library, qualified name) of every private name this module touches; the contract tests
# check each one against the installed library and docs/runtime.md lists them.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("faust-streaming", "AIOKafkaConsumerThread._create_worker_consumer"),
    ("aiokafka", "AIOKafkaConsumer._isolation_level"),
    ("faust-streaming", "Consumer._new_consumer_thread"),
    ("faust-streaming", "Consumer.getmany"),
    ("faust-streaming", "Consumer._wait_next_records"),
    ("faust-streaming", "Consumer._to_message"),
    ("faust-streaming", "Consumer._buffered_partitions"),
    ("faust-streaming", "Consumer._read_offset"),
    ("faust-streaming", "App._new_transport"),
    ("faust-streaming", "ThreadDelegateConsumer._thread"),
    ("faust-streaming", "AIOKafkaConsumerThread._ensure_consumer"),
    ("aiokafka", "AIOKafkaConsumer._subscription"),
    ("faust-streaming", "Recovery.need_recovery"),
    ("faust-streaming", "Recovery._set_recovery_started"),
    ("faust-streaming", "Recovery._active_events_received_at"),
    ("faust-streaming", "TableManager._recovery"),
    ("faust-streaming", "Collection.data"),
    ("faust-streaming", "Worker.spinner"),
    ("faust-streaming", "Recovery._set_recovery_ended"),
    ("aiokafka", "AIOKafkaConsumer._group_instance_id"),
    # fencing (KIP-447)
    ("aiokafka", "AIOKafkaConsumer._coordinator"),
    ("aiokafka", "GroupCoordinator._group_instance_id"),
    ("aiokafka", "AIOKafkaProducer._sender"),
    ("aiokafka", "Sender._do_txn_offset_commit"),
    ("aiokafka", "Sender._find_coordinator"),
    ("aiokafka", "Sender._txn_manager"),
    ("aiokafka", "TxnOffsetCommitHandler.handle_response"),
)


# -- the consumer: read committed, whole fetches to the batch path ------------------------------


def read_committed(consumer: Any) -> Any:
    """Make an aiokafka consumer not yet started read ``read_committed``.

    Why: changelogs and outputs are written in transactions, and recovery must not apply the
    writes of an aborted batch. The public API is aiokafka's constructor argument
    ``AIOKafkaConsumer(isolation_level="read_committed")``, but faust builds the consumer
    itself and passes ``read_committed`` only in its own exactly-once mode
    (``processing_guarantee="exactly_once"``), which would also route every commit through its
    per-partition transaction manager. So this sets the field the constructor argument sets
    (read by ``start()`` when it creates the fetcher); the contract test checks that the result
    equals a consumer built with the public argument.
    """
    consumer._isolation_level = "read_committed"
    return consumer


def static_member(consumer: Any, group_instance_id: str) -> Any:
    """Make an aiokafka consumer not yet started a static member of its group (KIP-345).

    Why: a worker restarted under the same instance id then gets its partitions back without a
    rebalance of the whole group (and a static member sends no LeaveGroup when it stops: its
    partitions wait for the session timeout; docs/runtime.md, "Failover"). The public API is
    aiokafka's ``AIOKafkaConsumer(group_instance_id=...)``, but faust builds the consumer
    itself, without it: this sets the field the argument sets (read by ``start()``, which hands
    it to the group coordinator); the contract test compares both.
    """
    consumer._group_instance_id = group_instance_id
    return consumer


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, whose aiokafka consumer reads committed data (and is a static
    member of the group when the app names a ``group_instance_id``).

    Overrides ``_create_worker_consumer``: faust's only place where the worker's aiokafka
    consumer is built, with no public factory or setting for its isolation level or
    group instance id.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = read_committed(super()._create_worker_consumer(transport))
        instance = getattr(self.app, "group_instance_id", None)
        return static_member(consumer, instance) if instance else consumer


class BatchRoutingConsumer(faust_aiokafka.Consumer):
    """faust's consumer, handing whole fetches of batch topics to their handler.

    faust's fetch loop (``getmany``, then its conductor) awaits a callback per record (a few
    tasks and event-loop turns each: about a third of a worker's CPU at 14,000 records/s).
    Here the records of a topic with a handler in ``app.batch_handlers`` skip it: each fetched
    partition's list goes to the handler in one call, and only the other topics' records (the
    changelogs during recovery, standbys) take faust's way. faust has no public per-batch
    consumer API, so this overrides ``getmany`` (faust's fetcher calls it) and uses what
    faust's own ``getmany`` uses: ``_wait_next_records`` (the fetch, which also waits while a
    rebalance stops the flow), ``_buffered_partitions`` (partitions whose fetched records are
    still to be delivered), ``_to_message`` (a record as a faust message) and ``_read_offset``
    (faust's position bookkeeping, updated here as faust's conductor would for the records
    handed over), and ``_new_consumer_thread`` to install :class:`ReadCommittedConsumerThread`.
    """

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        records, active_partitions = await self._wait_next_records(timeout)
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            # As faust does: a rebalance stopped the flow; go back to the committed offsets.
            try:
                await self.perform_seek()
            except Exception as exc:  # noqa: BLE001 - faust logs and carries on the same way
                self.log.warning("exception performing seek when flow not active %r", exc)
            return
        generation_id = self.app.consumer_generation_id
        handlers: Mapping[str, BatchHandler] = getattr(self.app, "batch_handlers", {})
        # Changelog records (recovery, standbys) applied as whole fetches, not faust's per-event
        # queue (see CommittedChangelogRecovery.apply_fetched), unless switched off.
        tables: Any = self.app.tables
        in_batches = getattr(self.app, "restore_in_batches", False)
        recovery = tables.recovery if in_batches else None
        changelogs = tables.changelog_topics if recovery is not None else set()
        to_message = self._to_message
        for tp, tp_records in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                break
            if not (
                active_partitions is None
                or tp in active_partitions
                or tp in self._buffered_partitions
            ):
                continue
            handler = handlers.get(tp.topic)
            if handler is not None:
                await handler(tp, tp_records)
                self._read_offset[tp] = tp_records[-1].offset
                continue
            if recovery is not None and tp.topic in changelogs:
                recovery.apply_fetched(tp, tp_records)
                self._read_offset[tp] = tp_records[-1].offset
                continue
            for record in tp_records:
                yield tp, to_message(tp, record)


class BatchRoutingTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with :class:`BatchRoutingConsumer` (a public class attribute)."""

    Consumer = BatchRoutingConsumer


def fetch_position(app: Any, tp: TP) -> int | None:
    """The worker consumer's fetch position of ``tp`` (the next offset), read without awaiting.

    Why: :class:`CommittedChangelogRecovery` decides in faust's synchronous ``need_recovery``
    whether the fetch passed a changelog's end. The public ``AIOKafkaConsumer.position()`` and
    faust's ``Consumer.position()`` are coroutines, and faust does not expose the aiokafka
    consumer: this goes through ``ThreadDelegateConsumer._thread``,
    ``AIOKafkaConsumerThread._ensure_consumer()`` and aiokafka's ``_subscription`` (the state
    ``position()`` itself reads). ``None`` when unknown (no consumer, no assignment yet).
    """
    try:
        consumer = app.consumer._thread._ensure_consumer()
        state = consumer._subscription.subscription.assignment.state_value(tp)
        return int(state.position) if state is not None and state.has_valid_position else None
    except Exception:  # noqa: BLE001 - no consumer or no assignment yet: unknown
        return None


class BatchRoutingApp(faust.App):
    """A faust app whose transport is :class:`BatchRoutingTransport` and whose table manager
    recovers changelogs written in transactions.

    Overrides ``App._new_transport``: faust picks the transport class from the broker URL's
    scheme and has no setting for a transport class (its ``TableManager`` has one, used here).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("TableManager", CommittedChangelogTableManager)
        super().__init__(*args, **kwargs)
        # topic -> the handler taking that topic's fetches (see BatchRoutingConsumer.getmany)
        self.batch_handlers: dict[str, BatchHandler] = {}
        # Changelog fetches applied in bulk (False: faust's per-event recovery, for comparison).
        self.restore_in_batches = True
        # KIP-345 static membership of the worker's consumer (None: a dynamic member).
        self.group_instance_id: str | None = None

    def _new_transport(self) -> Any:
        return BatchRoutingTransport(self.conf.broker_consumer, self)


# -- recovery of changelogs written in transactions ---------------------------------------------


def changelog_partition_recovered(
    *,
    applied: int,
    last_offset: int,
    position: int | None,
    quiet_since: float,
    now: float,
    quiet_s: float,
) -> bool:
    """Whether recovery of one changelog partition is done (pure).

    ``last_offset`` is faust's highwater (the last offset, that is the end offset - 1). Each
    transaction ends with a commit marker that consumers never see, so the record just before
    the end is all that can be applied: done once ``applied`` reached it. When the last
    transaction was aborted, nothing past its writes arrives either: done once the fetch
    ``position`` passed the end and no record arrived for ``quiet_s`` (records already fetched
    may still be on their way to the recovery: found by the restart test on a loaded machine).
    """
    if applied >= last_offset - 1:
        return True
    return position is not None and position > last_offset and now - quiet_since > quiet_s


class CommittedChangelogRecovery(Recovery):
    """faust's recovery, for changelogs written in transactions.

    faust (outside its own exactly-once mode) waits for the offset before the highwater, which
    a changelog ending with a commit marker never delivers: recovery would never end. faust
    has no public setting for this, so this overrides ``need_recovery`` (faust polls it) with
    :func:`changelog_partition_recovered`, reads ``_active_events_received_at`` (when the last
    changelog record of a partition was applied: no public accessor) and overrides
    ``_set_recovery_started`` to reset its own waiting clocks at each recovery.
    """

    quiet_s = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # tp -> when this recovery started waiting for it (reset with each recovery)
        self.waiting_since: dict[TP, float] = {}
        super().__init__(*args, **kwargs)

    def _set_recovery_started(self) -> None:
        self.waiting_since = {}
        self.started_at = time.monotonic()
        # The end of the previous recovery must not end this one. faust clears this event only
        # in its per-event loop (``_slurp_changelogs``, each time it takes an event or every
        # 5 s), which the bulk path (:meth:`apply_fetched`) bypasses: a recovery starting
        # within 5 s of the last one found the event still set and ended at once, with the
        # actives' state as stale as the standby copy it had (found by the 100,000-lamp rolling
        # restart: a worker restarted 3 s earlier took partitions whose standby copy was 1,000-2,900
        # records behind, and raised 8 falls a second time). faust calls this right before it
        # waits for the event.
        self.signal_recovery_end.clear()
        for table in self.tables.values():
            store = table.data
            if isinstance(store, ChangelogOffsetStore):
                store.restored.clear()
        super()._set_recovery_started()

    def _set_recovery_ended(self) -> None:
        """Logs what this recovery read: per table, the changelog records applied per active
        partition (the tests and ``devtools/bench/restore.py`` read it), and its rate."""
        if self.in_recovery:
            elapsed = time.monotonic() - getattr(self, "started_at", time.monotonic())
            restored: dict[str, dict[int, int]] = {}
            for table in self.tables.values():
                store = table.data
                if isinstance(store, ChangelogOffsetStore):
                    actives = {tp.partition for tp in self.actives_for_table.get(table, ())}
                    restored[table.name] = {
                        p: n for p, n in sorted(store.restored.items()) if p in actives
                    }
            total = sum(n for counts in restored.values() for n in counts.values())
            log.info(
                "changelog records restored: %s (%d in %.2f s)",
                restored,
                total,
                elapsed,
                extra={"restored": total, "elapsed_s": round(elapsed, 3)},
            )
        super()._set_recovery_ended()

    def apply_fetched(self, tp: TP, records: Sequence[Any]) -> None:
        """Apply one fetch of a changelog partition (aiokafka records, offset order) at once.

        faust's own path puts every record through its conductor and changelog queue, one
        event and several awaits each (measured: ``devtools/bench/restore.py``); this does what
        its ``_slurp_changelogs`` loop does per event, per fetch: the offset bookkeeping of an
        active or standby partition, the store write (:meth:`ChangelogOffsetStore.apply_records`),
        and the end of the recovery once nothing is left.
        """
        table: Any = self.tp_to_table.get(tp)
        if tp in self.active_tps:
            offsets = self.active_offsets
            self._active_events_received_at[tp] = time.monotonic()
        elif tp in self.standby_tps:
            offsets = self.standby_offsets
        else:
            return  # not ours (any more): faust would only warn
        if table is None or not records:
            return
        store = table.data
        if isinstance(store, ChangelogOffsetStore):
            store.apply_records(tp.partition, records)
            applied = store.applied.get(tp.partition)
            if applied is not None:
                offsets[tp] = max(offsets.get(tp) or -1, applied)
        else:  # pragma: no cover - every table of the worker has the store above
            raise TypeError(f"table {table.name} does not keep a ChangelogOffsetStore")
        if self.in_recovery and not self.need_recovery():
            self.flush_buffers()
            self._set_recovery_ended()
            self.signal_recovery_end.set()
        if not self.tables.standbys_ready and not self.standby_remaining_total():
            self.tables.on_standbys_ready()

    def need_recovery(self) -> bool:
        now = time.monotonic()
        waiting = self.waiting_since
        received_at: Mapping[TP, float] = self._active_events_received_at
        for tp, remaining in self.active_remaining().items():
            if remaining <= 0:
                continue
            since = max(received_at.get(tp, 0.0), waiting.setdefault(tp, now))
            if changelog_partition_recovered(
                applied=self.active_offsets[tp],
                last_offset=self.active_highwaters[tp],
                position=fetch_position(self.app, tp),
                quiet_since=since,
                now=now,
                quiet_s=self.quiet_s,
            ):
                waiting.pop(tp, None)
                continue
            return True
        return False


class CommittedChangelogTableManager(TableManager):
    """faust's table manager, recovering with :class:`CommittedChangelogRecovery`.

    faust's ``TableManager.recovery`` builds its ``Recovery`` into ``_recovery`` on first use,
    with no setting for the recovery class: this builds ours into the same slot.
    """

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = CommittedChangelogRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery


# -- tables: an in-memory store that knows what it holds ------------------------------------------


class ChangelogOffsetStore(MemoryStore[Any, Any]):
    """faust's in-memory store, which remembers per changelog partition the offset it applied.

    faust's memory store answers ``persisted_offset`` with None, so each recovery of a
    partition it did not keep as active re-reads its changelog from the start, and its
    ``on_recovery_completed`` drops the keys of every partition not active: a standby is never
    warm. This store keeps, per partition, ``applied`` (the offset of the last changelog
    record its data includes) with the invariant **the data of partition p is exactly the
    changelog of p read (read_committed) up to applied[p]**, and answers ``persisted_offset``
    with it (-1 when unknown, which makes faust read from the start even where it remembers an
    offset of its own), so that faust's recovery resumes after it. It keeps the partitions
    still held (active or standby) and drops the others when a recovery completes.

    Three ways data comes in, each keeping the invariant:

    - recovery and standby reads (:meth:`apply_records`, faust's ``apply_changelog_batch``):
      committed records in offset order; a record at or below ``applied`` is skipped (a fetch
      re-read after a seek back), so ``applied`` never goes back and data never regresses;
    - the batch path's own committed writes (:meth:`mirror`): kept only when they are provably
      the next records of the partition (their first offset is ``applied + 2``: the commit
      marker of the transaction that wrote ``applied`` sits in between; 0 when nothing was
      applied yet); otherwise someone else wrote in between (a fenced zombie, an aborted
      transaction) and the partition is forgotten: the next recovery reads it from the start.
    - nothing else: a key written elsewhere without an offset would break the invariant.

    The values are those of the changelog (raw bytes; the worker's tables are raw).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        # changelog partition -> offset of the last record the data includes
        self.applied: dict[int, int] = {}
        # key -> its changelog partition (to drop a partition's data)
        self.partition_of: dict[Any, int] = {}
        # changelog partition -> records applied from the changelog since the last reset
        self.restored: Counter[int] = Counter()

    def apply_records(self, partition: int, records: Iterable[Any]) -> int:
        """Apply committed changelog records of ``partition`` (objects with ``offset``, ``key``,
        ``value``; a value None deletes) in offset order; returns how many were new."""
        last = self.applied.get(partition, -1)
        data, partition_of = self.data, self.partition_of
        applied = 0
        for record in records:
            if record.offset <= last:
                continue
            key = record.key
            last = record.offset
            applied += 1
            if key is None:
                continue  # never written by the batch path; faust refuses it too
            if record.value is None:
                data.pop(key, None)
                partition_of.pop(key, None)
            else:
                data[key] = record.value
                partition_of[key] = partition
        if applied:
            self.applied[partition] = last
            self.restored[partition] += applied
        return applied

    def apply_changelog_batch(
        self, batch: Iterable[Any], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        """faust's per-event recovery path (``restore_in_batches`` off) lands here."""
        for event in batch:
            message = event.message
            self.apply_records(message.partition, (message,))

    def mirror(
        self,
        partition: int,
        items: Mapping[bytes, bytes | None],
        written: tuple[int, int] | None,
    ) -> None:
        """What a committed batch wrote to ``partition`` of the changelog: ``items``, at the
        offsets ``written`` (first, last; None if not contiguous or unknown)."""
        known = self.applied.get(partition)
        expected = 0 if known is None else known + 2
        if written is None or written[0] != expected:
            log.info(
                "changelog partition %d: own writes at %s do not follow offset %s; its state "
                "will be read from the start at the next recovery",
                partition,
                written,
                known,
                extra={"partition": partition},
            )
            self.forget(partition)
            return
        data, partition_of = self.data, self.partition_of
        for key, value in items.items():
            if value is None:
                data.pop(key, None)
                partition_of.pop(key, None)
            else:
                data[key] = value
                partition_of[key] = partition
        self.applied[partition] = written[1]

    def forget(self, partition: int) -> None:
        """Drop a partition's data and offset: the next recovery reads it from the start."""
        self.applied.pop(partition, None)
        data, partition_of = self.data, self.partition_of
        for key in [k for k, p in partition_of.items() if p == partition]:
            data.pop(key, None)
            del partition_of[key]

    def persisted_offset(self, tp: TP) -> int | None:
        return self.applied.get(tp.partition, -1)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        held = {tp.partition for tp in active_tps | standby_tps}
        gone = (set(self.applied) | set(self.partition_of.values())) - held
        for partition in gone:
            self.forget(partition)
        if gone:
            log.info("changelog partitions no longer held, dropped: %s", sorted(gone))

    def clear(self) -> None:
        """Everything goes, the offsets with the data (or the next recovery would skip)."""
        super().clear()
        self.applied.clear()
        self.partition_of.clear()


# The URL scheme of the store above (faust picks a store class by the scheme of its URL, from
# its registry of store classes, public and open to plugins).
STORE_URL = "veilleuse-memory://"
STORES.aliases.setdefault(
    "veilleuse-memory", f"{ChangelogOffsetStore.__module__}:{ChangelogOffsetStore.__name__}"
)


def written_span(batches: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """(first, last) offset of records delivered as ``batches`` of one partition in one
    transaction ((base offset, record count) each, in order); None unless contiguous."""
    if not batches:
        return None
    first, count = batches[0]
    end = first + count
    for base, n in batches[1:]:
        if base != end:
            return None
        end = base + n
    return first, end - 1


# -- tables: the batch path writes the changelog itself ------------------------------------------


def stored_values(table: Any, partitions: Iterable[int] | None = None) -> list[bytes]:
    """The values of ``table``'s local store (its recovered state): of ``partitions`` only
    when given (the store also holds standbys' and kept partitions' state)."""
    data = table.data
    if partitions is None or not isinstance(data, ChangelogOffsetStore):
        return list(data.values())
    wanted = set(partitions)
    values = data.data
    return [values[key] for key, p in data.partition_of.items() if p in wanted]


async def preload_changelog(table: Any, consumer: Any, timeout_s: float) -> int:
    """Read ``table``'s whole changelog (every partition, read_committed) into its store with
    ``consumer`` (an aiokafka consumer, started, in no group), before the worker joins its
    group; the records read.

    Why: a worker joining takes its partitions at once, and a restarted one had nothing of
    them: they were paused until it read their changelogs and indexed their lamps (2.8 s
    at 100,000 lamps in two workers: a fall due then was +2.1 s late). Read beforehand, the
    recovery that follows the join resumes at the offsets the store applied (``persisted_offset``)
    and reads only what was written meanwhile; the partitions it does not get are dropped
    when that recovery completes. It keeps the store's invariant: each partition's data is
    its changelog read committed up to ``applied``. ``table.data`` is ``Collection.data``
    (the store, see :func:`mirror_committed`)."""
    from aiokafka import TopicPartition

    store = table.data
    if not isinstance(store, ChangelogOffsetStore):
        return 0
    topic = table.changelog_topic.get_topic_name()
    if topic not in await consumer.topics():  # fetches the cluster's metadata
        return 0  # a first start: nothing to read
    # The table's own partition count (its changelog's: faust creates it so): the consumer
    # knows the partitions only of topics it subscribed to.
    tps = [TopicPartition(topic, p) for p in range(table.partitions or 0)]
    if not tps:
        return 0
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)  # read_committed: the last stable offsets
    left = {tp for tp in tps if ends[tp] > 0}
    read = 0
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        fetched = await consumer.getmany(*left, timeout_ms=200)
        for tp, records in fetched.items():
            read += store.apply_records(tp.partition, records)
        for tp in list(left):
            if await consumer.position(tp) >= ends[tp]:
                left.discard(tp)
    return read


def applied_offset(table: Any, partition: int) -> int | None:
    """The changelog offset up to which ``table``'s store holds ``partition`` (None: unknown)."""
    data = table.data
    return data.applied.get(partition) if isinstance(data, ChangelogOffsetStore) else None


def mirror_committed(
    table: Any,
    changes: Mapping[int, Mapping[bytes, bytes | None]],
    written: Mapping[int, tuple[int, int] | None] | None = None,
) -> None:
    """Apply to ``table``'s local store what a committed batch wrote to its changelog
    (partition -> key -> value, None deletes), written at ``written`` (partition -> first and
    last offset, see :meth:`ChangelogOffsetStore.mirror`).

    Why: ``table[key] = value`` (the public API) sends one changelog record per write, outside
    the batch's transaction; the batch path sends its changelog itself, in the transaction,
    and then mirrors it here (``Collection.data``, the store, written directly) so that the
    next recovery resumes from what the local store holds.
    """
    data = table.data
    if isinstance(data, ChangelogOffsetStore):
        for partition, items in changes.items():
            if items:
                data.mirror(partition, items, (written or {}).get(partition))
        return
    for items in changes.values():
        for key, value in items.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value


# -- the worker ----------------------------------------------------------------------------------


def without_spinner(worker: Any) -> None:
    """Stop faust's worker from drawing its terminal spinner (``OK ^``) into the logs.

    faust's ``Worker`` draws it on stdout even into a log file and only drops it for log levels
    below WARN; clearing its ``spinner`` attribute is the way faust itself disables it (there
    is no constructor argument).
    """
    worker.spinner = None


# -- fencing: the consumer's group membership on the transaction's offsets (KIP-447) -----------
#
# aiokafka's ``send_offsets_to_transaction`` sends TxnOffsetCommit v0: the group id only, so the
# group coordinator cannot tell the group's member from a worker that was cut off (paused past
# its session) and whose partitions moved meanwhile: resumed, such a worker would commit the
# batch it held, its alerts twice and its offsets over its successor's. Version 3 (Kafka 2.5,
# KIP-447) carries the consumer's generation and member id (and static instance id), and the
# coordinator refuses the offsets of a member that is no longer the group's. aiokafka 0.14 has
# neither the request version nor a way to pass the membership (Java's ``groupMetadata()``):
# the producer below sends it, and the batch path aborts the whole transaction when refused.

# TxnOffsetCommit v3+ errors by which the group coordinator says the sender is not (or no
# longer) the member it claims to be; aiokafka 0.14 has no class for 82.
FENCING_ERRORS: dict[int, str] = {
    22: "ILLEGAL_GENERATION",
    25: "UNKNOWN_MEMBER_ID",
    82: "FENCED_INSTANCE_ID",
}


class CommitFencedError(VeilleuseError):
    """The group coordinator refused a transaction's offsets (or there was no membership to
    send with them): the worker's partitions may be another worker's now. The transaction must
    not commit, and the state the batch built must go."""


class GroupMembership(NamedTuple):
    """The worker consumer's membership of its group: what KIP-447's ``groupMetadata()`` gives
    a Java producer to send with the offsets."""

    generation_id: int
    member_id: str
    group_instance_id: str | None


def group_membership(app: Any) -> GroupMembership | None:
    """The worker consumer's membership now; None when it has none (not joined yet, or aiokafka
    reset it after the coordinator stopped recognising it, before it rejoins).

    Why: aiokafka has no public accessor for the generation and member id; its group
    coordinator (``AIOKafkaConsumer._coordinator``, reached as :func:`fetch_position` reaches
    the consumer) holds them, as ``generation`` and ``member_id`` (faust's own rebalance
    listener reads ``_coordinator.generation`` the same way), and the static instance id as
    ``_group_instance_id``. The consumer runs in faust's consumer thread: these are plain
    attribute reads; a read torn by a rejoin in that thread gives a membership the coordinator
    refuses, never one it accepts for partitions that moved.
    """
    try:
        consumer = app.consumer._thread._ensure_consumer()
    except Exception:  # noqa: BLE001 - no consumer yet: no membership
        return None
    return consumer_membership(consumer)


def consumer_membership(consumer: Any) -> GroupMembership | None:
    """An aiokafka consumer's membership of its group now (see :func:`group_membership`)."""
    try:
        coordinator = consumer._coordinator
        generation = coordinator.generation
        member_id = coordinator.member_id
        instance_id = coordinator._group_instance_id
    except AttributeError:  # not started, or no group: no membership
        return None
    if not isinstance(generation, int) or generation < 0 or not member_id:
        return None
    return GroupMembership(generation, str(member_id), instance_id)


class TxnOffsetCommitResponseV3(Response):  # type: ignore[misc]
    """TxnOffsetCommit response v3 (flexible), as Kafka's TxnOffsetCommitResponse.json."""

    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequestV3(RequestStruct):  # type: ignore[misc]
    """TxnOffsetCommit request v3 (flexible): v0's fields, the committed leader epoch (v2) and
    the consumer's generation, member id and group instance id (v3), as Kafka's
    TxnOffsetCommitRequest.json."""

    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),  # nullable: None encodes as null
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class FencedTxnOffsetCommitRequest(Request[TxnOffsetCommitRequestV3]):  # type: ignore[misc]
    """A TxnOffsetCommit carrying the group membership; aiokafka negotiates the version per
    connection, and only v3 is offered: an older broker could not fence, so it fails loudly."""

    API_KEY = 28

    def __init__(
        self,
        *,
        transactional_id: str,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        membership: GroupMembership,
        topics: Mapping[str, Sequence[tuple[int, int, str]]],
    ) -> None:
        self.transactional_id = transactional_id
        self.group_id = group_id
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.membership = membership
        self.topics = topics

    def prepare(self, versions: dict[int, tuple[int, int]]) -> TxnOffsetCommitRequestV3:
        low, high = versions.get(self.API_KEY, (0, -1))
        if not low <= TxnOffsetCommitRequestV3.API_VERSION <= high:
            raise IncompatibleBrokerVersion(
                f"the broker offers TxnOffsetCommit v{low}-v{high}: v3 (Kafka 2.5 or later) is "
                "needed to fence a worker cut off from its group"
            )
        return self.build(TxnOffsetCommitRequestV3)

    def build(
        self, request_struct_class: type[TxnOffsetCommitRequestV3]
    ) -> TxnOffsetCommitRequestV3:
        membership = self.membership
        no_leader_epoch = -1  # aiokafka does not track it; the broker accepts the default
        return request_struct_class(
            self.transactional_id,
            self.group_id,
            self.producer_id,
            self.producer_epoch,
            membership.generation_id,
            membership.member_id,
            membership.group_instance_id,
            [
                (
                    topic,
                    [
                        (partition, offset, no_leader_epoch, metadata, {})
                        for partition, offset, metadata in partitions
                    ],
                    {},
                )
                for topic, partitions in self.topics.items()
            ],
            {},
        )


class _ErrorsByTopic(NamedTuple):
    """A v3 response in the shape aiokafka's v0 handling reads (``errors``)."""

    errors: list[tuple[str, list[tuple[int, int]]]]


class FencedTxnOffsetCommitHandler(TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's handler of the transaction's offset commit, sending
    :class:`FencedTxnOffsetCommitRequest`.

    A fencing error (:data:`FENCING_ERRORS`) fails the offsets and the transaction with
    :class:`CommitFencedError` through ``TransactionManager.error_transaction`` (what aiokafka
    itself does with a group authorisation error); every other answer goes through aiokafka's v0
    handling (``handle_response``, reading ``errors``): retries when the coordinator moved,
    bookkeeping of the committed offsets.
    """

    def __init__(
        self,
        sender: FencingSender,
        offsets: Mapping[Any, Any],
        group_id: str,
        membership: GroupMembership,
    ) -> None:
        super().__init__(sender, offsets, group_id)
        self.sender = sender
        self.offsets = offsets
        self.group = group_id
        self.membership = membership

    def create_request(self) -> FencedTxnOffsetCommitRequest:
        txn_manager = self.sender._txn_manager
        topics: dict[str, list[tuple[int, int, str]]] = {}
        for tp, committed in sorted(self.offsets.items()):
            topics.setdefault(tp.topic, []).append(
                (tp.partition, committed.offset, committed.metadata)
            )
        return FencedTxnOffsetCommitRequest(
            transactional_id=txn_manager.transactional_id,
            group_id=self.group,
            producer_id=txn_manager.producer_id,
            producer_epoch=txn_manager.producer_epoch,
            membership=self.membership,
            topics=topics,
        )

    def handle_response(self, response: Any) -> float | None:
        errors = [
            (topic, [(partition, code) for partition, code, _ in partitions])
            for topic, partitions, _ in response.topics
        ]
        refused = sorted(
            {
                FENCING_ERRORS[code]
                for _, codes in errors
                for _, code in codes
                if code in FENCING_ERRORS
            }
        )
        if refused:
            membership = self.membership
            self.sender._txn_manager.error_transaction(
                CommitFencedError(
                    f"group {self.group} refused the offsets ({', '.join(refused)}) of "
                    f"generation {membership.generation_id}, member {membership.member_id}"
                )
            )
            return None
        result: float | None = super().handle_response(_ErrorsByTopic(errors))
        return result


class FencingSender(Sender):  # type: ignore[misc]
    """aiokafka's sender, whose transaction offsets go with :attr:`membership`.

    Overrides ``Sender._do_txn_offset_commit`` (the one place aiokafka sends the transaction's
    offsets, to the group coordinator found by ``Sender._find_coordinator``) and fails the
    transaction through ``Sender._txn_manager`` when there is no membership to send: offsets
    never leave without one. Only methods are added (the producer swaps the class of the sender
    it built), so aiokafka's constructor stays as it is.
    """

    membership: GroupMembership | None = None

    async def _do_txn_offset_commit(self, offsets: Mapping[Any, Any], group_id: str) -> None:
        membership = self.membership
        if membership is None:
            self._txn_manager.error_transaction(
                CommitFencedError(f"no membership of group {group_id} to send the offsets with")
            )
            return
        try:
            node_id = await self._find_coordinator(CoordinationType.GROUP, group_id)
        except GroupAuthorizationFailedError as exc:
            self._txn_manager.error_transaction(exc)
            return
        await FencedTxnOffsetCommitHandler(self, offsets, group_id, membership).do(node_id)


class FencingProducer(AIOKafkaProducer):  # type: ignore[misc]
    """aiokafka's transactional producer whose transaction offsets carry the consumer's group
    membership (KIP-447): :meth:`send_fenced_offsets`.

    Its sender (``AIOKafkaProducer._sender``, built by aiokafka's constructor with no factory)
    becomes a :class:`FencingSender`. After :class:`CommitFencedError` the producer is left as
    aiokafka leaves it after any failed offset commit: in an abortable state in which aiokafka
    forgets the transaction's partitions, so that ``abort_transaction`` would end it locally
    without telling the broker. Stop it instead: the next producer with the transactional id
    aborts the open transaction when it starts (the batch path does both).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        sender = self._sender
        if type(sender) is not Sender:
            raise TypeError(f"aiokafka's producer has a {type(sender)!r} sender, not a Sender")
        sender.__class__ = FencingSender

    async def send_fenced_offsets(
        self,
        offsets: Mapping[Any, int],
        group_id: str,
        membership: GroupMembership | None,
    ) -> None:
        """``send_offsets_to_transaction``, the offsets accepted only from ``membership`` (a
        member of ``group_id`` in its current generation); :class:`CommitFencedError` otherwise."""
        sender: FencingSender = self._sender
        sender.membership = membership
        try:
            await self.send_offsets_to_transaction(offsets, group_id)
        except CommitFencedError:
            # aiokafka failed its transaction waiter too, which nobody awaits once the producer
            # is dropped: retrieved here, or asyncio logs "exception was never retrieved".
            ended = sender._txn_manager.wait_for_transaction_end()
            if ended is not None and ended.done():
                ended.exception()
            raise
        finally:
            sender.membership = None
