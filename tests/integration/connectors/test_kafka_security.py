"""The connector writes to Kafka over TLS with a username and password (SASL_SSL, PLAIN)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from devtools.stack.context import StackContext
from devtools.stack.kafka import SASL_USER, Kafka
from pipeline.settings import Settings
from tests.integration.connectors.conftest import (
    ConnectorFactory,
    LampSet,
    TopicReader,
    lamp_payload,
    wait_for_all,
)


def secure_env(settings: Settings, password: str) -> dict[str, str]:
    kafka = Kafka(StackContext(settings))
    return {
        "VEILLEUSE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{settings.stack.kafka_secure_port}",
        "VEILLEUSE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "VEILLEUSE_KAFKA__SASL_MECHANISM": "PLAIN",
        "VEILLEUSE_KAFKA__SASL_USERNAME": SASL_USER,
        "VEILLEUSE_KAFKA__SASL_PASSWORD": password,
        "VEILLEUSE_KAFKA__SSL_CAFILE": str(kafka.tls_dir / "ca.crt"),
    }


async def test_messages_reach_kafka_over_sasl_ssl(
    settings: Settings,
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
) -> None:
    lamps = provision(10)
    fleet = await fleet_of(lamps)
    password = Kafka(StackContext(settings)).sasl_password()
    connector(**secure_env(settings, password))
    sent = set()
    for lamp_id in lamps.ids:
        for seq in range(20):
            fleet.publish(lamp_id, "events", lamp_payload(lamp_id, seq))
            sent.add((lamp_id, seq))
    await fleet.wait_acked()
    missing, _ = await wait_for_all(messages_topic, lamps.site_id, sent, timeout_s=60)
    assert not missing


def test_a_wrong_kafka_password_is_reported_and_nothing_is_taken(
    settings: Settings, connector: ConnectorFactory
) -> None:
    """It retries with backoff and never subscribes to MQTT: it takes nothing it cannot write."""
    process = connector.start_only(**secure_env(settings, "not-the-password"))
    deadline = time.monotonic() + 30
    while "Kafka not reachable" not in process.log_file.read_text():
        assert time.monotonic() < deadline, process.log_file.read_text()[-2000:]
        time.sleep(0.5)
    assert "Authentication failed" in process.log_file.read_text()
    assert process.alive()
    assert process.wait_for_metrics().get("subscribed{broker=local}", 0) == 0
    assert process.terminate(timeout_s=15) == 0  # and it still obeys SIGTERM
