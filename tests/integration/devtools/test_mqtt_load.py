"""The socket load generator (devtools/mqtt_load.py) against the stack's Mosquitto."""

from __future__ import annotations

import time
import uuid

import pytest

from devtools.simulate import simulate_sockets
from devtools.simulator import SimConfig, Simulation
from pipeline.settings import Settings
from tests.integration.devtools.conftest import FleetWatch, assert_accounts_revoked


@pytest.mark.timeout(120)
async def test_200_lamps_every_qos1_publish_acknowledged_and_delivered(
    settings: Settings, fleet_watch: FleetWatch
) -> None:
    """200 lamps, each its own connection and account, from two processes and two source
    addresses, play 12 s of the simulated fleet: every QoS 1 publish gets its PUBACK, and a
    subscriber receives exactly the simulation's messages, each on its lamp's own topic."""
    run = f"t{uuid.uuid4().hex[:6]}"
    config = SimConfig(
        lamps=200, sites=2, seed=3, duration_s=12, incident_rate=20, junk_rate=0.01,
        duplicate_rate=0.02, reorder_rate=0.0, posture_period_s=2.0, telemetry_period_s=5.0,
        site_prefix=run, lamp_prefix=run,
    )  # fmt: skip
    fleet_watch.follow(config)
    started = time.monotonic()
    sim, stats = await simulate_sockets(settings, config, processes=2, sources=2)
    played_s = time.monotonic() - started
    assert stats.sent_qos1 == sum(1 for m in Simulation(sim.config).messages() if m.qos == 1) > 0
    assert stats.acked == stats.sent_qos1
    assert (stats.unacked, stats.lost) == (0, 0)
    await fleet_watch.assert_delivered(sim, stats)
    assert played_s < 60
    assert_accounts_revoked(settings, config)
