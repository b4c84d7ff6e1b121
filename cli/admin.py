"""The administration commands: one-off jobs of an operator or a Kubernetes Job (migrations,
topics, search index, staff, API tokens, reindex, the schemas' gate) and `alerts tail`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from cli.base import cli, settings_of
from pipeline.settings import Settings


@cli.command()
@click.pass_context
def setup(ctx: click.Context) -> None:
    """Create the Kafka topics and apply the PostgreSQL migrations (both idempotent)."""
    from pipeline.topics import ensure_topics_sync

    for result in ensure_topics_sync(settings_of(ctx)):
        state = "created" if result.created else "exists"
        note = f"  ({result.note})" if result.note else ""
        click.echo(f"topic {result.name:<22}{state:<9}{result.partitions} partitions{note}")
    _migrate(settings_of(ctx))


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
    """Apply the pending PostgreSQL migrations (pipeline/migrations/postgres/), in order."""
    from pipeline import migrations

    settings = settings_of(ctx)
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
    from notifier import staff as directory

    member = directory.StaffMember(site, name, email, webhook_url, on_duty)
    directory.add(settings_of(ctx).postgres.conninfo(), member)
    click.echo(f"staff {site}/{name} saved", err=True)


@staff.command("remove")
@click.option("--site", required=True)
@click.option("--name", required=True)
@click.pass_context
def staff_remove(ctx: click.Context, site: str, name: str) -> None:
    """Remove a staff member."""
    from notifier import staff as directory

    if not directory.remove(settings_of(ctx).postgres.conninfo(), site, name):
        raise click.ClickException(f"no staff {site}/{name}")
    click.echo(f"staff {site}/{name} removed", err=True)


@staff.command("list")
@click.option("--site", help="Only this site.")
@click.pass_context
def staff_list(ctx: click.Context, site: str | None) -> None:
    """The staff directory, as CSV."""
    from notifier import staff as directory

    click.echo("site_id,name,email,webhook_url,on_duty")
    for m in directory.members(settings_of(ctx).postgres.conninfo(), site):
        click.echo(f"{m.site_id},{m.name},{m.email or ''},{m.webhook_url or ''},{m.on_duty}")


@cli.group()
def alerts() -> None:
    """Read alerts.v1 (docs/consuming-alerts.md)."""


@alerts.command("tail")
@click.option("--site", "sites", multiple=True, help="Only this site (repeat for several).")
@click.option("--kind", "kinds", multiple=True, help="Only this kind, e.g. fall (repeatable).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest retained alert.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def alerts_tail(
    ctx: click.Context,
    sites: tuple[str, ...],
    kinds: tuple[str, ...],
    from_beginning: bool,
    as_json: bool,
) -> None:
    """Follow alerts.v1, one line per alert, until Ctrl-C; joins no group, commits nothing."""
    import asyncio
    import contextlib
    import signal

    from pipeline.alerts_tail import (
        AlertFilter,
        Undecodable,
        follow,
        format_json,
        format_line,
        unlisted_kinds_note,
    )

    settings = settings_of(ctx)
    if note := unlisted_kinds_note(kinds):
        click.echo(note, err=True)

    def ready(topic: str, partitions: list[int]) -> None:
        start = "the beginning" if from_beginning else "now"
        click.echo(f"following {topic} ({len(partitions)} partitions) from {start}", err=True)

    def health(answering: bool) -> None:
        # The person on call must not take a silent tail for a quiet night.
        if answering:
            click.echo(
                "Kafka answers again: following on, nothing committed meanwhile missed", err=True
            )
        else:
            click.echo(
                f"Kafka at {settings.kafka.bootstrap_servers} is not answering: no alert can "
                "arrive until it does (the tail waits and goes on by itself)",
                err=True,
            )

    async def run() -> None:
        items = follow(
            settings,
            from_beginning=from_beginning,
            alert_filter=AlertFilter(frozenset(sites), frozenset(kinds)),
            on_ready=ready,
            on_health=health,
        )
        async for item in items:
            if isinstance(item, Undecodable):
                click.echo(f"skipped undecodable record: {item.error}", err=True)
            else:
                click.echo(format_json(item) if as_json else format_line(item.alert))

    async def main() -> None:
        task = asyncio.ensure_future(run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):  # Ctrl-C or SIGTERM: how a tail ends
            await task

    try:
        asyncio.run(main())
    except BrokenPipeError:  # `veilleuse alerts tail | head`: the reader is gone, so are we
        # Python's final flush of stdout would fail again and say so: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


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

    settings = settings_of(ctx)
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

    click.echo(create_token(settings_of(ctx).postgres.conninfo(), name, role, sites))
    click.echo(f"token {name!r} ({role}) created", err=True)


@token.command("revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Revoke a token (refused by every API process within api.token_cache_s)."""
    from api.tokens import revoke_token

    if not revoke_token(settings_of(ctx).postgres.conninfo(), name):
        raise click.ClickException(f"no live token {name!r}")
    click.echo(f"token {name!r} revoked", err=True)


