"""Round trips through each real service: the proof that the stack is really there.

``veilleuse smoke`` runs them all (it is ``make demo``'s main job until the simulator exists);
the integration tests run each one and then check more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from devtools.stack.context import StackContext
from devtools.stack.mosquitto import Mosquitto
from pipeline import clients
from pipeline.clients import admin_client, consumer, producer
from pipeline.lamps import Credential
from pipeline.mqtt_session import MqttSession
from pipeline.settings import Settings

SMOKE_TOPIC = "smoke.roundtrip.v1"
SMOKE_INDEX = "smoke-roundtrip"
SMOKE_SITE = "smoke"


@dataclass(frozen=True)
class Check:
    service: str
    ok: bool
    detail: str
    seconds: float


# -- Kafka --------------------------------------------------------------------------------------


async def kafka_round_trip(settings: Settings, messages: int = 10) -> str:
    """Produce through an idempotent acks=all producer, consume through a consumer group."""
    from aiokafka.admin import NewTopic
    from aiokafka.structs import TopicPartition

    admin = admin_client(settings)
    await admin.start()
    try:
        if SMOKE_TOPIC not in await admin.list_topics():
            with contextlib.suppress(Exception):  # a concurrent creation is fine
                await admin.create_topics([NewTopic(SMOKE_TOPIC, 2, 1)])
    finally:
        await admin.close()
    run = uuid.uuid4().hex
    sent = {f"{run}-{i}".encode() for i in range(messages)}
    prod = producer(settings)
    await prod.start()
    try:
        for value in sorted(sent):
            await prod.send_and_wait(SMOKE_TOPIC, value, key=value[-1:])
    finally:
        await prod.stop()
    group = f"smoke-{run}"
    cons = consumer(settings, SMOKE_TOPIC, group_id=group)
    await cons.start()
    got: set[bytes] = set()
    try:
        deadline = time.monotonic() + 30
        while not sent <= got and time.monotonic() < deadline:
            batch = await cons.getmany(timeout_ms=1000)
            got |= {record.value for records in batch.values() for record in records}
        await cons.commit()
        committed = {
            tp.partition: await cons.committed(TopicPartition(SMOKE_TOPIC, tp.partition))
            for tp in cons.assignment()
        }
    finally:
        await cons.stop()
    missing = sent - got
    if missing:
        raise AssertionError(f"{len(missing)} of {messages} messages not consumed")
    if not any(offset for offset in committed.values()):
        raise AssertionError(f"group {group} committed nothing: {committed}")
    return f"{messages} records through group {group}, committed {committed}"


# -- Elasticsearch -----------------------------------------------------------------------------


def elasticsearch_round_trip(settings: Settings) -> str:
    doc_id = uuid.uuid4().hex
    with clients.elasticsearch(settings) as es:
        es.index(
            index=SMOKE_INDEX,
            id=doc_id,
            document={"lamp_id": "L-smoke", "note": f"smoke {doc_id}"},
            refresh="wait_for",
        )
        hits = es.search(index=SMOKE_INDEX, query={"match": {"note": doc_id}})["hits"]["hits"]
        es.delete(index=SMOKE_INDEX, id=doc_id, refresh="wait_for")
    if [hit["_id"] for hit in hits] != [doc_id]:
        raise AssertionError(f"search for {doc_id} returned {hits}")
    return f"indexed and found document {doc_id} in {SMOKE_INDEX}"


# -- PostgreSQL and Redis ------------------------------------------------------------------------


def postgres_round_trip(settings: Settings) -> str:
    import psycopg

    token = uuid.uuid4().hex
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        conn.execute("CREATE TEMP TABLE smoke (token text PRIMARY KEY)")
        conn.execute("INSERT INTO smoke (token) VALUES (%s)", (token,))
        row = conn.execute("SELECT token FROM smoke WHERE token = %s", (token,)).fetchone()
        version = conn.execute("SHOW server_version").fetchone()
    if row != (token,):
        raise AssertionError(f"read back {row!r}, wrote {token!r}")
    return f"wrote and read a row (PostgreSQL {version[0] if version else '?'})"


def redis_round_trip(settings: Settings) -> str:
    key, value = f"smoke:{uuid.uuid4().hex}", uuid.uuid4().hex
    client = clients.redis(settings)
    try:
        client.set(key, value, px=60_000)
        got = client.get(key)
        ttl = client.pttl(key)
        client.delete(key)
    finally:
        client.close()
    if got != value.encode() or not 0 < ttl <= 60_000:
        raise AssertionError(f"read back {got!r} with ttl {ttl}")
    return "SET with expiry, GET, DEL"


# -- MQTT ---------------------------------------------------------------------------------------


def lamp_message(lamp_id: str, seq: int, **fields: Any) -> bytes:
    body = {"v": 1, "lamp_id": lamp_id, "seq": seq, "ts": int(time.time() * 1000)}
    body.update(fields or {"type": "heartbeat", "fw": "smoke", "uptime_s": 1, "rssi": -50})
    return json.dumps(body).encode()


def provision_temporary_lamp(settings: Settings) -> tuple[Mosquitto, Credential]:
    broker = Mosquitto(StackContext(settings))
    credential = broker.credentials().provision([(SMOKE_SITE, f"smoke-{uuid.uuid4().hex[:12]}")])[0]
    broker.reload()
    return broker, credential


def connect_when_reloaded(settings: Settings, username: str, password: str) -> MqttSession:
    """Connect, retrying briefly: the broker re-reads its password file asynchronously."""
    host, port = settings.mqtt.brokers[0].host, settings.mqtt.brokers[0].port
    deadline = time.monotonic() + 10
    while True:
        session = MqttSession(host, port, username, password)
        reason = session.connect()
        if not reason.is_failure:
            return session
        session.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"{username} refused by the broker: {reason}")
        time.sleep(0.2)


def mqtt_round_trip(settings: Settings) -> str:
    """A lamp publishes with its own credentials; the connector's account receives it."""
    broker, lamp = provision_temporary_lamp(settings)
    try:
        mqtt = settings.mqtt
        subscriber = connect_when_reloaded(
            settings, mqtt.username, mqtt.password.get_secret_value()
        )
        publisher = connect_when_reloaded(settings, lamp.lamp_id, lamp.password)
        try:
            topic = f"lamps/{lamp.site_id}/{lamp.lamp_id}/events"
            subscriber.subscribe(f"$share/smoke-{uuid.uuid4().hex[:6]}/{topic}")
            payload = lamp_message(lamp.lamp_id, 1)
            reason = publisher.publish(topic, payload)
            if reason.is_failure:
                raise AssertionError(f"own-topic publish refused: {reason}")
            if not subscriber.wait_for(
                lambda: any(m.payload == payload for m in subscriber.messages)
            ):
                raise AssertionError("message not received through the shared subscription")
        finally:
            publisher.close()
            subscriber.close()
    finally:
        broker.credentials().revoke([lamp.lamp_id])
        broker.reload()
    return f"lamp {lamp.lamp_id} → $share subscription of {mqtt.username} (MQTT 5, QoS 1)"


