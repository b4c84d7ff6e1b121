"""Mosquitto enforces per-lamp credentials and ACLs; shared subscriptions split the load."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from pipeline import smoke
from pipeline.lamps import Credential
from pipeline.mqtt_session import MqttSession
from pipeline.settings import Settings
from pipeline.stack.mosquitto import Mosquitto

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
