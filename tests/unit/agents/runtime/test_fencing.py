"""The fence of a cut-off worker, without a broker: what goes on the wire (TxnOffsetCommit v3
with the membership) and what a refusal does to aiokafka's transaction (its offsets fail with
CommitFencedError). Against the real broker: tests/integration/agents/test_fencing.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IncompatibleBrokerVersion
from aiokafka.structs import OffsetAndMetadata

from agents.runtime.faust_internals import (
    FENCING_ERRORS,
    CommitFencedError,
    FencedTxnOffsetCommitHandler,
    FencedTxnOffsetCommitRequest,
    FencingProducer,
    GroupMembership,
    TxnOffsetCommitRequestV3,
    TxnOffsetCommitResponseV3,
    consumer_membership,
)

MEMBER = GroupMembership(generation_id=7, member_id="worker-1-abc", group_instance_id=None)
TP0 = TopicPartition("lamp.messages.v1", 0)


def request(membership: GroupMembership = MEMBER) -> FencedTxnOffsetCommitRequest:
    return FencedTxnOffsetCommitRequest(
        transactional_id="detection-w1",
        group_id="detection",
        producer_id=42,
        producer_epoch=3,
        membership=membership,
        topics={"lamp.messages.v1": [(0, 120, ""), (3, 7, "")]},
    )


def test_the_request_is_v3_and_carries_the_membership() -> None:
    struct = request().prepare({28: (0, 5)})
    assert isinstance(struct, TxnOffsetCommitRequestV3)
    assert struct.API_VERSION == 3 and struct.FLEXIBLE_VERSION
    decoded = TxnOffsetCommitRequestV3.SCHEMA.decode(BytesIO(struct.encode()))
    assert decoded == (
        "detection-w1",
        "detection",
        42,
        3,
        7,
        "worker-1-abc",
        None,
        [("lamp.messages.v1", [(0, 120, -1, "", {}), (3, 7, -1, "", {})], {})],
        {},
    )


def test_a_static_member_sends_its_instance_id() -> None:
    static = MEMBER._replace(group_instance_id="w1")
    struct = request(static).prepare({28: (0, 3)})
    assert TxnOffsetCommitRequestV3.SCHEMA.decode(BytesIO(struct.encode()))[6] == "w1"


def test_a_broker_without_v3_is_refused_loudly() -> None:
    with pytest.raises(IncompatibleBrokerVersion, match="v3"):
        request().prepare({28: (0, 2)})
    with pytest.raises(IncompatibleBrokerVersion):
        request().prepare({})


def test_the_membership_is_read_from_the_group_coordinator() -> None:
    coordinator = SimpleNamespace(generation=4, member_id="m-1", _group_instance_id=None)
    assert consumer_membership(SimpleNamespace(_coordinator=coordinator)) == (4, "m-1", None)
    # aiokafka's reset after the coordinator stopped recognising the member: none to send.
    coordinator.generation, coordinator.member_id = -1, ""
    assert consumer_membership(SimpleNamespace(_coordinator=coordinator)) is None
    assert consumer_membership(SimpleNamespace(_coordinator=None)) is None


@contextlib.asynccontextmanager
async def begun_producer() -> AsyncIterator[Any]:
    """A fencing producer never started, its transaction begun."""
    built = FencingProducer(bootstrap_servers="localhost:1", transactional_id="detection-w1")
    txn = built._txn_manager
    txn.set_pid_and_epoch(42, 3)
    txn.begin_transaction()
    yield built
    ended = txn.wait_for_transaction_end()
    if ended.done():  # failed with the offsets; the batch path drops such a producer
        ended.exception()
    await built.stop()


@pytest.fixture
async def producer() -> AsyncIterator[Any]:
    """A fencing producer never started, its transaction begun with offsets pending."""
    async with begun_producer() as built:
        yield built


def pending_offsets(producer: Any) -> Any:
    """The future ``send_offsets_to_transaction`` awaits, the group added to the transaction."""
    offsets = {TP0: OffsetAndMetadata(120, "")}
    future = producer._txn_manager.add_offsets_to_txn(offsets, "detection")
    producer._txn_manager.consumer_group_added("detection")
    return offsets, future


def response(error_code: int) -> Any:
    struct = TxnOffsetCommitResponseV3(0, [(TP0.topic, [(TP0.partition, error_code, {})], {})], {})
    return TxnOffsetCommitResponseV3.decode(BytesIO(struct.encode()))


@pytest.mark.parametrize("code", sorted(FENCING_ERRORS))
async def test_a_refusal_fails_the_offsets_with_commit_fenced(producer: Any, code: int) -> None:
    offsets, future = pending_offsets(producer)
    handler = FencedTxnOffsetCommitHandler(producer._sender, offsets, "detection", MEMBER)
    assert handler.handle_response(response(code)) is None
    with pytest.raises(CommitFencedError, match=FENCING_ERRORS[code]):
        future.result()


async def test_an_accepted_commit_completes_the_offsets(producer: Any) -> None:
    offsets, future = pending_offsets(producer)
    handler = FencedTxnOffsetCommitHandler(producer._sender, offsets, "detection", MEMBER)
    built = handler.create_request().prepare({28: (0, 5)})
    assert (built.generation_id, built.member_id) == (7, "worker-1-abc")
    assert built.producer_id == 42 and built.producer_epoch == 3
    assert handler.handle_response(response(0)) is None
    assert future.done() and future.result() is None


async def test_a_coordinator_that_moved_is_retried_as_aiokafka_does(producer: Any) -> None:
    offsets, future = pending_offsets(producer)
    handler = FencedTxnOffsetCommitHandler(producer._sender, offsets, "detection", MEMBER)
    not_coordinator = 16
    assert handler.handle_response(response(not_coordinator)) is not None  # a backoff: again
    assert not future.done()


async def test_without_a_membership_no_offsets_leave(producer: Any) -> None:
    offsets, future = pending_offsets(producer)
    producer._sender.membership = None
    await producer._sender._do_txn_offset_commit(offsets, "detection")
    with pytest.raises(CommitFencedError, match="no membership"):
        future.result()
