"""``veilleuse worker``: one faust worker running a set of registered agents (all by default).

Each agent (:mod:`agents.registry`) gets its own :class:`BatchProcessor`, table and
transactional producer in the one faust app; they share its consumer group, so two agents of
one worker must not read the same topic (their offsets would be one group's): run those in
workers of their own. Several workers with the same ``detection.app_id`` split the partitions
between them; each needs its own ``detection.instance_id`` (its transactional id), which a
StatefulSet's pod name gives for free.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agents.api import AgentSpec, wall_clock_ms
from agents.registry import agent_settings, check_agent_sections, installed_agents, select_agents
from agents.runtime.live import LiveStateServer
from agents.runtime.streaming import BatchProcessor, StreamingApp, faust_broker_options
from pipeline.errors import ConfigurationError
from pipeline.metrics import WorkerMetrics
from pipeline.settings import Settings
from pipeline.topics import topic_name

log = logging.getLogger(__name__)


def check_disjoint_inputs(settings: Settings, agents: Iterable[AgentSpec]) -> None:
    """Agents of one worker share its consumer group: each topic may feed only one of them."""
    readers: dict[str, str] = {}
    for spec in agents:
        for topic in spec.reads:
            name = topic_name(settings, topic)
            if name in readers:
                raise ConfigurationError(
                    f"agents {readers[name]} and {spec.name} both read {name}: run them in "
                    "separate workers (`veilleuse worker --agents ...`)"
                )
            readers[name] = spec.name


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
    check_disjoint_inputs(settings, specs)
    detection, kafka = settings.detection, settings.kafka
    instance = instance_id or detection.instance_id
    app = StreamingApp(
        detection.app_id,
        **faust_broker_options(settings),
        store="memory://",
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
        broker_heartbeat_interval=min(3.0, detection.session_timeout_s / 3),
        # Tables and topics hold bytes the agents encode themselves (faust's default is json).
        key_serializer="raw",
        value_serializer="raw",
        table_key_serializer="raw",
        table_value_serializer="raw",
    )
    processors: list[BatchProcessor] = []
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
        # One metrics registry per process: the first agent's batches feed it.
        metrics = WorkerMetrics(agent) if detection.metrics_port and not processors else None
        processor = BatchProcessor(
            app, settings, agent, table, instance_id=instance, metrics=metrics
        )
        app.add_dependency(processor)
        processors.append(processor)
        if spec.live is not None and detection.live_port:
            activity, partitions = spec.live(agent)
            app.add_dependency(LiveStateServer(settings, activity, partitions))
    return app, processors


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
        "worker %s starting (%s)",
        processor.instance_id,
        ", ".join(each.transactional_id for each in processors),
        extra={"component": "worker"},
    )
    worker.execute_from_commandline()