@token.command("link")
@click.argument("name")
@click.pass_context
def token_link(ctx: click.Context, name: str) -> None:
    """Print a one-time sign-in link to the console for the live token NAME (valid
    api.console_link_ttl_s, used up by its first click)."""
    from api.console import links
    from api.tokens import TokenError
    from pipeline.clients import redis

    settings = settings_of(ctx)
    try:
        code = links.store_for_token_name(
            settings.postgres.conninfo(), redis(settings), name, settings.api.console_link_ttl_s
        )
    except TokenError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(links.url_of(links.public_url(settings.api), code))
    minutes = settings.api.console_link_ttl_s / 60
    click.echo(f"one-time console link for token {name!r}, valid {minutes:.0f} min", err=True)


@token.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """The tokens, as CSV (never the tokens themselves)."""
    from api.tokens import list_tokens

    click.echo("name,role,sites,created_at,revoked_at")
    for t in list_tokens(settings_of(ctx).postgres.conninfo()):
        revoked = t.revoked_at.isoformat() if t.revoked_at else ""
        click.echo(f"{t.name},{t.role},{' '.join(t.sites)},{t.created_at.isoformat()},{revoked}")


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

    settings = settings_of(ctx)
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


@cli.group("schemas")
def schemas_group() -> None:
    """The Avro schemas: check a change against every released version, then release it."""


@schemas_group.command("check")
@click.argument("subjects", nargs=-1)
@click.option(
    "--folder", type=click.Path(file_okay=False, path_type=Path), help="Default: the package's."
)
def schemas_check(subjects: tuple[str, ...], folder: Path | None) -> None:
    """Exit 1 unless every current schema and every released version read each other's records,
    and every current schema is released."""
    from schemas import SCHEMA_DIR, Registry
    from schemas.compatibility import check, layout_errors

    where = folder or SCHEMA_DIR
    registry = Registry.load(where)
    problems = [*layout_errors(registry), *map(str, check(where, list(subjects) or None))]
    unreleased = [s.name for s in registry.unreleased() if not subjects or s.name in subjects]
    for problem in problems:
        click.echo(problem)
    if unreleased and not problems:
        click.echo(f"compatible, not released yet: {', '.join(unreleased)}")
        click.echo("run `veilleuse schemas release` to add them as new versions")
    if problems or unreleased:
        sys.exit(1)
    versions = ", ".join(s.label for s in sorted(registry.current.values(), key=lambda s: s.name))
    click.echo(f"compatible with every released version: {versions}")


@schemas_group.command("release")
@click.argument("subjects", nargs=-1)
@click.option(
    "--folder", type=click.Path(file_okay=False, path_type=Path), help="Default: the package's."
)
def schemas_release(subjects: tuple[str, ...], folder: Path | None) -> None:
    """Add each changed schema as its subject's next released version, if the gate passes."""
    from schemas import SCHEMA_DIR
    from schemas.compatibility import release

    written = release(folder or SCHEMA_DIR, list(subjects) or None)
    for path in written:
        click.echo(f"released {path}")
    if not written:
        click.echo("nothing to release: every current schema is a released version")


# -- agents: what a worker can run (agents.registry, veilleuse.agents entry points) ------------


@cli.group("agents")
def agents_group() -> None:
    """The registered agents: those of this package and of installed ones (entry points)."""


@agents_group.command("list")
@click.pass_context
def agents_list(ctx: click.Context) -> None:
    """Each agent a worker can run: the topics it reads and emits, its table, its settings."""
    from agents.registry import describe_agents

    click.echo(describe_agents(settings_of(ctx)))
