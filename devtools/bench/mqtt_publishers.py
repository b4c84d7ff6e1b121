"""CPU per message of the two lamp publishers: paho's fleet and the socket load generator.

The same lamps (shard 0 of 7 of the 100,000-lamp fleet of ``devtools/bench/mqtt_fleet.py``:
``--lamps`` of them, 3,000 by default, as one of its workers would hold 14,286), the same
simulation generated in the publishing process, each against a fresh Mosquitto of its own with
the stack's configuration: ``devtools/fleet.py`` + ``simulate.play`` (paho, one client per
lamp), then one ``devtools/mqtt_load.py`` worker in process. CPU of the publishing process and of
the broker from ``/proc``, per message sent.

    .venv/bin/python -m devtools.bench.mqtt_publishers [--lamps 3000] [--duration 40]

Prints what it measured and saves it to ``devtools/bench/results/``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from devtools.bench.mqtt_fleet import RESULTS, Broker
from devtools.fleet import connect_fleet
from devtools.mqtt_load import LampSpec, LoadWorker, cpu_seconds, default_sources
from devtools.simulate import play
from devtools.simulator import SimConfig, Simulation
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import build_lamp_acl_plugin
from pipeline.settings import MqttBroker, load_settings

SHARDS = 7


async def measure(which: str, lamps: int, duration_s: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="veilleuse-mqtt-publishers-"))
    broker = Broker(folder, 0)
    config = SimConfig(
        lamps=lamps * SHARDS, sites=lamps * SHARDS // 100, seed=1, duration_s=duration_s,
        incident_rate=0.05, site_prefix="fleet", lamp_prefix="F", shard=0, shards=SHARDS,
    )  # fmt: skip
    creds = broker.credentials.provision(config.lamp_ids()[0::SHARDS])
    try:
        await broker.start(build_lamp_acl_plugin(StackContext(load_settings())))
        target = MqttBroker(name="bench", host="127.0.0.1", port=broker.port)
        if which == "paho":
            fleet = await connect_fleet(target, creds, timeout_s=300)
            start = replace(config, start_ms=int((time.time() + 3) * 1000))
            cpu, broker_cpu = cpu_seconds(os.getpid()), cpu_seconds(broker.pid)
            stats = await play(fleet, Simulation(start))
            sent, lag_ms = stats.published, stats.max_lag_ms
            cpu, broker_cpu = cpu_seconds(os.getpid()) - cpu, cpu_seconds(broker.pid) - broker_cpu
            await fleet.close()
        else:
            sources = default_sources(4)
            specs = [
                LampSpec(c.site_id, c.lamp_id, c.password, target.host, target.port, sources[i % 4])
                for i, c in enumerate(creds)
            ]
            worker = LoadWorker(specs, 5, 60)
            await worker.connect(32, 300)
            start = replace(config, start_ms=int((time.time() + 3) * 1000))
            cpu, broker_cpu = cpu_seconds(os.getpid()), cpu_seconds(broker.pid)
            await worker.play(start, lambda _c: None)
            c = worker.counters
            sent, lag_ms = c.sent_qos0 + c.sent_qos1, c.max_lag_ms
            cpu, broker_cpu = cpu_seconds(os.getpid()) - cpu, cpu_seconds(broker.pid) - broker_cpu
            await worker.close()
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "publisher": which, "lamps": len(creds), "sent": sent, "max_lag_ms": round(lag_ms),
        "publisher_cpu_us_per_message": round(cpu / sent * 1e6, 1),
        "broker_cpu_us_per_message": round(broker_cpu / sent * 1e6, 1),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }  # fmt: skip
    print(
        f"{which}: {sent:,} messages sent by {len(creds):,} lamps (player lag max "
        f"{lag_ms:.0f} ms); CPU per message: publisher "
        f"{result['publisher_cpu_us_per_message']} µs (the simulation's generation included), "
        f"broker {result['broker_cpu_us_per_message']} µs; load average {result['loadavg']}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lamps", type=int, default=3_000)
    parser.add_argument("--duration", type=float, default=40.0)
    args = parser.parse_args()
    results = [
        asyncio.run(measure(which, args.lamps, args.duration)) for which in ("paho", "sockets")
    ]
    paho, sockets = (r["publisher_cpu_us_per_message"] for r in results)
    print(f"paho / sockets, CPU per message: {paho / sockets:.1f}x (one run each)")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"mqtt_publishers-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"
    path.write_text(json.dumps({"args": vars(args), "runs": results}, indent=2) + "\n")
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
