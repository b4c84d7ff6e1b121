"""The detection worker's throughput, old code against new, interleaved in one run.

The batch-path measurement of ``devtools/bench/detection_throughput.py`` (one topic of
``--messages`` lamp messages, the real worker timed from "partitions ready" until its committed
offsets reach the end), run alternately on two versions of the worker: ``--old`` (a git
revision, extracted with ``git archive`` into a temporary folder: the working tree is not
touched) and the working tree as it is (or ``--new``, another revision, extracted the same
way). Both run with this interpreter (the same venv); an extracted side from its own tree
(working folder and ``PYTHONPATH``), which therefore imports its own ``pipeline``/``agents``
ahead of the editable install's (checked before the runs). Every run reads the same topic, filled
once, with a consumer group, instance id and changelog of its own; the topics (a unique
prefix) are deleted at the end unless ``--keep-topics``.

    .venv/bin/python -m devtools.bench.detection_ab --old d16921f [--pairs 5]
        [--messages 300000] [--lamps 2000] [--out devtools/bench/results/detection_ab-<utc>.json]
        [--new REV]                      # the new code at a revision (default: the working tree)
        [--new-agents detect_incidents]  # the new worker's --agents (default: all of them)
        [--no-warmup]                    # no unmeasured old/new pair first

Why interleaved, and why CPU time: the development machines have 2 cores, shared with Kafka
and with other people's test runs. Wall-clock events/s follows that load; the worker's own CPU
time per event (user + system, /proc) much less. Alternating old, new, old, new ... spreads a
change of load over both sides, and each pair's new/old ratio compares two neighbouring runs.

It prints what it measured and writes the raw results (JSON); nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from devtools.bench.detection_throughput import (
    code_fingerprint,
    cpu_seconds,
    delete_topics,
    log_problems,
    prefill,
    tail,
    wait_ready,
    with_prefix,
    worker_env,
)
from devtools.bench.probes import Offsets, cpu_model
from pipeline.settings import Settings, load_settings
from pipeline.topics import LAMP_MESSAGES, ensure_topics, topic_name

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "devtools" / "bench" / "results"
MODULE = "devtools.bench.detection_ab"
# The worker's code in either layout: before issue #13 the runtime was pipeline/streaming.py and
# pipeline/worker.py, since then it is agents/runtime/.
WORKER_CODE = ("pipeline/streaming.py", "pipeline/worker.py", "pipeline/eventtime.py", "agents")


@dataclass(frozen=True)
class Code:
    """One side of the comparison: a tree of the project and how to start its worker."""

    label: str  # "old" or "new"
    tree: Path
    revision: str  # a commit, or "working tree"
    module: str  # `python -m <module> worker`
    options: tuple[str, ...] = ()  # more options of `worker`

    @property
    def command(self) -> str:
        return " ".join(["python -m", self.module, "worker", *self.options])

    def fingerprint(self) -> str:
        if self.tree == REPO:
            return code_fingerprint()
        return tree_fingerprint(self.tree)


@dataclass
class Run:
    """One worker's pass over the topic."""

    order: int
    pair: int  # 0: the warm-up pair, left out of the figures
    label: str
    started_utc: str
    events: int
    seconds: float  # partitions ready -> all offsets committed
    startup_s: float
    steady_per_s: float  # from its first commit
    cpu_s: float  # the worker's user + system time over ``seconds``
    load_before: float
    load_after: float
    code: str
    log: str
    problems: list[str] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6


def tree_fingerprint(tree: Path) -> str:
    """A short hash of a tree's worker code (both layouts)."""
    digest = hashlib.sha256()
    for name in WORKER_CODE:
        path = tree / name
        files = [path] if name.endswith(".py") else sorted(path.rglob("*.py"))
        for f in files:
            if f.is_file():
                digest.update(str(f.relative_to(tree)).encode())
                digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def worker_module(tree: Path) -> str:
    """The package whose ``__main__`` is the ``veilleuse`` command in that tree."""
    for module in ("cli", "pipeline"):  # since issue #13, before it
        if (tree / module / "__main__.py").is_file():
            return module
    raise SystemExit(f"{tree}: neither cli/__main__.py nor pipeline/__main__.py")


