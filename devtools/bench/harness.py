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
import math
import multiprocessing
import os
import signal
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.rules import rule_settings
from agents.rules.fall import FallSettings
from devtools.bench import stats
from devtools.bench.load import PER_LAMP_RATE, StepSpec, publish_step
from devtools.bench.probes import (
    AlertTail,
    CpuMeter,
    Offsets,
    machine,
    ready_at,
    session_present,
    stack_pids,
)
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
    # Half the pipeline's: the doubling rates meet (1,000, 2,000…) as long as both pass, and the
    # run ends with both sides at the baseline's highest passing rate if the pipeline did not
    # play it: each rate both played compares their CPU per message at equal work.
    baseline_start_rate: float = 500.0
    baseline_threads: int = 10  # the Sidekiq-style pool (devtools/bench/baseline.py)
    falls_per_step: int = 10
    max_steps: int = 5
    drain_s: float = 60.0
    # The baseline's backlog after a step it could not sustain takes long to drain and is not
    # part of the verdict: it gets this long before its process stops.
    baseline_drain_s: float = 10.0
    systems: Sequence[str] = ("pipeline", "baseline")
    publishers: int = 2  # processes playing the fleet (one: 4,059-4,763 msg/s measured alone)
    keep: bool = False
    # Before each step, every process tree's CPU is read over this many seconds without load
    # (the side's processes idle, the services with whatever else the machine does): the
    # floor subtracted in the "net of idle" figures.
    idle_s: float = 5.0


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
        """What ``veilleuse connector --discard-session`` does, for the bench's connector."""
        from connectors.mqtt_source import discard_sessions

        mqtt = self.settings.mqtt.model_copy(update={"client_id": self.share_group})
        discard_sessions(self.settings.model_copy(update={"mqtt": mqtt}))

    def connector_session_present(self) -> bool:
        """Whether the broker still holds the bench connector's session (the connector names
        its session ``<client id>-<broker name>``)."""
        broker = self.settings.mqtt.brokers[0]
        return session_present(self.settings, f"{self.share_group}-{broker.name}")


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
    roots: dict[str, Callable[[], set[int]]],
) -> stats.StepResult:
    """Publish one step of load at ``rate``; sample the backlog; read the CPU time of every
    process tree in ``roots`` (and of the publishers) over the load window; collect the fall
    latencies."""
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
    meter = CpuMeter(
        {**roots, "publishers": lambda: {p.pid for p in publishers if p.pid is not None}}
    )
    try:
        deadline = time.monotonic() + 120
        while not all(p[0] for p in progress):
            if not all(p.is_alive() for p in publishers) or time.monotonic() > deadline:
                raise BenchError(f"the {system} step at {rate:g} msg/s: the fleet did not connect")
            await asyncio.sleep(0.05)
        go.set()
        started = time.time()
        # The CPU window is the load's: from "go" to the last sample, over which the messages
        # processed are counted too (the first and the last sample).
        cpu_first = meter.read()
        while True:
            now = time.time()
            done = await processed() - base
            samples.append(stats.Sample(now - started, int(sum(p[1] for p in progress)), done))
            for proc in procs:
                ensure_running(proc)
            if now - started >= options.duration_s:
                break
            await asyncio.sleep(SAMPLE_S)
        window_s, cpu_s = CpuMeter.delta(cpu_first, meter.read())
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
        cpu_s=cpu_s,
        window_s=window_s,
        window_processed=samples[-1].processed - samples[0].processed,
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


async def idle_rates(roots: dict[str, Callable[[], set[int]]], seconds: float) -> dict[str, float]:
    """CPU seconds per second of each process tree while the side's processes run without
    load (the services' share includes whatever else the machine does)."""
    if seconds <= 0:
        return {}
    meter = CpuMeter(roots)
    first = meter.read()
    await asyncio.sleep(seconds)
    took, used = CpuMeter.delta(first, meter.read())
    return {name: cpu / took for name, cpu in used.items()}


