"""``veilleuse worker``: one faust worker running a set of registered agents (all by default).

Each agent (:mod:`agents.registry`) keeps its own table (its own changelog topic); one
:class:`BatchProcessor` drives them all in the one faust app and consumer group: a batch of an
input partition goes to every agent reading that topic (several may read the same one), and
what all of them made of it (outputs, changelogs) is committed with the input offsets in one
Kafka transaction of the worker's one transactional producer. Several workers with the same
``detection.app_id`` split the partitions between them; each needs its own
``detection.instance_id`` (its transactional id), which a StatefulSet's pod name gives for free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from agents.api import AgentSpec, wall_clock_ms
from agents.registry import agent_settings, check_agent_sections, installed_agents, select_agents
from agents.runtime.faust_internals import STORE_URL
from agents.runtime.live import LiveStateServer
from agents.runtime.streaming import (
    AgentCounters,
    BatchProcessor,
    Lane,
    StreamingApp,
    faust_broker_options,
)
from pipeline.errors import ConfigurationError
from pipeline.metrics import WorkerMetrics
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def check_distinct_tables(settings: Settings, agents: Iterable[AgentSpec]) -> None:
    """Each agent of a worker keeps its own table: a table (its changelog topic) shared by two
    agents would mix their states. (Agents may share input topics: the worker reads each once
    and feeds it to all of them.)"""
    owners: dict[str, str] = {}
    for spec in agents:
        name = spec.table.name
        if name in owners:
            raise ConfigurationError(
                f"agents {owners[name]} and {spec.name} both keep table {name} "
                f"({settings.detection.app_id}-{name}-changelog): give each its own"
            )
        owners[name] = spec.name


def build_app(
    settings: Settings,
    *,
    instance_id: str | None = None,
    datadir: Path | None = None,
    agents: Iterable[str] | None = None,
) -> tuple[StreamingApp, list[BatchProcessor]]:
    """The faust app running ``agents`` (names; all registered ones if None)."""
    specs = select_agents(agents)
    check_agent_sections(settings, installed_agents().values())
    check_distinct_tables(settings, specs)
    detection, kafka = settings.detection, settings.kafka
    instance = instance_id or detection.instance_id
    app = StreamingApp(
        detection.app_id,
        **faust_broker_options(settings),
        # In memory, keeping what it still holds across rebalances with the changelog offsets
        # it applied, so that recovery resumes there (faust_internals.ChangelogOffsetStore).
        store=STORE_URL,
        autodiscover=False,
        web_enabled=False,
        datadir=str(datadir or Path(tempfile.gettempdir()) / f"veilleuse-{instance or 'worker'}"),
        topic_partitions=kafka.topic_partitions,
        topic_replication_factor=kafka.topic_replication_factor,
        table_standby_replicas=detection.standby_replicas,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_max_poll_records=detection.max_batch_records,
        stream_wait_empty=False,
        broker_session_timeout=detection.session_timeout_s,
        # A member learns of a rebalance (a worker leaving on SIGTERM, or joining) at its next
        # heartbeat: until then the partitions of the one leaving wait. One small request a
        # second instead of every 3 s.
        broker_heartbeat_interval=min(1.0, detection.session_timeout_s / 3),
        # Tables and topics hold bytes the agents encode themselves (faust's default is json).
        key_serializer="raw",
        value_serializer="raw",
        table_key_serializer="raw",
        table_value_serializer="raw",
    )
    app.restore_in_batches = detection.restore_in_batches
    if detection.static_membership:
        # The same name as the transactional id: one per worker, stable across its restarts.
        app.group_instance_id = f"{detection.app_id}-{instance or socket.gethostname()}"
    lanes: list[Lane] = []
    for spec in specs:
        agent = spec.build(settings, agent_settings(spec, settings), wall_clock_ms)
        table = app.Table(
            spec.table.name,
            partitions=kafka.topic_partitions,
            key_type=bytes,
            value_type=bytes,
            # Compact often: recovery time grows with what compaction has not yet removed.
            extra_topic_configs={"segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"},
            help=spec.table.help,
        )
        lanes.append(Lane(agent, table))
        if spec.live is not None and detection.live_port:
            activity, partitions = spec.live(agent)
            app.add_dependency(LiveStateServer(settings, activity, partitions))
    # One metrics registry per process, fed by every agent's batches.
    agents_seen = [lane.agent for lane in lanes]
    metrics = WorkerMetrics(AgentCounters(agents_seen)) if detection.metrics_port else None
    processor = BatchProcessor(app, settings, lanes, instance_id=instance, metrics=metrics)
    app.add_dependency(processor)
    return app, [processor]


def run_worker(
    settings: Settings, *, instance_id: str | None = None, agents: Iterable[str] | None = None
) -> None:
    from faust.worker import Worker

    from agents.runtime.faust_internals import without_spinner
    from pipeline.observability import configure_logging

    app, processors = build_app(settings, instance_id=instance_id, agents=agents)
    processor = processors[0]
    if processor.metrics is not None:
        processor.metrics.serve(settings.detection.metrics_port, processor.health)
    for each in processors:
        each.health.watch()
    worker: Any = Worker(
        app,
        loglevel=settings.log_level,
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,  # no banner: our logs are JSON lines
    )
    without_spinner(worker)  # faust draws its terminal spinner even into a log file
    configure_logging(settings, "worker")
    log.info(
        "worker %s starting agents %s (transactional id %s)",
        processor.instance_id,
        ", ".join(lane.agent.name for each in processors for lane in each.lanes),
        ", ".join(each.transactional_id for each in processors),
        extra={"component": "worker"},
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as done:
        exit_without_teardown(done.code)


def exit_without_teardown(code: object) -> NoReturn:
    """Exit once faust's shutdown is done (the group left, the producer stopped), skipping the
    interpreter's teardown: its final garbage collection walks every object of the lamps'
    state (py-spy: ``gc_collect_main``), which made a SIGTERMed worker take 3.9-7.6 s to exit
    with 20,000 lamps, 8.6-15.7 s with 100,000 in two workers. Logs and Sentry's queue are
    flushed first."""
    if "sentry_sdk" in sys.modules:
        import sentry_sdk

        sentry_sdk.flush(timeout=2)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if code is None:
        os._exit(0)
    if not isinstance(code, int):
        with contextlib.suppress(Exception):
            sys.stderr.write(f"{code}\n")  # what SystemExit would have printed
            sys.stderr.flush()
        os._exit(1)
    os._exit(code)
