"""A broker error is never a fence: what the fenced offset commit (TxnOffsetCommit v3) and the
batch path do with the answers and failures a Kafka restart brings, without a broker.

Retried: a coordinator that moved or is loading (``NOT_COORDINATOR``,
``COORDINATOR_NOT_AVAILABLE``, ``COORDINATOR_LOAD_IN_PROGRESS``), ``REQUEST_TIMED_OUT``,
``UNKNOWN_TOPIC_OR_PARTITION``, a dropped connection. A fence: only the group's own verdicts
(``ILLEGAL_GENERATION``, ``UNKNOWN_MEMBER_ID``, ``FENCED_INSTANCE_ID``; tests/unit/agents/runtime/
test_fencing.py). Against the real broker: tests/integration/agents/test_worker_kafka_restart.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiokafka.client import CoordinationType
from aiokafka.errors import (
    ConcurrentTransactions,
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    RequestTimedOutError,
)
from faust.types import TP

from agents.runtime import streaming
from agents.runtime.faust_internals import (
    FENCING_ERRORS,
    CommitFencedError,
    FencedTxnOffsetCommitHandler,
    GroupMembership,
)
from agents.runtime.worker import build_app
from pipeline.settings import load_settings
from tests.unit.agents.runtime.test_fencing import (
    MEMBER,
    begun_producer,
    pending_offsets,
    response,
)

GROUP_COORDINATOR = CoordinationType.GROUP
# Retried by aiokafka's v0 handling, which the fenced handler hands every non-fencing answer to.
RETRIED = {
    3: "UNKNOWN_TOPIC_OR_PARTITION",
    7: "REQUEST_TIMED_OUT",
    14: "COORDINATOR_LOAD_IN_PROGRESS",
    15: "COORDINATOR_NOT_AVAILABLE",
    16: "NOT_COORDINATOR",
}
COORDINATOR_FORGOTTEN = {7, 15, 16}  # looked up again before the next attempt


@pytest.fixture
async def producer() -> AsyncIterator[Any]:
    """A fencing producer never started, its transaction begun, the group coordinator known."""
    async with begun_producer() as built:
        built._sender._coordinators[GROUP_COORDINATOR] = 1
        yield built


def test_no_retriable_code_is_a_fencing_one() -> None:
    assert not set(RETRIED) & set(FENCING_ERRORS)


@pytest.mark.parametrize("code", sorted(RETRIED), ids=RETRIED.get)
async def test_a_restarting_coordinator_is_retried_never_a_fence(producer: Any, code: int) -> None:
    offsets, future = pending_offsets(producer)
    handler = FencedTxnOffsetCommitHandler(producer._sender, offsets, "detection", MEMBER)
    assert handler.handle_response(response(code)) is not None  # a back-off, then again
    assert not future.done(), "the offsets failed on a retriable error"
    assert producer._txn_manager.is_in_transaction(), "the transaction was failed"
    forgotten = GROUP_COORDINATOR not in producer._sender._coordinators
    assert forgotten == (code in COORDINATOR_FORGOTTEN)
    # The same request again, accepted: the offsets go through with the same membership.
    assert handler.handle_response(response(0)) is None
    assert future.done() and future.result() is None


@pytest.mark.parametrize(
    "failure",
    [
        KafkaConnectionError("Connection at 127.0.0.1:19092 closed"),
        NodeNotReadyError("node 1 not ready"),
        RequestTimedOutError(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_dropped_connection_is_retried_never_a_fence(
    producer: Any, failure: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    offsets, future = pending_offsets(producer)

    async def send(*args: Any, **kwargs: Any) -> Any:
        raise failure

    monkeypatch.setattr(producer._sender.client, "send", send)
    handler = FencedTxnOffsetCommitHandler(producer._sender, offsets, "detection", MEMBER)
    assert await handler.do(1) is False  # not sent: aiokafka's sender tries again
    assert not future.done()
    assert producer._txn_manager.is_in_transaction()


async def test_an_unexpected_code_fails_the_producer_not_as_a_fence(producer: Any) -> None:
    """An answer neither retried nor fencing (``CONCURRENT_TRANSACTIONS`` here) ends aiokafka's
    sender with a Kafka error: the batch path then retries the batch from a fresh producer
    (below), it never drops the worker's state for it."""
    offsets, _ = pending_offsets(producer)
    handler = FencedTxnOffsetCommitHandler(producer._sender, offsets, "detection", MEMBER)
    with pytest.raises(KafkaError) as raised:
        handler.handle_response(response(ConcurrentTransactions.errno))
    assert not isinstance(raised.value, CommitFencedError)


