"""Detection workers as real processes on the real Kafka, each test on its own topics."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.processes import PipelineProcess
from pipeline import clients
from pipeline.settings import Settings
from pipeline.topics import ALERTS, LAMP_MESSAGES, ensure_topics, topic_name
from schemas import decode

READY = re.compile(r"partitions ready: (\[.*\])")
REVOKED = re.compile(r"revoked (\[.*\])")


class WorkerProcess(PipelineProcess):
    """``veilleuse worker`` as a real process, which says in its log what it processes."""

    @property
    def instance_id(self) -> str:
        return self.argv[self.argv.index("--instance-id") + 1]

    def ready_partitions(self) -> set[int]:
        """The partitions this worker processes now, from its own log."""
        ready: set[int] = set()
        for line in self.output().splitlines():
            try:
                msg = json.loads(line).get("msg", "")
            except ValueError:
                continue
            if match := READY.search(msg):
                ready |= set(ast.literal_eval(match.group(1)))
            elif match := REVOKED.search(msg):
                ready -= set(ast.literal_eval(match.group(1)))
        return ready

    def log_tail(self, lines: int = 30) -> str:
        return self.tail(lines)


@dataclass
class DetectionRun:
    """Isolated topics (a unique prefix), a unique consumer group, and its workers."""

    settings: Settings
    tmp_path: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}.")
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def app_id(self) -> str:
        return f"{self.prefix}detection"

    def env(self) -> dict[str, str]:
        return {
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": self.prefix,
            "VEILLEUSE_DETECTION__APP_ID": self.app_id,
            "VEILLEUSE_DETECTION__METRICS_PORT": "0",
            "VEILLEUSE_DETECTION__LIVE_PORT": "0",
            "VEILLEUSE_DETECTION__SESSION_TIMEOUT_S": "6",
            "VEILLEUSE_LOG_FORMAT": "json",
        }

    def worker(
        self,
        instance_id: str,
        script: str | None = None,
        *,
        args: tuple[str, ...] = (),
        **env: str,
    ) -> WorkerProcess:
        """A worker; ``script`` runs instead of ``-m cli`` (a worker with a fault);
        ``args`` are more options of ``veilleuse worker`` (``--agents``)."""
        log_file = self.tmp_path / f"{instance_id}-{len(self.workers)}.log"
        argv = ["worker", "--instance-id", instance_id, *args]
        worker = WorkerProcess(argv, {**self.env(), **env}, log_file, script=script)
        self.workers.append(worker)
        worker.start()
        return worker

    def wait_for_assignment(self, workers: list[WorkerProcess], timeout_s: float = 90) -> None:
        """Until the live ``workers`` together process every partition, each some."""
        partitions = set(range(self.settings.kafka.topic_partitions))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            owned = [w.ready_partitions() for w in workers]
            if (
                all(owned)
                and set().union(*owned) == partitions
                and sum(map(len, owned)) == len(partitions)
            ):
                return
            for worker in workers:
                assert worker.alive(), f"worker {worker.instance_id} died:\n{worker.log_tail()}"
            time.sleep(0.2)
        tails = "\n".join(f"--- {w.instance_id}\n{w.log_tail()}" for w in workers)
        raise TimeoutError(f"partitions not assigned to {len(workers)} workers:\n{tails}")

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture
async def detection_run(
    settings: Settings, tmp_path: Path, require: Any
) -> AsyncIterator[DetectionRun]:
    require("kafka")
    run = DetectionRun(settings, tmp_path)
    run.settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topic_prefix": run.prefix})}
    )
    await ensure_topics(run.settings)
    try:
        yield run
    finally:
        run.stop()


class LampSender:
    """Writes protocol-shaped lamp messages to ``lamp.messages.v1`` as the connector would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = topic_name(settings, LAMP_MESSAGES)
        self.producer: Any = None
        self.seqs: dict[str, int] = {}

    async def __aenter__(self) -> LampSender:
        self.producer = clients.producer(self.settings)
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send(
        self, site: str, lamp: str, kind: str, *, skew_s: float = 0, copies: int = 1, **fields: Any
    ) -> dict[str, Any]:
        seq = self.seqs.get(lamp, 0)
        self.seqs[lamp] = seq + 1
        ts = int((time.time() + skew_s) * 1000)
        payload = {"v": 1, "lamp_id": lamp, "seq": seq, "ts": ts, "type": kind, **fields}
        channel = "telemetry" if kind in ("temperature", "heartbeat") else "events"
        headers = [("mqtt.topic", f"lamps/{site}/{lamp}/{channel}".encode())]
        for _ in range(copies):
            await self.producer.send_and_wait(
                self.topic, orjson.dumps(payload), key=lamp.encode(), headers=headers
            )
        return payload

    async def standing(
        self, site: str, lamp: str, *, persons: int = 1, **kw: Any
    ) -> dict[str, Any]:
        """The resident standing in the room (``persons`` seen)."""
        return await self.send(
            site, lamp, "posture", posture="standing", zone="room", confidence=0.9,
            persons=persons, **kw,
        )  # fmt: skip


class AlertTail:
    """Follows ``alerts.v1`` as a consumer would (read_committed), noting when each arrived."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = topic_name(settings, ALERTS)
        self.alerts: list[tuple[dict[str, Any], int]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AlertTail:
        from aiokafka import TopicPartition

        consumer = clients.consumer(self.settings, group_id=None, isolation_level="read_committed")
        await consumer.start()
        tps = [TopicPartition(self.topic, p) for p in range(self.settings.kafka.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow())
        return self

    async def _follow(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            now = int(time.time() * 1000)
            for records in batch.values():
                for record in records:
                    self.alerts.append((decode(record.value)[1], now))

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()

    async def wait_for(self, count: int, predicate: Any, timeout_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [a for a, _ in self.alerts if predicate(a)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)


def alert_steps(alerts: list[tuple[dict[str, Any], int]]) -> Iterator[tuple[str, str, str]]:
    for alert, _ in alerts:
        yield alert["lamp_id"], alert["kind"], alert["state"]


async def read_records(
    settings: Settings, topic: str, count: int, timeout_s: float = 30
) -> list[Any]:
    """At least ``count`` committed records of ``topic`` (fewer if the time runs out)."""
    from aiokafka import TopicPartition

    consumer = clients.consumer(settings, group_id=None, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.kafka.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()
