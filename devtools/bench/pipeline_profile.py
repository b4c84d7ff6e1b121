# ruff: noqa: T201 - a benchmark prints what it measures
"""Where the pipeline's processes spend their CPU, at idle and at a few rates (issue #15, item 3).

Starts the bench's pipeline (``veilleuse bench``'s connector, worker and both sinks, on names of
their own: ``devtools/bench/harness.py``) against the local stack, then for each phase (idle,
then each ``--rates`` step played by the bench's own load generator) reads every process's CPU
from ``/proc`` over the phase and, unless ``--no-profile``, samples each process with py-spy
(``--idle`` at idle so that what waits shows too, without it under load; ``--nonblocking``:
the processes are not paused to be sampled). Prints CPU seconds per second and µs per message
per process; writes the raw figures as JSON and, per phase and process, a short text summary
of the samples (functions by self and by total share) to ``--results``.

    .venv/bin/python -m devtools.bench.pipeline_profile --rates 100,400,2000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from devtools.bench.harness import (
    BenchOptions,
    BenchReport,
    PipelineSide,
    Run,
    cleanup,
    play_step,
)
from devtools.bench.probes import CpuMeter, stack_pids
from pipeline.settings import Settings

OURS = re.compile(r"\((agents|connectors|pipeline|schemas)/")
LOOP = re.compile(r"\((asyncio/|selectors\.py|threading\.py)")
PROCESSES = ("connector", "worker", "sink-elasticsearch", "sink-postgres")


def summarise(raw: str, top: int = 25) -> str:
    """py-spy's collapsed stacks (``frame;frame;… count``) as two short tables: the functions
    where the samples were (self) and the functions on the stack (total), in % of samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return "no samples\n"
    out = [f"{samples} samples", "", "self %  function"]
    out += [f"{100 * n / samples:6.1f}  {f}" for f, n in own.most_common(top)]
    out += ["", "total %  function"]
    out += [f"{100 * n / samples:7.1f}  {f}" for f, n in total.most_common(top)]
    # Who called the hottest functions: the three nearest frames above each sample of the five
    # hottest, past the event loop's own, so that a socket write names its sender.
    callers: dict[str, Counter[str]] = {}
    hottest = {f for f, _ in own.most_common(5)}
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if not count_text.isdigit() or frames[-1] not in hottest:
            continue
        above = [f for f in reversed(frames[:-1]) if not LOOP.search(f)][:3]
        callers.setdefault(frames[-1], Counter())[" < ".join(above) or "-"] += int(count_text)
    for leaf, _ in own.most_common(5):
        out += ["", f"callers of {leaf} (% of all samples)"]
        out += [f"{100 * n / samples:6.1f}  {f}" for f, n in callers[leaf].most_common(6)]
    ours = [(f, n) for f, n in total.most_common() if OURS.search(f)]
    out += ["", "total %  function of ours (agents, connectors, pipeline, schemas)"]
    out += [f"{100 * n / samples:7.1f}  {f}" for f, n in ours[:top]]
    return "\n".join(out) + "\n"


def spy(pid: int, seconds: float, out: Path, *, idle: bool) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    argv = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50"]
    argv += ["--format", "raw", "--nonblocking", "--output", str(out)]
    if idle:
        argv.append("--idle")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def phase(  # noqa: PLR0917 - one call site
    run: Run,
    side: PipelineSide,
    name: str,
    rate: float,
    seconds: float,
    results: Path,
    services: dict[str, Any],
    *,
    profile: bool,
) -> dict[str, Any]:
    roots = {**side.roots(), **services}
    pids = {p: next(iter(roots[p]()), None) for p in PROCESSES}
    spies = []
    raw_dir = Path(tempfile.mkdtemp(prefix="pyspy-"))
    if profile:
        spies = [
            (p, raw_dir / f"{p}.txt", spy(pid, seconds, raw_dir / f"{p}.txt", idle=rate == 0))
            for p, pid in pids.items()
            if pid is not None
        ]
    if rate == 0:
        meter = CpuMeter(roots)
        first = meter.read()
        await asyncio.sleep(seconds)
        window_s, cpu = CpuMeter.delta(first, meter.read())
        processed = 0
    else:
        procs = [p for p in [side.connector, *side.procs] if p is not None]
        result = await play_step(
            run, "pipeline", rate, [], side.processed, side.alerted, procs, roots
        )
        window_s, cpu, processed = result.window_s, result.cpu_s, result.window_processed
    for _, _, proc in spies:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    for p, path, _ in spies:
        text = path.read_text() if path.exists() else ""
        (results / f"{name}-{p}.txt").write_text(
            f"# py-spy record --rate 50 --nonblocking{' --idle' if rate == 0 else ''}, "
            f"{name}, {p}\n" + summarise(text)
        )
    shutil.rmtree(raw_dir, ignore_errors=True)
    return {
        "phase": name,
        "rate": rate,
        "window_s": window_s,
        "processed": processed,
        "cpu_s": cpu,
        "cpu_per_s": {k: v / window_s for k, v in cpu.items()},
        "us_per_message": {k: (v / processed * 1e6 if processed else None) for k, v in cpu.items()},
        "load_average": os.getloadavg(),
    }


