"""Connector processes, lamp fleets and a Kafka reader for the connector's integration tests.

Each test gets its own site, lamps, share group and client ids, so tests never read each other's
messages; sessions are made short-lived so that none lingers on the broker afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.mqtt_asyncio import discard_session
from devtools.fleet import Fleet, connect_fleet
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import Mosquitto
from pipeline import clients
from pipeline.lamps import Credential
from pipeline.ports import free_port
from pipeline.settings import MqttBroker, Settings
from pipeline.topics import LAMP_DLQ, LAMP_MESSAGES


@dataclass
class ConnectorProcess:
    """``veilleuse connector`` as a real process, restartable with the same identity."""

    name: str
    env: dict[str, str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "connector"],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.restarts += 1

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait; a connector that ignores it is killed and the test fails."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    @property
    def metrics_port(self) -> int:
        return int(self.env["VEILLEUSE_CONNECTOR__METRICS_PORT"])

    def metrics(self) -> dict[str, float]:
        """Sample values by name and labels, e.g. ``received_total{broker=local}``."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                key = sample.name.removeprefix("veilleuse_connector_")
                values[f"{key}{{{labels}}}" if labels else key] = sample.value
        return values

    def wait_for_metrics(self, timeout_s: float = 30) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.metrics()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait_until_subscribed(self, timeout_s: float = 30) -> dict[str, float]:
        """Messages published before the subscription exists reach no one: wait for it. Replica
        0 also waits for its restart guard's marker: until then the guard forwards a second copy
        of each message (by design, docs/mqtt.md), which a test counting records would see."""
        guarded = self.name.endswith("-0") and self.env.get("VEILLEUSE_MQTT__SHARE_GROUP") != ""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                metrics = self.metrics()
                if metrics.get("subscribed{broker=local}") == 1 and (
                    not guarded or metrics.get("restart_guard_forwarding{broker=local}") == 0
                ):
                    return metrics
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"connector {self.name} not subscribed: see {self.log_file}")
            time.sleep(0.2)

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ConnectorFactory:
    settings: Settings
    tmp_path: Path
    group: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    made: list[ConnectorProcess] = field(default_factory=list)

    def __call__(self, replica: int = 0, **env: str) -> ConnectorProcess:
        process = self.start_only(replica, **env)
        process.wait_until_subscribed()
        return process

    def start_only(self, replica: int = 0, **env: str) -> ConnectorProcess:
        name = f"{self.group}-{replica}"
        full_env = {
            "VEILLEUSE_MQTT__SHARE_GROUP": self.group,
            "VEILLEUSE_MQTT__CLIENT_ID": name,
            # Short-lived sessions: nothing of this test lingers on the broker for long.
            "VEILLEUSE_MQTT__SESSION_EXPIRY_S": "120",
            "VEILLEUSE_CONNECTOR__METRICS_PORT": str(free_port()),
            "VEILLEUSE_LOG_FORMAT": "console",
            **env,
        }
        process = ConnectorProcess(name, full_env, self.tmp_path / f"{name}.log")
        self.made.append(process)
        process.start()
        return process


@pytest.fixture
def connector(
    settings: Settings, tmp_path: Path, require: Callable[..., None]
) -> Iterator[ConnectorFactory]:
    require("kafka", "mosquitto")
    factory = ConnectorFactory(settings, tmp_path)
    yield factory
    mqtt = settings.mqtt
    for process in factory.made:
        if process.alive():
            process.terminate()
        brokers = json.loads(process.env.get("VEILLEUSE_MQTT__BROKERS", "[]")) or [
            b.model_dump(mode="json") for b in mqtt.brokers
        ]
        # The replica's own session and, for replica 0, its restart guard's.
        for broker, suffix in itertools.product(brokers, ("", "-guard")):
            with contextlib.suppress(ConnectionError):
                asyncio.run(
                    discard_session(
                        host=broker["host"],
                        port=broker["port"],
                        client_id=f"{process.name}{suffix}-{broker.get('name', 'local')}",
                        username=mqtt.username,
                        password=mqtt.password.get_secret_value(),
                        tls=broker.get("tls", False),
                        ca_file=broker.get("ca_file"),
                    )
                )


