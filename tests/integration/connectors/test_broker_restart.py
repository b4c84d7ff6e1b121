"""The stack's Mosquitto restarts, and a replica goes away for good: nothing the broker
acknowledged to a lamp is lost (docs/mqtt.md). Each restart takes the machine-wide lock of
``restarts_services`` and leaves the broker running, also on failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from connectors.mqtt_asyncio import AsyncioMqtt
from devtools.stack import manager
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import stack_brokers
from pipeline.lamps import Credential
from pipeline.ports import free_port
from pipeline.settings import MqttBroker, Settings
from tests.integration.connectors.conftest import (
    ConnectorFactory,
    LampSet,
    TopicReader,
    lamp_payload,
    wait_for_all,
)
from tests.integration.processes import stack_command as stack

pytestmark = pytest.mark.slow


class Lamps:
    """Lamps that keep publishing through broker restarts, as the firmware does: each QoS 1
    message the broker acknowledged is recorded; an unacknowledged one is not sent again."""

    def __init__(self, broker: MqttBroker, credentials: list[Credential]) -> None:
        self.broker = broker
        self.acked: set[tuple[str, int]] = set()
        self.sent = 0
        self.connections: dict[str, tuple[Credential, AsyncioMqtt, dict[int, int]]] = {}
        for credential in credentials:
            self.connections[credential.lamp_id] = self._connection(credential)

    def _connection(self, credential: Credential) -> tuple[Credential, AsyncioMqtt, dict[int, int]]:
        client = AsyncioMqtt(
            host=self.broker.host,
            port=self.broker.port,
            client_id=f"lamp-{credential.lamp_id}",
            username=credential.lamp_id,
            password=credential.password,
        )
        pending: dict[int, int] = {}  # mid -> seq

        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
            seq = pending.pop(mid, None)
            if seq is not None and not reason.is_failure:
                self.acked.add((credential.lamp_id, seq))

        client.client.on_publish = on_publish
        return credential, client, pending

    async def connect(self) -> None:
        """Connect every lamp that is not connected (a refusal is retried on the next call)."""

        async def one(lamp_id: str) -> None:
            credential, client, _ = self.connections[lamp_id]
            if client.connected.is_set():
                return
            await client.close()
            self.connections[lamp_id] = self._connection(credential)
            with contextlib.suppress(ConnectionError):
                await self.connections[lamp_id][1].connect(timeout_s=2)

        await asyncio.gather(*(one(lamp_id) for lamp_id in self.connections))

    def publish(self, seq: int) -> None:
        for lamp_id, (credential, client, pending) in self.connections.items():
            if not client.connected.is_set():
                continue
            topic = f"lamps/{credential.site_id}/{lamp_id}/events"
            info = client.client.publish(topic, lamp_payload(lamp_id, seq), qos=1)
            pending[info.mid] = seq
            self.sent += 1

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for _, client, _ in self.connections.values()))


async def test_connector_stopped_while_the_broker_restarts_loses_nothing(
    settings: Settings,
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
    restarts_services: None,
) -> None:
    """SIGTERM (a deploy), broker restart, lamps publish, connector back: all in Kafka."""
    lamps = provision(20)
    process = connector()
    assert process.terminate() == 0
    try:
        await asyncio.to_thread(stack, "down", "mosquitto")
    finally:
        await asyncio.to_thread(stack, "up", "mosquitto")
    fleet = await fleet_of(lamps)
    sent = set()
    for seq in range(10):
        for lamp_id in lamps.ids:
            fleet.publish(lamp_id, "events", lamp_payload(lamp_id, seq))
            sent.add((lamp_id, seq))
    await fleet.wait_acked()
    process.start()
    process.wait_until_subscribed()
    missing, _ = await wait_for_all(messages_topic, lamps.site_id, sent, timeout_s=60)
    assert not missing, f"{len(missing)} of {len(sent)} acknowledged messages lost"


async def test_connector_running_while_the_broker_restarts_under_load(
    settings: Settings,
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    messages_topic: TopicReader,
    restarts_services: None,
) -> None:
    """Lamps publish at about 500 messages/s; the broker is down for about 5 s and comes back;
    the lamps reconnect at once, the connector within its 2 s backoff."""
    lamps = provision(50)
    process = connector()
    fleet = Lamps(settings.mqtt.brokers[0], lamps.credentials)
    await fleet.connect()
    restart: asyncio.Task[None] | None = None

    async def down_then_up() -> None:
        try:
            await asyncio.to_thread(stack, "down", "mosquitto")
            await asyncio.sleep(5)
        finally:
            await asyncio.to_thread(stack, "up", "mosquitto")

    try:
        started = time.monotonic()
        for seq in range(400):  # 50 lamps, 10 rounds a second: 40 s at most
            fleet.publish(seq)
            if seq == 50:
                restart = asyncio.create_task(down_then_up())
            await asyncio.sleep(max(0.0, started + (seq + 1) / 10 - time.monotonic()))
            if seq % 5 == 0:
                await fleet.connect()
            if restart is not None and restart.done() and seq >= 250:
                break
    finally:
        if restart is not None:
            await restart  # the broker is up again whatever happened
    await asyncio.sleep(2)  # the last acknowledgements
    await fleet.close()
    acked = set(fleet.acked)
    assert len(acked) > 0.5 * fleet.sent, (len(acked), fleet.sent)
    assert process.metrics()["mqtt_connects_total{broker=local}"] >= 2
    missing, counts = await wait_for_all(messages_topic, lamps.site_id, acked, timeout_s=90)
    print(  # noqa: T201
        f"\n{fleet.sent} published, {len(acked)} acknowledged by the broker, "
        f"{len(counts)} distinct in Kafka, {sum(counts.values()) - len(counts)} duplicates"
    )
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost"
    assert process.alive()


async def test_a_replica_removed_for_good_hands_over_its_share(
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
) -> None:
    """Two replicas; the StatefulSet scales to one: replica 1 stops for good, and replica 0
    rolls with the new count (the count is in the ConfigMap, whose change rolls the pods),
    drains replica 1's session and ends it. Lamps publish throughout."""
    lamps = provision(100)
    fleet = await fleet_of(lamps)
    fast = {"VEILLEUSE_CONNECTOR__DRAIN_INTERVAL_S": "2", "VEILLEUSE_CONNECTOR__MAX_ORDINAL": "4"}
    first = connector(0, VEILLEUSE_CONNECTOR__REPLICAS="2", **fast)
    second = connector(1, VEILLEUSE_CONNECTOR__REPLICAS="2", **fast)
    sent: set[tuple[str, int]] = set()
    seq = 0

    async def publish(rounds: int) -> None:
        nonlocal seq
        for _ in range(rounds):
            for lamp_id in lamps.ids:
                fleet.publish(lamp_id, "events", lamp_payload(lamp_id, seq))
                sent.add((lamp_id, seq))
            seq += 1
            await asyncio.sleep(0.05)

    await publish(10)
    assert await asyncio.to_thread(second.terminate) == 0  # scaled down: never comes back
    await publish(20)  # half of these are dealt to replica 1's offline session
    assert await asyncio.to_thread(first.terminate) == 0
    first.env["VEILLEUSE_CONNECTOR__REPLICAS"] = "1"
    first.start()
    await publish(10)
    first.wait_until_subscribed()
    await publish(20)
    await fleet.wait_acked()
    missing, _ = await wait_for_all(messages_topic, lamps.site_id, sent, timeout_s=60)
    assert not missing, f"{len(missing)} of {len(sent)} messages lost"
    deadline = time.monotonic() + 20
    while first.metrics().get("retired_sessions_drained_total{broker=local}", 0) < 1:
        assert time.monotonic() < deadline, f"replica 1 never drained: see {first.log_file}"
        await asyncio.sleep(0.5)
    assert f"retired session {second.name}-local drained" in first.log_file.read_text()
    # Its session is gone: the broker deals it nothing more.
    probe = AsyncioMqtt(
        host=fleet.broker.host,
        port=fleet.broker.port,
        client_id=f"{second.name}-local",
        username=connector.settings.mqtt.username,
        password=connector.settings.mqtt.password.get_secret_value(),
        clean_start=False,
        session_expiry_s=0,
    )
    present: list[bool] = []
    probe.on_connected = present.append
    await probe.connect()
    await probe.close()
    assert present == [False]


