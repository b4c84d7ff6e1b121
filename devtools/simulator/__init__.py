"""The lamp-fleet simulator's pure part: lives, incidents, the network's mess, ground truth.

No I/O: it computes what a fleet of lamps publishes (``../shared/lamp-protocol.md``) and what
the pipeline must make of it. ``devtools/simulate.py`` publishes it over MQTT; ``veilleuse
demo`` and ``veilleuse bench`` drive the pipeline with it.

API (stable)::

    from devtools.simulator import SimConfig, Simulation

    sim = Simulation(SimConfig(lamps=100_000, sites=500, seed=1, start_ms=now_ms,
                               duration_s=600, incident_rate=0.05))
    for m in sim.messages():   # in publish order
        m.at_ms, m.topic, m.payload, m.qos, m.retain   # ms after start_ms; bytes
        m.lamp_id, m.valid, m.duplicate                # junk is valid=False
    sim.truth.expected        # [Expectation(lamp_id, site_id, kind, due_ms, earliest_ms,
                              #              latest_ms, scenario, required)]
    sim.truth.non_incidents   # [NonIncident(lamp_id, site_id, kind, from_ms, to_ms, scenario)]
    sim.counts                # published / valid / junk / duplicates / delayed / by_type

- ``SimConfig(shard=k, shards=n)`` generates lamps ``index % n == k`` only (one process per
  shard); every lamp's life depends on the seed and its id alone, so shards add up exactly.
- Deterministic: the same config (``seed`` and ``start_ms`` included) gives the same bytes.
- ``ts`` = ``start_ms + at_ms +`` the lamp's clock skew (±120 s, new at each reboot): publish
  each message at ``start_ms + at_ms`` of wall time, or the lamps' clocks look wrong.
- ``truth`` is complete once ``messages()`` is exhausted: silences long enough for the offline
  rule, lacks of motion long enough for rule 9, and the due times of incidents whose messages
  the network delayed are found as the messages are made. Alerts are read until
  ``sim.observed_until_ms`` (``observe_s`` after the last message).
- ``SimConfig(skews=((lamp index, s), ...))`` pins a lamp's clock skew (the demo: ±120 s).
- Protocol rates: postures every 5 s while someone is seen, motion, temperature and heartbeat
  every 60 s: about 0.13 messages/s per lamp over a day (``tests/unit/devtools/simulator``
  measures it).
- ``presets.demo_config`` is the demo's nursing home; ``presets.accelerated`` its thresholds,
  ``presets.worker_env`` the variables that give the workers the same.
"""

from devtools.simulator.generator import SimConfig, Simulation
from devtools.simulator.model import (
    CRITICAL_KINDS,
    SCORED_KINDS,
    SEVERITY,
    Counts,
    Expectation,
    GroundTruth,
    Message,
    NonIncident,
)
from devtools.simulator.presets import accelerated, demo_config, worker_env

__all__ = [
    "CRITICAL_KINDS",
    "SCORED_KINDS",
    "SEVERITY",
    "Counts",
    "Expectation",
    "GroundTruth",
    "Message",
    "NonIncident",
    "SimConfig",
    "Simulation",
    "accelerated",
    "demo_config",
    "worker_env",
]
