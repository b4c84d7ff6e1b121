"""Memory per lamp of the agents' state, without faust: where a worker's RSS goes.

The 100,000-lamp run through the whole pipeline (BENCHMARKS.md) left a worker at 2.2 GiB,
about 22 KB per lamp, against 11.7 KB in the failover bench whose lamps had sent a few
messages each. This bench feeds every installed agent the simulated fleet's messages
(``devtools/simulator``, the same mix and hour as that run) through the testing kit's
``AgentDriver`` (the agents' own code, a worker's batch path without Kafka: the changelog kept
in a dict, as faust's in-memory store keeps it), and measures with ``tracemalloc``:

- the memory Python holds for the agents after the play (their decoded lamps and the stored
  states), per lamp;
- of it, the stored states (the changelog's bytes, what a recovered worker holds per lamp
  before it decodes one), per lamp;
- the process's RSS growth per lamp and the agents' CPU per message, in a first pass of the
  same play without ``tracemalloc`` (which inflates both).

    .venv/bin/python -m devtools.bench.worker_memory [--lamps 10000] [--duration 60] [--hour 4]

Prints the figures and saves them as JSON in ``devtools/bench/results/``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agents.registry import select_agents
from agents.testing import AgentDriver
from devtools.mqtt_load import rss_bytes
from devtools.simulator import SimConfig, Simulation
from pipeline.settings import load_settings
from pipeline.topics import LAMP_MESSAGES, topic_name

RESULTS = Path(__file__).parent / "results"


def start_at(hour: int) -> int:
    """Epoch ms of today's ``hour`` o'clock in the simulator's time zone (its residents' day)."""
    zone = ZoneInfo(SimConfig().timezone)
    now = datetime.now(zone)
    start = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if start > now:
        start -= timedelta(days=1)
    return int(start.timestamp() * 1000)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import os

    settings = load_settings(kafka={"topic_prefix": "mem."})
    topic = topic_name(settings, LAMP_MESSAGES)
    start_ms = start_at(args.hour)
    config = SimConfig(
        lamps=args.lamps, sites=max(1, args.lamps // 100), seed=args.seed,
        duration_s=args.duration, incident_rate=0.05, start_ms=start_ms,
        site_prefix="mem", lamp_prefix="M",
    )  # fmt: skip
    messages = list(Simulation(config).messages())

    def play() -> tuple[dict[str, AgentDriver], float]:
        drivers = {
            spec.name: AgentDriver(spec, settings, partitions=(0,), start_ms=start_ms)
            for spec in select_agents()
        }
        began = time.process_time()
        for n, m in enumerate(messages):
            headers = (("mqtt.topic", m.topic.encode()),)
            for driver in drivers.values():
                driver.send(
                    topic, m.payload, key=m.lamp_id.encode(), at_ms=start_ms + m.at_ms,
                    headers=headers,
                )  # fmt: skip
                if n % 1000 == 0:
                    driver.produced.clear()  # what a worker hands to its producer, not state
        cpu_s = time.process_time() - began
        for driver in drivers.values():
            driver.produced.clear()
        return drivers, cpu_s

    # Pass 1, plain: CPU and RSS (tracemalloc would inflate both).
    gc.collect()
    rss_before = rss_bytes(os.getpid())
    drivers, cpu_s = play()
    gc.collect()
    rss_after = rss_bytes(os.getpid())
    del drivers
    gc.collect()
    # Pass 2, the same play traced: what Python holds, and where.
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    drivers, _ = play()
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    sites = snapshot.statistics("lineno")[: args.top]
    stored = {name: sum(len(k) + len(v) for k, v in d.table.items()) for name, d in drivers.items()}
    lamps = args.lamps
    result = {
        "args": vars(args), "messages": len(messages),
        "messages_per_lamp": round(len(messages) / lamps, 1),
        "agents": list(drivers),
        "python_held_bytes_per_lamp": round((held - base) / lamps),
        "python_peak_bytes_per_lamp": round((peak - base) / lamps),
        "stored_state_bytes_per_lamp": {k: round(v / lamps) for k, v in stored.items()},
        "stored_states": {name: len(d.table) for name, d in drivers.items()},
        "rss_growth_bytes_per_lamp": round((rss_after - rss_before) / lamps),
        "cpu_us_per_message_all_agents": round(cpu_s / len(messages) * 1e6, 1),
        "top_sites_bytes_per_lamp": [
            [str(stat.traceback[0]), round(stat.size / lamps)] for stat in sites
        ],
    }  # fmt: skip
    print(f"{lamps:,} lamps, {len(messages):,} messages ({result['messages_per_lamp']} per "
          f"lamp, {args.duration:g} s from {args.hour}:00 local) "
          f"through {', '.join(drivers)}")  # fmt: skip
    print(f"held by Python after the play: {result['python_held_bytes_per_lamp']:,} B per lamp "
          f"(peak {result['python_peak_bytes_per_lamp']:,} B)")  # fmt: skip
    print(f"  of which stored states (the changelog's bytes): "
          f"{result['stored_state_bytes_per_lamp']} B per lamp")  # fmt: skip
    print(f"RSS growth (untraced pass): {result['rss_growth_bytes_per_lamp']:,} B per lamp; "
          f"CPU {result['cpu_us_per_message_all_agents']} µs per message, "
          "all agents")  # fmt: skip
    print(f"where it is held (the {args.top} largest allocation sites, bytes per lamp):")
    for where, size in result["top_sites_bytes_per_lamp"]:
        print(f"  {size:>7,}  {where}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lamps", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--hour", type=int, default=4, help="local hour the play starts at")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--top", type=int, default=12, help="allocation sites to list")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    result = run(args)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"worker_memory-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"raw results: {path}")


if __name__ == "__main__":
    main()
