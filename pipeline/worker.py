"""``veilleuse worker``: one faust worker running the batch agents (detection today).

Several workers with the same ``detection.app_id`` split the partitions between them; each
needs its own ``detection.instance_id`` (its transactional id), which a StatefulSet's pod name
gives for free.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from agents.detect_incidents import DetectIncidents
from pipeline.live import LiveStateServer
from pipeline.metrics import WorkerMetrics
from pipeline.settings import Settings
from pipeline.streaming import BatchProcessor, StreamingApp, faust_broker_options

log = logging.getLogger(__name__)


def build_app(
    settings: Settings, *, instance_id: str | None = None, datadir: Path | None = None
) -> tuple[StreamingApp, BatchProcessor]:
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
    agent = DetectIncidents(settings)
    table = app.Table(
        agent.table_name,
        partitions=kafka.topic_partitions,
        key_type=bytes,
        value_type=bytes,
        # Compact often: recovery time grows with what compaction has not yet removed.
        extra_topic_configs={"segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"},
        help="Every lamp's detection state (clock, duplicates, rule states, deadlines).",
    )
    metrics = WorkerMetrics(agent) if detection.metrics_port else None
    processor = BatchProcessor(app, settings, agent, table, instance_id=instance, metrics=metrics)
    app.add_dependency(processor)
    if detection.live_port:
        live = LiveStateServer(settings, agent.live_activity, lambda: sorted(agent.engines))
        app.add_dependency(live)
    return app, processor


def run_worker(settings: Settings, *, instance_id: str | None = None) -> None:
    from faust.worker import Worker

    from pipeline.observability import configure_logging

    app, processor = build_app(settings, instance_id=instance_id)
    if processor.metrics is not None:
        processor.metrics.serve(settings.detection.metrics_port, processor.health)
    processor.health.watch()
    worker: Any = Worker(
        app,
        loglevel=settings.log_level,
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,  # no banner: our logs are JSON lines
    )
    worker.spinner = None  # faust draws its terminal spinner even into a log file
    configure_logging(settings, "worker")
    log.info(
        "worker %s starting (%s)",
        processor.instance_id,
        processor.transactional_id,
        extra={"component": "worker"},
    )
    worker.execute_from_commandline()