@contextlib.asynccontextmanager
async def connector_with_lamps(
    settings: Settings, lamps: int, tag: str
) -> AsyncIterator[tuple[Any, Any, list[Credential]]]:
    """A connector (own share group, session discarded after) and a connected lamp fleet with
    freshly provisioned credentials (revoked after)."""
    from connectors.mqtt_asyncio import discard_session
    from connectors.mqtt_source import MqttSource
    from devtools.fleet import Fleet, connect_fleet

    run = uuid.uuid4().hex[:8]
    mqtt = settings.mqtt.model_copy(
        update={"share_group": f"{tag}{run}", "client_id": f"{tag}-{run}", "session_expiry_s": 60}
    )
    connector = settings.connector.model_copy(update={"metrics_port": 0})
    isolated = settings.model_copy(update={"mqtt": mqtt, "connector": connector})
    broker = Mosquitto(StackContext(settings))
    site = f"{tag}-{run}"
    creds = broker.credentials().provision([(site, f"{site}-{i}") for i in range(lamps)])
    broker.reload()
    source, stop = MqttSource(isolated), asyncio.Event()
    running = asyncio.create_task(source.run(stop))
    fleet: Fleet | None = None
    try:
        await asyncio.wait_for(source.ready(), 30)
        fleet = await connect_fleet(settings.mqtt.brokers[0], creds, timeout_s=30)
        yield source, fleet, creds
    finally:
        if fleet is not None:
            await fleet.close()
        stop.set()
        await running
        broker.credentials().revoke([c.lamp_id for c in creds])
        broker.reload()
        await discard_session(
            host=settings.mqtt.brokers[0].host,
            port=settings.mqtt.brokers[0].port,
            client_id=source.connections[0].client_id,
            username=mqtt.username,
            password=mqtt.password.get_secret_value(),
        )


async def connector_round_trip(settings: Settings, lamps: int = 3, per_lamp: int = 10) -> str:
    """Provisioned lamps publish valid and junk messages; the connector writes both to Kafka."""
    async with connector_with_lamps(settings, lamps, "smoke") as (source, fleet, creds):
        for cred in creds:
            for seq in range(per_lamp):
                fleet.publish(cred.lamp_id, "events", lamp_message(cred.lamp_id, seq))
            fleet.publish(cred.lamp_id, "events", b"{not json")
        await fleet.wait_acked(30)
        valid, junk = lamps * per_lamp, lamps
        deadline = time.monotonic() + 30
        while source.count("produced") < valid or source.count("rejected") < junk:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"connector wrote {source.count('produced')}/{valid} messages and "
                    f"{source.count('rejected')}/{junk} rejects"
                )
            await asyncio.sleep(0.1)
    return (
        f"{valid} lamp messages → lamp.messages.v1 and {junk} junk → lamp.dlq.v1, "
        "each acked to MQTT after Kafka's ack"
    )


