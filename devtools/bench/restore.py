# ruff: noqa: T201 - a benchmark prints what it measures
"""Table recovery: how fast a worker restores its agents' changelogs, faust's per-event path
against the batch path (``detection.restore_in_batches``), in one run.

On its own topics (a unique prefix) on the local stack's Kafka:

1. fills the state of ``--lamps`` lamps: each lamp heard ``--rounds`` times (each round in its
   own batches, so each lamp's state is written ``--rounds`` times to the changelog, as in a
   fleet's changelog between compactions), processed by one worker, which then stops;
2. starts fresh workers one at a time (an empty store: each restores every changelog partition
   from the start), alternating the two paths ``--repeat`` times each, and reads from each
   worker's log and ``/proc``: the changelog records it applied (both agents' tables), the
   recovery's wall time, the worker's CPU time over the recovery, the time to rebuild the
   agents' state from the restored store (``partitions ready``), and its memory (RSS) then.

    .venv/bin/python -m devtools.bench.restore [--lamps 100000] [--rounds 2] [--repeat 2]

It prints what it measured (rates with their sample count, CPU µs per record, the load
average), saves the raw results to ``devtools/bench/results/restore-<UTC time>.json``, deletes
its topics, and asserts nothing.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devtools.changelog_fill import fill_fleet_state
from devtools.processes import PipelineProcess
from pipeline import clients
from pipeline.settings import Settings, load_settings
from pipeline.topics import LAMP_MESSAGES, ensure_topics, topic_name

RESULTS = Path(__file__).parent / "results"
RESTORED = re.compile(r"changelog records restored: (\{.*\}) \((\d+) in ([\d.]+) s\)")
TICK_S = os.sysconf("SC_CLK_TCK")
MODES = {"per-event": "false", "batches": "true"}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK_S


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def messages(worker: PipelineProcess) -> list[str]:
    found = []
    for line in worker.output().splitlines():
        try:
            found.append(str(json.loads(line).get("msg", "")))
        except ValueError:
            continue
    return found


async def fill(settings: Settings, lamps: int, rounds: int) -> int:
    """``lamps`` lamps heard ``rounds`` times each; returns the messages sent."""
    producer = clients.producer(settings)
    await producer.start()
    try:
        return await fill_fleet_state(
            producer,
            topic_name(settings, LAMP_MESSAGES),
            site="bench-restore",
            lamps=lamps,
            rounds=rounds,
            pause_s=1.0,
        )
    finally:
        await producer.stop()


async def group_caught_up(settings: Settings, group: str, timeout_s: float) -> bool:
    """Until ``group`` committed the end of every partition of the lamps' topic."""
    from aiokafka import TopicPartition

    topic = topic_name(settings, LAMP_MESSAGES)
    tps = [TopicPartition(topic, p) for p in range(settings.kafka.topic_partitions)]
    consumer = clients.consumer(settings, group_id=None)
    admin = clients.admin_client(settings)
    await consumer.start()
    await admin.start()
    try:
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = await admin.list_consumer_group_offsets(group)
            if all(tp in committed and committed[tp].offset >= ends[tp] for tp in tps):
                return True
            await asyncio.sleep(1.0)
        return False
    finally:
        await consumer.stop()
        await admin.close()


def watch_recovery(worker: PipelineProcess, timeout_s: float) -> dict[str, Any]:
    """Poll a starting worker's log and /proc until its partitions are ready."""
    if worker.proc is None:
        raise RuntimeError("the worker is not started")
    pid = worker.proc.pid
    started = time.monotonic()
    reading: tuple[float, float] | None = None
    restored: tuple[float, float, int, float, dict[str, Any]] | None = None
    while time.monotonic() - started < timeout_s:
        worker.check()
        now, cpu = time.monotonic(), cpu_s(pid)
        lines = messages(worker)
        if reading is None and any("Highwater for active changelog" in m for m in lines):
            reading = (now, cpu)
        if restored is None:
            for m in lines:
                if (match := RESTORED.search(m)) and int(match.group(2)) > 0:
                    tables = ast.literal_eval(match.group(1))
                    restored = (now, cpu, int(match.group(2)), float(match.group(3)), tables)
        if (
            reading is not None
            and restored is not None
            and any(m.startswith("partitions ready:") for m in lines)
        ):
            return {
                "records": restored[2],
                "recovery_s": restored[3],
                "per_table": {name: sum(counts.values()) for name, counts in restored[4].items()},
                "cpu_recovery_s": round(restored[1] - reading[1], 3),
                "rebuild_s": round(now - restored[0], 3),
                "cpu_rebuild_s": round(cpu - restored[1], 3),
                "rss_bytes": rss_bytes(pid),
            }
        time.sleep(0.02)
    raise TimeoutError(f"no recovery within {timeout_s} s:\n{worker.tail(20)}")


def worker_env(prefix: str, app_id: str, mode: str) -> dict[str, str]:
    return {
        "VEILLEUSE_KAFKA__TOPIC_PREFIX": prefix,
        "VEILLEUSE_DETECTION__APP_ID": app_id,
        "VEILLEUSE_DETECTION__METRICS_PORT": "0",
        "VEILLEUSE_DETECTION__LIVE_PORT": "0",
        "VEILLEUSE_DETECTION__RESTORE_IN_BATCHES": MODES[mode],
        # A long session: on a loaded machine the filling worker's heavy batches must not cost
        # it its partitions (this measures recovery, not failover).
        "VEILLEUSE_DETECTION__SESSION_TIMEOUT_S": "30",
        "VEILLEUSE_LOG_FORMAT": "json",
    }