# -- the batch path: which failures of a commit it retries, which it takes for a fence ----------


@pytest.fixture
def processor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A worker's batch processor (nothing started, no broker), its producer and transaction
    replaced by recorders; the retry back-off shortened."""
    settings = load_settings(detection={"metrics_port": 0, "live_port": 0}, _env_file=None)
    _, [built] = build_app(settings, instance_id="w1")
    monkeypatch.setattr(streaming, "COMMIT_RETRY_FIRST_S", 0.01)
    built.producers_started = 0
    built.producers_dropped = 0

    async def start() -> None:
        built.producers_started += 1
        built.producer = object()

    async def drop() -> None:
        built.producers_dropped += 1
        built.producer = None

    monkeypatch.setattr(built, "_start_producer", start)
    monkeypatch.setattr(built, "_drop_producer", drop)
    built.producer = object()
    yield built


def failing_then_committing(processor: Any, failures: list[BaseException]) -> list[int]:
    """``_commit`` raising each of ``failures`` in turn, then committing; the attempts made."""
    attempts: list[int] = []

    async def commit(results: Any, offsets: Any, membership: GroupMembership) -> None:
        attempts.append(len(attempts) + 1)
        if failures:
            raise failures.pop(0)

    processor._commit = commit
    return attempts


OFFSETS = {TP("lamp.messages.v1", 0): 12}


async def test_a_kafka_restart_under_a_commit_sends_the_batch_again(processor: Any) -> None:
    attempts = failing_then_committing(
        processor,
        [
            KafkaConnectionError("Connection at 127.0.0.1:19092 closed"),
            KafkaError("Unexpected error during batch delivery"),  # aiokafka's sender ended
            RequestTimedOutError(),
        ],
    )
    await processor._commit_retrying([], OFFSETS, MEMBER)
    assert attempts == [1, 2, 3, 4]
    assert processor.producers_dropped == 3  # each retry from a fresh producer
    assert not processor.health.problems, "the outage is over once the batch committed"


async def test_a_refused_commit_is_the_fence_and_is_not_retried(processor: Any) -> None:
    attempts = failing_then_committing(
        processor, [CommitFencedError("group refused the offsets (ILLEGAL_GENERATION)")]
    )
    with pytest.raises(CommitFencedError):
        await processor._commit_retrying([], OFFSETS, MEMBER)
    assert attempts == [1]
    # A fresh producer right away: it aborts the refused transaction on the broker.
    assert processor.producers_dropped == 1 and processor.producers_started == 1


async def test_a_refusal_after_an_outage_is_still_the_fence(processor: Any) -> None:
    """Kafka restarted and the group moved on meanwhile: the retry is refused, and that refusal
    (not the outage before it) is what the batch path acts on."""
    attempts = failing_then_committing(
        processor,
        [
            KafkaConnectionError("Connection at 127.0.0.1:19092 closed"),
            CommitFencedError("group refused the offsets (UNKNOWN_MEMBER_ID)"),
        ],
    )
    with pytest.raises(CommitFencedError):
        await processor._commit_retrying([], OFFSETS, MEMBER)
    assert attempts == [1, 2]
