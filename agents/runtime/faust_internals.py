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
    ``Recovery._active_events_received_at``; and, public by name but used against their intent,
    ``Consumer.getmany`` and ``Recovery.need_recovery`` (overridden), ``Collection.data``
    (written without the changelog), ``Worker.spinner`` (cleared).
aiokafka
    ``AIOKafkaConsumer._isolation_level``, ``AIOKafkaConsumer._subscription``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

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


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, whose aiokafka consumer reads committed data.

    Overrides ``_create_worker_consumer``: faust's only place where the worker's aiokafka
    consumer is built, with no public factory or setting for its isolation level.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        return read_committed(super()._create_worker_consumer(transport))


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
        super()._set_recovery_started()

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


# -- tables: the batch path writes the changelog itself ------------------------------------------


def stored_values(table: Any) -> list[bytes]:
    """Every value of ``table``'s local store (its recovered state)."""
    return list(table.data.values())


def mirror_committed(table: Any, changes: Iterable[Mapping[bytes, bytes | None]]) -> None:
    """Apply to ``table``'s local store what a committed batch wrote to its changelog.

    Why: ``table[key] = value`` (the public API) sends one changelog record per write, outside
    the batch's transaction; the batch path sends its changelog itself, in the transaction,
    and then mirrors it here (``Collection.data``, the store, written directly) so that
    standbys and the next recovery read what the local store holds. A value ``None`` deletes.
    """
    data = table.data
    for items in changes:
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