# -- Detection: lamp → MQTT → connector → Kafka → worker → alerts.v1 ---------------------------


def _start_worker(prefix: str, env: dict[str, str]) -> tuple[Any, Any]:
    """``veilleuse worker`` on the topics of ``prefix``, its output in a temporary file."""
    import os
    import subprocess
    import sys
    import tempfile

    log = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--instance-id", f"{prefix}worker"],
        env={
            **os.environ,
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": prefix,
            "VEILLEUSE_DETECTION__APP_ID": f"{prefix}detection",
            "VEILLEUSE_DETECTION__METRICS_PORT": "0",
            "VEILLEUSE_DETECTION__LIVE_PORT": "0",
            **env,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return worker, log


def _stop_worker(worker: Any) -> None:
    import subprocess

    worker.terminate()
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


async def detection_round_trip(settings: Settings, confirm_s: float = 30.0) -> str:
    """A lamp falls and goes silent, another's pendant is pressed: both alerts reach alerts.v1.

    Runs on topics of its own (a unique prefix) with a worker process of its own, so that it
    neither reads nor disturbs the real ones.
    """
    from aiokafka import TopicPartition

    from pipeline.topics import ALERTS, ensure_topics, topic_name
    from schemas import decode

    prefix = f"smoke{uuid.uuid4().hex[:8]}."
    kafka = settings.kafka.model_copy(update={"topic_prefix": prefix})
    isolated = settings.model_copy(update={"kafka": kafka})
    await ensure_topics(isolated)
    worker, log = _start_worker(
        prefix,
        {
            "VEILLEUSE_RULES__FALL__CONFIRM_S": str(confirm_s),
            "VEILLEUSE_LOG_LEVEL": "WARNING",
        },
    )
    alerts_topic = topic_name(isolated, ALERTS)
    tail = consumer(isolated, group_id=None, isolation_level="read_committed")
    await tail.start()
    try:
        tps = [TopicPartition(alerts_topic, p) for p in range(kafka.topic_partitions)]
        tail.assign(tps)
        await tail.seek_to_beginning(*tps)
        async with connector_with_lamps(isolated, 2, "smoke") as (_, fleet, creds):
            fallen, caller = creds[0].lamp_id, creds[1].lamp_id

            def say(lamp: str, seq: int, **fields: Any) -> None:
                fleet.publish(lamp, "events", lamp_message(lamp, seq, **fields))

            # The worker may still be joining its group: records wait in Kafka meanwhile.
            say(
                fallen,
                0,
                type="posture",
                posture="standing",
                zone="room",
                confidence=0.9,
                persons=1,
            )
            say(fallen, 1, type="fall_suspected", confidence=0.85, zone="floor")
            deadline_ms = int(time.time() * 1000) + int(confirm_s * 1000)
            say(
                fallen,
                2,
                type="posture",
                posture="on_floor",
                zone="floor",
                confidence=0.8,
                persons=1,
            )
            pressed_ms = int(time.time() * 1000)
            say(caller, 0, type="button", accessory_id="pendant", action="press")
            await fleet.wait_acked(30)
            seen: dict[str, int] = {}
            give_up = time.monotonic() + confirm_s + 60
            while len(seen) < 2 and time.monotonic() < give_up:
                if worker.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"worker exited: {log.read()[-2000:]!r}")
                for records in (await tail.getmany(timeout_ms=200)).values():
                    for record in records:
                        _, alert = decode(record.value)
                        seen.setdefault(alert["kind"], int(time.time() * 1000))
        if set(seen) != {"fall", "help_requested"}:
            raise AssertionError(f"alerts seen: {sorted(seen)}; expected fall and help_requested")
    finally:
        await tail.stop()
        _stop_worker(worker)
        log.close()
    fall_late = (seen["fall"] - deadline_ms) / 1000
    return (
        f"silent lamp's fall on alerts.v1 {fall_late:+.1f} s after its {confirm_s:.0f} s "
        f"deadline; help request after {(seen['help_requested'] - pressed_ms) / 1000:.1f} s "
        "(worker start included)"
    )


CHECKS: dict[str, Callable[[Settings], str]] = {
    "kafka": lambda s: asyncio.run(kafka_round_trip(s)),
    "elasticsearch": elasticsearch_round_trip,
    "postgres": postgres_round_trip,
    "redis": redis_round_trip,
    "mosquitto": mqtt_round_trip,
    "connector": lambda s: asyncio.run(connector_round_trip(s)),
    "detection": lambda s: asyncio.run(detection_round_trip(s)),
}


def run_all(settings: Settings) -> list[Check]:
    results = []
    for service, check in CHECKS.items():
        started = time.monotonic()
        try:
            detail, ok = check(settings), True
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the others still run
            detail, ok = f"{type(exc).__name__}: {exc}", False
        results.append(Check(service, ok, detail, time.monotonic() - started))
    return results
