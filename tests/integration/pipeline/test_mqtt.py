"""Mosquitto enforces per-lamp credentials and ACLs; shared subscriptions split the load."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connectors.mqtt_asyncio import AsyncioMqtt
from devtools import smoke
from devtools.stack.mosquitto import Mosquitto
from pipeline.lamps import Credential
from pipeline.mqtt_session import MqttSession
from pipeline.settings import Settings

NOT_AUTHORIZED = 135  # MQTT 5 reason code


@pytest.fixture
def lamp(
    settings: Settings, require: Callable[..., None]
) -> Iterator[tuple[Mosquitto, Credential]]:
    require("mosquitto")
    broker, credential = smoke.provision_temporary_lamp(settings)
    yield broker, credential
    if credential.lamp_id in {lamp.lamp_id for lamp in broker.credentials().lamps()}:
        broker.credentials().revoke([credential.lamp_id])
        broker.reload()


def test_shared_subscription_round_trip_with_a_lamps_credentials(
    settings: Settings, require: Callable[..., None]
) -> None:
    require("mosquitto")
    assert "$share" in smoke.mqtt_round_trip(settings)


def test_a_lamp_may_publish_only_under_its_own_site_and_id(
    settings: Settings, lamp: tuple[Mosquitto, Credential]
) -> None:
    _, cred = lamp
    mqtt = settings.mqtt
    watcher = smoke.connect_when_reloaded(settings, mqtt.username, mqtt.password.get_secret_value())
    publisher = smoke.connect_when_reloaded(settings, cred.lamp_id, cred.password)
    try:
        watcher.subscribe("lamps/#")
        own = f"lamps/{cred.site_id}/{cred.lamp_id}/events"
        forbidden = [
            f"lamps/{cred.site_id}/L-someone-else/events",  # another lamp of the same site
            f"lamps/other-site/{cred.lamp_id}/events",  # its own id under another site
            "alerts/fake",
        ]
        for topic in forbidden:
            reason = publisher.publish(topic, smoke.lamp_message(cred.lamp_id, 1))
            assert reason.value == NOT_AUTHORIZED, (topic, reason)
        marker = smoke.lamp_message(cred.lamp_id, 2)
        assert not publisher.publish(own, marker).is_failure
        assert watcher.wait_for(lambda: any(m.payload == marker for m in watcher.messages))
        assert [m.topic for m in watcher.messages if m.topic in forbidden] == []
    finally:
        publisher.close()
        watcher.close()


def test_wrong_password_and_revoked_lamp_are_refused(
    settings: Settings, lamp: tuple[Mosquitto, Credential]
) -> None:
    broker, cred = lamp
    host, port = settings.mqtt.brokers[0].host, settings.mqtt.brokers[0].port
    session = MqttSession(host, port, cred.lamp_id, cred.password + "x")
    try:
        assert session.connect().is_failure
    finally:
        session.close()
    smoke.connect_when_reloaded(settings, cred.lamp_id, cred.password).close()
    broker.credentials().revoke([cred.lamp_id])
    broker.reload()
    refused = False
    for _ in range(50):  # the broker re-reads its files asynchronously after SIGHUP
        session = MqttSession(host, port, cred.lamp_id, cred.password)
        try:
            if session.connect().is_failure:
                refused = True
                break
        finally:
            session.close()
    assert refused


def test_two_members_of_a_share_group_split_the_messages(
    settings: Settings, lamp: tuple[Mosquitto, Credential]
) -> None:
    _, cred = lamp
    mqtt = settings.mqtt
    group = f"split-{uuid.uuid4().hex[:6]}"
    topic = f"lamps/{cred.site_id}/{cred.lamp_id}/events"
    members = [
        smoke.connect_when_reloaded(settings, mqtt.username, mqtt.password.get_secret_value())
        for _ in range(2)
    ]
    publisher = smoke.connect_when_reloaded(settings, cred.lamp_id, cred.password)
    try:
        for member in members:
            member.subscribe(f"$share/{group}/{topic}")
        sent = [smoke.lamp_message(cred.lamp_id, seq) for seq in range(40)]
        for payload in sent:
            publisher.publish(topic, payload)

        def received() -> list[bytes]:
            return [m.payload for member in members for m in member.messages]

        assert members[0].wait_for(lambda: len(received()) >= len(sent))
        assert sorted(received()) == sorted(sent)  # each message to exactly one member
        assert all(member.messages for member in members)  # and both got work
    finally:
        publisher.close()
        for member in members:
            member.close()


def _restart_broker() -> None:
    for command in ("down", "up"):
        done = subprocess.run(
            [sys.executable, "-m", "cli", "stack", command, "mosquitto"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


async def _connected(client: AsyncioMqtt) -> None:
    """Connect, retrying briefly: the broker re-reads its password file asynchronously."""
    deadline = time.monotonic() + 10
    while True:
        try:
            await client.connect()
            return
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_lamp_reads_nothing_of_another_and_publishes_only_its_own_after_a_restart(
    settings: Settings,
    require: Callable[..., None],
    restarts_services: None,
) -> None:
    """Lamp B subscribes (persistent session) to everything it can think of; lamp A publishes
    before and after a broker restart: B never gets one of A's messages, queued or live, and
    the broker refuses A's publishes outside its own topics after the restart too."""
    require("mosquitto")
    made = [smoke.provision_temporary_lamp(settings) for _ in range(2)]
    broker, (a, b) = made[0][0], [credential for _, credential in made]
    host, port = settings.mqtt.brokers[0].host, settings.mqtt.brokers[0].port
    own = f"lamps/{a.site_id}/{a.lamp_id}/events"
    spy_filters = ["lamps/#", own, f"$share/spy/{own}", "#"]

    def lamp(credential: Credential, **options: Any) -> AsyncioMqtt:
        return AsyncioMqtt(
            host=host,
            port=port,
            client_id=f"lamp-{credential.lamp_id}",
            username=credential.lamp_id,
            password=credential.password,
            **options,
        )

    def spy() -> tuple[AsyncioMqtt, list[str]]:
        client = lamp(b, clean_start=False, session_expiry_s=600)
        seen: list[str] = []
        client.client.on_message = lambda _c, _u, message: seen.append(message.topic)
        return client, seen

    async def publish(client: AsyncioMqtt, topic: str, seq: int) -> int:
        acks: list[int] = []
        client.client.on_publish = lambda _c, _u, _m, reason, _p: acks.append(reason.value)
        client.client.publish(topic, smoke.lamp_message(a.lamp_id, seq), qos=1)
        deadline = time.monotonic() + 5
        while not acks:
            assert time.monotonic() < deadline, f"no PUBACK for {topic}"
            await asyncio.sleep(0.05)
        return acks[0]

    try:
        watcher, seen = spy()
        await _connected(watcher)
        watcher.client.subscribe([(f, 1) for f in spy_filters])
        publisher = lamp(a)
        await _connected(publisher)
        await asyncio.sleep(0.5)
        assert await publish(publisher, own, 1) == 0
        await asyncio.sleep(1)
        assert seen == [], "a lamp read another lamp's message"
        await watcher.close()  # its session, with those subscriptions, stays on the broker
        await publisher.close()

        await asyncio.to_thread(_restart_broker)

        publisher = lamp(a)
        await _connected(publisher)
        assert await publish(publisher, own, 2) == 0  # queued for B's session, if anything
        for topic in (
            f"lamps/{b.site_id}/{b.lamp_id}/events",  # another lamp
            f"lamps/other-site/{a.lamp_id}/events",  # its own id under another site
        ):
            assert await publish(publisher, topic, 3) == NOT_AUTHORIZED, topic
        watcher, seen = spy()
        present: list[bool] = []
        watcher.on_connected = present.append
        await _connected(watcher)
        assert present == [True]  # the restored session, subscriptions and all
        assert await publish(publisher, own, 4) == 0  # and live
        await asyncio.sleep(1.5)
        assert seen == [], f"a lamp read another lamp's messages after a restart: {seen}"
        await watcher.close(session_expiry_s=0)
        await publisher.close()
    finally:
        broker.credentials().revoke([a.lamp_id, b.lamp_id])
        broker.reload()