class SideRun(Run):
    """A run whose processes get ``extra`` in their environment: another tree's code
    (``PYTHONPATH`` with ``PYTHONSAFEPATH``, so that the checkout in the current folder does
    not come first) or other settings."""

    extra: dict[str, str] = {}  # noqa: RUF012 - set per instance before use

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}


def sides(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = []
    if args.old:
        out.append(("old", {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(Path(args.old).resolve())}))
    out.append(("new", {}))
    for spec in args.side:
        name, _, assignments = spec.partition(":")
        out.append((name, dict(a.split("=", 1) for a in assignments.split(",") if a)))
    return out


async def one_side(
    settings: Settings,
    args: argparse.Namespace,
    label: str,
    extra: dict[str, str],
    results: Path,
) -> list[dict[str, Any]]:
    options = BenchOptions(lamps=args.lamps, duration_s=args.seconds, falls_per_step=0)
    workdir = Path(tempfile.mkdtemp(prefix="veilleuse-profile-"))
    run = SideRun(settings, options, workdir)
    run.extra = extra
    report = BenchReport(workdir=str(workdir))
    services = stack_pids(settings)
    phases: list[dict[str, Any]] = []
    try:
        run.provision(0)
        run.create_database()
        async with contextlib.AsyncExitStack() as stack:
            side = PipelineSide(run, report, print, stack)
            stack.push_async_callback(side.close)
            await side.start()
            await side.start_connector()
            await asyncio.sleep(args.settle)
            plan = [("idle", 0.0)] + [(f"{r:g}msgs", r) for r in args.rates]
            for name, rate in plan:
                out = await phase(
                    run,
                    side,
                    f"{label}-{name}" if label != "new" or args.old or args.side else name,
                    rate,
                    args.idle_seconds if rate == 0 else args.seconds,
                    results,
                    services,
                    profile=not args.no_profile,
                )
                out["side"] = label
                phases.append(out)
                own = {p: out["cpu_per_s"].get(p, 0.0) for p in PROCESSES}
                per_msg = {p: out["us_per_message"].get(p) for p in PROCESSES}
                total = sum(own.values())
                total_msg = sum(v for v in per_msg.values() if v is not None)
                print(
                    f"{label} {name}: {out['processed']:,} messages in {out['window_s']:.1f} s; "
                    + ", ".join(
                        f"{p} {own[p]:.3f} cores"
                        + (f" {per_msg[p]:,.0f} µs/msg" if per_msg[p] is not None else "")
                        for p in PROCESSES
                    )
                    + f"; the four {total:.3f} cores"
                    + (f" {total_msg:,.0f} µs/msg" if rate else "")
                    + f"; kafka {out['cpu_per_s'].get('kafka', 0.0):.3f} cores"
                    + f"; load {out['load_average'][0]:.2f}",
                    flush=True,
                )
                if rate:
                    await asyncio.sleep(args.settle)
    finally:
        await cleanup(run)
    return phases


async def main_async(args: argparse.Namespace) -> None:
    settings = Settings()
    stamp = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
    results = Path(args.results) / f"pipeline-profile-{stamp}"
    results.mkdir(parents=True, exist_ok=True)
    phases: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for label, extra in sides(args):
            for out in await one_side(settings, args, label, extra, results):
                out["round"] = round_
                phases.append(out)
    (results / "phases.json").write_text(
        json.dumps({"command": " ".join(sys.argv), "phases": phases}, indent=1)
    )
    print(f"results in {results}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,400,2000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--lamps", type=int, default=2000)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--old", help="a copy of another tree's packages, run as side 'old'")
    parser.add_argument(
        "--side", action="append", default=[], help="NAME:VAR=VALUE,...: one more side"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--results", default="devtools/bench/results")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",") if r]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