@dataclass
class LampSet:
    site_id: str
    credentials: list[Credential]

    @property
    def ids(self) -> list[str]:
        return [c.lamp_id for c in self.credentials]


@pytest.fixture
def provision(settings: Settings) -> Iterator[Callable[[int], LampSet]]:
    broker = Mosquitto(StackContext(settings))
    made: list[LampSet] = []

    def make(count: int) -> LampSet:
        site = f"t-{uuid.uuid4().hex[:8]}"
        creds = broker.credentials().provision([(site, f"{site}-{i:05d}") for i in range(count)])
        broker.reload()
        made.append(LampSet(site, creds))
        return made[-1]

    yield make
    for lamps in made:
        broker.credentials().revoke(lamps.ids)
    broker.reload()


@pytest.fixture
async def fleet_of(settings: Settings) -> AsyncIterator[Callable[[LampSet], Any]]:
    fleets: list[Fleet] = []

    async def make(lamps: LampSet, broker: MqttBroker | None = None) -> Fleet:
        fleet = await connect_fleet(broker or settings.mqtt.brokers[0], lamps.credentials)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.close()


def lamp_payload(lamp_id: str, seq: int, **fields: Any) -> bytes:
    body = {"v": 1, "lamp_id": lamp_id, "seq": seq, "ts": int(time.time() * 1000)}
    body.update(fields or {"type": "motion", "zone": "room", "level": seq % 101})
    return json.dumps(body).encode()


class TopicReader:
    """Reads what a test's lamps put on a topic, from the offsets it had when the test began."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.start: dict[Any, int] = {}

    async def mark(self) -> None:
        from aiokafka.structs import TopicPartition

        admin = clients.admin_client(self.settings)
        await admin.start()
        try:
            # A topic created a moment ago may not be described yet.
            for _ in range(50):
                (described,) = await admin.describe_topics([self.topic])
                if described["partitions"]:
                    break
                await asyncio.sleep(0.2)
        finally:
            await admin.close()
        partitions = [p["partition"] for p in described["partitions"]]
        assert partitions, f"topic {self.topic} not found: run `veilleuse setup`"
        consumer = clients.consumer(self.settings, group_id=None)
        await consumer.start()
        try:
            await asyncio.sleep(0)  # let the consumer's own tasks start before any stop()
            tps = [TopicPartition(self.topic, p) for p in partitions]
            self.start = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()

    async def read(self, keep: Callable[[Any], bool]) -> list[Any]:
        """Every record from the marks to the current ends that ``keep`` accepts."""
        consumer = clients.consumer(self.settings, group_id=None)
        await consumer.start()
        await asyncio.sleep(0)
        records = []
        try:
            tps = list(self.start)
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            for tp, offset in self.start.items():
                consumer.seek(tp, offset)
            remaining = {tp for tp in tps if ends[tp] > self.start[tp]}
            while remaining:
                batch = await consumer.getmany(timeout_ms=1000, max_records=10000)
                for tp, items in batch.items():
                    records += [r for r in items if r.offset < ends[tp] and keep(r)]
                    if items and items[-1].offset >= ends[tp] - 1:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        return records


@pytest.fixture
async def messages_topic(settings: Settings) -> TopicReader:
    reader = TopicReader(settings, LAMP_MESSAGES.name)
    await reader.mark()
    return reader


@pytest.fixture
async def dlq_topic(settings: Settings) -> TopicReader:
    reader = TopicReader(settings, LAMP_DLQ.name)
    await reader.mark()
    return reader


def lamp_seq(record: Any) -> tuple[str, int]:
    body = json.loads(record.value)
    return body["lamp_id"], body["seq"]


async def wait_for_all(
    reader: TopicReader, site_id: str, expected: set[tuple[str, int]], timeout_s: float = 120
) -> tuple[set[tuple[str, int]], Counter[tuple[str, int]]]:
    """Poll the topic until every expected (lamp_id, seq) is there; returns (missing, counts)."""
    prefix = site_id.encode()
    deadline = time.monotonic() + timeout_s
    while True:
        records = await reader.read(lambda r: r.key is not None and r.key.startswith(prefix))
        counts = Counter(lamp_seq(r) for r in records)
        missing = expected - counts.keys()
        if not missing or time.monotonic() > deadline:
            return missing, counts
        await asyncio.sleep(2)
