"""``veilleuse bench``: rate steps through the whole pipeline, then the same steps through the
old stack's design (``devtools/bench/baseline.py``), on the same lamp traffic.

Everything runs against the local services, on names of its own: a topic prefix, a consumer
group per process, an MQTT share group and client id, an Elasticsearch index prefix, a scratch
PostgreSQL database, and lamps provisioned for the run (revoked at the end). See
docs/bench.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.rules import rule_settings
from agents.rules.fall import FallSettings
from devtools.bench import stats
from devtools.bench.load import PER_LAMP_RATE, StepSpec, publish_step
from devtools.bench.probes import AlertTail, Offsets, machine, ready_at
from devtools.processes import PipelineProcess as Process
from pipeline.errors import VeilleuseError
from pipeline.ports import free_port
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_S = 0.5


class BenchError(VeilleuseError):
    """The bench could not measure (a process did not start, a service did not answer)."""


@dataclass
class BenchOptions:
    lamps: int = 2000
    sites: int = 20
    duration_s: float = 40.0
    rates: Sequence[float] = ()  # empty: search (find-max)
    start_rate: float = 1000.0
    baseline_start_rate: float = 100.0
    falls_per_step: int = 10
    max_steps: int = 5
    drain_s: float = 60.0
    # The baseline's backlog after a step it could not sustain takes long to drain and is not
    # part of the verdict: it gets this long before its process stops.
    baseline_drain_s: float = 10.0
    systems: Sequence[str] = ("pipeline", "baseline")
    publishers: int = 2  # processes playing the fleet (one: 4,059-4,763 msg/s measured alone)
    keep: bool = False


@dataclass
class BenchReport:
    pipeline: list[stats.StepResult] = field(default_factory=list)
    baseline: list[stats.StepResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workdir: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    machine: list[str] = field(default_factory=list)  # read at the start


def process(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> Process:
    """``veilleuse <argv>``, started, its output in ``<name>.log`` of the run's folder."""
    return Process(argv, env, workdir / f"{name}.log", name=name).start()


def ensure_running(proc: Process) -> None:
    if not proc.alive():
        raise BenchError(f"{proc.name} exited with {proc.returncode}:\n{proc.tail(20)}")