async def broker_uptime_s(settings: Settings) -> int:
    """``$SYS/broker/uptime`` as the connector's account reads it (refreshed every 10 s)."""
    mqtt = settings.mqtt
    client = AsyncioMqtt(
        host=mqtt.brokers[0].host,
        port=mqtt.brokers[0].port,
        client_id=f"uptime-{time.monotonic_ns()}",
        username=mqtt.username,
        password=mqtt.password.get_secret_value(),
    )
    values: list[bytes] = []
    client.client.on_message = lambda _c, _u, message: values.append(bytes(message.payload))
    await client.connect()
    try:
        client.client.subscribe("$SYS/broker/uptime", 0)
        deadline = time.monotonic() + 5
        while not values:
            assert time.monotonic() < deadline, "no $SYS/broker/uptime for the connector"
            await asyncio.sleep(0.05)
    finally:
        await client.close()
    return int(values[0].split()[0])


async def test_a_connector_restart_alone_is_written_once(
    settings: Settings,
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
    restarts_services: None,  # held so that the broker does not restart meanwhile
) -> None:
    """The broker ran throughout: the share group's sessions held every message, so the restart
    guard drops its own copy of the backlog instead of writing it a second time."""
    lamps = provision(20)
    fleet = await fleet_of(lamps)
    await asyncio.sleep(max(0, 30 - await broker_uptime_s(settings)))  # a restart just before
    process = connector()
    await asyncio.sleep(1)  # the guard's first heartbeat
    assert process.terminate() == 0
    sent = set()
    for seq in range(10):
        for lamp_id in lamps.ids:
            fleet.publish(lamp_id, "events", lamp_payload(lamp_id, seq))
            sent.add((lamp_id, seq))
    await fleet.wait_acked()
    process.start()
    process.wait_until_subscribed()
    missing, counts = await wait_for_all(messages_topic, lamps.site_id, sent, timeout_s=60)
    assert not missing, f"{len(missing)} of {len(sent)} messages lost"
    await asyncio.sleep(2)
    metrics = process.metrics()
    assert metrics.get("restart_guard_forwarded_total{broker=local}", 0) == 0, metrics
    assert sum(counts.values()) == len(sent), "a message was written twice"
    assert "the broker ran throughout" in process.log_file.read_text()


