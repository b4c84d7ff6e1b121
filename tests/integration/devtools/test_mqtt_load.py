"""The socket load generator (devtools/mqtt_load.py) against the stack's Mosquitto."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable

import pytest

from devtools.simulate import simulate_sockets
from devtools.simulator import SimConfig, Simulation
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import Mosquitto
from pipeline.mqtt_session import MqttSession
from pipeline.settings import Settings


@pytest.mark.timeout(120)
async def test_200_lamps_every_qos1_publish_acknowledged_and_delivered(
    settings: Settings, require: Callable[..., None]
) -> None:
    """200 lamps, each its own connection and account, from two processes and two source
    addresses, play 12 s of the simulated fleet: every QoS 1 publish gets its PUBACK, and a
    subscriber receives exactly the simulation's messages, each on its lamp's own topic."""
    require("mosquitto")
    run = f"t{uuid.uuid4().hex[:6]}"
    config = SimConfig(
        lamps=200, sites=2, seed=3, duration_s=12, incident_rate=20, junk_rate=0.01,
        duplicate_rate=0.02, reorder_rate=0.0, posture_period_s=2.0, telemetry_period_s=5.0,
        site_prefix=run, lamp_prefix=run,
    )  # fmt: skip
    mqtt = settings.mqtt
    watcher = MqttSession(
        mqtt.brokers[0].host, mqtt.brokers[0].port, mqtt.username,
        mqtt.password.get_secret_value(),
    )  # fmt: skip
    assert not watcher.connect().is_failure
    try:
        for site in range(config.sites):
            watcher.subscribe(f"lamps/{config.site_id(site)}/#")
        started = time.monotonic()
        sim, stats = await simulate_sockets(settings, config, processes=2, sources=2)
        played_s = time.monotonic() - started
        expected = collections.Counter(
            (m.topic, m.payload) for m in Simulation(sim.config).messages()
        )
        assert stats.published == sum(expected.values()) == sim.counts.published
        assert (
            stats.sent_qos1 == sum(1 for m in Simulation(sim.config).messages() if m.qos == 1) > 0
        )
        assert stats.acked == stats.sent_qos1
        assert (stats.unacked, stats.lost) == (0, 0)
        deadline = time.monotonic() + 20
        while len(watcher.messages) < stats.published and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        got = collections.Counter((m.topic, m.payload) for m in watcher.messages)
        assert got == expected
        assert stats.max_lag_ms < 1_000
        assert played_s < 60
    finally:
        watcher.close()
    lamps = {lamp for _, lamp in config.lamp_ids()}
    registered = {lamp.lamp_id for lamp in Mosquitto(StackContext(settings)).credentials().lamps()}
    assert not lamps & registered
