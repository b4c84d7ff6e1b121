"""``veilleuse simulate --lamps 100000`` through the whole pipeline, measured.

The local stack runs one Mosquitto per broker of the settings (docs/simulator.md, "100,000
lamps over MQTT"): this bench adds ``--brokers - 1`` of them beside the stack's own (free
ports; stopped at the end), starts the pipeline on names of its own (the bench harness's
``Run``: topic prefix, consumer groups, a scratch database, an index prefix) with a connector
that reads every broker, then plays the simulated fleet through the socket load generator
exactly as ``veilleuse simulate`` does (``simulate_sockets``: each lamp its own account and TCP
connection, lamp i on broker i % n). It waits until detection and the search sink have read
every record the connector wrote, and prints, per process tree (the generator, each broker,
the connector, the worker, both sinks, Kafka, Elasticsearch, PostgreSQL): CPU seconds and µs
per message sent over the play and the drain, and the largest RSS sampled; messages sent,
acknowledged, written to Kafka, read by detection and the sink; how long the pipeline took to
drain what the fleet played. Raw results: ``devtools/bench/results/fleet_pipeline-<UTC>.json``.

    make stack
    .venv/bin/python -m devtools.bench.fleet_pipeline [--lamps 100000] [--duration 60]

Nothing is asserted: on the 2-core VM the fleet's rate (about 15,000 messages/s) is more than
the generator and the brokers alone can play in real time (BENCHMARKS.md), so the play lags and
the pipeline drains a backlog; the CPU per message is the figure that holds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from devtools.bench.harness import BenchOptions, BenchReport, PipelineSide, Run, cleanup
from devtools.bench.probes import (
    AlertTail,
    CpuMeter,
    Offsets,
    machine,
    process_table,
    stack_pids,
    tree_pids,
)
from devtools.mqtt_load import processes_for
from devtools.simulate import PlayStats, simulate_sockets
from devtools.simulator import SimConfig
from devtools.stack import manager
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import stack_brokers
from pipeline.ports import free_port
from pipeline.settings import MqttBroker, Settings, load_settings
from pipeline.topics import LAMP_MESSAGES, topic_name

RESULTS = Path(__file__).parent / "results"
PER_BROKER = 18_000  # below the 20,000 descriptors a process may hold here
PIPELINE = ("connector", "worker", "sink-elasticsearch", "sink-postgres")


def rss_mib(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


class Sampler:
    """Every ``period_s``: the largest RSS of each process tree, and the topics' progress."""

    def __init__(self, roots: dict[str, Callable[[], set[int]]], offsets: Offsets, run: Run):
        self.roots = roots
        self.offsets = offsets
        self.run = run
        self.peak_rss: dict[str, float] = {}
        self.last_rss: dict[str, float] = {}  # at the last sample: once drained, the state kept
        self.trace: list[dict[str, Any]] = []

    async def sample(self) -> dict[str, Any]:
        table = process_table()
        for name, pids in self.roots.items():
            rss = rss_mib(tree_pids(table, pids()))
            self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), rss)
            self.last_rss[name] = rss
        point = {
            "t": round(time.time(), 1),
            "kafka": await self.offsets.end(),
            "worker": await self.offsets.committed(
                f"{self.run.prefix}detection"  # VEILLEUSE_DETECTION__APP_ID of Run.env()
            ),
            "sink-elasticsearch": await self.offsets.committed(
                f"{self.run.prefix}veilleuse-sink-elasticsearch"
            ),
        }
        self.trace.append(point)
        return point

    async def every(self, period_s: float) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(period_s)


