"""``veilleuse simulate``: a simulated fleet (``devtools/simulator``) published over real MQTT.

Every lamp connects with its own provisioned credentials (username = lamp_id) and publishes
only on its own topics, as in the field. Up to :data:`MAX_CONNECTIONS` lamps, one asyncio loop
drives paho connections (``devtools/fleet.py``); beyond (or with ``sockets=True``), the socket
load generator (``devtools/mqtt_load.py``) plays the same simulation from several processes,
each generating its shard. Messages go out at their time (``start_ms + at_ms``), and the
player measures how far behind it fell (``lag``): a player that lags makes the lamps' clocks
look slow, so a lag of seconds voids the ground truth's deadlines, and is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from devtools.simulator import Counts, GroundTruth, SimConfig, Simulation
from pipeline.errors import VeilleuseError
from pipeline.lamps import Credential
from pipeline.settings import Settings

if TYPE_CHECKING:
    from devtools.fleet import Fleet
    from devtools.mqtt_load import LoadCounters

log = logging.getLogger(__name__)

# One TCP connection and one paho client per lamp: a few thousand fit one process; beyond,
# the socket load generator takes over (devtools/mqtt_load.py).
MAX_CONNECTIONS = 5_000
# Descriptors the broker keeps for itself (listeners, files, the pipeline's own clients).
BROKER_RESERVED_FDS = 200


class SimulationError(VeilleuseError):
    pass


@dataclass
class PlayStats:
    published: int = 0
    junk: int = 0
    max_lag_ms: float = 0.0
    lag_over_100ms: int = 0
    started_at: float = 0.0
    played_at: float = 0.0  # the last message handed to its connection
    finished_at: float = 0.0  # the broker acknowledged every QoS 1 message
    by_kind: dict[str, int] = field(default_factory=dict)
    # The socket generator's own accounting (the paho path waits for every PUBACK instead).
    sent_qos1: int = 0
    acked: int = 0
    unacked: int = 0
    lost: int = 0

    @property
    def rate(self) -> float:
        elapsed = self.finished_at - self.started_at
        return self.published / elapsed if elapsed > 0 else 0.0


@contextlib.asynccontextmanager
async def lamp_fleet(
    settings: Settings, config: SimConfig, keep: bool = False
) -> AsyncIterator[tuple[Fleet, list[Credential]]]:
    """Provision the simulation's lamps on the local broker and connect each with its own
    credentials; revoke them afterwards unless ``keep``."""
    from devtools.fleet import connect_fleet
    from devtools.stack.context import StackContext
    from devtools.stack.mosquitto import Mosquitto

    if config.lamps > MAX_CONNECTIONS:
        raise SimulationError(
            f"{config.lamps} lamps: one MQTT connection per lamp is limited to "
            f"{MAX_CONNECTIONS} here (see docs/simulator.md)"
        )
    broker = Mosquitto(StackContext(settings))
    creds = broker.credentials().provision(config.lamp_ids())
    broker.reload()
    fleet: Fleet | None = None
    try:
        try:
            fleet = await connect_fleet(settings.mqtt.brokers[0], creds, timeout_s=30)
        except ConnectionError as exc:
            raise SimulationError(f"the lamps could not connect to the broker: {exc}") from exc
        yield fleet, creds
    finally:
        if fleet is not None:
            await fleet.close()
        if not keep:
            broker.credentials().revoke([c.lamp_id for c in creds])
            broker.reload()


async def play(
    fleet: Fleet,
    sim: Simulation,
    on_progress: Callable[[PlayStats, int], None] | None = None,
    progress_every_s: float = 1.0,
) -> PlayStats:
    """Publish every message of ``sim`` at its time; wait for the broker's acknowledgements."""
    stats = PlayStats(started_at=time.time())
    start_s = sim.config.start_ms / 1000
    next_progress = stats.started_at + progress_every_s
    for m in sim.messages():
        due = start_s + m.at_ms / 1000
        now = time.time()
        if due - now > 0.002:
            await asyncio.sleep(due - now)
            now = time.time()
        lag_ms = (now - due) * 1000
        stats.max_lag_ms = max(stats.max_lag_ms, lag_ms)
        stats.lag_over_100ms += lag_ms > 100
        channel = m.topic.rsplit("/", 1)[1]
        fleet.publish(m.lamp_id, channel, m.payload, m.qos, m.retain)
        stats.published += 1
        stats.junk += not m.valid
        if on_progress is not None and now >= next_progress:
            on_progress(stats, m.at_ms)
            next_progress = now + progress_every_s
        if stats.published % 256 == 0:
            await asyncio.sleep(0)  # let the sockets drain and the acknowledgements in
    stats.played_at = time.time()
    await fleet.wait_acked(60)
    stats.finished_at = time.time()
    return stats