async def wait_until(
    what: str, check: Callable[[], bool], procs: Sequence[Process], timeout_s: float = 120
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        for proc in procs:
            ensure_running(proc)
        if time.monotonic() > deadline:
            tails = "\n".join(f"-- {p.name}:\n{p.tail()}" for p in procs)
            raise BenchError(f"{what}: not within {timeout_s:.0f} s\n{tails}")
        await asyncio.sleep(0.2)


def connector_subscribed(port: int) -> bool:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        url = f"http://127.0.0.1:{port}/metrics"
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "veilleuse_connector_subscribed" and sample.value == 1:
                return True
    return False


class Run:
    """One bench run's names, credentials and scratch resources."""

    def __init__(self, settings: Settings, options: BenchOptions, workdir: Path) -> None:
        self.base = settings
        self.options = options
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:6]
        self.prefix = f"bench{self.run_id}."
        self.database = f"bench_{self.run_id}"
        self.index_prefix = f"bench-{self.run_id}-messages"
        self.baseline_index = f"bench-{self.run_id}-baseline"
        self.share_group = f"bench{self.run_id}"
        self.sites = [f"bench-{self.run_id}-{i:03d}" for i in range(max(options.sites, 1))]
        postgres = settings.postgres.model_copy(update={"database": self.database})
        kafka = settings.kafka.model_copy(update={"topic_prefix": self.prefix})
        sink = settings.sink.model_copy(update={"elasticsearch_index_prefix": self.index_prefix})
        self.settings = settings.model_copy(
            update={"postgres": postgres, "kafka": kafka, "sink": sink}
        )
        self.fleet: list[tuple[str, str, str]] = []
        self.fall_pool: list[tuple[str, str, str]] = []
        self.lamp_ids: list[str] = []

    def env(self) -> dict[str, str]:
        """What every process of the run is told (the rest of the environment is inherited)."""
        return {
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": self.prefix,
            "VEILLEUSE_POSTGRES__DATABASE": self.database,
            "VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX": self.index_prefix,
            "VEILLEUSE_SINK__POSTGRES_METRICS_PORT": "0",
            "VEILLEUSE_SINK__ELASTICSEARCH_METRICS_PORT": "0",
            "VEILLEUSE_DETECTION__METRICS_PORT": "0",
            "VEILLEUSE_DETECTION__LIVE_PORT": "0",
            "VEILLEUSE_DETECTION__APP_ID": f"{self.prefix}detection",
            "VEILLEUSE_LOG_FORMAT": "json",
            "VEILLEUSE_LOG_LEVEL": "INFO",
        }

    # -- set-up and clean-up -----------------------------------------------------------------

    def provision(self, fall_lamps: int) -> None:
        from devtools.stack.context import StackContext
        from devtools.stack.mosquitto import Mosquitto

        n_sites = len(self.sites)
        pairs = [
            (self.sites[i % n_sites], f"B{self.run_id}-{i:06d}") for i in range(self.options.lamps)
        ]
        falls = [(self.sites[i % n_sites], f"F{self.run_id}-{i:05d}") for i in range(fall_lamps)]
        broker = Mosquitto(StackContext(self.base))
        creds = broker.credentials().provision(pairs + falls)
        broker.reload()
        rows = [(c.site_id, c.lamp_id, c.password) for c in creds]
        self.fleet, self.fall_pool = rows[: len(pairs)], rows[len(pairs) :]
        self.lamp_ids = [c.lamp_id for c in creds]
        time.sleep(1)  # the broker re-reads its files on SIGHUP

    def revoke(self) -> None:
        from devtools.stack.context import StackContext
        from devtools.stack.mosquitto import Mosquitto

        if not self.lamp_ids:
            return
        broker = Mosquitto(StackContext(self.base))
        broker.credentials().revoke(self.lamp_ids)
        broker.reload()

    def create_database(self) -> None:
        import psycopg

        from pipeline import migrations

        with psycopg.connect(self.base.postgres.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        migrations.migrate(self.settings.postgres.conninfo())

    def drop_database(self) -> None:
        import psycopg

        with psycopg.connect(self.base.postgres.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def delete_indices(self) -> None:
        from pipeline import clients

        es = clients.elasticsearch(self.settings)
        try:
            pattern = f"bench-{self.run_id}-*"
            rows = es.cat.indices(index=pattern, h="index", format="json", expand_wildcards="all")
            names = [row["index"] for row in rows.body]
            for start in range(0, len(names), 40):
                es.indices.delete(index=",".join(names[start : start + 40]))
            with contextlib.suppress(Exception):
                found = es.indices.get_index_template(name=pattern)
                for template in found["index_templates"]:
                    es.indices.delete_index_template(name=template["name"])
        finally:
            es.close()

    async def delete_topics(self) -> None:
        from pipeline import clients

        admin = clients.admin_client(self.settings)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()

    def discard_session(self) -> None:
        from connectors.mqtt_source import discard_sessions

        mqtt = self.settings.mqtt.model_copy(update={"client_id": self.share_group})
        discard_sessions(self.settings.model_copy(update={"mqtt": mqtt}))


# -- one step ---------------------------------------------------------------------------------


Probe = Callable[[], Awaitable[int]]
Latencies = Callable[[list[tuple[str, int]]], Awaitable[dict[str, float]]]


async def play_step(  # noqa: PLR0917 - one call site, every argument named there
    run: Run,
    system: str,
    rate: float,
    falls: list[tuple[str, str, str]],
    processed: Probe,
    alerted: Latencies,
    procs: Sequence[Process],
) -> stats.StepResult:
    """Publish one step of load at ``rate``; sample the backlog; collect the fall latencies."""
    options = run.options
    confirm_s = rule_settings(run.settings, FallSettings).confirm_s
    broker = run.settings.mqtt.brokers[0].model_dump(mode="json")
    k = max(min(options.publishers, len(run.fleet)), 1)
    specs = [
        StepSpec(
            broker=broker,
            credentials=run.fleet[i::k],
            fall_credentials=falls if i == 0 else [],
            rate=rate / k,
            seconds=options.duration_s,
            confirm_s=confirm_s,
            seed=int(rate) * 100 + i,
        )
        for i in range(k)
    ]
    ctx = multiprocessing.get_context("spawn")
    progress = [ctx.Array("d", 6) for _ in specs]
    queue = ctx.Queue()
    go = ctx.Event()
    publishers = [
        ctx.Process(target=publish_step, args=(spec, p, queue, go), daemon=True)
        for spec, p in zip(specs, progress, strict=True)
    ]
    base = await processed()
    for publisher in publishers:
        publisher.start()
    samples: list[stats.Sample] = []
    sent_falls: list[tuple[str, int]] = []
    try:
        deadline = time.monotonic() + 120
        while not all(p[0] for p in progress):
            if not all(p.is_alive() for p in publishers) or time.monotonic() > deadline:
                raise BenchError(f"the {system} step at {rate:g} msg/s: the fleet did not connect")
            await asyncio.sleep(0.05)
        go.set()
        started = time.time()
        while True:
            now = time.time()
            done = await processed() - base
            samples.append(stats.Sample(now - started, int(sum(p[1] for p in progress)), done))
            for proc in procs:
                ensure_running(proc)
            if now - started >= options.duration_s:
                break
            await asyncio.sleep(SAMPLE_S)
        for _ in publishers:
            sent_falls += await asyncio.to_thread(queue.get, True, 180)
        for publisher in publishers:
            publisher.join(60)
    finally:
        for publisher in publishers:
            if publisher.is_alive():
                publisher.terminate()
                publisher.join()
    published = int(sum(p[1] for p in progress))
    seconds = max(p[5] for p in progress) or options.duration_s
    # Every deadline fell under load; what has not arrived a few seconds after the last one
    # is counted missing.
    latencies = await alerted(sent_falls)
    missing = len(sent_falls) - len(latencies)
    return stats.StepResult(
        system=system,
        rate=rate,
        seconds=seconds,
        published=published,
        processed=samples[-1].processed if samples else 0,
        samples=samples,
        latencies_s=sorted(latencies.values()),
        falls=len(sent_falls),
        missing=missing,
    )


async def drain(
    processed: Probe, target: int, timeout_s: float, procs: Sequence[Process]
) -> tuple[bool, float]:
    """Wait until ``processed`` reaches ``target``; (drained, seconds taken)."""
    started = time.monotonic()
    while await processed() < target:
        for proc in procs:
            ensure_running(proc)
        if time.monotonic() - started > timeout_s:
            return False, time.monotonic() - started
        await asyncio.sleep(SAMPLE_S)
    return True, time.monotonic() - started


def rates_to_play(
    options: BenchOptions, start: float
) -> Callable[[list[stats.StepResult]], float | None]:
    def pick(results: list[stats.StepResult]) -> float | None:
        if len(results) >= options.max_steps:
            return None
        if options.rates:
            return options.rates[len(results)] if len(results) < len(options.rates) else None
        return stats.next_rate([(r.rate, r.passed) for r in results], start=start)

    return pick


# -- the two systems --------------------------------------------------------------------------


async def fall_latencies(
    alerts: AlertTail, falls: list[tuple[str, int]], confirm_s: float
) -> dict[str, float]:
    """Seconds from each fall's deadline to its alert on ``alerts.v1``, for those that came
    (waiting up to 10 s for the last ones)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(alerts.fall_arrival(lamp) is not None for lamp, _ in falls):
            break
        await asyncio.sleep(0.2)
    out = {}
    for lamp, sent_ms in falls:
        arrival = alerts.fall_arrival(lamp)
        if arrival is not None:
            out[lamp] = arrival - (sent_ms / 1000 + confirm_s)
    return out


def start_pipeline(run: Run) -> tuple[list[Process], int]:
    """The pipeline's processes (connector, worker, both sinks) and the connector's metrics
    port."""
    env = run.env()
    port = free_port()
    connector_env = {
        **env,
        "VEILLEUSE_MQTT__SHARE_GROUP": run.share_group,
        "VEILLEUSE_MQTT__CLIENT_ID": run.share_group,
        "VEILLEUSE_MQTT__SESSION_EXPIRY_S": "600",
        "VEILLEUSE_CONNECTOR__METRICS_PORT": str(port),
    }
    procs = [
        process("connector", ["connector"], connector_env, run.workdir),
        process("worker", ["worker", "--instance-id", f"bench{run.run_id}"], env, run.workdir),
        process("sink-elasticsearch", ["sink", "elasticsearch"], env, run.workdir),
        process("sink-postgres", ["sink", "postgres"], env, run.workdir),
    ]
    return procs, port


async def run_pipeline(run: Run, report: BenchReport, echo: Callable[[str], None]) -> None:
    from pipeline.topics import LAMP_MESSAGES, ensure_topics, topic_name

    await ensure_topics(run.settings)
    env = run.env()
    procs, port = start_pipeline(run)
    worker_group = env["VEILLEUSE_DETECTION__APP_ID"]
    es_group = f"{run.prefix}veilleuse-sink-elasticsearch"
    partitions = run.settings.kafka.topic_partitions
    fall_ids = {lamp_id.encode() for _, lamp_id, _ in run.fall_pool}
    try:
        await wait_until("connector subscribed", lambda: connector_subscribed(port), procs)
        await wait_until(
            "worker ready", lambda: ready_at(procs[1].log_file, partitions) is not None, procs
        )
        async with (
            Offsets(run.settings, topic_name(run.settings, LAMP_MESSAGES)) as offsets,
            AlertTail(run.settings, lambda key: key in fall_ids) as alerts,
        ):
            trace: list[tuple[float, dict[str, int]]] = []

            async def processed() -> int:
                # The slowest of detection and the search sink, counted in Kafka records: what
                # the connector has not written yet is not there either.
                end = await offsets.end()
                worker = await offsets.committed(worker_group)
                sink = await offsets.committed(es_group)
                trace.append(
                    (time.time(), {"kafka": end, "worker": worker, "sink-elasticsearch": sink})
                )
                return min(worker, sink)

            async def alerted(falls: list[tuple[str, int]]) -> dict[str, float]:
                confirm_s = rule_settings(run.settings, FallSettings).confirm_s
                return await fall_latencies(alerts, falls, confirm_s)

            pick = rates_to_play(run.options, run.options.start_rate)
            pool = list(run.fall_pool)
            published = 0
            while (rate := pick(report.pipeline)) is not None:
                falls, pool = pool[: run.options.falls_per_step], pool[run.options.falls_per_step :]
                start_end = await offsets.end()
                trace.clear()
                result = await play_step(run, "pipeline", rate, falls, processed, alerted, procs)
                result.stages = stats.stage_rates(trace, result.seconds)
                published += result.published
                report.pipeline.append(result)
                echo(step_line(result))
                drained, took = await drain(
                    processed, start_end + result.published, run.options.drain_s, procs
                )
                if not drained:
                    note = (
                        f"the pipeline had not caught up {took:.0f} s after the "
                        f"{rate:,.0f} msg/s step: search stopped"
                    )
                    report.notes.append(note)
                    echo(note)
                    break
            report.counts["pipeline_published"] = published
    finally:
        for proc in procs:
            proc.stop()
        for proc in procs:
            if proc.returncode not in (0, -signal.SIGTERM):
                report.notes.append(f"{proc.name} exited with {proc.returncode} ({proc.log_file})")


async def run_baseline(run: Run, report: BenchReport, echo: Callable[[str], None]) -> None:
    import psycopg

    conninfo = run.settings.postgres.conninfo()

    def count_rows() -> int:
        with psycopg.connect(conninfo) as conn:
            row = conn.execute(
                "SELECT count(*) FROM bench_baseline_messages"
                " WHERE to_regclass('bench_baseline_messages') IS NOT NULL"
            ).fetchone()
            return int(row[0]) if row else 0

    async def processed() -> int:
        with contextlib.suppress(psycopg.errors.UndefinedTable):
            return await asyncio.to_thread(count_rows)
        return 0

    async def alerted(falls: list[tuple[str, int]]) -> dict[str, float]:
        lamps = [lamp for lamp, _ in falls]
        deadline = time.monotonic() + 10
        rows: list[tuple[str, int, int]] = []
        while time.monotonic() < deadline:
            with psycopg.connect(conninfo) as conn:
                rows = conn.execute(
                    "SELECT lamp_id, due_at, raised_at FROM bench_baseline_alerts"
                    " WHERE lamp_id = ANY(%s)",
                    (lamps,),
                ).fetchall()
            if len(rows) >= len(lamps):
                break
            await asyncio.sleep(0.2)
        return {lamp: (raised - due) / 1000 for lamp, due, raised in rows}

    pick = rates_to_play(run.options, run.options.baseline_start_rate)
    pool = list(run.fall_pool[len(run.fall_pool) // 2 :])
    step = published = 0
    while (rate := pick(report.baseline)) is not None:
        falls, pool = pool[: run.options.falls_per_step], pool[run.options.falls_per_step :]
        client_id = f"bench{run.run_id}-baseline-{step}"
        step += 1
        argv = ["bench-baseline", "--index", run.baseline_index, "--client-id", client_id]
        for site in run.sites:
            argv += ["--site", site]
        proc = process(f"baseline-{step}", argv, run.env(), run.workdir)
        try:
            await wait_until("baseline subscribed", subscribed(proc), [proc])
            before = await processed()
            result = await play_step(run, "baseline", rate, falls, processed, alerted, [proc])
            # Not part of the verdict: lets the stores hold every message of a sustained step
            # (a backlog is dropped with the baseline's clean session when it stops).
            await drain(processed, before + result.published, run.options.baseline_drain_s, [proc])
        finally:
            proc.stop()
        published += result.published
        report.baseline.append(result)
        echo(step_line(result))
    report.counts["baseline_published"] = published


def subscribed(proc: Process) -> Callable[[], bool]:
    return lambda: "baseline subscribed" in proc.tail(50)


def step_line(r: stats.StepResult) -> str:
    return (
        f"{r.system} {r.rate:,.0f} msg/s: offered {r.offered:,.0f}/s, processed "
        f"{r.throughput:,.0f}/s, backlog at the end {r.final_backlog:,} "
        f"(slope {r.backlog_slope:+,.0f}/s), falls {r.falls - r.missing}/{r.falls}, "
        f"p50 {r.p(50) * 1000:,.0f} ms, p99 {r.p(99) * 1000:,.0f} ms -> "
        f"{'sustained' if r.sustained else 'NOT sustained'}, "
        f"{'p99 ≤ 1 s' if r.latency_ok else 'latency goal missed'}"
        + "".join(f"; {name} {rate:,.0f}/s" for name, rate in r.stages.items())
    )


async def run_bench(
    settings: Settings, options: BenchOptions, echo: Callable[[str], None]
) -> BenchReport:
    workdir = Path(tempfile.mkdtemp(prefix="veilleuse-bench-"))
    run = Run(settings, options, workdir)
    report = BenchReport(workdir=str(workdir), machine=machine())
    report.notes.append(
        f"load: {options.lamps:,} lamps over {len(run.sites)} sites; a step plays the protocol's "
        f"mix at the asked rate ({PER_LAMP_RATE:.2f} msg/s per lamp at protocol rates, so "
        f"1,000 msg/s ≈ {1000 / PER_LAMP_RATE:,.0f} lamps); {options.falls_per_step} silent "
        f"falls per step, {options.duration_s:g} s per step"
    )
    echo(f"bench run {run.run_id}: logs in {workdir}")
    fall_lamps = options.falls_per_step * options.max_steps * 2
    try:
        run.provision(fall_lamps)
        run.create_database()
        if "pipeline" in options.systems:
            await run_pipeline(run, report, echo)
        if "baseline" in options.systems:
            await run_baseline(run, report, echo)
        report.counts.update(await count_stored(run, pipeline="pipeline" in options.systems))
    finally:
        load = os.getloadavg()
        report.notes.append(
            f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
        )
        if not options.keep:
            await cleanup(run)
    return report


async def count_stored(run: Run, *, pipeline: bool) -> dict[str, int]:
    """What reached each store from this run's lamps (other tests may share the broker)."""
    import psycopg

    from pipeline import clients

    out: dict[str, int] = {}
    with (
        psycopg.connect(run.settings.postgres.conninfo()) as conn,
        contextlib.suppress(psycopg.errors.UndefinedTable),
    ):
        row = conn.execute("SELECT count(*) FROM bench_baseline_messages").fetchone()
        out["baseline_postgres"] = int(row[0]) if row else 0
    es = clients.elasticsearch(run.settings)
    mine = {"prefix": {"site_id": f"bench-{run.run_id}-"}}
    try:
        for name, index, query in (
            # The baseline subscribes to this run's sites only; the pipeline's connector reads
            # every lamp of the broker.
            ("baseline_elasticsearch", run.baseline_index, {"match_all": {}}),
            ("pipeline_elasticsearch", run.index_prefix, mine),
        ):
            if es.indices.exists(index=index):
                es.indices.refresh(index=index)
                out[name] = int(es.count(index=index, query=query)["count"])
    finally:
        es.close()
    if pipeline:
        out["pipeline_kafka"] = await count_kafka(run)
    return out


async def count_kafka(run: Run) -> int:
    """Records of this run's lamps on its ``lamp.messages.v1``."""
    from aiokafka import TopicPartition

    from pipeline import clients
    from pipeline.topics import LAMP_MESSAGES, topic_name

    ours = (f"B{run.run_id}-".encode(), f"F{run.run_id}-".encode())
    consumer = clients.consumer(run.settings, group_id=None)
    await consumer.start()
    try:
        topic = topic_name(run.settings, LAMP_MESSAGES)
        tps = [TopicPartition(topic, p) for p in range(run.settings.kafka.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        count = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batch.values():
                count += sum(1 for r in records if r.key and r.key.startswith(ours))
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
    finally:
        await consumer.stop()
    return count


async def cleanup(run: Run) -> None:
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("connector session", run.discard_session),
        ("indices", run.delete_indices),
        ("database", run.drop_database),
        ("lamps", run.revoke),
    ]
    for what, step in steps:
        try:
            await asyncio.to_thread(step)
        except Exception:
            log.warning(
                "bench clean-up failed", extra={"what": what, "run": run.run_id}, exc_info=True
            )
    try:
        await run.delete_topics()
    except Exception:
        log.warning(
            "bench clean-up failed", extra={"what": "topics", "run": run.run_id}, exc_info=True
        )


def markdown(report: BenchReport, command: str, date: str) -> str:
    return stats.markdown_section(
        date=date,
        command=command,
        machine=report.machine,
        pipeline=report.pipeline,
        baseline=report.baseline,
        notes=report.notes,
    )


def as_json(report: BenchReport) -> str:
    def step(r: stats.StepResult) -> dict[str, Any]:
        return {
            "system": r.system,
            "rate": r.rate,
            "offered": r.offered,
            "throughput": r.throughput,
            "published": r.published,
            "processed": r.processed,
            "final_backlog": r.final_backlog,
            "latencies_s": r.latencies_s,
            "falls": r.falls,
            "missing": r.missing,
            "sustained": r.sustained,
            "passed": r.passed,
        }

    return json.dumps(
        {
            "pipeline": [step(r) for r in report.pipeline],
            "baseline": [step(r) for r in report.baseline],
            "notes": report.notes,
            "counts": report.counts,
        }
    )
