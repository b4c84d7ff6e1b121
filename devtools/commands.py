"""The development commands of ``veilleuse``: the local stack, its lamps' credentials on the local
Mosquitto, the smoke run, the simulator, the demo and the bench. Not in the production wheel:
cli.dev registers them when this package imports (a development install)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.base import settings_of
from pipeline.settings import Settings

if TYPE_CHECKING:
    from devtools.stack.mosquitto import Mosquitto
    from pipeline.lamps import MosquittoCredentials


@click.group()
def stack() -> None:
    """The local stack: Kafka, Elasticsearch, PostgreSQL, Redis, Mosquitto on 127.0.0.1, and
    Debian's Chromium for the console's browser tests."""


SERVICES_ARG = click.argument("services", nargs=-1)


@stack.command("up")
@SERVICES_ARG
@click.pass_context
def stack_up(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Install what is missing, start what is not running, wait until each answers."""
    from devtools.stack import manager

    for report in manager.up(settings_of(ctx), services):
        click.echo(report.line())


@stack.command("down")
@SERVICES_ARG
@click.pass_context
def stack_down(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Stop the services this stack started (and nothing else)."""
    from devtools.stack import manager

    for report in manager.down(settings_of(ctx), services):
        click.echo(report.line())


@stack.command("status")
@SERVICES_ARG
@click.pass_context
def stack_status(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Probe every service; exits 1 unless all of them answer."""
    from devtools.stack import manager

    reports = manager.status(settings_of(ctx), services)
    for report in reports:
        click.echo(report.line())
    if any(report.state not in manager.READY for report in reports):
        sys.exit(1)


@stack.command("logs")
@click.argument("service")
@click.option("-n", "--lines", default=50, show_default=True, help="Lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.pass_context
def stack_logs(ctx: click.Context, service: str, lines: int, follow: bool) -> None:
    """Show a service's log (.stack/logs/SERVICE.log)."""
    from devtools.stack import manager

    (chosen,) = manager.services(settings_of(ctx), (service,))
    if not chosen.log_file.exists():
        raise click.ClickException(f"no log yet at {chosen.log_file}")
    click.echo(f"==> {chosen.log_file}", err=True)
    if follow:
        os.execvp("tail", ["tail", "-n", str(lines), "-F", str(chosen.log_file)])
    click.echo(chosen.tail(lines))


@click.group()
def lamps() -> None:
    """Register lamps and manage their broker credentials."""


def _credentials(settings: Settings) -> tuple[Mosquitto, MosquittoCredentials]:
    from devtools.stack.context import StackContext
    from devtools.stack.mosquitto import Mosquitto

    broker = Mosquitto(StackContext(settings))
    return broker, broker.credentials()


@lamps.command("provision")
@click.option("--site", help="The lamp's site (nursing home), e.g. fr-lyon-12.")
@click.option("--lamp", help="The lamp's id, e.g. L-000123.")
@click.option(
    "--csv",
    "csv_file",
    type=click.File("r"),
    help="Bulk form: a CSV of site_id,lamp_id rows ('-' for standard input).",
)
@click.option("--rotate", is_flag=True, help="Issue a new password to an already provisioned lamp.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write site_id,lamp_id,password to this file (mode 0600) instead of standard output.",
)
@click.pass_context
def lamps_provision(  # noqa: PLR0917 - click passes every option positionally
    ctx: click.Context,
    site: str | None,
    lamp: str | None,
    csv_file: click.utils.LazyFile | None,
    rotate: bool,
    out: Path | None,
) -> None:
    """Register lamps and create their broker credentials; each password is printed once."""
    from pipeline.lamps import parse_bulk_csv

    if csv_file is not None:
        if site or lamp:
            raise click.UsageError("give either --csv or --site/--lamp, not both")
        pairs = parse_bulk_csv(csv_file.read())
    elif site and lamp:
        pairs = [(site, lamp)]
    else:
        raise click.UsageError("give --site and --lamp, or --csv")
    broker, credentials = _credentials(settings_of(ctx))
    issued = credentials.provision(pairs, rotate=rotate)
    lines = ["site_id,lamp_id,password", *(f"{c.site_id},{c.lamp_id},{c.password}" for c in issued)]
    if out is not None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        click.echo(f"{len(issued)} lamp(s) provisioned; passwords written to {out}", err=True)
    else:
        click.echo("\n".join(lines))
        click.echo(
            f"{len(issued)} lamp(s) provisioned. The passwords are shown only this once.", err=True
        )
    if not broker.reload():
        click.echo("mosquitto is not running: the lamps are known at its next start", err=True)


@lamps.command("revoke")
@click.argument("lamp_ids", nargs=-1, required=True)
@click.pass_context
def lamps_revoke(ctx: click.Context, lamp_ids: tuple[str, ...]) -> None:
    """Remove lamps and their broker credentials."""
    broker, credentials = _credentials(settings_of(ctx))
    credentials.revoke(list(lamp_ids))
    broker.reload()
    click.echo(f"revoked {len(lamp_ids)} lamp(s)", err=True)


@lamps.command("list")
@click.pass_context
def lamps_list(ctx: click.Context) -> None:
    """The registered lamps (never their passwords)."""
    _, credentials = _credentials(settings_of(ctx))
    click.echo("site_id,lamp_id,provisioned_at")
    for lamp in credentials.lamps():
        click.echo(f"{lamp.site_id},{lamp.lamp_id},{lamp.provisioned_at}")


@click.command()
@click.pass_context
def smoke(ctx: click.Context) -> None:
    """A round trip through every service of the stack; exits 1 if any fails."""
    from devtools.smoke import run_all

    checks = run_all(settings_of(ctx))
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        click.echo(f"{mark} {check.service:<14}{check.seconds:6.2f}s  {check.detail}")
    if not all(check.ok for check in checks):
        sys.exit(1)


@click.command()
@click.option("--lamps", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--sites", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--duration", "duration_s", type=float, default=300.0, show_default=True,
              help="Seconds of wall time to play.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--incident-rate", type=float, default=2.0, show_default=True,
              help="Random incidents per lamp and hour.")  # fmt: skip
@click.option("--life-speed", type=float, default=1.0, show_default=True,
              help="Daily life this many times faster (incidents keep real time).")  # fmt: skip
@click.option("--demo-home", is_flag=True, help="The demo's scripted nursing home instead.")
@click.option("--dry-run", is_flag=True, help="Generate only: no MQTT, print the figures.")
@click.option("--keep-lamps", is_flag=True, help="Do not revoke the lamps' accounts afterwards.")
@click.option(
    "--sockets",
    is_flag=True,
    help="Play through the socket load generator (above 5,000 lamps: always).",
)
@click.option("--processes", type=click.IntRange(min=0), default=0,
              help="The socket generator's processes (default: one per 15,000 lamps).")  # fmt: skip
@click.pass_context
def simulate(  # noqa: PLR0917 - click passes every option positionally
    ctx: click.Context,
    lamps: int,
    sites: int,
    duration_s: float,
    seed: int,
    incident_rate: float,
    life_speed: float,
    demo_home: bool,
    dry_run: bool,
    keep_lamps: bool,
    sockets: bool,
    processes: int,
) -> None:
    """Play a simulated lamp fleet over real MQTT, each lamp with its own credentials.

    Lamps are provisioned on the local broker (revoked afterwards). Prints what was published
    and the ground truth: the alerts the pipeline must raise. See docs/simulator.md.
    """
    import asyncio
    import time
    import uuid

    from devtools.simulate import MAX_CONNECTIONS, PlayedFleet, simulate_sockets
    from devtools.simulate import simulate as run_simulation
    from devtools.simulator import SimConfig, Simulation, demo_config, worker_env

    settings = settings_of(ctx)
    run = f"sim-{uuid.uuid4().hex[:6]}"
    if demo_home:
        config = demo_config(int(time.time() * 1000), seed=seed, run=run)
        env = " ".join(f"{k}={v}" for k, v in worker_env(config).items())
        click.echo(f"the demo home's ground truth assumes workers started with: {env}")
    else:
        config = SimConfig(
            lamps=lamps, sites=sites, seed=seed, start_ms=int(time.time() * 1000),
            duration_s=duration_s, incident_rate=incident_rate, life_speed=life_speed,
            site_prefix=run, lamp_prefix=run,
        )  # fmt: skip
    sim: Simulation | PlayedFleet
    if dry_run:
        started = time.perf_counter()
        sim = Simulation(config)
        count = sum(1 for _ in sim.messages())
        elapsed = time.perf_counter() - started
        click.echo(f"generated {count} messages in {elapsed:.1f} s ({count / elapsed:,.0f}/s)")
    elif sockets or config.lamps > MAX_CONNECTIONS:
        sim, stats = asyncio.run(
            simulate_sockets(settings, config, keep=keep_lamps, processes=processes)
        )
        click.echo(
            f"published {stats.published:,} messages in {stats.played_at - stats.started_at:.1f} s "
            f"({stats.published / max(stats.played_at - stats.started_at, 1e-9):,.0f}/s); QoS 1 "
            f"{stats.sent_qos1:,}, acknowledged {stats.acked:,}, without PUBACK {stats.unacked:,}; "
            f"connections lost {stats.lost}; player lag max {stats.max_lag_ms:.0f} ms "
            f"({stats.lag_over_100ms:,} messages over 100 ms)"
        )
    else:
        sim, stats = asyncio.run(run_simulation(settings, config, keep=keep_lamps))
        click.echo(
            f"published {stats.published} messages in {stats.finished_at - stats.started_at:.1f} s "
            f"({stats.rate:,.0f}/s); player lag max {stats.max_lag_ms:.0f} ms; acknowledgements "
            f"of the last QoS 1 messages waited for {stats.finished_at - stats.played_at:.1f} s"
        )
    rate = sim.counts.published / config.lamps / config.duration_s
    click.echo(f"{config.lamps} lamps on {config.sites} site(s): {rate:.3f} messages/s per lamp")
    click.echo(f"counts: {sim.counts.as_dict()}")
    for e in sorted(sim.truth.expected, key=lambda e: e.due_ms):
        need = "" if e.required else " (may)"
        click.echo(
            f"expect {e.kind:<15} {e.lamp_id:<24} by t={e.latest_ms / 1000:7.1f} s  "
            f"{e.scenario}{need}"
        )
    for n in sim.truth.non_incidents:
        span = f"t={n.from_ms / 1000:.0f}-{n.to_ms / 1000:.0f} s"
        click.echo(f"forbid {n.kind:<15} {n.lamp_id:<24} {span}  {n.scenario}")


@click.command()
@click.option(
    "--seed",
    type=int,
    default=2,  # presets.DEMO_SEED (devtools.simulator is imported lazily, not at --help)
    show_default=True,
    help="The home's life and network (13: the one that met the fall rule's former findings).",
)
@click.option("--workers", type=click.IntRange(1, 4), default=1, show_default=True)
@click.option("--no-stack", is_flag=True, help="Do not run `stack up` and `setup` first.")
@click.option("--keep", is_flag=True, help="Keep the run's Kafka topics afterwards.")
@click.option(
    "--serve",
    is_flag=True,
    help="Keep the pipeline and the console up after the verdict, until Ctrl-C (or SIGTERM).",
)
@click.option(
    "--short", is_flag=True, hidden=True, help="The tests' 90-second home, detection only."
)
@click.pass_context
def demo(  # noqa: PLR0917 - click passes every option positionally
    ctx: click.Context,
    seed: int,
    workers: int,
    no_stack: bool,
    keep: bool,
    serve: bool,
    short: bool,
) -> None:
    """A simulated nursing home through the whole pipeline, scored against its ground truth.

    Ends with the support console's address and a one-time sign-in link. Exits 1 if any expected
    alert was missed, raised late (a critical one after its condition + 2 s) or early, or a
    false one raised, whatever its kind (with --serve: once stopped).
    """
    import asyncio

    from devtools.demo import DemoRun, run_demo

    run = DemoRun(
        settings_of(ctx),
        click.echo,
        sys.stdout.isatty(),
        seed=seed,
        workers=workers,
        keep=keep,
        serve=serve,
        short=short,
        full=not short,
    )
    sys.exit(asyncio.run(run_demo(run, stack=not no_stack)))


@click.command()
@click.option("--lamps", default=2000, show_default=True, help="Lamps of the fleet.")
@click.option("--sites", default=20, show_default=True, help="Sites the lamps are spread over.")
@click.option("--duration", default=40.0, show_default=True, help="Seconds of load per step.")
@click.option(
    "--rates",
    help="Comma-separated msg/s to play, in order (for both systems); default: --find-max.",
)
@click.option("--find-max", is_flag=True, help="Search each system's highest rate (the default).")
@click.option("--start-rate", default=1000.0, show_default=True, help="Pipeline search start.")
@click.option(
    "--baseline-start-rate", default=500.0, show_default=True, help="Baseline search start."
)
@click.option(
    "--baseline-threads",
    default=10,
    show_default=True,
    help="Threads of the baseline's pool, one PostgreSQL connection each.",
)
@click.option("--falls", default=10, show_default=True, help="Silent falls per step.")
@click.option("--max-steps", default=5, show_default=True, help="Steps per system at most.")
@click.option(
    "--publishers", default=2, show_default=True, help="Processes playing the lamp fleet."
)
@click.option(
    "--only",
    type=click.Choice(["pipeline", "baseline"]),
    help="Run one system only (no ratio).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append a dated Markdown section to this file (e.g. BENCHMARKS.md).",
)
@click.option("--json", "as_json", is_flag=True, help="Also print the results as one JSON line.")
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("devtools/bench/results"),
    show_default=True,
    help="Folder of the raw results (bench-<date>.json); '' for none.",
)
@click.option("--keep", is_flag=True, help="Leave the run's topics, indices, database, lamps.")
@click.pass_context
def bench(  # noqa: PLR0917 - click passes every option positionally
    ctx: click.Context,
    lamps: int,
    sites: int,
    duration: float,
    rates: str | None,
    find_max: bool,
    start_rate: float,
    baseline_start_rate: float,
    baseline_threads: int,
    falls: int,
    max_steps: int,
    publishers: int,
    only: str | None,
    output: Path | None,
    as_json: bool,
    results: Path | None,
    keep: bool,
) -> None:
    """End-to-end throughput and fall-alert latency, against the old stack's design.

    Steps of load through MQTT → connector → Kafka → detection worker and sinks, alternating
    with steps through the baseline (a pool of threads writing each message to PostgreSQL and
    Elasticsearch synchronously), with the CPU time per message of every process and service.
    See docs/bench.md.
    """
    import asyncio
    import shlex
    from datetime import UTC, datetime

    from devtools.bench import harness

    if rates and find_max:
        raise click.UsageError("--rates and --find-max exclude each other")
    asked = tuple(float(r) for r in rates.split(",")) if rates else ()
    options = harness.BenchOptions(
        lamps=lamps,
        sites=sites,
        duration_s=duration,
        rates=asked,
        start_rate=start_rate,
        baseline_start_rate=baseline_start_rate,
        baseline_threads=baseline_threads,
        falls_per_step=falls,
        max_steps=max(max_steps, len(asked)),
        publishers=publishers,
        keep=keep,
        systems=(only,) if only else ("pipeline", "baseline"),
    )
    started = datetime.now(UTC)
    report = asyncio.run(harness.run_bench(settings_of(ctx), options, click.echo))
    command = "veilleuse bench " + shlex.join(sys.argv[2:])
    date = started.strftime("%Y-%m-%d %H:%M UTC")
    click.echo("")
    click.echo(harness.markdown(report, command, date))
    click.echo("stored: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.counts.items())))
    raw = harness.as_json(report, command=command, date=date)
    if as_json:
        click.echo(raw)
    if results and str(results) not in ("", "."):
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"bench-{started.strftime('%Y%m%dT%H%MZ')}.json"
        path.write_text(raw + "\n")
        click.echo(f"raw results in {path}")
    if output is not None:
        with output.open("a") as out:
            out.write("\n" + harness.markdown(report, command, date))
        click.echo(f"appended to {output}")


@click.command("bench-baseline", hidden=True)
@click.option("--site", "sites", multiple=True, required=True)
@click.option("--index", required=True, help="Elasticsearch index of the messages.")
@click.option("--client-id", required=True)
@click.option("--threads", default=10, show_default=True, help="Threads of the pool.")
@click.option(
    "--progress-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the count of messages stored so far.",
)
@click.pass_context
def bench_baseline(  # noqa: PLR0917 - click passes every option positionally
    ctx: click.Context,
    sites: tuple[str, ...],
    index: str,
    client_id: str,
    threads: int,
    progress_file: Path | None,
) -> None:
    """The bench's baseline: the old stack's worker pool, as Sidekiq ran it (docs/bench.md)."""
    from devtools.bench.baseline import run_baseline

    run_baseline(
        settings_of(ctx),
        sites=list(sites),
        index=index,
        client_id=client_id,
        threads=threads,
        progress_file=progress_file,
    )


COMMANDS: list[click.Command] = [stack, lamps, smoke, simulate, demo, bench, bench_baseline]
