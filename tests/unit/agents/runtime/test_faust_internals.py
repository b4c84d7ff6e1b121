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
    BatchRoutingApp,
    BatchRoutingTransport,
    CommittedChangelogRecovery,
    ReadCommittedConsumerThread,
    changelog_partition_recovered,
    fetch_position,
    mirror_committed,
    read_committed,
    stored_values,
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
        store="memory://",
        autodiscover=False,
        web_enabled=False,
    )
    app.Table("state", partitions=1, key_type=bytes, value_type=bytes)
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
    mirror_committed(table, [{b"a": b"1", b"b": b"2"}, {b"b": None, b"c": b"3"}])
    assert sorted(stored_values(table)) == [b"1", b"3"]


async def worker_spinner(app: Any, consumers: list[AIOKafkaConsumer]) -> None:
    assert "spinner" in inspect.get_annotations(faust.Worker)
    assert "if self.spinner" in inspect.getsource(faust.Worker), "faust no longer skips a None"


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
