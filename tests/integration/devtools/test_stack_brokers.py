"""A stack of several Mosquitto brokers (one per entry of VEILLEUSE_MQTT__BROKERS): how the
local stack holds more lamps than one process's open-files limit allows (docs/simulator.md)."""

from __future__ import annotations

import asyncio
import collections
import socket
import time
import uuid
from collections.abc import Callable

import pytest

from devtools.simulate import simulate_sockets
from devtools.simulator import SimConfig, Simulation
from devtools.stack import manager
from devtools.stack.context import StackContext
from devtools.stack.manager import State
from devtools.stack.mosquitto import stack_brokers
from pipeline.mqtt_session import MqttSession
from pipeline.ports import free_port
from pipeline.settings import MqttBroker, Settings
from tests.integration.devtools.conftest import assert_accounts_revoked


def _with_brokers(settings: Settings, brokers: tuple[MqttBroker, ...]) -> Settings:
    mqtt = settings.mqtt.model_copy(update={"brokers": brokers})
    return settings.model_copy(update={"mqtt": mqtt})


def _refused(broker: MqttBroker) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((broker.host, broker.port)) != 0


@pytest.mark.timeout(120)
async def test_three_brokers_share_the_accounts_and_split_the_fleet(
    settings: Settings, require: Callable[..., None]
) -> None:
    """`stack up mosquitto` with three brokers in the settings starts the two missing ones beside
    the running first; a lamp provisioned once may connect to any of them; the socket generator
    sends lamp i to broker i % 3, each broker delivering exactly its own lamps' messages; the
    added brokers stop with their folders' pid files and answer no more."""
    require("mosquitto")
    added = tuple(MqttBroker(name=f"node-{k}", port=free_port()) for k in (2, 3))
    multi = _with_brokers(settings, (settings.mqtt.brokers[0], *added))
    brokers = stack_brokers(StackContext(multi))
    watchers: list[MqttSession] = []
    try:
        reports = manager.up(multi, ("mosquitto",))
        assert [(r.service, r.state) for r in reports] == [
            ("mosquitto", State.UP),
            ("mosquitto-2", State.STARTED),
            ("mosquitto-3", State.STARTED),
        ]
        assert len({b.pid() for b in brokers}) == 3

        run = f"t{uuid.uuid4().hex[:6]}"
        config = SimConfig(
            lamps=30, sites=1, seed=5, duration_s=8, incident_rate=20, junk_rate=0.0,
            duplicate_rate=0.0, reorder_rate=0.0, posture_period_s=2.0, telemetry_period_s=4.0,
            site_prefix=run, lamp_prefix=run,
        )  # fmt: skip
        for broker in multi.mqtt.brokers:
            watcher = MqttSession(
                broker.host, broker.port, multi.mqtt.username,
                multi.mqtt.password.get_secret_value(),
            )  # fmt: skip
            assert not watcher.connect().is_failure
            watcher.subscribe(f"lamps/{config.site_id(0)}/#")
            watchers.append(watcher)

        sim, stats = await simulate_sockets(multi, config, processes=1, sources=1)
        assert (stats.acked, stats.unacked, stats.lost) == (stats.sent_qos1, 0, 0)

        lamp_ids = [lamp for _, lamp in config.lamp_ids()]
        expected: list[collections.Counter[tuple[str, bytes]]] = [
            collections.Counter() for _ in brokers
        ]
        for m in Simulation(sim.config).messages():
            expected[lamp_ids.index(m.lamp_id) % 3][(m.topic, m.payload)] += 1
        assert all(expected)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
            len(w.messages) < sum(e.values()) for w, e in zip(watchers, expected, strict=True)
        ):
            await asyncio.sleep(0.2)
        for watcher, wanted in zip(watchers, expected, strict=True):
            assert collections.Counter((m.topic, m.payload) for m in watcher.messages) == wanted
        assert_accounts_revoked(multi, config)
    finally:
        for watcher in watchers:
            watcher.close()
        for service in brokers[1:]:  # the first is the shared stack's: left running
            service.stop()
    assert all(service.pid() is None for service in brokers[1:])
    assert all(_refused(broker) for broker in added)
    assert brokers[0].pid() is not None
