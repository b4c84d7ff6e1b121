"""The ``veilleuse`` command. Settings are read once here and passed down."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.errors import VeilleuseError
from pipeline.settings import Settings, load_settings

if TYPE_CHECKING:
    from pipeline.lamps import MosquittoCredentials
    from pipeline.stack.mosquitto import Mosquitto


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)  # noqa: S101 - set by main()
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Veilleuse: the stream-processing backbone of the fall-detection service."""
    if ctx.obj is None:
        from pipeline.observability import configure_logging

        ctx.obj = load_settings()
        configure_logging(ctx.obj)


# -- stack -----------------------------------------------------------------------------------------


@cli.group()
def stack() -> None:
    """The local stack: Kafka, Elasticsearch, PostgreSQL, Redis, Mosquitto on 127.0.0.1."""


SERVICES_ARG = click.argument("services", nargs=-1)


@stack.command("up")
@SERVICES_ARG
@click.pass_context
def stack_up(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Install what is missing, start what is not running, wait until each answers."""
    from pipeline.stack import manager

    for report in manager.up(_settings(ctx), services):
        click.echo(report.line())


@stack.command("down")
@SERVICES_ARG
@click.pass_context
def stack_down(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Stop the services this stack started (and nothing else)."""
    from pipeline.stack import manager

    for report in manager.down(_settings(ctx), services):
        click.echo(report.line())


@stack.command("status")
@SERVICES_ARG
@click.pass_context
def stack_status(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Probe every service; exits 1 unless all of them answer."""
    from pipeline.stack import manager

    reports = manager.status(_settings(ctx), services)
    for report in reports:
        click.echo(report.line())
    answering = {manager.State.UP, manager.State.EXTERNAL}
    if any(report.state not in answering for report in reports):
        sys.exit(1)


@stack.command("logs")
@click.argument("service")
@click.option("-n", "--lines", default=50, show_default=True, help="Lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.pass_context
def stack_logs(ctx: click.Context, service: str, lines: int, follow: bool) -> None:
    """Show a service's log (.stack/logs/SERVICE.log)."""
    from pipeline.stack import manager

    (chosen,) = manager.services(_settings(ctx), (service,))
    if not chosen.log_file.exists():
        raise click.ClickException(f"no log yet at {chosen.log_file}")
    click.echo(f"==> {chosen.log_file}", err=True)
    if follow:
        os.execvp("tail", ["tail", "-n", str(lines), "-F", str(chosen.log_file)])
    click.echo(chosen.tail(lines))


# -- lamps ---------------------------------------------------------------------------------------


@cli.group()
def lamps() -> None:
    """Register lamps and manage their broker credentials."""


def _credentials(settings: Settings) -> tuple[Mosquitto, MosquittoCredentials]:
    from pipeline.stack.context import StackContext
    from pipeline.stack.mosquitto import Mosquitto

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
    broker, credentials = _credentials(_settings(ctx))
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
    broker, credentials = _credentials(_settings(ctx))
    credentials.revoke(list(lamp_ids))
    broker.reload()
    click.echo(f"revoked {len(lamp_ids)} lamp(s)", err=True)


@lamps.command("list")
@click.pass_context
def lamps_list(ctx: click.Context) -> None:
    """The registered lamps (never their passwords)."""
    _, credentials = _credentials(_settings(ctx))
    click.echo("site_id,lamp_id,provisioned_at")
    for lamp in credentials.lamps():
        click.echo(f"{lamp.site_id},{lamp.lamp_id},{lamp.provisioned_at}")


# -- setup and smoke -------------------------------------------------------------------------------


@cli.command()
@click.pass_context
def setup(ctx: click.Context) -> None:
    """Create the Kafka topics and apply the PostgreSQL migrations (both idempotent)."""
    from pipeline.topics import ensure_topics_sync

    for result in ensure_topics_sync(_settings(ctx)):
        state = "created" if result.created else "exists"
        note = f"  ({result.note})" if result.note else ""
        click.echo(f"topic {result.name:<22}{state:<9}{result.partitions} partitions{note}")
    _migrate(_settings(ctx))


@cli.command()
@click.pass_context
def smoke(ctx: click.Context) -> None:
    """A round trip through every service of the stack; exits 1 if any fails."""
    from pipeline.smoke import run_all

    checks = run_all(_settings(ctx))
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        click.echo(f"{mark} {check.service:<14}{check.seconds:6.2f}s  {check.detail}")
    if not all(check.ok for check in checks):
        sys.exit(1)


@cli.command()
@click.option(
    "--discard-session",
    is_flag=True,
    help="Instead of running: delete this replica's sessions (VEILLEUSE_MQTT__CLIENT_ID) and "
    "their queued messages on every broker, for a replica retired for good.",
)
@click.pass_context
def connector(ctx: click.Context, discard_session: bool) -> None:
    """Run the MQTT→Kafka connector until SIGTERM or SIGINT."""
    from connectors.mqtt_source import discard_sessions, run_connector
    from pipeline.observability import configure_sentry

    settings = _settings(ctx)
    if discard_session:
        for client_id in discard_sessions(settings):
            click.echo(f"discarded session {client_id}")
        return
    configure_sentry(settings, "connector")
    run_connector(settings)


@cli.command()
@click.option("--instance-id", help="This worker's stable name (default: settings, then host).")
@click.pass_context
def worker(ctx: click.Context, instance_id: str | None) -> None:
    """Run one detection worker (faust) until SIGTERM or SIGINT."""
    from pipeline.observability import configure_sentry
    from pipeline.worker import run_worker

    settings = _settings(ctx)
    configure_sentry(settings, "worker")
    run_worker(settings, instance_id=instance_id)


# -- PostgreSQL migrations and the sinks -----------------------------------------------------------


def _migrate(settings: Settings) -> None:
    import psycopg

    from pipeline import migrations

    try:
        applied = migrations.migrate(settings.postgres.conninfo())
    except psycopg.OperationalError as exc:
        raise migrations.MigrationError(f"PostgreSQL unavailable: {exc}") from exc
    for migration in applied:
        click.echo(f"migration {migration.label:<30}applied")
    current = migrations.discover()[-1]
    click.echo(f"database {settings.postgres.database!r} is at migration {current.label}")


@cli.command()
@click.option("--status", "show_status", is_flag=True, help="Only report; exits 1 unless current.")
@click.pass_context
def migrate(ctx: click.Context, show_status: bool) -> None:
    """Apply the pending PostgreSQL migrations (migrations/postgres/), in order."""
    from pipeline import migrations

    settings = _settings(ctx)
    if not show_status:
        _migrate(settings)
        return
    report = migrations.status(settings.postgres.conninfo())
    for migration in report.applied:
        click.echo(f"migration {migration.label:<30}applied")
    for migration, _ in report.changed:
        click.echo(f"migration {migration.label:<30}CHANGED since applied")
    for migration in report.pending:
        click.echo(f"migration {migration.label:<30}pending")
    for unknown in report.unknown:
        click.echo(f"migration {unknown.version:04d}_{unknown.name:<25}applied, no file here")
    if not report.up_to_date:
        sys.exit(1)


@cli.group()
def sink() -> None:
    """Run a sink: Kafka topics into a store, until SIGTERM or SIGINT."""


@sink.command("postgres")
@click.pass_context
def sink_postgres(ctx: click.Context) -> None:
    """activity.hourly.v1 and alerts.v1 into PostgreSQL (exactly once; see docs/postgres.md)."""
    from connectors.sinks.postgres import PostgresSink
    from connectors.sinks.runner import run_sink
    from pipeline.observability import configure_sentry

    settings = _settings(ctx)
    configure_sentry(settings, "sink-postgres")
    run_sink(settings, PostgresSink(settings), settings.sink.postgres_metrics_port)


# -- notifier (rule 10) and its staff directory ---------------------------------------------------


@cli.command()
@click.pass_context
def notifier(ctx: click.Context) -> None:
    """Run one notifier replica (alerts.v1 → webhooks, e-mail) until SIGTERM or SIGINT."""
    from connectors.notifier.service import run_notifier
    from pipeline.observability import configure_sentry

    settings = _settings(ctx)
    configure_sentry(settings, "notifier")
    run_notifier(settings)


@cli.group()
def staff() -> None:
    """The staff notified of a site's alerts (table staff, see docs/notifier.md)."""


@staff.command("add")
@click.option("--site", required=True, help="The site, e.g. fr-lyon-12.")
@click.option("--name", required=True, help="Unique per site; named in alert_events.")
@click.option("--email", help="Notified by e-mail.")
@click.option("--webhook-url", help="Notified by a signed webhook.")
@click.option("--on-duty/--off-duty", default=False, help="Notified first (default: off duty).")
@click.pass_context
def staff_add(  # noqa: PLR0917 - click passes every option positionally
    ctx: click.Context,
    site: str,
    name: str,
    email: str | None,
    webhook_url: str | None,
    on_duty: bool,
) -> None:
    """Add a staff member (or replace the one with this site and name)."""
    from connectors.notifier import staff as directory

    member = directory.StaffMember(site, name, email, webhook_url, on_duty)
    directory.add(_settings(ctx).postgres.conninfo(), member)
    click.echo(f"staff {site}/{name} saved", err=True)


@staff.command("remove")
@click.option("--site", required=True)
@click.option("--name", required=True)
@click.pass_context
def staff_remove(ctx: click.Context, site: str, name: str) -> None:
    """Remove a staff member."""
    from connectors.notifier import staff as directory

    if not directory.remove(_settings(ctx).postgres.conninfo(), site, name):
        raise click.ClickException(f"no staff {site}/{name}")
    click.echo(f"staff {site}/{name} removed", err=True)


@staff.command("list")
@click.option("--site", help="Only this site.")
@click.pass_context
def staff_list(ctx: click.Context, site: str | None) -> None:
    """The staff directory, as CSV."""
    from connectors.notifier import staff as directory

    click.echo("site_id,name,email,webhook_url,on_duty")
    for m in directory.members(_settings(ctx).postgres.conninfo(), site):
        click.echo(f"{m.site_id},{m.name},{m.email or ''},{m.webhook_url or ''},{m.on_duty}")


# -- search (Elasticsearch) ------------------------------------------------------------------------


@sink.command("elasticsearch")
@click.pass_context
def sink_elasticsearch(ctx: click.Context) -> None:
    """Index lamp.messages.v1 and lamp.dlq.v1 into Elasticsearch (docs/search.md)."""
    from connectors.sinks.elasticsearch import run as run_elasticsearch_sink
    from pipeline.observability import configure_sentry

    settings = _settings(ctx)
    configure_sentry(settings, "sink-elasticsearch")
    run_elasticsearch_sink(settings)


@cli.command()
@click.option(
    "--max-rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Documents per second at most (0: no limit; one bulk request at a time anyway).",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Documents per bulk request.")
@click.option(
    "--settle-s",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    help="After the swap, keep copying new records this long (the live sink follows in 5 s).",
)
@click.option("--delete-old", is_flag=True, help="Delete the old generation after the swap.")
@click.option("--restart", is_flag=True, help="Start an unfinished reindex over from scratch.")
@click.option(
    "--allow-fewer",
    is_flag=True,
    help="Swap even if the new generation has fewer documents than the old one (Kafka's "
    "retention dropped the oldest, or the new mapping refuses some).",
)
@click.option(
    "--drop-generation",
    type=click.IntRange(min=1),
    help="Instead of reindexing: delete the indices and templates of this old generation.",
)
@click.pass_context
def reindex(  # noqa: PLR0917 - click passes every option positionally
    ctx: click.Context,
    max_rate: float,
    batch_size: int | None,
    settle_s: float,
    delete_old: bool,
    restart: bool,
    allow_fewer: bool,
    drop_generation: int | None,
) -> None:
    """Rebuild the search index from Kafka into a new generation, then swap the aliases.

    Resumable: run it again after an interruption. See docs/search.md.
    """
    from connectors.sinks.elasticsearch import IndexNames
    from connectors.sinks.reindex import ReindexOptions, run_drop_generation, run_reindex
    from pipeline.observability import configure_sentry

    settings = _settings(ctx)
    configure_sentry(settings, "reindex")  # a long job, run unattended in a Kubernetes Job
    if drop_generation is not None:
        dropped = run_drop_generation(settings, drop_generation)
        click.echo(f"deleted generation {drop_generation}: {len(dropped)} index(es)")
        return
    options = ReindexOptions(
        max_rate=max_rate,
        batch_size=batch_size,
        settle_s=settle_s,
        delete_old=delete_old,
        restart=restart,
        allow_fewer=allow_fewer,
    )
    report = run_reindex(settings, options)
    for line in report.lines(IndexNames(settings.sink.elasticsearch_index_prefix)):
        click.echo(line)
    if report.interrupted:
        sys.exit(1)


# -- the query API and its tokens -----------------------------------------------------------------


@cli.command()
@click.pass_context
def api(ctx: click.Context) -> None:
    """Serve the query API (docs/api.md) until SIGTERM or SIGINT."""
    from api.app import run_api
    from pipeline.observability import configure_sentry

    settings = _settings(ctx)
    configure_sentry(settings, "api")
    run_api(settings)


@cli.group()
def token() -> None:
    """Bearer tokens of the query API: support (read), staff (own sites), admin."""


@token.command("create")
@click.option("--name", required=True, help="Unique; names the holder in the alert's life.")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["support", "staff", "admin"]),
    help="What it may do.",
)
@click.option("--site", "sites", multiple=True, help="A site a staff token may see (repeat).")
@click.pass_context
def token_create(ctx: click.Context, name: str, role: str, sites: tuple[str, ...]) -> None:
    """Create a token and print it (shown once: only its hash is kept)."""
    from api.tokens import create_token

    click.echo(create_token(_settings(ctx).postgres.conninfo(), name, role, sites))
    click.echo(f"token {name!r} ({role}) created", err=True)


@token.command("revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Revoke a token (refused by every API process within api.token_cache_s)."""
    from api.tokens import revoke_token

    if not revoke_token(_settings(ctx).postgres.conninfo(), name):
        raise click.ClickException(f"no live token {name!r}")
    click.echo(f"token {name!r} revoked", err=True)


@token.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """The tokens, as CSV (never the tokens themselves)."""
    from api.tokens import list_tokens

    click.echo("name,role,sites,created_at,revoked_at")
    for t in list_tokens(_settings(ctx).postgres.conninfo()):
        revoked = t.revoked_at.isoformat() if t.revoked_at else ""
        click.echo(f"{t.name},{t.role},{' '.join(t.sites)},{t.created_at.isoformat()},{revoked}")


# -- search index setup (the Kubernetes setup Job) -----------------------------------------------


@cli.command("setup-search")
@click.pass_context
def setup_search(ctx: click.Context) -> None:
    """Create the search index's current generation and its templates (idempotent).

    The Elasticsearch sink does the same when it starts; a deployment runs this once first so
    that the API can search before the first message arrives. Never changes a mapping.
    """
    import asyncio

    from connectors.sinks.elasticsearch import (
        IndexNames,
        async_client,
        current_generation,
        put_templates,
    )

    settings = _settings(ctx)
    names = IndexNames(settings.sink.elasticsearch_index_prefix)

    async def run() -> int:
        client = async_client(settings)
        try:
            generation = await current_generation(client, names)
            await put_templates(client, names, generation, aliased=True, overwrite=False)
            return generation
        finally:
            await client.close()

    generation = asyncio.run(run())
    click.echo(f"search index {names.prefix!r}: generation {generation}, templates in place")


# -- the simulator: `veilleuse simulate` and `veilleuse demo` -------------------------------------


@cli.command()
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
) -> None:
    """Play a simulated lamp fleet over real MQTT, each lamp with its own credentials.

    Lamps are provisioned on the local broker (revoked afterwards). Prints what was published
    and the ground truth: the alerts the pipeline must raise. See docs/simulator.md.
    """
    import asyncio
    import time
    import uuid

    from pipeline.simulate import simulate as run_simulation
    from pipeline.simulator import SimConfig, Simulation, demo_config, detection_env

    settings = _settings(ctx)
    run = f"sim-{uuid.uuid4().hex[:6]}"
    if demo_home:
        config = demo_config(int(time.time() * 1000), seed=seed, run=run)
        env = " ".join(f"{k}={v}" for k, v in detection_env(config.detection).items())
        click.echo(f"the demo home's ground truth assumes workers started with: {env}")
    else:
        config = SimConfig(
            lamps=lamps, sites=sites, seed=seed, start_ms=int(time.time() * 1000),
            duration_s=duration_s, incident_rate=incident_rate, life_speed=life_speed,
            site_prefix=run, lamp_prefix=run,
        )  # fmt: skip
    if dry_run:
        started = time.perf_counter()
        sim = Simulation(config)
        count = sum(1 for _ in sim.messages())
        elapsed = time.perf_counter() - started
        click.echo(f"generated {count} messages in {elapsed:.1f} s ({count / elapsed:,.0f}/s)")
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


@cli.command()
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--workers", type=click.IntRange(1, 4), default=1, show_default=True)
@click.option("--no-stack", is_flag=True, help="Do not run `stack up` and `setup` first.")
@click.option("--keep", is_flag=True, help="Keep the run's Kafka topics afterwards.")
@click.pass_context
def demo(ctx: click.Context, seed: int, workers: int, no_stack: bool, keep: bool) -> None:
    """A simulated nursing home through the whole pipeline, scored against its ground truth.

    Exits 1 if an expected critical alert was missed or a false critical one raised.
    """
    import asyncio

    from pipeline.demo import DemoRun, run_demo

    run = DemoRun(
        _settings(ctx), click.echo, sys.stdout.isatty(), seed=seed, workers=workers, keep=keep
    )
    sys.exit(asyncio.run(run_demo(run, stack=not no_stack)))


# -- bench (issue #7): the whole pipeline against the old stack's design --------------------------


@cli.command()
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
    "--baseline-start-rate", default=100.0, show_default=True, help="Baseline search start."
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
    falls: int,
    max_steps: int,
    publishers: int,
    only: str | None,
    output: Path | None,
    as_json: bool,
    keep: bool,
) -> None:
    """End-to-end throughput and fall-alert latency, against the old stack's design.

    Steps of load through MQTT → connector → Kafka → detection worker and sinks, then the same
    steps through the baseline (one process writing each message to PostgreSQL and
    Elasticsearch synchronously). See docs/bench.md.
    """
    import asyncio
    import shlex
    from datetime import UTC, datetime

    from pipeline.bench import harness, stats

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
        falls_per_step=falls,
        max_steps=max(max_steps, len(asked)),
        publishers=publishers,
        keep=keep,
        systems=(only,) if only else ("pipeline", "baseline"),
    )
    report = asyncio.run(harness.run_bench(_settings(ctx), options, click.echo))
    click.echo("")
    for line in [
        *stats.summary(report.pipeline, report.baseline),
        "",
        *stats.step_rows([*report.pipeline, *report.baseline]),
        "",
        *stats.stage_lines(report.pipeline),
        *report.notes,
        "stored: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.counts.items())),
    ]:
        click.echo(line)
    if as_json:
        click.echo(harness.as_json(report))
    if output is not None:
        command = "veilleuse bench " + shlex.join(sys.argv[2:])
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with output.open("a") as out:
            out.write("\n" + harness.markdown(report, command, date))
        click.echo(f"appended to {output}")


@cli.command("bench-baseline", hidden=True)
@click.option("--site", "sites", multiple=True, required=True)
@click.option("--index", required=True, help="Elasticsearch index of the messages.")
@click.option("--client-id", required=True)
@click.pass_context
def bench_baseline(ctx: click.Context, sites: tuple[str, ...], index: str, client_id: str) -> None:
    """The bench's baseline: the old stack's one-message-at-a-time worker (docs/bench.md)."""
    from pipeline.bench.baseline import run_baseline

    run_baseline(_settings(ctx), sites=list(sites), index=index, client_id=client_id)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except VeilleuseError as exc:
        from pipeline.observability import report_exception

        report_exception(exc)
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
