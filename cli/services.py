"""The services' commands: the long-running processes of the pipeline, one per pod (connector,
worker, sinks, notifier, API). Each runs until SIGTERM or SIGINT (pipeline.process)."""

from __future__ import annotations

import click

from cli.base import cli, settings_of


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

    settings = settings_of(ctx)
    if discard_session:
        for client_id in discard_sessions(settings):
            click.echo(f"discarded session {client_id}")
        return
    configure_sentry(settings, "connector")
    run_connector(settings)


@cli.command()
@click.option("--instance-id", help="This worker's stable name (default: settings, then host).")
@click.option(
    "--agents",
    "agent_names",
    help="Comma-separated agents to run (default: every registered one; `veilleuse agents list`).",
)
@click.pass_context
def worker(ctx: click.Context, instance_id: str | None, agent_names: str | None) -> None:
    """Run one worker of the registered agents (faust) until SIGTERM or SIGINT."""
    from agents.runtime.worker import run_worker
    from pipeline.observability import configure_sentry

    settings = settings_of(ctx)
    configure_sentry(settings, "worker")
    agents = agent_names.split(",") if agent_names is not None else None
    run_worker(settings, instance_id=instance_id, agents=agents)


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

    settings = settings_of(ctx)
    configure_sentry(settings, "sink-postgres")
    run_sink(settings, PostgresSink(settings), settings.sink.postgres_metrics_port)


@cli.command()
@click.pass_context
def notifier(ctx: click.Context) -> None:
    """Run one notifier replica (alerts.v1 → webhooks, e-mail) until SIGTERM or SIGINT."""
    from notifier.service import run_notifier
    from pipeline.observability import configure_sentry

    settings = settings_of(ctx)
    configure_sentry(settings, "notifier")
    run_notifier(settings)


@sink.command("elasticsearch")
@click.pass_context
def sink_elasticsearch(ctx: click.Context) -> None:
    """Index lamp.messages.v1 and lamp.dlq.v1 into Elasticsearch (docs/search.md)."""
    from connectors.sinks.elasticsearch import run as run_elasticsearch_sink
    from pipeline.observability import configure_sentry

    settings = settings_of(ctx)
    configure_sentry(settings, "sink-elasticsearch")
    run_elasticsearch_sink(settings)


@cli.command()
@click.pass_context
def api(ctx: click.Context) -> None:
    """Serve the query API (docs/api.md) until SIGTERM or SIGINT."""
    from api.app import run_api
    from pipeline.observability import configure_sentry

    settings = settings_of(ctx)
    configure_sentry(settings, "api")
    run_api(settings)
