"""``veilleuse simulate``'s player over the real broker: each lamp with its own account."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable

import pytest

from devtools.simulate import simulate
from devtools.simulator import SimConfig, Simulation
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import Mosquitto
from pipeline.mqtt_session import MqttSession
from pipeline.settings import Settings


@pytest.mark.timeout(120)
async def test_every_message_reaches_the_broker_from_its_own_lamp(
    settings: Settings, require: Callable[..., None]
) -> None:
    """40 lamps on two sites for 20 s, incidents and junk included: the broker delivers exactly
    the simulation's messages, each on its lamp's own topic; the accounts are revoked after."""
    require("mosquitto")
    run = f"t{uuid.uuid4().hex[:6]}"
    config = SimConfig(
        lamps=40, sites=2, seed=5, duration_s=20, incident_rate=30, junk_rate=0.02,
        duplicate_rate=0.05, reorder_rate=0.05, reorder_max_s=5, site_prefix=run,
        lamp_prefix=run,
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
        sim, stats = await simulate(settings, config)
        expected = collections.Counter(
            (m.topic, m.payload) for m in Simulation(sim.config).messages()
        )
        assert stats.published == sum(expected.values()) == sim.counts.published
        deadline = time.monotonic() + 20
        while len(watcher.messages) < stats.published and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        got = collections.Counter((m.topic, m.payload) for m in watcher.messages)
        assert got == expected
        assert stats.max_lag_ms < 1_000
    finally:
        watcher.close()
    lamps = {lamp for _, lamp in config.lamp_ids()}
    registered = {lamp.lamp_id for lamp in Mosquitto(StackContext(settings)).credentials().lamps()}
    assert not lamps & registered
