"""The connector against the real Mosquitto and Kafka of the stack: nothing lost, ever."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.validation import Reason
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import Mosquitto, build_lamp_acl_plugin, security_config
from devtools.stack.tls import make_certificates
from pipeline.lamps import MosquittoCredentials
from pipeline.ports import free_port
from pipeline.settings import MqttBroker, Settings
from tests.integration.connectors.conftest import (
    ConnectorFactory,
    LampSet,
    TopicReader,
    lamp_payload,
    wait_for_all,
)
from tests.integration.processes import stack_command
from tests.lamp_corpus import junk_kinds

pytestmark = pytest.mark.slow


async def publish_paced(
    fleet: Any,
    lamps: LampSet,
    per_lamp: int,
    rate: float,
    on_progress: Callable[[int], Any] | None = None,
) -> set[tuple[str, int]]:
    """Round-robin over the lamps at about ``rate`` messages/s; returns what was sent."""
    sent: set[tuple[str, int]] = set()
    started = time.monotonic()
    for seq in range(per_lamp):
        for lamp_id in lamps.ids:
            fleet.publish(lamp_id, "events", lamp_payload(lamp_id, seq))
            sent.add((lamp_id, seq))
        ahead = len(sent) / rate - (time.monotonic() - started)
        await asyncio.sleep(max(0.0, ahead))
        if on_progress is not None:
            await on_progress(len(sent))
    await fleet.wait_acked()
    return sent


async def test_no_loss_across_two_sigkills(
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
) -> None:
    """100,000 QoS 1 messages from 1,000 lamps; the connector is SIGKILLed twice mid-stream."""
    lamps = provision(1000)
    fleet = await fleet_of(lamps)
    process = connector()
    total = 1000 * 100
    kills = [total * 3 // 10, total * 6 // 10]

    async def chaos(sent: int) -> None:
        if kills and sent >= kills[0]:
            kills.pop(0)
            process.kill()
            await asyncio.sleep(1.0)  # the broker holds the backlog meanwhile
            process.start()

    sent = await publish_paced(fleet, lamps, per_lamp=100, rate=8000, on_progress=chaos)
    assert len(sent) == total and process.restarts == 2
    missing, counts = await wait_for_all(messages_topic, lamps.site_id, sent)
    duplicates = sum(counts.values()) - len(counts)
    print(f"\n{total} sent, {len(counts)} distinct in Kafka, {duplicates} duplicates")  # noqa: T201
    assert not missing, f"{len(missing)} messages lost, e.g. {sorted(missing)[:5]}"
    assert process.terminate() == 0  # and a SIGTERM ends it cleanly


async def test_kafka_outage_loses_nothing_and_memory_stays_bounded(
    restarts_services: None,
    settings: Settings,
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
) -> None:
    """Kafka stopped for 30 s mid-stream: the connector stops acknowledging, then resumes alone."""
    lamps = provision(100)
    fleet = await fleet_of(lamps)
    max_in_flight = 2000
    process = connector(VEILLEUSE_CONNECTOR__MAX_IN_FLIGHT=str(max_in_flight))
    samples: list[tuple[float, float]] = []  # (rss MiB, in flight)
    outage: dict[str, float] = {}

    async def chaos(sent: int) -> None:
        metrics = process.metrics()
        samples.append((process.rss_mib(), metrics["in_flight"]))
        if "down" not in outage and sent >= 5000:
            await asyncio.to_thread(stack_command, "down", "kafka")
            outage["down"] = time.monotonic()
        elif "down" in outage and "up" not in outage and time.monotonic() - outage["down"] >= 30:
            await asyncio.to_thread(stack_command, "up", "kafka")
            outage["up"] = time.monotonic()

    try:
        sent = await publish_paced(fleet, lamps, per_lamp=250, rate=500, on_progress=chaos)
    finally:
        await asyncio.to_thread(stack_command, "up", "kafka")
    assert outage["up"] - outage["down"] >= 30
    missing, _ = await wait_for_all(messages_topic, lamps.site_id, sent, timeout_s=180)
    assert not missing, f"{len(missing)} messages lost"
    assert process.alive()
    rss = [r for r, _ in samples]
    assert max(in_flight for _, in_flight in samples) <= max_in_flight
    assert max(rss) - rss[0] < 150, f"RSS grew from {rss[0]:.0f} to {max(rss):.0f} MiB"
    # The outage was felt: acknowledgements were held back until the broker stopped sending at
    # the Receive Maximum the connector announced. Mosquitto 2.0.11 can overshoot it right after
    # a burst of PUBACKs; the connector's own cap (reading paused) is the hard bound.
    receive_maximum = settings.connector.receive_maximum
    assert receive_maximum < max_in_flight
    assert receive_maximum <= max(in_flight for _, in_flight in samples) <= max_in_flight
    assert process.metrics()["in_flight"] == 0


async def test_two_replicas_split_the_work(
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
) -> None:
    lamps = provision(200)
    fleet = await fleet_of(lamps)
    replicas = [connector(0), connector(1)]

    sent = await publish_paced(fleet, lamps, per_lamp=50, rate=5000)
    missing, _ = await wait_for_all(messages_topic, lamps.site_id, sent)
    assert not missing
    received = [r.metrics()["received_total{broker=local}"] for r in replicas]
    assert all(count > 0 for count in received), received
    assert sum(received) >= len(sent)


async def test_junk_goes_to_the_dlq_with_its_reason_and_valid_messages_all_arrive(
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
    dlq_topic: TopicReader,
) -> None:
    lamps = provision(50)
    fleet = await fleet_of(lamps)
    process = connector()

    def junk(lamp_id: str, seq: int, kind: int) -> tuple[Reason, bytes]:
        # The corpus's kinds: tests/unit/schemas checks a worker refuses them for the same reason.
        kinds = junk_kinds(lamp_id, seq, lamp_payload(lamp_id, seq))
        return kinds[kind % len(kinds)]

    expected_junk: Counter[str] = Counter()
    valid: set[tuple[str, int]] = set()
    for seq in range(200 + 200):
        for lamp_id in lamps.ids:
            if seq % 2:  # junk and valid messages interleaved
                reason, payload = junk(lamp_id, seq, seq // 2 + len(expected_junk))
                expected_junk[reason.value] += 1
                fleet.publish(lamp_id, "events", payload)
            else:
                fleet.publish(lamp_id, "events", lamp_payload(lamp_id, seq))
                valid.add((lamp_id, seq))
        if seq % 20 == 0:
            await asyncio.sleep(0.05)
    await fleet.wait_acked()
    assert sum(expected_junk.values()) == 10_000

    missing, _ = await wait_for_all(messages_topic, lamps.site_id, valid)
    assert not missing
    prefix = lamps.site_id.encode()
    deadline = time.monotonic() + 60
    while True:
        rejected = await dlq_topic.read(lambda r: r.key is not None and r.key.startswith(prefix))
        reasons = Counter(dict(r.headers)["reject.reason"].decode() for r in rejected)
        if sum(reasons.values()) >= 10_000 or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert reasons == expected_junk
    assert all(dict(r.headers)["reject.detail"] for r in rejected)
    assert process.alive()
    metrics = process.metrics()
    rejected_total = sum(v for k, v in metrics.items() if k.startswith("rejected_total"))
    assert (
        metrics["received_total{broker=local}"]
        == metrics["produced_total{broker=local}"] + rejected_total
    )


async def test_retained_replays_are_flagged(
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
) -> None:
    """With a plain subscription (shared ones get no retained replay, MQTT 5 §4.8.2)."""
    lamps = provision(2)
    fleet = await fleet_of(lamps)
    old, live = lamps.ids
    status = {"type": "status", "online": True}
    fleet.lamps[old].mqtt.client.publish(
        f"lamps/{lamps.site_id}/{old}/status", lamp_payload(old, 0, **status), qos=1, retain=True
    )
    await asyncio.sleep(0.5)
    connector(VEILLEUSE_MQTT__SHARE_GROUP="")
    await asyncio.sleep(1.0)
    fleet.publish(live, "status", lamp_payload(live, 1, **status))
    await fleet.wait_acked()
    missing, _ = await wait_for_all(messages_topic, lamps.site_id, {(old, 0), (live, 1)})
    assert not missing
    records = await messages_topic.read(lambda r: r.key in (old.encode(), live.encode()))
    flags = {r.key.decode(): dict(r.headers)["mqtt.retain"] for r in records}
    assert flags == {old: b"true", live: b"false"}
    # clear the retained message so that no later subscriber replays it
    fleet.lamps[old].mqtt.client.publish(
        f"lamps/{lamps.site_id}/{old}/status", b"", qos=1, retain=True
    )


async def test_sigterm_mid_stream_loses_nothing(
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
) -> None:
    lamps = provision(200)
    fleet = await fleet_of(lamps)
    process = connector()
    codes: list[int] = []

    async def stop_and_restart(sent: int) -> None:
        if not codes and sent >= 8000:
            codes.append(await asyncio.to_thread(process.terminate))
            process.start()

    sent = await publish_paced(fleet, lamps, per_lamp=100, rate=4000, on_progress=stop_and_restart)
    assert codes == [0]
    missing, _ = await wait_for_all(messages_topic, lamps.site_id, sent)
    assert not missing
    assert "stopping:" in process.log_file.read_text()
    # Everything written was acknowledged, including what the broker pushed right behind the
    # CONNACK of the resumed session: after another clean stop, a restart gets nothing again.
    assert process.terminate() == 0
    process.start()
    process.wait_until_subscribed()
    await asyncio.sleep(2)
    assert process.metrics()["received_total{broker=local}"] == 0


def make_tls_broker(tmp_path: Path, settings: Settings) -> tuple[MqttBroker, Callable[[], Any]]:
    """A second Mosquitto with a TLS listener and the stack's accounts, as during a migration."""
    tls = make_certificates(tmp_path)
    ctx = StackContext(settings)
    credentials = Mosquitto(ctx).credentials()
    copy = MosquittoCredentials(tmp_path, ())  # the same files, under tmp_path
    for source, target in (
        (credentials.password_file, copy.password_file),
        (credentials.acl_file, copy.acl_file),
        (credentials.lamp_sites_file, copy.lamp_sites_file),
    ):
        shutil.copy(source, target)
    port = free_port()
    (tmp_path / "mosquitto.conf").write_text(
        "\n".join(
            [
                "user root",
                "per_listener_settings false",
                f"listener {port} 127.0.0.1",
                f"cafile {tls.ca_cert}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                *security_config(copy, build_lamp_acl_plugin(ctx)),
                "persistence true",
                f"persistence_location {tmp_path}/",
                "max_queued_messages 1000000",
                "",
            ]
        )
    )

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / "mosquitto.log").open("ab") as log_file:
            return subprocess.Popen(
                ["mosquitto", "-c", str(tmp_path / "mosquitto.conf")],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    broker = MqttBroker(
        name="new", host="127.0.0.1", port=port, tls=True, ca_file=tmp_path / "ca.crt"
    )
    return broker, start


async def test_two_source_brokers_one_over_tls_and_a_broker_restart(
    settings: Settings,
    tmp_path: Path,
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
) -> None:
    old_site, new_site = provision(50), provision(50)
    new, start_new = make_tls_broker(tmp_path, settings)
    broker_proc = start_new()
    try:
        await asyncio.sleep(0.5)
        brokers = [settings.mqtt.brokers[0].model_dump(mode="json"), new.model_dump(mode="json")]
        process = connector(VEILLEUSE_MQTT__BROKERS=json.dumps(brokers))
        deadline = time.monotonic() + 20
        while process.metrics().get("subscribed{broker=new}") != 1:
            assert time.monotonic() < deadline, "never subscribed on the TLS broker"
            await asyncio.sleep(0.2)
        old_fleet = await fleet_of(old_site)
        new_fleet = await fleet_of(new_site, new)

        sent = await publish_paced(old_fleet, old_site, 50, 2000)
        sent_new = await publish_paced(new_fleet, new_site, 50, 2000)

        # The new broker restarts (a deployment): the connector reconnects by itself.
        await new_fleet.close()
        broker_proc.terminate()
        broker_proc.wait(10)
        broker_proc = start_new()
        deadline = time.monotonic() + 60
        while process.metrics().get("mqtt_connects_total{broker=new}", 0) < 2:
            assert time.monotonic() < deadline, "did not reconnect to the restarted broker"
            await asyncio.sleep(0.5)
        again = await fleet_of(new_site, new)
        for lamp_id in new_site.ids:
            again.publish(lamp_id, "events", lamp_payload(lamp_id, 1000))
            sent_new.add((lamp_id, 1000))
        await again.wait_acked()

        for site, expected in ((old_site, sent), (new_site, sent_new)):
            missing, _ = await wait_for_all(messages_topic, site.site_id, expected)
            assert not missing, f"{len(missing)} lost from {site.site_id}"
        records = await messages_topic.read(
            lambda r: r.key is not None and r.key.startswith(new_site.site_id.encode())
        )
        assert {dict(r.headers)["source.broker"] for r in records} == {b"new"}
    finally:
        broker_proc.terminate()
        broker_proc.wait(10)


async def test_a_huge_payload_cannot_block_the_connector(
    connector: ConnectorFactory,
    provision: Callable[[int], LampSet],
    fleet_of: Callable[..., Any],
    messages_topic: TopicReader,
    dlq_topic: TopicReader,
) -> None:
    """A 3 MiB payload (over Kafka's 1 MiB request limit) goes to the DLQ, head only, flagged."""
    lamps = provision(1)
    fleet = await fleet_of(lamps)
    connector()
    (lamp_id,) = lamps.ids
    fleet.publish(lamp_id, "events", b"x" * (3 * 1024 * 1024))
    fleet.publish(lamp_id, "events", lamp_payload(lamp_id, 1))
    await fleet.wait_acked()
    missing, _ = await wait_for_all(messages_topic, lamps.site_id, {(lamp_id, 1)}, timeout_s=30)
    assert not missing
    (rejected,) = await dlq_topic.read(lambda r: r.key == lamp_id.encode())
    headers = dict(rejected.headers)
    assert headers["reject.reason"] == b"oversized"
    assert headers["payload.truncated"] == b"true"
    assert headers["payload.size"] == str(3 * 1024 * 1024).encode()
    assert rejected.value == b"x" * len(rejected.value)


def test_a_retired_replicas_session_can_be_discarded(connector: ConnectorFactory) -> None:
    """Its persistent session would queue every lamp message until it expires."""
    process = connector()
    assert process.terminate() == 0
    discard = subprocess.run(
        [sys.executable, "-m", "cli", "connector", "--discard-session"],
        env={**os.environ, **process.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert discard.returncode == 0, discard.stderr
    assert f"discarded session {process.name}-local" in discard.stdout
    process.start()
    process.wait_until_subscribed()
    log = process.log_file.read_text()
    assert log.count("session present: True") == 0  # the first start had none either
    assert log.count("session present: False") == 2
