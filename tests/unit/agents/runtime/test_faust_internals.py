"""Contracts of the private names of faust, mode and aiokafka the batch path touches.

One check per name of ``faust_internals.PRIVATE_NAMES``, against the installed libraries: an
upgrade that renames, removes or reshapes one fails here with the name and the versions
(installed and pinned in constraints.txt), not somewhere in a worker at run time.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from agents.runtime import faust_internals
from agents.runtime.faust_internals import (
    PRIVATE_NAMES,
    STORE_URL,
    BatchRoutingApp,
    BatchRoutingTransport,
    ChangelogOffsetStore,
    CommittedChangelogRecovery,
    FencingProducer,
    FencingSender,
    ReadCommittedConsumerThread,
    changelog_partition_recovered,
    fetch_position,
    group_membership,
    mirror_committed,
    read_committed,
    static_member,
    stored_values,
    written_span,
)

REPO = Path(__file__).resolve().parents[4]


def pinned(library: str) -> str:
    text = (REPO / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(library)}==(\S+)", text, re.MULTILINE | re.IGNORECASE)
    return match.group(1) if match else "not pinned"


def params(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.fixture
async def app() -> AsyncIterator[Any]:
    """A batch-path app as the worker builds it, never started (no broker needed)."""
    app: Any = BatchRoutingApp(
        "contract-test",
        broker="kafka://localhost:1",
        store=STORE_URL,
        autodiscover=False,
        web_enabled=False,
    )
    app.Table("state", partitions=4, key_type=bytes, value_type=bytes)
    yield app
    app.consumer._thread.thread_loop.close()  # made by mode's thread service on creation


@pytest.fixture
async def consumers() -> AsyncIterator[list[AIOKafkaConsumer]]:
    """aiokafka consumers built by a check, closed after it (unclosed ones warn)."""
    built: list[AIOKafkaConsumer] = []
    yield built
    for consumer in built:
        await consumer.stop()


# -- one check per name ---------------------------------------------------------------------------


async def create_worker_consumer(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert params(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer) == [
        "self",
        "transport",
    ]
    thread = app.consumer._thread
    built = thread._create_worker_consumer(app.transport)
    consumers.append(built)
    assert isinstance(built, AIOKafkaConsumer), f"built {type(built)!r}"
    assert built._isolation_level == "read_committed"


async def isolation_level(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert "isolation_level" in params(AIOKafkaConsumer.__init__)
    public = AIOKafkaConsumer(bootstrap_servers="localhost:1", isolation_level="read_committed")
    written = read_committed(AIOKafkaConsumer(bootstrap_servers="localhost:1"))
    consumers += [public, written]
    assert public._isolation_level == "read_committed", "the argument is stored elsewhere"
    assert written._isolation_level == public._isolation_level
    # start() hands the field to the fetcher: writing it before start() is the argument.
    assert "isolation_level=self._isolation_level" in inspect.getsource(AIOKafkaConsumer.start)


async def new_consumer_thread(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert params(faust_aiokafka.Consumer._new_consumer_thread) == ["self"]
    assert isinstance(app.consumer._thread, ReadCommittedConsumerThread), "override not called"


async def getmany(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert params(faust_consumer.Consumer.getmany) == ["self", "timeout"]
    assert inspect.isasyncgenfunction(faust_consumer.Consumer.getmany)
    # faust's fetch loop is what calls it, with that keyword.
    assert "getmany(timeout=" in inspect.getsource(faust_consumer.Consumer._drain_messages)


async def wait_next_records(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    method = faust_consumer.Consumer._wait_next_records
    assert params(method) == ["self", "timeout"]
    assert inspect.iscoroutinefunction(method)
    returns = str(inspect.signature(method).return_annotation)
    assert returns.startswith("typing.Tuple[typing.Optional[typing.Mapping[") and returns.endswith(
        "typing.Optional[typing.Set[faust.types.tuples.TP]]]"
    ), f"no longer (records by partition, active partitions): {returns}"


async def to_message(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert params(faust_aiokafka.Consumer._to_message) == ["self", "tp", "record"]
    assert not getattr(faust_aiokafka.Consumer._to_message, "__isabstractmethod__", False)


async def buffered_partitions(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert isinstance(app.consumer._buffered_partitions, set)


async def read_offset(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    offsets = app.consumer._read_offset
    assert isinstance(offsets, MutableMapping)
    assert offsets[TP("t", 0)] is None, "unread partitions no longer read as None"


async def new_transport(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert params(faust.App._new_transport) == ["self"]
    assert isinstance(app.transport, BatchRoutingTransport), "override not called"


async def thread(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert isinstance(app.consumer, faust_consumer.ThreadDelegateConsumer)
    assert isinstance(app.consumer._thread, faust_aiokafka.AIOKafkaConsumerThread)


async def ensure_consumer(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert params(faust_aiokafka.AIOKafkaConsumerThread._ensure_consumer) == ["self"]
    assert fetch_position(app, TP("t", 0)) is None, "a worker not started has no position"


async def subscription(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="localhost:1")
    consumers.append(consumer)
    tp = TopicPartition("t", 0)
    consumer.assign([tp])
    state = consumer._subscription.subscription.assignment.state_value(tp)
    assert not state.has_valid_position
    state.seek(42)  # what the consumer's public seek() does to it
    assert state.has_valid_position and state.position == 42


async def need_recovery(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert params(Recovery.need_recovery) == ["self"]
    assert "self.need_recovery()" in inspect.getsource(Recovery), "faust no longer polls it"
    recovery = app.tables.recovery
    assert isinstance(recovery, CommittedChangelogRecovery)
    for public in ("active_remaining", "active_offsets", "active_highwaters"):
        assert hasattr(recovery, public), f"Recovery.{public} is gone"
    assert recovery.need_recovery() is False


async def set_recovery_started(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert params(Recovery._set_recovery_started) == ["self"]
    assert "self._set_recovery_started()" in inspect.getsource(Recovery)
    recovery = app.tables.recovery
    recovery.waiting_since[TP("t", 0)] = 1.0
    recovery._set_recovery_started()
    assert recovery.waiting_since == {}


async def active_events_received_at(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    received_at = app.tables.recovery._active_events_received_at
    assert isinstance(received_at, MutableMapping)
    assert "active_events_received_at[tp] = " in inspect.getsource(Recovery), (
        "faust no longer records when it applied a partition's last changelog record"
    )


async def table_manager_recovery(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert isinstance(inspect.getattr_static(TableManager, "recovery"), property)
    assert "self._recovery" in inspect.getsource(TableManager)
    assert app.tables._recovery is None
    assert isinstance(app.tables.recovery, CommittedChangelogRecovery)
    assert app.tables._recovery is app.tables.recovery


async def collection_data(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    table = app.tables["state"]
    assert isinstance(table.data, MutableMapping)
    assert isinstance(table.data, ChangelogOffsetStore), "the store URL no longer picks ours"
    mirror_committed(table, {0: {b"a": b"1", b"b": b"2"}}, {0: (0, 1)})
    mirror_committed(table, {0: {b"b": None, b"c": b"3"}}, {0: (3, 4)})
    assert sorted(stored_values(table)) == [b"1", b"3"]


async def group_instance_id(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert "group_instance_id" in params(AIOKafkaConsumer.__init__)
    public = AIOKafkaConsumer(bootstrap_servers="localhost:1", group_instance_id="w-1")
    written = static_member(AIOKafkaConsumer(bootstrap_servers="localhost:1"), "w-1")
    consumers += [public, written]
    assert public._group_instance_id == "w-1", "the argument is stored elsewhere"
    assert written._group_instance_id == public._group_instance_id
    # start() hands the field to the group coordinator: writing it before start() is the
    # argument.
    assert "group_instance_id=self._group_instance_id" in inspect.getsource(AIOKafkaConsumer.start)
    app.group_instance_id = "contract-test-w-1"
    built = app.consumer._thread._create_worker_consumer(app.transport)
    consumers.append(built)
    assert built._group_instance_id == "contract-test-w-1"


async def set_recovery_ended(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert params(Recovery._set_recovery_ended) == ["self"]
    source = inspect.getsource(Recovery)
    assert "self._set_recovery_ended()" in source, "faust no longer ends a recovery through it"
    recovery = app.tables.recovery
    recovery._set_recovery_started()
    assert recovery.in_recovery
    recovery._set_recovery_ended()
    assert not recovery.in_recovery


async def worker_spinner(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert "spinner" in inspect.get_annotations(faust.Worker)
    assert "if self.spinner" in inspect.getsource(faust.Worker), "faust no longer skips a None"


async def consumer_coordinator(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    from aiokafka.consumer import group_coordinator
    from aiokafka.protocol.commit import OffsetCommitRequest
    from aiokafka.protocol.group import JoinGroupRequest

    assert "self._coordinator = GroupCoordinator(" in inspect.getsource(AIOKafkaConsumer.start)
    init = inspect.getsource(group_coordinator.GroupCoordinator.__init__)
    assert "self.generation = " in init and "self.member_id = " in init
    reset = inspect.getsource(group_coordinator.GroupCoordinator.reset_generation)
    assert "self.generation = OffsetCommitRequest.DEFAULT_GENERATION_ID" in reset
    assert "self.member_id = JoinGroupRequest.UNKNOWN_MEMBER_ID" in reset
    # What group_membership reads as "no membership".
    assert OffsetCommitRequest.DEFAULT_GENERATION_ID == -1
    assert JoinGroupRequest.UNKNOWN_MEMBER_ID == ""
    # A successful join is where both are set: the generation the group coordinator checks.
    assert "self._coordinator.generation = response.generation_id" in inspect.getsource(
        group_coordinator
    )
    assert group_membership(app) is None, "a worker not started has a membership"


async def coordinator_group_instance_id(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    assert "group_instance_id" in params(GroupCoordinator.__init__)
    source = inspect.getsource(GroupCoordinator.__init__)
    assert "self._group_instance_id = group_instance_id" in source
    start = inspect.getsource(AIOKafkaConsumer.start)
    assert "group_instance_id=self._group_instance_id" in start


async def producer_sender(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.producer.sender import Sender

    plain = AIOKafkaProducer(bootstrap_servers="localhost:1")
    fencing = FencingProducer(bootstrap_servers="localhost:1", transactional_id="t")
    try:
        assert type(plain._sender) is Sender, "aiokafka builds another sender class"
        assert type(fencing._sender) is FencingSender, "the swap did not take"
        assert fencing._sender._txn_manager is fencing._txn_manager
    finally:
        await plain.stop()
        await fencing.stop()


async def do_txn_offset_commit(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    from aiokafka.producer.sender import Sender

    method = Sender._do_txn_offset_commit
    assert params(method) == ["self", "offsets", "group_id"]
    assert inspect.iscoroutinefunction(method)
    caller = inspect.getsource(Sender._maybe_do_transactional_request)
    assert "self._do_txn_offset_commit(offsets, group_id)" in caller, "no longer the one place"


async def find_coordinator(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    from aiokafka.producer.sender import Sender

    method = Sender._find_coordinator
    assert params(method) == ["self", "coordinator_type", "coordinator_key"]
    assert inspect.iscoroutinefunction(method)
    original = inspect.getsource(Sender._do_txn_offset_commit)
    assert "self._find_coordinator(CoordinationType.GROUP, group_id)" in original


async def sender_txn_manager(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    from aiokafka.producer.transaction_manager import TransactionManager

    for name in ("transactional_id", "producer_id", "producer_epoch"):
        assert hasattr(TransactionManager("t", 60_000), name), f"TransactionManager.{name}"
    assert params(TransactionManager.error_transaction) == ["self", "exc"]
    assert params(TransactionManager.wait_for_transaction_end) == ["self"]


async def txn_offset_commit_handler(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    from aiokafka.producer.sender import TxnOffsetCommitHandler

    assert params(TxnOffsetCommitHandler.__init__) == ["self", "sender", "offsets", "group_id"]
    source = inspect.getsource(TxnOffsetCommitHandler.handle_response)
    assert "for topic, partitions in resp.errors:" in source, "no longer reads v0's shape"
    assert "for partition, error_code in partitions:" in source


CHECKS: dict[str, Callable[[Any, list[AIOKafkaConsumer]], Awaitable[None]]] = {
    "AIOKafkaConsumerThread._create_worker_consumer": create_worker_consumer,
    "AIOKafkaConsumer._isolation_level": isolation_level,
    "Consumer._new_consumer_thread": new_consumer_thread,
    "Consumer.getmany": getmany,
    "Consumer._wait_next_records": wait_next_records,
    "Consumer._to_message": to_message,
    "Consumer._buffered_partitions": buffered_partitions,
    "Consumer._read_offset": read_offset,
    "App._new_transport": new_transport,
    "ThreadDelegateConsumer._thread": thread,
    "AIOKafkaConsumerThread._ensure_consumer": ensure_consumer,
    "AIOKafkaConsumer._subscription": subscription,
    "Recovery.need_recovery": need_recovery,
    "Recovery._set_recovery_started": set_recovery_started,
    "Recovery._active_events_received_at": active_events_received_at,
    "TableManager._recovery": table_manager_recovery,
    "Collection.data": collection_data,
    "Worker.spinner": worker_spinner,
    "Recovery._set_recovery_ended": set_recovery_ended,
    "AIOKafkaConsumer._group_instance_id": group_instance_id,
    "AIOKafkaConsumer._coordinator": consumer_coordinator,
    "GroupCoordinator._group_instance_id": coordinator_group_instance_id,
    "AIOKafkaProducer._sender": producer_sender,
    "Sender._do_txn_offset_commit": do_txn_offset_commit,
    "Sender._find_coordinator": find_coordinator,
    "Sender._txn_manager": sender_txn_manager,
    "TxnOffsetCommitHandler.handle_response": txn_offset_commit_handler,
}


def test_every_private_name_has_a_contract() -> None:
    named = {name for _, name in PRIVATE_NAMES}
    assert named == set(CHECKS), (
        f"without a check: {sorted(named - set(CHECKS))}; stale: {sorted(set(CHECKS) - named)}"
    )


def test_the_docs_list_every_private_name() -> None:
    docs = (REPO / "docs" / "runtime.md").read_text()
    missing = [name for _, name in PRIVATE_NAMES if f"`{name}`" not in docs]
    assert not missing, f"docs/runtime.md does not explain {missing}"


@pytest.mark.parametrize(("library", "name"), PRIVATE_NAMES, ids=[n for _, n in PRIVATE_NAMES])
async def test_private_name_has_the_expected_shape(
    library: str, name: str, app: Any, consumers: list[AIOKafkaConsumer]
) -> None:
    try:
        await CHECKS[name](app, consumers)
    except (AssertionError, AttributeError, TypeError, KeyError, OSError) as exc:
        pytest.fail(
            f"{library} {version(library)} (pinned {pinned(library)} in constraints.txt) "
            f"changed {name}, used by agents/runtime/faust_internals.py: "
            f"{type(exc).__name__}: {exc}",
            pytrace=False,
        )


def test_the_installed_versions_are_the_pinned_ones() -> None:
    """The contracts above hold for what is installed; an upgrade must go through the pins."""
    libraries = sorted({library for library, _ in PRIVATE_NAMES})
    wrong = {lib: (version(lib), pinned(lib)) for lib in libraries if version(lib) != pinned(lib)}
    assert not wrong, f"installed != pinned in constraints.txt: {wrong}"


# -- the pure part: when a changelog partition written in transactions is recovered ---------


def recovered(**overrides: Any) -> bool:
    facts: dict[str, Any] = {
        "applied": 5,
        "last_offset": 10,
        "position": 11,
        "quiet_since": 100.0,
        "now": 103.0,
        "quiet_s": 2.0,
    }
    return changelog_partition_recovered(**{**facts, **overrides})


def test_a_partition_is_recovered_once_the_record_before_the_last_marker_is_applied() -> None:
    assert recovered(applied=9, position=None)
    assert not recovered(applied=8, position=None)


def test_after_an_aborted_transaction_it_is_recovered_once_past_the_end_and_quiet() -> None:
    assert recovered()
    assert not recovered(now=101.0), "records may still be on their way"
    assert not recovered(position=10), "the fetch has not passed the end"
    assert not recovered(position=None), "position unknown"


def test_the_recovery_waits_while_a_partition_is_behind(app: Any) -> None:
    recovery = app.tables.recovery
    tp = TP("contract-test-state-changelog", 0)
    recovery.active_highwaters[tp] = 10
    recovery.active_offsets[tp] = 3
    assert recovery.need_recovery()
    recovery.active_offsets[tp] = 9
    assert not recovery.need_recovery()


def test_the_module_names_its_libraries_as_pinned() -> None:
    for library, _ in PRIVATE_NAMES:
        assert pinned(library) != "not pinned", library
    assert faust_internals.__doc__ and "docs/runtime.md" in faust_internals.__doc__


# -- the store: data exactly the changelog up to the offset it remembers ---------------------


class Record:
    def __init__(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.offset, self.key, self.value = offset, key, value


def store_of(app: Any) -> ChangelogOffsetStore:
    store = app.tables["state"].data
    assert isinstance(store, ChangelogOffsetStore)
    return store


def test_the_store_resumes_after_what_it_applied_and_never_goes_back(app: Any) -> None:
    store = store_of(app)
    tp = TP("contract-test-state-changelog", 1)
    assert store.persisted_offset(tp) == -1, "unknown: read from the start, whatever faust keeps"
    store.apply_records(1, [Record(0, b"a", b"1"), Record(1, b"b", b"2"), Record(3, b"a", b"3")])
    assert store.persisted_offset(tp) == 3
    # A fetch re-read after a seek back applies nothing: an older value never comes back.
    assert store.apply_records(1, [Record(0, b"a", b"1"), Record(3, b"a", b"3")]) == 0
    assert store.apply_records(1, [Record(5, b"b", None)]) == 1
    assert dict(store.data) == {b"a": b"3"}
    assert store.persisted_offset(tp) == 5


def test_own_writes_are_kept_only_when_they_follow_what_was_applied(app: Any) -> None:
    store = store_of(app)
    store.apply_records(2, [Record(10, b"x", b"1")])
    store.mirror(2, {b"x": b"2"}, (12, 12))  # 11: the commit marker of 10's transaction
    assert store.applied[2] == 12 and store.data[b"x"] == b"2"
    # Offset 14, 15 were written by someone else (a zombie, an aborted transaction): forget.
    store.mirror(2, {b"x": b"3"}, (16, 16))
    assert 2 not in store.applied and b"x" not in store.data
    # Nothing applied yet: only writes from offset 0 on are provably the whole partition.
    store.mirror(3, {b"y": b"1"}, (0, 0))
    assert store.applied[3] == 0
    store.mirror(1, {b"z": b"1"}, (7, 7))
    assert 1 not in store.applied and b"z" not in store.data
    store.mirror(3, {b"y": b"2"}, None)  # deliveries not contiguous
    assert 3 not in store.applied and b"y" not in store.data


async def test_the_store_drops_only_the_partitions_it_no_longer_holds(app: Any) -> None:
    store = store_of(app)
    for partition in range(3):
        store.apply_records(partition, [Record(0, f"k{partition}".encode(), b"v")])
    topic = "contract-test-state-changelog"
    await store.on_recovery_completed({TP(topic, 0)}, {TP(topic, 1)})  # active 0, standby 1
    assert set(store.data) == {b"k0", b"k1"}
    assert sorted(store.applied) == [0, 1]


def test_written_span_is_none_unless_the_deliveries_are_contiguous() -> None:
    assert written_span([(10, 3), (13, 2)]) == (10, 14)
    assert written_span([(10, 3), (14, 2)]) is None
    assert written_span([]) is None


def recovering(app: Any, highwater: int) -> tuple[Any, TP]:
    """The state table's changelog partition 0, active and nothing applied, its recovery
    started; (the recovery, that partition)."""
    recovery = app.tables.recovery
    tp = TP("contract-test-state-changelog", 0)
    recovery.active_tps.add(tp)
    recovery.tp_to_table[tp] = app.tables["state"]
    recovery.active_offsets[tp] = -1
    recovery.active_highwaters[tp] = highwater
    recovery._set_recovery_started()
    return recovery, tp


def test_a_fetch_of_a_changelog_is_applied_at_once_and_ends_the_recovery(app: Any) -> None:
    # faust's highwater: the end offset - 1 (a marker at 3)
    recovery, tp = recovering(app, highwater=3)
    recovery.apply_fetched(tp, [Record(0, b"a", b"1"), Record(1, b"b", b"2")])
    assert recovery.in_recovery, "offset 2, the record before the marker, not applied yet"
    assert recovery.active_offsets[tp] == 1 and store_of(app).applied[0] == 1
    recovery.apply_fetched(tp, [Record(2, b"a", None)])
    assert not recovery.in_recovery and recovery.signal_recovery_end.is_set()
    assert dict(store_of(app).data) == {b"b": b"2"}
    # A partition that is neither active nor standby (any more) is left alone.
    recovery.apply_fetched(TP("contract-test-state-changelog", 1), [Record(0, b"c", b"3")])
    assert b"c" not in store_of(app).data


def test_a_recovery_does_not_end_on_the_end_of_the_one_before(app: Any) -> None:
    """The previous recovery's end (the event set by the bulk path) is cleared when the next
    starts: otherwise faust's wait for it returns at once, behind on the changelog."""
    recovery, tp = recovering(app, highwater=1)
    recovery.apply_fetched(tp, [Record(0, b"a", b"1")])
    assert recovery.signal_recovery_end.is_set()
    # The next recovery: two more records to read.
    recovery.active_highwaters[tp] = 3
    recovery._set_recovery_started()
    assert not recovery.signal_recovery_end.is_set()
    assert recovery.need_recovery()
    recovery.apply_fetched(tp, [Record(2, b"a", b"2")])
    assert recovery.signal_recovery_end.is_set()
