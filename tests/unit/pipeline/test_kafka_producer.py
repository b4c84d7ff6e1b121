"""ResilientProducer's decisions, with a scripted stand-in for aiokafka's producer (the real
broker restarts are in tests/integration/pipeline/test_kafka_restart.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from pipeline import kafka_producer
from pipeline.health import Health
from pipeline.kafka_producer import KafkaWriteError, ProducerRestartedError, ResilientProducer
from pipeline.settings import Settings


class Script:
    """What each successive producer does: 'ok', 'fail' (delivery fails) or 'hang'."""

    def __init__(self, starts_failing: int = 0) -> None:
        self.producers: list[StandIn] = []
        self.starts_failing = starts_failing
        self.behaviour: list[str] = []


class StandIn:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.index = len(script.producers)
        self.sent: list[tuple[str, bytes | None]] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.stopped = False
        script.producers.append(self)

    async def start(self) -> None:
        if self.script.starts_failing > 0:
            self.script.starts_failing -= 1
            raise KafkaConnectionError("connection refused")

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[Any]:
        self.sent.append((topic, value))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        behaviour = (
            self.script.behaviour[self.index] if self.index < len(self.script.behaviour) else "ok"
        )
        if behaviour == "ok":
            future.set_result(("metadata", topic, value))
        elif behaviour == "fail":
            future.set_exception(OutOfOrderSequenceNumber())
        self.futures.append(future)
        return future


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Script:
    made = Script()
    monkeypatch.setattr(kafka_producer.clients, "producer", lambda *_a, **_k: StandIn(made))
    return made


async def test_a_failed_delivery_replaces_the_producer_and_fails_what_it_still_held(
    script: Script,
) -> None:
    script.behaviour = ["hang", "ok"]
    health = Health("connector")
    producer = ResilientProducer(Settings(), component="connector", health=health)
    await producer.start()
    held = [await producer.send("t", b"%d" % i) for i in range(3)]
    # The broker answers the second with OutOfOrderSequenceNumber: the producer is wedged.
    script.producers[0].futures[1].set_exception(OutOfOrderSequenceNumber())
    await asyncio.sleep(0.01)
    for future in held:
        with pytest.raises(KafkaWriteError):
            await future
    assert isinstance(held[0].exception(), ProducerRestartedError)
    assert "kafka" in health.problems
    again = await producer.send("t", b"again")
    assert await again == ("metadata", "t", b"again")
    assert len(script.producers) == 2 and producer.restarts == 1
    assert "kafka" not in health.problems
    await producer.stop()
    assert all(p.stopped for p in script.producers)


async def test_many_failures_of_one_producer_replace_it_once(script: Script) -> None:
    script.behaviour = ["fail", "ok"]
    producer = ResilientProducer(Settings(), component="sink")
    await producer.start()
    failed = [await producer.send("t", b"x") for _ in range(5)]
    await asyncio.gather(*failed, return_exceptions=True)
    await asyncio.sleep(0.01)
    assert len(script.producers) == 2
    await producer.stop()


async def test_send_and_wait_retries_until_kafka_has_the_record(script: Script) -> None:
    script.behaviour = ["fail", "fail", "ok"]
    producer = ResilientProducer(Settings(), component="api", max_backoff_s=0.01)
    await producer.start()
    assert await producer.send_and_wait("t", b"ack") == ("metadata", "t", b"ack")
    assert [len(p.sent) for p in script.producers] == [1, 1, 1]
    await producer.stop()


async def test_kafka_down_at_start_is_waited_for(script: Script) -> None:
    script.starts_failing = 3
    producer = ResilientProducer(Settings(), component="connector", max_backoff_s=0.01)
    await asyncio.wait_for(producer.start(), 5)
    assert len(script.producers) == 4
    await producer.stop()


async def test_a_stopped_producer_refuses_records(script: Script) -> None:
    producer = ResilientProducer(Settings(), component="connector")
    await producer.start()
    await producer.stop()
    with pytest.raises(KafkaWriteError, match="stopped"):
        await producer.send("t", b"late")


async def test_deliveries_left_unanswered_replace_the_producer(script: Script) -> None:
    script.behaviour = ["hang", "ok"]
    producer = ResilientProducer(Settings(), component="connector", unanswered_after_s=0.2)
    await producer.start()
    held = await producer.send("t", b"never answered")
    with pytest.raises(ProducerRestartedError):
        await asyncio.wait_for(held, 5)
    assert await (await producer.send("t", b"again")) == ("metadata", "t", b"again")
    assert len(script.producers) == 2
    await producer.stop()