async def delete_topics(settings: Settings, prefix: str) -> None:
    admin = clients.admin_client(settings)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def summary(runs: list[dict[str, Any]], lamps: int) -> list[str]:
    lines = [
        f"{'path':<10} {'records':>8} {'recovery s':>10} {'records/s':>10} "
        f"{'CPU µs/rec':>10} {'rebuild s':>9} {'RSS MB':>7}"
    ]
    for run in runs:
        lines.append(
            f"{run['mode']:<10} {run['records']:>8} {run['recovery_s']:>10.2f} "
            f"{run['rate']:>10,.0f} {run['cpu_us_per_record']:>10.1f} "
            f"{run['rebuild_s']:>9.2f} {run['rss_bytes'] / 1e6:>7.0f}"
        )
    medians: dict[str, float] = {}
    for mode in MODES:
        rates = [r["rate"] for r in runs if r["mode"] == mode]
        cpu = [r["cpu_us_per_record"] for r in runs if r["mode"] == mode]
        if rates:
            medians[mode] = statistics.median(rates)
            lines.append(
                f"{mode}: median {medians[mode]:,.0f} records/s (n={len(rates)}, "
                f"{min(rates):,.0f}-{max(rates):,.0f}); CPU {statistics.median(cpu):.1f} µs "
                f"per record (n={len(cpu)})"
            )
    pairs = [
        (a["rate"], b["rate"])
        for a, b in zip(
            [r for r in runs if r["mode"] == "batches"],
            [r for r in runs if r["mode"] == "per-event"],
            strict=False,
        )
    ]
    if pairs:
        ratios = [a / b for a, b in pairs]
        lines.append(
            f"batches / per-event: {statistics.median(ratios):.2f}x "
            f"[{min(ratios):.2f}-{max(ratios):.2f}] over {len(ratios)} pairs"
        )
    rss = [r["rss_bytes"] for r in runs]
    if rss:
        lines.append(
            f"worker RSS with {lamps:,} lamps' state (store and agents): median "
            f"{statistics.median(rss) / 1e6:.0f} MB (n={len(rss)})"
        )
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lamps", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each path")
    parser.add_argument("--timeout-s", type=float, default=900)
    args = parser.parse_args()

    base = load_settings()
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    app_id = f"{prefix}detection"
    settings = base.model_copy(
        update={"kafka": base.kafka.model_copy(update={"topic_prefix": prefix})}
    )
    await ensure_topics(settings)
    logs = Path(tempfile.mkdtemp(prefix="veilleuse-restore-"))
    started_at = datetime.now(UTC)
    runs: list[dict[str, Any]] = []
    try:
        print(f"filling: {args.lamps:,} lamps x {args.rounds} rounds (topics {prefix}*)")
        filler = PipelineProcess(
            ["worker", "--instance-id", "fill"],
            worker_env(prefix, app_id, "batches"),
            logs / "fill.log",
        ).start()
        try:
            sent = await fill(settings, args.lamps, args.rounds)
            caught_up = await group_caught_up(settings, app_id, args.timeout_s)
            await asyncio.sleep(3)  # the last batches' ticks
        finally:
            filler.stop()
        print(f"filled: {sent:,} messages processed (caught up: {caught_up}); logs in {logs}")
        for index in range(args.repeat):
            order = list(MODES) if index % 2 == 0 else list(reversed(MODES))
            for mode in order:
                worker = PipelineProcess(
                    ["worker", "--instance-id", f"r{index}-{mode}"],
                    worker_env(prefix, app_id, mode),
                    logs / f"r{index}-{mode}.log",
                ).start()
                try:
                    run = await asyncio.to_thread(watch_recovery, worker, args.timeout_s)
                finally:
                    worker.stop()
                run["mode"] = mode
                run["rate"] = run["records"] / run["recovery_s"] if run["recovery_s"] else 0.0
                run["cpu_us_per_record"] = run["cpu_recovery_s"] * 1e6 / max(run["records"], 1)
                run["load_average"] = os.getloadavg()
                runs.append(run)
                print(
                    f"  {mode}: {run['records']:,} records in {run['recovery_s']:.2f} s "
                    f"({run['rate']:,.0f}/s), CPU {run['cpu_us_per_record']:.1f} µs/record, "
                    f"state rebuilt in {run['rebuild_s']:.2f} s, RSS "
                    f"{run['rss_bytes'] / 1e6:.0f} MB (load {run['load_average'][0]:.1f})"
                )
    finally:
        await delete_topics(settings, prefix)
    for line in summary(runs, args.lamps):
        print(line)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"restore-{started_at:%Y%m%dT%H%MZ}.json"
    out.write_text(
        json.dumps(
            {
                "command": "python -m devtools.bench.restore "
                f"--lamps {args.lamps} --rounds {args.rounds} --repeat {args.repeat}",
                "started_at": started_at.isoformat(),
                "lamps": args.lamps,
                "rounds": args.rounds,
                "cpus": os.cpu_count(),
                "runs": runs,
            },
            indent=2,
        )
    )
    print(f"raw results: {os.path.relpath(out)}")


if __name__ == "__main__":
    asyncio.run(main())
