"""Kafka dies under the whole pipeline and comes back: nothing is lost, nobody restarts.

The connector, a detection worker, both sinks and the notifier run as real processes on topics
of their own while ten provisioned lamps publish valid messages and junk over MQTT. Kafka is
first frozen (SIGSTOP), so that the connector certainly has produce requests in flight that the
broker will never answer, then killed (SIGKILL: a crash, not a clean stop), and started again
after a pause. The test then checks that every valid message reached ``lamp.messages.v1`` and
every junk one ``lamp.dlq.v1``, that a fall played after the restart is alarmed on time (not
before its confirmation, at most 2 s after its deadline), that the sinks and the notifier took
it, that no process was restarted, and that the logs stayed small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devtools.processes import PipelineProcess
from devtools.stack.context import StackContext
from devtools.stack.kafka import Kafka
from pipeline.ports import free_port
from pipeline.settings import Settings
from pipeline.topics import LAMP_DLQ, LAMP_MESSAGES, ensure_topics, topic_name
from tests.integration.agents.conftest import AlertTail
from tests.integration.connectors.conftest import (  # the fixtures too
    LampSet,
    TopicReader,
    fleet_of,  # noqa: F401
    lamp_payload,
    provision,  # noqa: F401
)
from tests.integration.processes import stack_command

pytestmark = pytest.mark.slow

CONFIRM_S = 10.0
FREEZE_S = 3.0
OUTAGE_S = 15.0
LOG_LIMIT_BYTES = 2 * 1024 * 1024
STALL_AFTER_S = 5.0
SINK_PORTS = {"postgres": free_port(), "elasticsearch": free_port()}


def junk_for(lamps: LampSet, lamp_id: str, n: int) -> list[bytes]:
    """The protocol's junk, each piece recognisable in the dead-letter topic."""
    other = next(i for i in lamps.ids if i != lamp_id)
    valid = {"v": 1, "lamp_id": lamp_id, "seq": 10_000 + n, "ts": int(time.time() * 1000)}
    return [
        lamp_payload(lamp_id, 10_000 + n)[:-7],  # truncated
        b"\xff\xfe\x00junk" + str(n).encode(),  # binary
        json.dumps([lamp_id, n]).encode(),  # an array
        json.dumps({**valid, "type": "motion", "zone": "room", "level": str(n)}).encode(),
        json.dumps({**valid, "type": f"teleport{n}"}).encode(),  # unknown type
        json.dumps({**valid, "lamp_id": other, "type": "heartbeat"}).encode(),  # not its id
        json.dumps({"v": 1, "seq": n, "ts": 1, "type": "motion", "zone": "room"}).encode(),
        json.dumps({**valid, "type": "motion", "zone": "room", "level": 10**30}).encode(),
        (b'{"a":' * 200) + str(n).encode() + b"}" * 200,  # deep nesting
        b'{"v":1,"lamp_id":"' + lamp_id.encode() + b'","seq":NaN,"n":' + str(n).encode() + b"}",
    ]


def probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())["reason"]
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())["reason"]


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def metric_reaches(port: int, name: str, minimum: float, timeout_s: float = 60) -> float:
    deadline = time.monotonic() + timeout_s
    while (value := metric(port, name)) < minimum and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return value


@contextlib.asynccontextmanager
async def pipeline_processes(
    settings: Settings, tmp_path: Path, prefix: str, connector_env: dict[str, str]
) -> AsyncIterator[dict[str, PipelineProcess]]:
    common = {
        "VEILLEUSE_KAFKA__TOPIC_PREFIX": prefix,
        "VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX": f"{prefix[:-1]}-messages",
        "VEILLEUSE_SINK__LINGER_MS": "100",
        "VEILLEUSE_LOG_FORMAT": "json",
        "VEILLEUSE_HEALTH__STALL_AFTER_S": str(STALL_AFTER_S),
    }
    specs: dict[str, tuple[list[str], dict[str, str]]] = {
        "connector": (["connector"], connector_env),
        "worker": (
            ["worker", "--instance-id", f"{prefix}w1"],
            {
                "VEILLEUSE_DETECTION__APP_ID": f"{prefix}detection",
                "VEILLEUSE_DETECTION__METRICS_PORT": "0",
                "VEILLEUSE_DETECTION__LIVE_PORT": "0",
                "VEILLEUSE_DETECTION__SESSION_TIMEOUT_S": "6",
                "VEILLEUSE_RULES__FALL__CONFIRM_S": str(CONFIRM_S),
            },
        ),
        "sink-postgres": (
            ["sink", "postgres"],
            {"VEILLEUSE_SINK__POSTGRES_METRICS_PORT": str(SINK_PORTS["postgres"])},
        ),
        "sink-elasticsearch": (
            ["sink", "elasticsearch"],
            {"VEILLEUSE_SINK__ELASTICSEARCH_METRICS_PORT": str(SINK_PORTS["elasticsearch"])},
        ),
        "notifier": (
            ["notifier"],
            {"VEILLEUSE_NOTIFIER__METRICS_PORT": "0", "VEILLEUSE_NOTIFIER__SESSION_TIMEOUT_S": "6"},
        ),
    }
    processes = {
        name: PipelineProcess(argv, {**common, **env}, tmp_path / f"{name}.log")
        for name, (argv, env) in specs.items()
    }
    for process in processes.values():
        process.start()
    try:
        yield processes
    finally:
        for process in processes.values():
            process.stop()