class PipelineSide:
    """The pipeline's processes: the worker and both sinks started once and kept; the connector
    started for each of the pipeline's steps and stopped, its persistent session discarded,
    before each of the baseline's (so the broker queues nothing for it meanwhile)."""

    def __init__(
        self, run: Run, report: BenchReport, echo: Callable[[str], None], stack: AsyncExitStack
    ) -> None:
        self.run = run
        self.report = report
        self.echo = echo
        self.stack = stack
        self.env = run.env()
        self.port = free_port()
        self.connector: Process | None = None
        self.procs: list[Process] = []
        self.trace: list[tuple[float, dict[str, int]]] = []
        self.pool = list(run.fall_pool[: len(run.fall_pool) // 2])
        self.stopped = False  # the search stopped (the pipeline did not catch up)

    def connector_env(self) -> dict[str, str]:
        return {
            **self.env,
            "VEILLEUSE_MQTT__SHARE_GROUP": self.run.share_group,
            "VEILLEUSE_MQTT__CLIENT_ID": self.run.share_group,
            "VEILLEUSE_MQTT__SESSION_EXPIRY_S": "600",
            "VEILLEUSE_CONNECTOR__METRICS_PORT": str(self.port),
        }

    async def start(self) -> None:
        from pipeline.topics import LAMP_MESSAGES, ensure_topics, topic_name

        run = self.run
        await ensure_topics(run.settings)
        self.procs = [
            process(
                "worker", ["worker", "--instance-id", f"bench{run.run_id}"], self.env, run.workdir
            ),
            process("sink-elasticsearch", ["sink", "elasticsearch"], self.env, run.workdir),
            process("sink-postgres", ["sink", "postgres"], self.env, run.workdir),
        ]
        partitions = run.settings.kafka.topic_partitions
        await wait_until(
            "worker ready",
            lambda: ready_at(self.procs[0].log_file, partitions) is not None,
            self.procs,
        )
        fall_ids = {lamp_id.encode() for _, lamp_id, _ in run.fall_pool}
        self.offsets = await self.stack.enter_async_context(
            Offsets(run.settings, topic_name(run.settings, LAMP_MESSAGES))
        )
        self.alerts = await self.stack.enter_async_context(
            AlertTail(run.settings, lambda key: key in fall_ids)
        )

    async def start_connector(self) -> None:
        # A fresh metrics port each time: a port free when the run started may have been taken
        # since (another process's ephemeral port); a lost race is retried.
        for attempt in range(3):
            self.port = free_port()
            self.connector = process(
                "connector", ["connector"], self.connector_env(), self.run.workdir
            )
            try:
                await wait_until(
                    "connector subscribed",
                    lambda: connector_subscribed(self.port),
                    [self.connector, *self.procs],
                )
                return
            except BenchError:
                if attempt == 2 or "Address already in use" not in self.connector.tail(5):
                    raise
                log.warning("bench connector: metrics port taken, retrying")

    async def stop_connector(self) -> None:
        if self.connector is None:
            return
        self.connector.stop()
        self.check_exit(self.connector)
        self.connector = None
        await asyncio.to_thread(self.run.discard_session)

    def check_exit(self, proc: Process) -> None:
        if proc.returncode not in (0, -signal.SIGTERM):
            self.report.notes.append(f"{proc.name} exited with {proc.returncode} ({proc.log_file})")

    async def close(self) -> None:
        await self.stop_connector()
        for proc in self.procs:
            proc.stop()
        for proc in self.procs:
            self.check_exit(proc)

    def roots(self) -> dict[str, Callable[[], set[int]]]:
        def pid_of(name: str) -> Callable[[], set[int]]:
            def pids() -> set[int]:
                procs = [self.connector] if name == "connector" else self.procs
                return {
                    p.proc.pid
                    for p in procs
                    if p is not None and p.name == name and p.proc is not None
                }

            return pids

        return {name: pid_of(name) for name in stats.PIPELINE_PARTS if name not in stats.SERVICES}

    async def processed(self) -> int:
        # The slowest of detection and the search sink, counted in Kafka records: what the
        # connector has not written yet is not there either.
        end = await self.offsets.end()
        worker = await self.offsets.committed(self.env["VEILLEUSE_DETECTION__APP_ID"])
        sink = await self.offsets.committed(f"{self.run.prefix}veilleuse-sink-elasticsearch")
        self.trace.append(
            (time.time(), {"kafka": end, "worker": worker, "sink-elasticsearch": sink})
        )
        return min(worker, sink)

    async def alerted(self, falls: list[tuple[str, int]]) -> dict[str, float]:
        confirm_s = rule_settings(self.run.settings, FallSettings).confirm_s
        return await fall_latencies(self.alerts, falls, confirm_s)

    async def step(self, rate: float, services: dict[str, Callable[[], set[int]]]) -> None:
        run, options = self.run, self.run.options
        await self.start_connector()
        try:
            procs = [p for p in [self.connector, *self.procs] if p is not None]
            idle = await idle_rates({**self.roots(), **services}, options.idle_s)
            falls, self.pool = (
                self.pool[: options.falls_per_step],
                self.pool[options.falls_per_step :],
            )
            start_end = await self.offsets.end()
            self.trace.clear()
            result = await play_step(
                run,
                "pipeline",
                rate,
                falls,
                self.processed,
                self.alerted,
                procs,
                {**self.roots(), **services},
            )
            result.idle_cpu_per_s = idle
            result.stages = stats.stage_rates(self.trace, result.seconds)
            self.report.pipeline.append(result)
            self.report.counts["pipeline_published"] = (
                self.report.counts.get("pipeline_published", 0) + result.published
            )
            self.echo(step_line(result))
            drained, took = await drain(
                self.processed, start_end + result.published, options.drain_s, procs
            )
            if not drained:
                note = (
                    f"the pipeline had not caught up {took:.0f} s after the "
                    f"{rate:,.0f} msg/s step: its search stopped"
                )
                self.report.notes.append(note)
                self.echo(note)
                self.stopped = True
        finally:
            # Before the baseline's step: nothing may be queued for a stopped connector.
            await self.stop_connector()


class BaselineSide:
    """The baseline (``veilleuse bench-baseline``): a fresh process (clean session) per step."""

    def __init__(self, run: Run, report: BenchReport, echo: Callable[[str], None]) -> None:
        self.run = run
        self.report = report
        self.echo = echo
        self.conninfo = run.settings.postgres.conninfo()
        self.pool = list(run.fall_pool[len(run.fall_pool) // 2 :])
        self.steps = 0
        self.progress_file = run.workdir / "baseline-progress"

    async def processed(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(self.progress_file.read_text())
        return 0

    async def alerted(self, falls: list[tuple[str, int]]) -> dict[str, float]:
        import psycopg

        lamps = [lamp for lamp, _ in falls]
        deadline = time.monotonic() + 10
        rows: list[tuple[str, int, int]] = []
        while time.monotonic() < deadline:
            with psycopg.connect(self.conninfo) as conn:
                rows = conn.execute(
                    "SELECT lamp_id, due_at, raised_at FROM bench_baseline_alerts"
                    " WHERE lamp_id = ANY(%s)",
                    (lamps,),
                ).fetchall()
            if len(rows) >= len(lamps):
                break
            await asyncio.sleep(0.2)
        return {lamp: (raised - due) / 1000 for lamp, due, raised in rows}

    async def step(self, rate: float, services: dict[str, Callable[[], set[int]]]) -> None:
        run, options = self.run, self.run.options
        falls, self.pool = self.pool[: options.falls_per_step], self.pool[options.falls_per_step :]
        self.steps += 1
        client_id = f"bench{run.run_id}-baseline-{self.steps}"
        self.progress_file.unlink(missing_ok=True)
        argv = [
            "bench-baseline",
            "--index",
            run.baseline_index,
            "--client-id",
            client_id,
            "--threads",
            str(options.baseline_threads),
            "--progress-file",
            str(self.progress_file),
        ]
        for site in run.sites:
            argv += ["--site", site]
        # The pipeline's connector is stopped and its session discarded: checked at the broker
        # (a session kept would make the broker queue every QoS 1 message of this step for it).
        found = await asyncio.to_thread(run.connector_session_present)
        key = "connector_sessions_found_before_baseline"
        self.report.counts[key] = self.report.counts.get(key, 0) + int(found)
        proc = process(f"baseline-{self.steps}", argv, run.env(), run.workdir)
        try:
            await wait_until("baseline subscribed", subscribed(proc), [proc])

            def pids() -> set[int]:
                return {proc.proc.pid} if proc.proc is not None else set()

            idle = await idle_rates({"baseline": pids, **services}, options.idle_s)

            before = await self.processed()
            result = await play_step(
                run,
                "baseline",
                rate,
                falls,
                self.processed,
                self.alerted,
                [proc],
                {"baseline": pids, **services},
            )
            result.idle_cpu_per_s = idle
            # Not part of the verdict: lets the stores hold every message of a sustained step
            # (a backlog is dropped with the baseline's clean session when it stops).
            await drain(self.processed, before + result.published, options.baseline_drain_s, [proc])
        finally:
            proc.stop()
        self.report.baseline.append(result)
        self.report.counts["baseline_published"] = (
            self.report.counts.get("baseline_published", 0) + result.published
        )
        self.echo(step_line(result))


async def alternate(run: Run, report: BenchReport, echo: Callable[[str], None]) -> None:
    """The steps, alternating between the two systems: a pipeline step, then a baseline step,
    each at the rate its own search asks for next; then, if no rate was sustained by both,
    one more step of each at the baseline's best rate."""
    options = run.options
    services = stack_pids(run.base)
    pick_pipeline = rates_to_play(options, options.start_rate)
    pick_baseline = rates_to_play(options, options.baseline_start_rate)
    async with AsyncExitStack() as stack:
        pipeline = None
        if "pipeline" in options.systems:
            pipeline = PipelineSide(run, report, echo, stack)
            stack.push_async_callback(pipeline.close)
            await pipeline.start()
        baseline = BaselineSide(run, report, echo) if "baseline" in options.systems else None
        while True:
            rate_p = None
            if pipeline is not None and not pipeline.stopped:
                rate_p = pick_pipeline(report.pipeline)
            rate_b = pick_baseline(report.baseline) if baseline is not None else None
            if rate_p is None and rate_b is None:
                break
            if pipeline is not None and rate_p is not None:
                await pipeline.step(rate_p, services)
            if baseline is not None and rate_b is not None:
                await baseline.step(rate_b, services)
        # Equal work: the CPU ratio compares both sides at a rate both sustained. If the
        # pipeline never played the baseline's best rate, both play it once more, side by side.
        best = stats.highest_passed(report.baseline)
        if (
            pipeline is not None
            and baseline is not None
            and best is not None
            and not pipeline.stopped
            and not stats.cpu_pairs(report.pipeline, [best])
        ):
            echo(f"equal work: both sides at the baseline's best, {best.rate:,.0f} msg/s")
            await pipeline.step(best.rate, services)
            await baseline.step(best.rate, services)


def subscribed(proc: Process) -> Callable[[], bool]:
    return lambda: "baseline subscribed" in proc.tail(50)


def step_line(r: stats.StepResult) -> str:
    return (
        f"{r.system} {r.rate:,.0f} msg/s: offered {r.offered:,.0f}/s, processed "
        f"{r.throughput:,.0f}/s, backlog at the end {r.final_backlog:,} "
        f"(slope {r.backlog_slope:+,.0f}/s), falls {r.falls - r.missing}/{r.falls}, "
        f"{stats.latency_text(r)} -> "
        f"{'sustained' if r.sustained else 'NOT sustained'}"
        + (
            " (the publishers fell short of the rate: the step measured them)"
            if r.offered < stats.MIN_OFFERED_SHARE * r.rate
            else ""
        )
        + ", "
        + f"{'every alert ≤ 1 s' if r.latency_ok else 'latency goal missed'}; "
        f"CPU {r.cpu_total_us():,.0f} µs/msg ({r.cpu_total_us(net=True):,.0f} net of idle: "
        + ", ".join(f"{name} {r.cpu_us(name, net=True):,.0f}" for name in r.parts)
        + f"; publishers {r.cpu_us('publishers'):,.0f})"
        + "".join(f"; {name} {rate:,.0f}/s" for name, rate in r.stages.items())
    )


WHAT_IS_STORED = (
    "what each side stores: the pipeline writes every message to Kafka and indexes every one "
    "in Elasticsearch (its search sink), and writes to PostgreSQL only alerts, hourly "
    "aggregates and nights (not each message); the baseline commits every message to "
    "PostgreSQL and indexes every one in Elasticsearch, and keeps its fall alerts in PostgreSQL"
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
        f"falls per step, {options.duration_s:g} s per step; baseline pool of "
        f"{options.baseline_threads} threads"
    )
    report.notes.append(WHAT_IS_STORED)
    echo(f"bench run {run.run_id}: logs in {workdir}")
    # Each side's steps (its search and the equal-work step) have fall lamps of their own.
    fall_lamps = options.falls_per_step * (options.max_steps + 1) * 2
    try:
        run.provision(fall_lamps)
        run.create_database()
        await alternate(run, report, echo)
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


def as_json(report: BenchReport, *, command: str = "", date: str = "") -> str:
    """Every figure of the run, raw: what the Markdown section and the summary are made of."""

    def step(r: stats.StepResult) -> dict[str, Any]:
        return {
            "system": r.system,
            "rate": r.rate,
            "seconds": r.seconds,
            "offered": r.offered,
            "throughput": r.throughput,
            "published": r.published,
            "processed": r.processed,
            "final_backlog": r.final_backlog,
            "backlog_slope": r.backlog_slope,
            "latencies_s": r.latencies_s,
            "falls": r.falls,
            "missing": r.missing,
            "sustained": r.sustained,
            "latency_ok": r.latency_ok,
            "passed": r.passed,
            "stages": r.stages,
            "cpu_window_s": r.window_s,
            "cpu_window_processed": r.window_processed,
            "cpu_s": r.cpu_s,
            "idle_cpu_per_s": r.idle_cpu_per_s,
            "cpu_us_per_message": {name: r.cpu_us(name) for name in r.cpu_s},
            "cpu_us_per_message_net": {name: r.cpu_us(name, net=True) for name in r.cpu_s},
            "cpu_total_us": r.cpu_total_us(),
            "cpu_total_us_net": r.cpu_total_us(net=True),
            "samples": [[s.t, s.published, s.processed] for s in r.samples],
        }

    def clean(value: Any) -> Any:
        # NaN (a figure with nothing to measure) is not JSON: null.
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(
        clean(
            {
                "command": command,
                "date": date,
                "machine": report.machine,
                "summary": stats.summary(report.pipeline, report.baseline),
                "pipeline": [step(r) for r in report.pipeline],
                "baseline": [step(r) for r in report.baseline],
                "notes": report.notes,
                "counts": report.counts,
            }
        ),
        allow_nan=False,
    )