async def test_one_of_two_stack_brokers_restarts_under_load_and_the_other_keeps_flowing(
    settings: Settings,
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    messages_topic: TopicReader,
) -> None:
    """The local stack's fleet topology (one Mosquitto per entry of VEILLEUSE_MQTT__BROKERS, as
    `veilleuse simulate --lamps 100000` plays over six): one connector reads the stack's broker
    and a second one started beside it; lamps publish on both at about 400 messages/s; the second
    broker stops (SIGTERM, as a deploy) for about 6 s and starts again. While it is down, what
    the first broker's lamps publish keeps reaching Kafka, and the connector's session there is
    not touched (one connection throughout); the second is reconnected by itself; nothing either
    broker acknowledged to a lamp is lost."""
    lamps = provision(40)  # accounts shared by every broker of the stack (read at its start)
    added = MqttBroker(name="node-2", port=free_port())
    mqtt = settings.mqtt.model_copy(update={"brokers": (*settings.mqtt.brokers, added)})
    multi = settings.model_copy(update={"mqtt": mqtt})
    second = stack_brokers(StackContext(multi))[1]
    await asyncio.to_thread(manager.up, multi, ("mosquitto",))
    steady: Lamps | None = None
    moved: Lamps | None = None
    try:
        brokers = [b.model_dump(mode="json") for b in multi.mqtt.brokers]
        process = connector(VEILLEUSE_MQTT__BROKERS=json.dumps(brokers))
        deadline = time.monotonic() + 30
        while process.metrics().get(f"subscribed{{broker={added.name}}}") != 1:
            assert time.monotonic() < deadline, f"never subscribed on {added.name}"
            await asyncio.sleep(0.2)
        steady = Lamps(settings.mqtt.brokers[0], lamps.credentials[:20])
        moved = Lamps(added, lamps.credentials[20:])
        await asyncio.gather(steady.connect(), moved.connect())
        publishing = True

        async def publish() -> None:
            started, seq = time.monotonic(), 0
            while publishing:  # 40 lamps, 10 rounds a second
                steady.publish(seq)
                moved.publish(seq)
                seq += 1
                await asyncio.sleep(max(0.0, started + seq / 10 - time.monotonic()))
                if seq % 5 == 0:
                    await moved.connect()

        publisher = asyncio.create_task(publish())
        await asyncio.sleep(5)
        await asyncio.to_thread(second.stop)
        outage_started = time.monotonic()
        before = set(steady.acked)
        await asyncio.sleep(1.5)
        during = steady.acked - before  # acknowledged by the first broker, the second down
        missing, _ = await wait_for_all(messages_topic, lamps.site_id, during, timeout_s=4)
        seen_during_outage = not missing
        assert second.pid() is None, "the second broker still answered: nothing was tested"
        await asyncio.sleep(max(0.0, outage_started + 6 - time.monotonic()))
        await asyncio.to_thread(second.start)
        await asyncio.to_thread(second.wait_until_healthy, time.monotonic() + 30)
        moved_before = set(moved.acked)
        deadline = time.monotonic() + 30
        while process.metrics().get(f"mqtt_connects_total{{broker={added.name}}}", 0) < 2:
            assert time.monotonic() < deadline, f"did not reconnect to {added.name}"
            await asyncio.sleep(0.5)
        await asyncio.sleep(5)  # both brokers again
        publishing = False
        await publisher
        await asyncio.sleep(2)  # the last acknowledgements
        acked = steady.acked | moved.acked
        assert seen_during_outage, (
            f"{len(missing)} of {len(during)} messages of the first broker were not in Kafka "
            "while the second was down"
        )
        assert during, "the first broker acknowledged nothing while the second was down"
        assert moved.acked - moved_before, "no lamp of the second broker published after it"
        missing, counts = await wait_for_all(messages_topic, lamps.site_id, acked, timeout_s=90)
        print(  # noqa: T201
            f"\n{steady.sent + moved.sent} published, {len(acked)} acknowledged by the brokers, "
            f"{len(counts)} distinct in Kafka, {sum(counts.values()) - len(counts)} duplicates"
        )
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost"
        metrics = process.metrics()
        assert metrics["mqtt_connects_total{broker=local}"] == 1, metrics
        assert process.alive()
    finally:
        for fleet in (steady, moved):
            if fleet is not None:
                await fleet.close()
        await asyncio.to_thread(second.stop)