@pytest.mark.parametrize("crash", [True, False], ids=["sigkill", "sigterm"])
async def test_a_kafka_restart_under_the_whole_pipeline_loses_nothing_and_restarts_nobody(
    crash: bool,
    restarts_services: None,
    settings: Settings,
    tmp_path: Path,
    require: Callable[..., None],
    provision: Callable[[int], LampSet],  # noqa: F811 - the imported fixture
    fleet_of: Callable[..., Any],  # noqa: F811
) -> None:
    require("kafka", "mosquitto", "postgres", "elasticsearch", "redis")
    prefix = f"tk{uuid.uuid4().hex[:8]}."
    isolated = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})}
    )
    await ensure_topics(isolated)
    messages = TopicReader(isolated, topic_name(isolated, LAMP_MESSAGES))
    dlq = TopicReader(isolated, topic_name(isolated, LAMP_DLQ))
    await messages.mark()
    await dlq.mark()
    lamps = provision(11)
    fallen, talkers = lamps.ids[0], LampSet(lamps.site_id, lamps.credentials[1:])
    fleet = await fleet_of(lamps)
    metrics_port = free_port()
    group = f"tk{uuid.uuid4().hex[:8]}"
    connector_env = {
        "VEILLEUSE_MQTT__SHARE_GROUP": group,
        "VEILLEUSE_MQTT__CLIENT_ID": group,
        "VEILLEUSE_MQTT__SESSION_EXPIRY_S": "300",
        "VEILLEUSE_CONNECTOR__METRICS_PORT": str(metrics_port),
        # Deliveries time out well within the outage: the path that wedged the connector
        # (a failed batch leaves the idempotent producer's sequence numbers behind the broker's).
        "VEILLEUSE_CONNECTOR__KAFKA_TIMEOUT_MS": "3000",
    }
    kafka = Kafka(StackContext(settings))
    valid: set[tuple[str, int]] = set()
    junk: Counter[tuple[str, bytes]] = Counter()
    publishing = asyncio.Event()
    publishing.set()

    async def publish() -> None:
        seq = 0
        while publishing.is_set():
            for lamp_id in talkers.ids:
                fleet.publish(lamp_id, "events", lamp_payload(lamp_id, seq))
                valid.add((lamp_id, seq))
                if seq % 3 == 0:
                    payload = junk_for(lamps, lamp_id, seq)[(seq // 3) % 10]
                    fleet.publish(lamp_id, "events", payload)
                    junk[f"lamps/{lamps.site_id}/{lamp_id}/events", payload] += 1
            seq += 1
            await asyncio.sleep(0.05)  # ~200 valid messages/s and ~70 junk/s

    async with pipeline_processes(settings, tmp_path, prefix, connector_env) as processes:
        connector = processes["connector"]
        await connector.wait_for_log("subscribed on", 60)
        await processes["worker"].wait_for_log("partitions ready", 90)
        async with AlertTail(isolated) as alerts:
            publisher = asyncio.create_task(publish())
            try:
                await asyncio.sleep(5)
                assert metric(metrics_port, "veilleuse_connector_produced_total") > 0
                pid = kafka.pid()
                assert pid is not None, "Kafka is not running"
                os.killpg(pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(FREEZE_S)
                    # Records handed to Kafka and unanswered: in flight at the stop, for sure.
                    in_flight = metric(metrics_port, "veilleuse_connector_in_flight")
                    assert in_flight > 0, "no produce request in flight when Kafka stopped"
                finally:
                    if crash:
                        os.killpg(pid, signal.SIGKILL)
                    else:  # a clean stop that first answers some of what it was sent
                        os.killpg(pid, signal.SIGTERM)
                        os.killpg(pid, signal.SIGCONT)
                await asyncio.to_thread(stack_command, "down", "kafka")
                await asyncio.sleep(OUTAGE_S)
                # The probes tell the truth: waiting for Kafka, not ready, yet alive.
                ready, why = probe(metrics_port, "/readyz")
                assert (ready, probe(metrics_port, "/livez")[0]) == (503, 200), why
                assert "no progress" in why
            finally:
                await asyncio.to_thread(stack_command, "up", "kafka")
            await asyncio.sleep(10)
            publishing.clear()
            await publisher
            await fleet.wait_acked(180)

            missing, found_junk = await wait_for_everything(messages, dlq, lamps, valid, junk)
            assert not missing, f"{len(missing)} of {len(valid)} valid messages lost"
            short = {k: n - found_junk[k] for k, n in junk.items() if found_junk[k] < n}
            assert not short, f"{sum(short.values())} of {junk.total()} junk messages lost"

            # A fall after the restart: the lamp goes silent on the floor.
            seq = 0

            def say(**fields: Any) -> None:
                nonlocal seq
                fleet.publish(fallen, "events", lamp_payload(fallen, seq, **fields))
                seq += 1

            say(type="posture", posture="standing", zone="room", confidence=0.9, persons=1)
            say(type="fall_suspected", confidence=0.9, zone="floor")
            deadline_ms = time.time() * 1000 + CONFIRM_S * 1000
            say(type="posture", posture="on_floor", zone="floor", confidence=0.9, persons=1)
            await fleet.wait_acked(30)
            found = await alerts.wait_for(
                1, lambda a: a["lamp_id"] == fallen and a["kind"] == "fall", CONFIRM_S + 30
            )
            assert found, f"no fall alert; worker:\n{processes['worker'].tail(40)}"
            (arrived_ms,) = [
                at for a, at in alerts.alerts if a["lamp_id"] == fallen and a["kind"] == "fall"
            ][:1]
            late_s = (arrived_ms - deadline_ms) / 1000
            assert -0.5 <= late_s <= 2.0, f"fall alert {late_s:+.2f} s from its deadline"
            alert_id = found[0]["alert_id"]

        assert probe(metrics_port, "/readyz") == (200, "ready")
        await wait_for_downstream(settings, alert_id)
        # Both sinks wrote after the restart: every valid message indexed (at least once), the
        # alert stored.
        indexed = await metric_reaches(
            SINK_PORTS["elasticsearch"], "veilleuse_sink_elasticsearch_records_total", len(valid)
        )
        assert indexed >= len(valid), f"{indexed} messages indexed of {len(valid)}"
        stored = await metric_reaches(
            SINK_PORTS["postgres"], "veilleuse_sink_postgres_records_total", 1
        )
        assert stored >= 1, (
            f"the PostgreSQL sink stored nothing:\n{processes['sink-postgres'].tail(5)}"
        )
        for name, process in processes.items():
            assert process.alive(), f"{name} exited:\n{process.tail(40)}"
            size = process.log_file.stat().st_size
            assert size < LOG_LIMIT_BYTES, f"{name} logged {size} bytes"
        assert "resumed" in connector.output() or "answers again" in connector.output()


async def wait_for_everything(
    messages: TopicReader,
    dlq: TopicReader,
    lamps: LampSet,
    valid: set[tuple[str, int]],
    junk: Counter[tuple[str, bytes]],
    timeout_s: float = 120,
) -> tuple[set[tuple[str, int]], Counter[tuple[str, bytes]]]:
    prefix = lamps.site_id.encode()
    deadline = time.monotonic() + timeout_s
    while True:
        records = await messages.read(lambda r: r.key is not None and r.key.startswith(prefix))
        seen = {(json.loads(r.value)["lamp_id"], json.loads(r.value)["seq"]) for r in records}
        rejected = await dlq.read(
            lambda r: dict(r.headers).get("mqtt.topic", b"").startswith(b"lamps/" + prefix)
        )
        found = Counter((dict(r.headers)["mqtt.topic"].decode(), r.value) for r in rejected)
        missing = valid - seen
        short = any(found[k] < n for k, n in junk.items())
        if (not missing and not short) or time.monotonic() > deadline:
            return missing, found
        await asyncio.sleep(2)


async def wait_for_downstream(settings: Settings, alert_id: str, timeout_s: float = 60) -> None:
    """The PostgreSQL sink stored the alert, the notifier recorded its first step."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with await psycopg.AsyncConnection.connect(settings.postgres.conninfo()) as conn:
            stored = await (
                await conn.execute("SELECT count(*) FROM alerts WHERE alert_id = %s", (alert_id,))
            ).fetchone()
            steps = await (
                await conn.execute(
                    "SELECT count(*) FROM alert_events WHERE alert_id = %s", (alert_id,)
                )
            ).fetchone()
        if stored and stored[0] and steps and steps[0]:
            return
        assert time.monotonic() < deadline, f"alert {alert_id}: in alerts {stored}, steps {steps}"
        await asyncio.sleep(1)
