"""``veilleuse worker`` whose first alert is refused by Kafka the way aiokafka refuses a batch
whose partition has had no leader for ``request_timeout_ms``: its delivery future fails with
NotLeaderForPartitionError while the transaction itself goes on and could commit. A commit of
a transaction holding that failed delivery is reported on stderr."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import NotLeaderForPartitionError

from cli import main as cli

COMMITTED_WITHOUT = "COMMITTED A TRANSACTION WHOSE DELIVERY FAILED"
_send = AIOKafkaProducer.send
_begin = AIOKafkaProducer.begin_transaction
_commit = AIOKafkaProducer.commit_transaction
refused: list[str] = []
failed_in_transaction: list[bool] = [False]


async def _send_or_refuse(self: Any, topic: str, *args: Any, **kwargs: Any) -> Any:
    if topic.endswith("alerts.v1") and not refused:
        refused.append(topic)
        failed_in_transaction[0] = True
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failed.set_exception(NotLeaderForPartitionError())
        return failed
    return await _send(self, topic, *args, **kwargs)


async def _begin_transaction(self: Any) -> None:
    failed_in_transaction[0] = False
    await _begin(self)


async def _commit_transaction(self: Any) -> None:
    if failed_in_transaction[0]:
        print(COMMITTED_WITHOUT, file=sys.stderr, flush=True)  # noqa: T201 - for the test
    await _commit(self)


if __name__ == "__main__":
    AIOKafkaProducer.send = _send_or_refuse  # type: ignore[method-assign]
    AIOKafkaProducer.begin_transaction = _begin_transaction  # type: ignore[method-assign]
    AIOKafkaProducer.commit_transaction = _commit_transaction  # type: ignore[method-assign]
    cli.main()