async def simulate(
    settings: Settings,
    config: SimConfig,
    keep: bool = False,
    on_progress: Callable[[PlayStats, int], None] | None = None,
) -> tuple[Simulation, PlayStats]:
    """Provision and connect the lamps, then play the simulation starting now."""
    async with lamp_fleet(settings, config, keep) as (fleet, _):
        sim = Simulation(replace(config, start_ms=int(time.time() * 1000) + 500))
        stats = await play(fleet, sim, on_progress)
    log.info(
        "simulation played",
        extra={"published": stats.published, "max_lag_ms": round(stats.max_lag_ms)},
    )
    return sim, stats


@dataclass
class PlayedFleet:
    """What a sharded run generated: its shards' counts and ground truth, merged."""

    config: SimConfig
    counts: Counts
    truth: GroundTruth


async def simulate_sockets(
    settings: Settings,
    config: SimConfig,
    *,
    keep: bool = False,
    processes: int = 0,
    sources: int = 4,
    on_progress: Callable[[PlayStats], None] | None = None,
) -> tuple[PlayedFleet, PlayStats]:
    """Provision the lamps, connect each from the socket load generator, play the simulation
    starting once all are connected; revoke the accounts afterwards unless ``keep``."""
    from devtools.mqtt_load import (
        LampSpec,
        LoadFleet,
        default_sources,
        nofile_limit,
        processes_for,
        start_margin_s,
    )
    from devtools.stack.context import StackContext
    from devtools.stack.mosquitto import stack_brokers

    brokers = stack_brokers(StackContext(settings))
    broker = brokers[0]
    share = -(-config.lamps // len(brokers))  # lamp i goes to broker i % n, as a balancer would
    for each in brokers:
        pid = each.pid()
        if pid is None:
            continue  # not the stack's own: its limits are not ours to read
        limit = nofile_limit(pid)
        if share > limit - BROKER_RESERVED_FDS:  # one descriptor per connection
            raise SimulationError(
                f"{config.lamps:,} lamps over {len(brokers)} broker(s) are {share:,} "
                f"connections on {each.name}, which may open {limit:,} files (RLIMIT_NOFILE): "
                "list more brokers in VEILLEUSE_MQTT__BROKERS (the stack runs one Mosquitto per "
                "entry) or raise the hard limit of the shell that runs `veilleuse stack up`; "
                "see docs/simulator.md"
            )
    creds = broker.credentials().provision(config.lamp_ids())
    broker.reload()
    addresses = default_sources(sources)
    targets = [each.broker for each in brokers]
    specs = [
        LampSpec(
            c.site_id,
            c.lamp_id,
            c.password,
            targets[i % len(targets)].host,
            targets[i % len(targets)].port,
            addresses[(i // len(targets)) % sources],
        )
        for i, c in enumerate(creds)
    ]
    fleet = LoadFleet(specs, processes or processes_for(config.lamps))
    try:
        fleet.start()
        connected = await fleet.connect(timeout_s=60 + config.lamps / 500)
        if connected.connected < config.lamps:
            raise SimulationError(
                f"{config.lamps - connected.connected} of {config.lamps} lamps could not "
                f"connect: {'; '.join(connected.errors[:3])}"
            )
        started = time.time()
        start_ms = int((started + start_margin_s(config.lamps)) * 1000)

        def progress(c: LoadCounters) -> None:
            if on_progress is not None:
                on_progress(_play_stats(c, started))

        played = await fleet.play(replace(config, start_ms=start_ms), progress)
        stats = _play_stats(played.counters, start_ms / 1000)
        stats.played_at = start_ms / 1000 + played.counters.play_s
        stats.finished_at = stats.played_at + played.counters.drain_s
    finally:
        await fleet.close()
        if not keep:
            broker.credentials().revoke([c.lamp_id for c in creds])
            broker.reload()
    sim = PlayedFleet(replace(config, start_ms=start_ms), played.counts, played.truth)
    log.info(
        "simulation played",
        extra={"published": stats.published, "acked": stats.acked, "unacked": stats.unacked,
               "max_lag_ms": round(stats.max_lag_ms)},
    )  # fmt: skip
    return sim, stats


def _play_stats(c: LoadCounters, started: float) -> PlayStats:
    return PlayStats(
        published=c.published, junk=c.junk, max_lag_ms=c.max_lag_ms,
        lag_over_100ms=c.lag_over_100ms, started_at=started, sent_qos1=c.sent_qos1,
        acked=c.acked, unacked=c.unacked, lost=c.lost,
    )  # fmt: skip