def with_brokers(settings: Settings, count: int) -> Settings:
    """The stack's broker first, then ``count - 1`` more on free ports."""
    first = settings.mqtt.brokers[0]
    added = [MqttBroker(name=f"fleet-{k + 1}", port=free_port()) for k in range(1, count)]
    mqtt = settings.mqtt.model_copy(update={"brokers": (first, *added)})
    return settings.model_copy(update={"mqtt": mqtt})


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = with_brokers(load_settings(), args.brokers)
    brokers = stack_brokers(StackContext(base))
    started_brokers = [r.service for r in manager.up(base, ("mosquitto",)) if r.state == "started"]
    workdir = Path(tempfile.mkdtemp(prefix="veilleuse-fleet-"))
    bench = Run(base, BenchOptions(lamps=0, sites=1), workdir)
    report = BenchReport(workdir=str(workdir), machine=machine())
    brokers_json = json.dumps([b.model_dump(mode="json") for b in base.mqtt.brokers])
    result: dict[str, Any] = {
        "args": vars(args), "machine": report.machine, "brokers": len(brokers),
        "loadavg_before": os.getloadavg(),
    }  # fmt: skip
    print(f"fleet run {bench.run_id}: {args.lamps:,} lamps over {len(brokers)} brokers; "
          f"logs in {workdir}")  # fmt: skip
    config = SimConfig(
        lamps=args.lamps, sites=args.sites, seed=args.seed, duration_s=args.duration,
        incident_rate=args.incident_rate, site_prefix=f"fleet{bench.run_id}",
        lamp_prefix=f"fleet{bench.run_id}",
    )  # fmt: skip
    try:
        async with AsyncExitStack() as stack:
            side = PipelineSide(bench, report, print, stack)
            side.env["VEILLEUSE_MQTT__BROKERS"] = brokers_json
            sampler_task: asyncio.Task[None] | None = None
            try:
                bench.create_database()
                await side.start()
                await side.start_connector()
                roots = {**side.roots(), **stack_pids(base)}
                roots.pop("redis", None)  # not on this path
                mine = os.getpid()
                roots["bench+generator"] = lambda: {mine}
                meter = CpuMeter(roots)
                lamp_offsets = await stack.enter_async_context(
                    Offsets(bench.settings, topic_name(bench.settings, LAMP_MESSAGES))
                )
                alert_tail = await stack.enter_async_context(AlertTail(bench.settings, bool))
                sampler = Sampler(roots, lamp_offsets, bench)
                sampler_task = asyncio.create_task(sampler.every(2.0))
                readings: dict[str, tuple[float, dict[str, float]]] = {"start": meter.read()}
                last_print = [0.0]

                def progress(stats: PlayStats) -> None:
                    readings.setdefault("play", meter.read())  # the fleet is connected
                    if time.monotonic() - last_print[0] >= 10:
                        last_print[0] = time.monotonic()
                        point = sampler.trace[-1] if sampler.trace else {}
                        print(f"  played {stats.published:,} (acked {stats.acked:,}, lag "
                              f"{stats.max_lag_ms / 1000:.0f} s); kafka {point.get('kafka', 0):,}, "
                              f"worker {point.get('worker', 0):,}, "
                              f"search sink {point.get('sink-elasticsearch', 0):,}")  # fmt: skip

                played_at = time.time()
                sim, stats = await simulate_sockets(
                    bench.settings,
                    config,
                    processes=args.processes or processes_for(args.lamps),
                    sources=args.sources,
                    on_progress=progress,
                )
                readings["played"] = meter.read()
                print(f"played: {stats.published:,} messages sent (QoS 1 {stats.sent_qos1:,}, "
                      f"acknowledged {stats.acked:,}, without PUBACK {stats.unacked:,}); "
                      f"connections lost {stats.lost:,}; "
                      f"player lag max {stats.max_lag_ms / 1000:.1f} s")  # fmt: skip
                # Drained: Kafka's end no longer moves and detection and the sink have read it all.
                deadline = time.monotonic() + args.drain_timeout
                steady = 0
                previous = -1
                while time.monotonic() < deadline:
                    point = await sampler.sample()
                    caught_up = point["worker"] >= point["kafka"] <= point["sink-elasticsearch"]
                    steady = steady + 1 if point["kafka"] == previous and caught_up else 0
                    previous = point["kafka"]
                    if steady >= 3:
                        break
                    await asyncio.sleep(2.0)
                readings["drained"] = meter.read()
                drained_at = time.time()
                point = sampler.trace[-1]
                await asyncio.sleep(2)  # the last alerts' records reach the tail
                alerts = alert_tail.total
                alert_kinds = collections.Counter(
                    f"{kind} {state}"
                    for seen in alert_tail.arrivals.values()
                    for kind, state, _ in seen
                )
                expected_kinds = collections.Counter(e.kind for e in sim.truth.required())
                sampler_task.cancel()

                phases: dict[str, Any] = {}
                for name, a, b in (("connect", "start", "play"), ("play+drain", "play", "drained")):
                    if a not in readings:
                        continue
                    wall, cpu = CpuMeter.delta(readings[a], readings[b])
                    generator = cpu["bench+generator"] - sum(cpu.get(p, 0.0) for p in PIPELINE)
                    cpu = {**cpu, "bench+generator": max(generator, 0.0)}
                    phases[name] = {
                        "wall_s": round(wall, 1),
                        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
                    }
                busy = phases.get("play+drain", {}).get("cpu_s", {})
                sent = max(stats.published, 1)
                per_message = {k: round(v / sent * 1e6, 1) for k, v in busy.items()}
                brokers_us = sum(v for k, v in per_message.items() if k.startswith("mosquitto"))
                pipeline_us = sum(per_message.get(k, 0.0) for k in PIPELINE)
                services_us = sum(per_message.get(k, 0.0) for k in ("kafka", "elasticsearch",
                                                                      "postgres"))  # fmt: skip
                result.update({
                    "run_id": bench.run_id,
                    "sent": stats.published, "sent_qos1": stats.sent_qos1, "acked": stats.acked,
                    "unacked": stats.unacked, "connections_lost": stats.lost,
                    "max_lag_s": round(stats.max_lag_ms / 1000, 1),
                    "kafka_records": point["kafka"], "worker_read": point["worker"],
                    "sink_read": point["sink-elasticsearch"], "alerts": alerts,
                    "drained": steady >= 3,
                    "play_to_drained_s": round(drained_at - played_at, 1),
                    "alerts_by_kind": dict(alert_kinds),
                    "ground_truth_required_by_kind": dict(expected_kinds),
                    "phases": phases, "cpu_us_per_message_sent": per_message,
                    "cpu_us_per_message_sent_totals": {
                        "brokers": round(brokers_us, 1), "pipeline": round(pipeline_us, 1),
                        "kafka+elasticsearch+postgres": round(services_us, 1),
                    },
                    "peak_rss_mib": {k: round(v, 1) for k, v in sampler.peak_rss.items()},
                    "drained_rss_mib": {k: round(v, 1) for k, v in sampler.last_rss.items()},
                    "trace": sampler.trace, "counts": sim.counts.as_dict(),
                    "loadavg_after": os.getloadavg(),
                })  # fmt: skip
                print(f"Kafka {point['kafka']:,} records; detection read {point['worker']:,}, the "
                      f"search sink {point['sink-elasticsearch']:,}; {alerts:,} alert records; "
                      f"{'drained' if steady >= 3 else 'NOT drained'} "
                      f"{drained_at - played_at:.0f} s after the play began")  # fmt: skip
                print(f"alert records by kind and state: {dict(alert_kinds)}")
                print(f"the simulation's ground truth, required alerts by kind: "
                      f"{dict(expected_kinds)}")  # fmt: skip
                print(f"CPU µs per message sent (play and drain): {per_message}")
                print(f"  brokers {brokers_us:.1f}, pipeline {pipeline_us:.1f}, "
                      f"Kafka+Elasticsearch+PostgreSQL {services_us:.1f}")  # fmt: skip
                print(f"largest RSS sampled, MiB: {result['peak_rss_mib']}")
                print(f"RSS once drained, MiB: {result['drained_rss_mib']}")
            finally:
                if sampler_task is not None:
                    sampler_task.cancel()
                await side.close()
    finally:  # once the processes and the clients are gone: nothing reads the topics any more
        await cleanup(bench)
        with contextlib.suppress(Exception):
            await bench.delete_topics()
        for broker in brokers:
            if broker.name in started_brokers and broker.index > 0:
                broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lamps", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=1_000)
    parser.add_argument("--brokers", type=int, default=0, help="default: one per 18,000 lamps")
    parser.add_argument("--processes", type=int, default=0, help="default: one per 15,000 lamps")
    parser.add_argument("--sources", type=int, default=4, help="source addresses 127.0.0.2...")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--incident-rate", type=float, default=0.05, help="per lamp and hour")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    args.brokers = args.brokers or -(-args.lamps // PER_BROKER)
    result = asyncio.run(run(args))
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"fleet_pipeline-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"raw results: {path}")


if __name__ == "__main__":
    main()
