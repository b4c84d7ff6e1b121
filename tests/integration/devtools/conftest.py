"""What the tests of the fleet's players share: a subscriber on the stack's broker that sees what
it delivered, and the check that a run's lamp accounts are gone after it."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterator

import pytest

from devtools.simulate import PlayedFleet, PlayStats
from devtools.simulator import SimConfig, Simulation
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import Mosquitto
from pipeline.mqtt_session import MqttSession
from pipeline.settings import Settings


class FleetWatch:
    """A session of the components' account, connected before the fleet plays: subscribed to
    every site of a simulated fleet, it receives each message the broker delivered."""

    def __init__(self, session: MqttSession) -> None:
        self.session = session

    def follow(self, config: SimConfig) -> None:
        for site in range(config.sites):
            self.session.subscribe(f"lamps/{config.site_id(site)}/#")

    async def assert_delivered(self, sim: Simulation | PlayedFleet, stats: PlayStats) -> None:
        """The broker delivered exactly the simulation's messages, each on its lamp's own topic,
        and the player never lagged 1 s behind the messages' times."""
        expected = collections.Counter(
            (m.topic, m.payload) for m in Simulation(sim.config).messages()
        )
        assert stats.published == sum(expected.values()) == sim.counts.published
        # Delivery to the watcher trails the player's last publish.
        deadline = time.monotonic() + 20
        while len(self.session.messages) < stats.published and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        got = collections.Counter((m.topic, m.payload) for m in self.session.messages)
        assert got == expected
        assert stats.max_lag_ms < 1_000


@pytest.fixture
def fleet_watch(settings: Settings, require: Callable[..., None]) -> Iterator[FleetWatch]:
    require("mosquitto")
    mqtt = settings.mqtt
    session = MqttSession(
        mqtt.brokers[0].host, mqtt.brokers[0].port, mqtt.username,
        mqtt.password.get_secret_value(),
    )  # fmt: skip
    assert not session.connect().is_failure
    try:
        yield FleetWatch(session)
    finally:
        session.close()


def assert_accounts_revoked(settings: Settings, config: SimConfig) -> None:
    """None of the run's lamps is still registered at the broker."""
    lamps = {lamp for _, lamp in config.lamp_ids()}
    registered = {lamp.lamp_id for lamp in Mosquitto(StackContext(settings)).credentials().lamps()}
    assert not lamps & registered
