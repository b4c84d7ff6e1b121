"""``veilleuse simulate``'s player over the real broker: each lamp with its own account."""

from __future__ import annotations

import uuid

import pytest

from devtools.simulate import simulate
from devtools.simulator import SimConfig
from pipeline.settings import Settings
from tests.integration.devtools.conftest import FleetWatch, assert_accounts_revoked


@pytest.mark.timeout(120)
async def test_every_message_reaches_the_broker_from_its_own_lamp(
    settings: Settings, fleet_watch: FleetWatch
) -> None:
    """40 lamps on two sites for 20 s, incidents and junk included: the broker delivers exactly
    the simulation's messages, each on its lamp's own topic; the accounts are revoked after."""
    run = f"t{uuid.uuid4().hex[:6]}"
    config = SimConfig(
        lamps=40, sites=2, seed=5, duration_s=20, incident_rate=30, junk_rate=0.02,
        duplicate_rate=0.05, reorder_rate=0.05, reorder_max_s=5, site_prefix=run,
        lamp_prefix=run,
    )  # fmt: skip
    fleet_watch.follow(config)
    sim, stats = await simulate(settings, config)
    await fleet_watch.assert_delivered(sim, stats)
    assert_accounts_revoked(settings, config)