def extract(revision: str, into: Path) -> tuple[str, Path]:
    """``git archive`` of ``revision`` unpacked under ``into``; returns (full commit, tree)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{revision}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit],
        check=True,
        capture_output=True,
    ).stdout
    tree = into / commit[:12]
    tree.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return commit, tree


def worker_process_env(code: Code, prefix: str, app_id: str) -> dict[str, str]:
    env = {**os.environ, **worker_env(prefix, app_id)}
    env.pop("PYTHONPATH", None)
    if code.tree != REPO:
        # `-m` puts the working folder first on sys.path already; PYTHONPATH says it again for
        # whatever the worker starts itself.
        env["PYTHONPATH"] = str(code.tree)
    return env


def imported_from(code: Code) -> dict[str, str]:
    """Where that side's worker process imports the project's packages from (a check that
    the old side does not run the working tree's code)."""
    probe = (
        "import json, agents, pipeline, pipeline.settings; "
        "print(json.dumps({m.__name__: m.__file__ for m in (agents, pipeline)}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=code.tree,
        env=worker_process_env(code, "unused.", "unused"),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: dict[str, str] = json.loads(out)
    return found


async def one_run(
    code: Code,
    settings: Settings,
    offsets: Offsets,
    total: int,
    workdir: Path,
    *,
    order: int,
    pair: int,
) -> Run:
    """The batch-path measurement of detection_throughput.py for one side."""
    prefix = settings.kafka.topic_prefix
    name = f"{code.label}-{pair}"
    app_id = f"{prefix}{name}"
    log = workdir / f"{name}.log"
    fingerprint = code.fingerprint()
    load_before = os.getloadavg()[0]
    started = time.time()
    argv = [sys.executable, "-m", code.module, "worker", *code.options]
    argv += ["--instance-id", f"ab-{name}"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=code.tree,
            env=worker_process_env(code, prefix, app_id),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = await wait_ready(proc, log, settings.kafka.topic_partitions)
        cpu_at_ready = cpu_seconds(proc.pid)
        series: list[tuple[float, int]] = []
        deadline = time.monotonic() + 600
        while True:
            done = await offsets.committed(app_id)
            series.append((time.time(), done))
            if done >= total:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{name}: worker exited with {proc.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: worker at {done}/{total} after 600s:\n{tail(log)}")
            await asyncio.sleep(0.1)
        cpu = cpu_seconds(proc.pid) - cpu_at_ready
    finally:
        stop(proc)
    first_commit = next(t for t, n in series if n > 0)
    end = series[-1][0]
    return Run(
        order=order,
        pair=pair,
        label=code.label,
        started_utc=datetime.fromtimestamp(started, UTC).strftime("%H:%M:%S"),
        events=total,
        seconds=end - ready,
        startup_s=ready - started,
        # A small topic can be done by the first commit seen: no rate after it.
        steady_per_s=total / (end - first_commit) if end > first_commit else float("nan"),
        cpu_s=cpu,
        load_before=load_before,
        load_after=os.getloadavg()[0],
        code=fingerprint,
        log=str(log),
        problems=log_problems(log),
    )


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Ratio:
    median: float
    low: float
    high: float


def measured(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.pair > 0]


def pair_ratios(runs: list[Run]) -> tuple[Ratio, Ratio]:
    """new/old per pair, for events/s and for CPU µs per event: (median, min, max) of each."""
    by_pair: dict[int, dict[str, Run]] = {}
    for run in measured(runs):
        by_pair.setdefault(run.pair, {})[run.label] = run
    pairs = [p for p in by_pair.values() if {"old", "new"} <= p.keys()]
    if not pairs:
        raise ValueError("no complete old/new pair")
    rate = [p["new"].per_s / p["old"].per_s for p in pairs]
    cpu = [p["new"].cpu_us_per_event / p["old"].cpu_us_per_event for p in pairs]
    return (
        Ratio(statistics.median(rate), min(rate), max(rate)),
        Ratio(statistics.median(cpu), min(cpu), max(cpu)),
    )


def summary_lines(runs: list[Run]) -> list[str]:
    lines = [
        "| # | pair | code | start (UTC) | events/s | from 1st commit | worker CPU s | cores "
        "| µs CPU/event | load avg before→after | code fingerprint |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.order} | {r.pair or 'warm-up'} | {r.label} | {r.started_utc} | {r.per_s:,.0f} "
            f"| {r.steady_per_s:,.0f} | {r.cpu_s:.1f} | {r.cpu_s / r.seconds:.2f} "
            f"| {r.cpu_us_per_event:.1f} | {r.load_before:.2f}→{r.load_after:.2f} | {r.code} |"
        )
    lines.append("")
    lines.append("| code | runs | events/s median (min-max) | µs CPU/event median (min-max) |")
    lines.append("|---|---|---|---|")
    for label in ("old", "new"):
        side = [r for r in measured(runs) if r.label == label]
        if not side:
            continue
        rates = [r.per_s for r in side]
        cpus = [r.cpu_us_per_event for r in side]
        lines.append(
            f"| {label} | {len(side)} | {statistics.median(rates):,.0f} "
            f"({min(rates):,.0f}-{max(rates):,.0f}) | {statistics.median(cpus):.1f} "
            f"({min(cpus):.1f}-{max(cpus):.1f}) |"
        )
    for label in ("old", "new"):
        codes = sorted({r.code.split()[0] for r in runs if r.label == label})
        if len(codes) > 1:
            lines.append(
                f"WARNING: the {label} worker's code changed between runs ({', '.join(codes)}): "
                "someone was editing it; each run measured the code of its fingerprint"
            )
    rate, cpu = pair_ratios(runs)
    lines.append("")
    lines.append(
        f"new/old events/s, per pair: median {rate.median:.3f}, min-max {rate.low:.3f}-"
        f"{rate.high:.3f} (above 1: the new code is faster)"
    )
    lines.append(
        f"new/old worker CPU µs per event, per pair: median {cpu.median:.3f}, min-max "
        f"{cpu.low:.3f}-{cpu.high:.3f} (below 1: the new code spends less)"
    )
    return lines


async def compare(
    args: argparse.Namespace, sides: list[Code], settings: Settings, workdir: Path, runs: list[Run]
) -> None:
    """Fill the topic once, then the runs, appended to ``runs`` as they end."""
    await ensure_topics(settings)
    fill_s, size = await prefill(settings, args.messages, args.lamps)
    topic = topic_name(settings, LAMP_MESSAGES)
    print(
        f"prefill: {args.messages:,} messages ({size / 1e6:,.1f} MB) over {args.lamps} "
        f"lamps in {fill_s:.1f}s, topic {topic}; work files in {workdir}",
        flush=True,
    )
    async with Offsets(settings, topic) as offsets:
        total = await offsets.end()
        # Pair 0 warms up Kafka (a fresh topic's first transactions can stall on leadership)
        # and the page cache; it is printed but left out of the figures.
        for pair in range(0 if args.warmup else 1, args.pairs + 1):
            for code in sides:
                run = await one_run(
                    code, settings, offsets, total, workdir, order=len(runs) + 1, pair=pair
                )
                runs.append(run)
                print(
                    f"run {run.order} (pair {pair or 'warm-up'}, {run.label}, code {run.code}): "
                    f"{run.per_s:,.0f} events/s ({run.events:,} in {run.seconds:.2f}s; "
                    f"start-up {run.startup_s:.1f}s; from its first commit "
                    f"{run.steady_per_s:,.0f}/s); worker CPU {run.cpu_s:.1f}s = "
                    f"{run.cpu_s / run.seconds:.2f} cores, {run.cpu_us_per_event:.1f} µs "
                    f"per event; load average {run.load_before:.2f}→{run.load_after:.2f}",
                    flush=True,
                )
                for problem in run.problems:
                    print(f"  log: {problem}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git revision of the old code")
    parser.add_argument(
        "--new", help="git revision of the new code (default: the working tree, as it is)"
    )
    parser.add_argument(
        "--new-agents",
        help="the new worker's --agents (default: the worker's own default, every registered "
        "agent); the old worker, before the agent registry, runs its one detection agent",
    )
    parser.add_argument("--pairs", type=int, default=5, help="old/new pairs (runs: twice that)")
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--lamps", type=int, default=2_000)
    parser.add_argument("--out", type=Path, help="raw results (JSON); default under results/")
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="no warm-up pair first"
    )
    parser.add_argument("--keep-topics", action="store_true")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    now = datetime.now(UTC)
    out_path: Path = args.out or RESULTS / f"detection_ab-{now:%Y%m%dT%H%M}Z.json"
    workdir = Path(tempfile.mkdtemp(prefix="detection-ab-"))
    commit, old_tree = extract(args.old, workdir / "old")
    new_revision, new_tree = "working tree", REPO
    if args.new:
        new_revision, new_tree = extract(args.new, workdir / "new")
    sides = [
        Code("old", old_tree, commit, worker_module(old_tree)),
        Code(
            "new",
            new_tree,
            new_revision,
            worker_module(new_tree),
            ("--agents", args.new_agents) if args.new_agents else (),
        ),
    ]
    command = " ".join([os.path.relpath(sys.executable), "-m", MODULE, *sys.argv[1:]])
    header = [
        f"machine: {platform.node()}, {os.cpu_count()} cores ({cpu_model()}), Python "
        f"{platform.python_version()}, {platform.platform()}",
        f"date: {now:%Y-%m-%d %H:%M} UTC; command: {command}",
        "shared machine: Kafka and other people's test runs use the same cores, so events/s "
        "follows their load; the worker's CPU time per event much less. The runs alternate "
        "old, new, old, new ... so that a change of load falls on both sides.",
    ]
    for code in sides:
        modules = imported_from(code)
        header.append(
            f"{code.label}: {code.revision} from {code.tree}, `{code.command}`, "
            f"worker code at the start {code.fingerprint()}; imports "
            + ", ".join(f"{name} from {path}" for name, path in modules.items())
        )
        if any(not Path(path).is_relative_to(code.tree) for path in modules.values()):
            raise SystemExit(f"the {code.label} side would not run its own code: {modules}")
    for line in header:
        print(line, flush=True)
    base = load_settings()
    prefix = f"benchab{uuid.uuid4().hex[:6]}."
    started = time.monotonic()
    interrupted = False
    runs: list[Run] = []
    try:
        asyncio.run(compare(args, sides, with_prefix(base, prefix), workdir, runs))
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: the worker stopped, deleting the topics", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not args.keep_topics:
            asyncio.run(delete_topics(base, [prefix]))
    lines = ["", "## summary", *header]
    if runs:
        lines.append(f"{len(runs)} runs in {time.monotonic() - started:.0f}s")
        if measured(runs):
            lines += summary_lines(runs)
    print("\n".join(lines), flush=True)
    if runs:
        raw = {
            "command": command,
            "date_utc": f"{now:%Y-%m-%d %H:%M}",
            "old": {"revision": commit, "worker": sides[0].command},
            "new": {"revision": new_revision, "worker": sides[1].command},
            "messages": args.messages,
            "lamps": args.lamps,
            "topic_prefix": prefix,
            "interrupted": interrupted,
            "runs": [
                {
                    **asdict(r),
                    # Strict JSON has no NaN: a run with no rate after its first commit.
                    "steady_per_s": None if math.isnan(r.steady_per_s) else r.steady_per_s,
                    "warmup": r.pair == 0,
                    "per_s": r.per_s,
                    "cpu_us_per_event": r.cpu_us_per_event,
                }
                for r in runs
            ],
            "summary": lines,
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n")
        print(f"raw results: {os.path.relpath(out_path, Path.cwd())}")
    if interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
