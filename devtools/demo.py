"""``veilleuse demo``: a simulated nursing home through the whole pipeline, scored.

It brings the stack up (idempotent), starts the pipeline's processes on topics of its own (a
run prefix, so that it neither reads nor disturbs anything else on the cluster), provisions
the home's lamps, plays a few minutes of accelerated life over real MQTT with a live progress
line, reads ``alerts.v1`` as an alerting consumer would (``read_committed``), and scores what it
read against the simulation's ground truth. It stops the processes it started, never the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.console.links import public_url
from devtools.demo_console import console_lines, issue_link, served_url, wait_for_stop
from devtools.demo_nights import NightCheck, check_night, plan_night, report_lines
from devtools.processes import PipelineProcess, veilleuse
from devtools.simulate import PlayStats
from devtools.simulator import SEVERITY, Simulation, demo_config, worker_env
from devtools.simulator.presets import DEMO_SEED, short_config
from devtools.simulator.scenarios import EARLY_MS, ON_TIME_MS, WARNING_ON_TIME_MS
from devtools.simulator.scoring import Score, SeenAlert, percentile, score
from pipeline.ports import free_port
from pipeline.settings import Settings

Echo = Callable[[str], None]
CRITICAL = ("fall", "help_requested")


@dataclass
class DemoRun:
    settings: Settings
    echo: Echo
    tty: bool
    seed: int = DEMO_SEED
    workers: int = 1
    factor: float = 5.0
    keep: bool = False
    full: bool = True  # also the sinks, the notifier and the API (if built), not only detection
    short: bool = False  # the 90-second home of the integration test
    serve: bool = False  # keep the processes and the console up after the verdict, until a signal
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    result: Score | None = None
    procs: list[PipelineProcess] = field(default_factory=list)
    alerts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    worker_ports: list[int] = field(default_factory=list)
    api_port: int = 0
    token: str | None = None
    api_lines: list[str] = field(default_factory=list)
    console_lines: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{self.settings.kafka.topic_prefix}demo-{self.tag}."

    @property
    def app_id(self) -> str:
        return f"demo-{self.tag}-detection"

    @property
    def isolated(self) -> Settings:
        kafka = self.settings.kafka.model_copy(update={"topic_prefix": self.prefix})
        return self.settings.model_copy(update={"kafka": kafka})

    @property
    def log_dir(self) -> Path:
        path = Path(tempfile.gettempdir()) / f"veilleuse-demo-{self.tag}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- processes ---------------------------------------------------------------------------

    def common_env(self) -> dict[str, str]:
        return {
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": self.prefix,
            "VEILLEUSE_LOG_FORMAT": "json",
            "VEILLEUSE_LOG_LEVEL": "INFO",
        }

    def connector_env(self) -> dict[str, str]:
        return {
            **self.common_env(),
            "VEILLEUSE_MQTT__CLIENT_ID": f"demo-{self.tag}-connector",
            "VEILLEUSE_MQTT__SHARE_GROUP": f"demo-{self.tag}",
            "VEILLEUSE_MQTT__SESSION_EXPIRY_S": "120",
            "VEILLEUSE_CONNECTOR__METRICS_PORT": "0",
        }

    def start_processes(self, detection: dict[str, str]) -> None:
        def proc(name: str, argv: list[str], env: dict[str, str]) -> PipelineProcess:
            log_file = self.log_dir / f"{name}.log"
            p = PipelineProcess(argv, env, log_file, name=name).start()
            self.procs.append(p)
            return p

        proc("connector", ["connector"], self.connector_env())
        for i in range(self.workers):
            port = free_port()
            self.worker_ports.append(port)
            env = {
                **self.common_env(),
                **detection,
                "VEILLEUSE_DETECTION__APP_ID": self.app_id,
                "VEILLEUSE_DETECTION__METRICS_PORT": str(port),
                "VEILLEUSE_DETECTION__LIVE_PORT": str(free_port()),
            }
            proc(f"worker-{i}", ["worker", "--instance-id", f"demo-{self.tag}-w{i}"], env)
        if not self.full:
            if self.serve:  # something to look at after the verdict: the API and its console
                self.start_api(proc)
            return
        sink_env = {
            **self.common_env(),
            "VEILLEUSE_SINK__POSTGRES_METRICS_PORT": "0",
            "VEILLEUSE_SINK__ELASTICSEARCH_METRICS_PORT": "0",
        }
        proc("sink-postgres", ["sink", "postgres"], sink_env)
        proc("sink-elasticsearch", ["sink", "elasticsearch"], sink_env)
        proc(
            "notifier",
            ["notifier"],
            {
                **self.common_env(),
                "VEILLEUSE_NOTIFIER__GROUP_ID": f"demo-{self.tag}-notifier",
                "VEILLEUSE_NOTIFIER__REDIS_KEY_PREFIX": f"veilleuse:demo-{self.tag}:",
                "VEILLEUSE_NOTIFIER__METRICS_PORT": "0",
            },
        )
        self.start_api(proc)

    def start_api(self, proc: Callable[[str, list[str], dict[str, str]], PipelineProcess]) -> None:
        self.api_port = free_port()
        api_env = {
            **self.common_env(),
            # The workers' partitions are registered under their app id: the live hours.
            "VEILLEUSE_DETECTION__APP_ID": self.app_id,
            "VEILLEUSE_API__PORT": str(self.api_port),
        }
        proc("api", ["api"], api_env)

    def stop_processes(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    # -- Kafka -------------------------------------------------------------------------------

    async def tail_alerts(self, stop: asyncio.Event) -> None:
        """Read alerts.v1 as the notifier does (read_committed), noting when each arrives."""
        from aiokafka import TopicPartition

        from pipeline.clients import consumer
        from pipeline.topics import ALERTS, topic_name
        from schemas import decode

        isolated = self.isolated
        topic = topic_name(isolated, ALERTS)
        tail = consumer(isolated, group_id=None, isolation_level="read_committed")
        await tail.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(isolated.kafka.topic_partitions)]
            tail.assign(tps)
            await tail.seek_to_beginning(*tps)
            while not stop.is_set():
                for records in (await tail.getmany(timeout_ms=200)).values():
                    for record in records:
                        self.alerts.append((time.time(), decode(record.value)[1]))
        finally:
            await tail.stop()

    async def count_records(self, spec: Any, lamps: set[str]) -> int:
        """Records of ``lamps`` on a topic of this run (keyed by lamp_id)."""
        from aiokafka import TopicPartition

        from pipeline.clients import consumer
        from pipeline.topics import topic_name

        isolated = self.isolated
        topic = topic_name(isolated, spec)
        reader = consumer(isolated, group_id=None)
        await reader.start()
        count = 0
        try:
            tps = [TopicPartition(topic, p) for p in range(isolated.kafka.topic_partitions)]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)

            async def behind() -> bool:
                return any([await reader.position(tp) < ends[tp] for tp in tps])

            while await behind():
                for records in (await reader.getmany(timeout_ms=500)).values():
                    count += sum(
                        1
                        for r in records
                        if (r.key or b"").decode(errors="replace") in lamps
                        or any(lamp.encode() in (r.value or b"")[:200] for lamp in lamps)
                    )
        finally:
            await reader.stop()
        return count

    async def delete_topics(self) -> None:
        from pipeline.clients import admin_client

        admin = admin_client(self.settings)
        await admin.start()
        try:
            ours = [
                t
                for t in await admin.list_topics()
                if t.startswith((self.prefix, f"demo-{self.tag}-"))
            ]
            if ours:
                await admin.delete_topics(ours)
        finally:
            await admin.close()


def scrape(port: int) -> dict[str, float]:
    """The worker's Prometheus counters of interest: records in, outputs by topic."""
    values: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return values
    for line in text.splitlines():
        if line.startswith("veilleuse_worker_records_total "):
            values["in"] = values.get("in", 0) + float(line.split()[-1])
        elif line.startswith("veilleuse_worker_outputs_total{"):
            topic = line.split('topic="', 1)[1].split('"', 1)[0]
            values[topic] = values.get(topic, 0) + float(line.split()[-1])
    return values


def run_stack(echo: Echo) -> None:
    """``veilleuse stack up`` and ``veilleuse setup``: both idempotent."""
    for argv in (["stack", "up"], ["setup"]):
        done = subprocess.run(veilleuse(*argv), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"veilleuse {' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
        echo(f"veilleuse {' '.join(argv)}: ok ({len(done.stdout.splitlines())} lines)")


# -- the run ------------------------------------------------------------------------------------


def seen_alerts(run: DemoRun, start_ms: int) -> list[SeenAlert]:
    return [
        SeenAlert(
            a["alert_id"], a["lamp_id"], a["kind"], a["severity"], round(at * 1000) - start_ms
        )
        for at, a in run.alerts
        if a["state"] == "raised"
    ]


def progress_line(run: DemoRun, sim: Simulation, stats: PlayStats, at_ms: int) -> str:
    lamps = {lamp for _, lamp in sim.config.lamp_ids()}
    kinds: dict[str, int] = {}
    for _, a in run.alerts:
        if a["state"] == "raised" and a["lamp_id"] in lamps:
            kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
    shown = " ".join(f"{k}:{n}" for k, n in sorted(kinds.items())) or "none yet"
    return (
        f"t={at_ms / 1000:5.0f}/{sim.config.duration_s:.0f} s  published {stats.published:5d}  "
        f"alerts {shown}"
    )


async def run_demo(run: DemoRun, stack: bool = True) -> int:  # noqa: PLR0912, PLR0915 - one story
    from devtools.simulate import lamp_fleet, play
    from pipeline.topics import ACTIVITY_HOURLY, LAMP_DLQ, LAMP_LATE, LAMP_MESSAGES, ensure_topics

    echo, settings = run.echo, run.settings
    started = time.monotonic()
    if stack:
        run_stack(echo)
    make = short_config if run.short else demo_config
    config = make(0, seed=run.seed, run=f"demo-{run.tag}", factor=run.factor)
    lamps = {lamp for _, lamp in config.lamp_ids()}
    await ensure_topics(run.isolated)
    echo(f"topics: prefix {run.prefix!r}; logs in {run.log_dir}")
    stop_tail = asyncio.Event()
    tail: asyncio.Task[None] | None = None
    # The night summary needs the sink and the API to be read back: the full run only.
    night = None
    if run.full:
        grace_s = config.detection.window_grace_s
        night = plan_night(settings, config.lamp_ids()[0][0], grace_s, time.time())
    night_check: NightCheck | None = None
    serving = False
    try:
        run.start_processes({**worker_env(config), **(night.env() if night else {})})
        echo("started: " + ", ".join(p.name for p in run.procs))
        for p in run.procs:
            if p.name == "connector":
                await p.wait_for_log(r"subscribed on", 90)
            elif p.name.startswith("worker"):
                await p.wait_for_log(r"partitions ready: \[", 120)
        echo(f"pipeline ready after {time.monotonic() - started:.0f} s")
        tail = asyncio.create_task(run.tail_alerts(stop_tail))
        async with lamp_fleet(settings, config) as (fleet, creds):
            echo(f"{len(creds)} lamps provisioned and connected, each with its own credentials")
            from dataclasses import replace

            sim = Simulation(replace(config, start_ms=int(time.time() * 1000) + 500))
            last_len = 0

            def on_progress(stats: PlayStats, at_ms: int) -> None:
                nonlocal last_len
                line = progress_line(run, sim, stats, at_ms)
                if run.tty:
                    sys.stdout.write("\r" + line.ljust(last_len))
                    sys.stdout.flush()
                    last_len = len(line)
                elif at_ms // 15_000 != (at_ms - 1_000) // 15_000:
                    echo(line)

            stats = await play(fleet, sim, on_progress)
            if run.tty:
                sys.stdout.write("\n")
            observe_until = time.time() + sim.config.observe_s
            while time.time() < observe_until:
                await asyncio.sleep(0.2)
        stop_tail.set()
        await tail
        start_ms = sim.config.start_ms
        result = score(sim.truth, seen_alerts(run, start_ms), lamps)
        produced = await run.count_records(LAMP_MESSAGES, lamps)
        dlq = await run.count_records(LAMP_DLQ, lamps)
        late = await run.count_records(LAMP_LATE, lamps)
        hourly = await run.count_records(ACTIVITY_HOURLY, lamps)
        worker: dict[str, float] = {}
        for port in run.worker_ports:
            for key, value in scrape(port).items():
                worker[key] = worker.get(key, 0) + value
        if run.full:
            ask_the_api(run, config)
        if night is not None:
            echo(f"waiting for the night summaries of the demo's night ({night.label()})")
            night_check = await check_night(
                run.isolated, sim.config, night, run.api_port, run.token
            )
        dead = [p.name for p in run.procs if not p.alive()]
        serving = run.serve and not dead and run.api_port > 0
        if run.api_port:
            offer_the_console(run, config, serving)
    finally:
        stop_tail.set()
        if tail is not None:
            with contextlib.suppress(Exception):
                await tail
        if not serving:  # unset (an exception) or False: stop now
            await wind_down(run)
    report(run, sim, stats, result, produced, dlq, late, hourly, worker)
    if night_check is not None:
        echo("")
        for line in report_lines(night_check):
            echo(line)
        verdict = "PASS" if night_check.ok else "FAIL"
        echo(f"{verdict}: {len(night_check.heard)} lamp(s) heard during the night, each with "
             f"exactly one summary: {'yes' if night_check.ok else 'no'}")  # fmt: skip
    if dead:
        echo(f"processes that died during the run: {', '.join(dead)} (logs in {run.log_dir})")
    echo(f"demo took {time.monotonic() - started:.0f} s")
    run.result = result
    nights_ok = night_check is None or night_check.ok
    code = 0 if result.ok and not dead and nights_ok else 1
    if run.console_lines:
        echo("")
        for line in run.console_lines:
            echo(line)
    if serving:
        try:
            received = await wait_for_stop()
            echo(f"{received}: stopping the demo's processes")
        finally:
            await wind_down(run)
        echo(f"stopped; exit {code} (the verdict above)")
    return code


async def wind_down(run: DemoRun) -> None:
    """Stop the run's processes and forget its connector session and topics."""
    run.stop_processes()
    await discard_connector_session(run)
    if not run.keep:
        with contextlib.suppress(Exception):
            await run.delete_topics()


def offer_the_console(run: DemoRun, config: Any, serving: bool) -> None:
    """A staff token of the simulated home and a one-time sign-in link to its board: on the
    demo's own API while it serves, else where ``veilleuse api`` will answer."""
    site = config.lamp_ids()[0][0]
    settings = run.settings
    base = served_url(settings, run.api_port) if serving else public_url(settings.api)
    try:
        code = issue_link(settings, f"demo-{run.tag}-console", site)
    except Exception as exc:  # noqa: BLE001 - the report goes on without the link
        run.console_lines = [f"no console link: {type(exc).__name__}: {exc}"]
        return
    ttl_s = settings.api.console_link_ttl_s
    run.console_lines = console_lines(base, code, site, ttl_s, serving)


async def discard_connector_session(run: DemoRun) -> None:
    from connectors.mqtt_asyncio import discard_session

    mqtt = run.settings.mqtt
    with contextlib.suppress(Exception):
        await discard_session(
            host=mqtt.brokers[0].host,
            port=mqtt.brokers[0].port,
            client_id=f"demo-{run.tag}-connector",
            username=mqtt.username,
            password=mqtt.password.get_secret_value(),
        )


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def report(  # noqa: PLR0917 - the figures of one run
    run: DemoRun,
    sim: Simulation,
    stats: PlayStats,
    result: Score,
    produced: int,
    dlq: int,
    late: int,
    hourly: int,
    worker: dict[str, float],
) -> None:
    echo, c = run.echo, sim.counts
    echo("")
    echo("== alerts against the ground truth ==")
    echo(f"{'kind':<16}{'severity':<10}{'expected':>9}{'found':>7}{'on time':>9}{'early':>7}"
         f"{'late':>6}{'false':>7}{'may':>5}{'recall':>8}{'precision':>11}")  # fmt: skip
    for ks in result.kinds.values():
        echo(
            f"{ks.kind:<16}{SEVERITY[ks.kind]:<10}{ks.expected:>9}{ks.found:>7}{ks.on_time:>9}"
            f"{ks.early:>7}{ks.late:>6}{ks.false:>7}{ks.tolerated:>5}{_fmt(ks.recall):>8}"
            f"{_fmt(ks.precision):>11}"
        )
    echo("(may: borderline alerts the ground truth allows without requiring them)")
    for e in result.missed:
        echo(f"MISSED  {e.kind} on {e.lamp_id} ({e.scenario}), due at t={e.due_ms / 1000:.1f} s")
    for a, why in result.false:
        note = f" ({why})" if why.startswith("a second") else f" during {why}" if why else ""
        echo(f"FALSE   {a.kind} on {a.lamp_id} at t={a.at_ms / 1000:.1f} s{note}")
    for e, a in result.late:
        after_s = (a.at_ms - e.latest_ms) / 1000
        echo(
            f"LATE    {e.kind} on {e.lamp_id} ({e.scenario}): at t={a.at_ms / 1000:.1f} s, "
            f"{after_s:.1f} s after its bound (due t={e.due_ms / 1000:.1f} s + "
            f"{(e.latest_ms - e.due_ms) / 1000:.1f} s)"
        )
    for e, a in result.early:
        before_s = (e.earliest_ms - a.at_ms) / 1000
        echo(
            f"EARLY   {e.kind} on {e.lamp_id} ({e.scenario}): at t={a.at_ms / 1000:.1f} s, "
            f"{before_s:.1f} s before its condition could be met (due t={e.due_ms / 1000:.1f} s)"
        )
    for a in result.unscored:
        echo(f"note    {a.kind} on {a.lamp_id} at t={a.at_ms / 1000:.1f} s (not scored)")
    for n in sim.truth.non_incidents:
        raised = [a for a, _ in result.false if a.lamp_id == n.lamp_id and a.kind == n.kind]
        echo(f"{'FAILED' if raised else 'held  '}  no {n.kind} on {n.lamp_id} during {n.scenario}")
    echo("")
    echo("== latency: condition met → alert read on alerts.v1 (read_committed), and the bound ==")
    echo(
        f"bound enforced: a critical alert (fall, help) no later than its condition + "
        f"{ON_TIME_MS / 1000:.1f} s (rule 6: the fall's 30 s, the press), a warning + "
        f"{WARNING_ON_TIME_MS / 1000:.0f} s, and none earlier than its condition - "
        f"{EARLY_MS / 1000:.1f} s (a fall raised before its 30 s fails); outside: FAIL"
    )
    echo(f"{'kind':<24}{'n':>4}{'p50':>9}{'p95':>9}{'worst':>9}{'bound':>13}{'worst - bound':>15}")
    groups: list[tuple[str, tuple[str, ...]]] = [("critical (fall, help)", CRITICAL)]
    groups += [(kind, (kind,)) for kind in result.kinds]
    for name, kinds in groups:
        lat = result.latencies(kinds)
        scores = [result.kinds[k] for k in kinds]
        bounds = [b for ks in scores for b in ks.bounds_ms]
        over = [o for ks in scores for o in ks.over_ms]
        p50, p95 = (percentile(lat, q) for q in (0.5, 0.95))
        top = max(lat) if lat else None
        bound = (
            "-" if not bounds
            else f"+{min(bounds) / 1000:.1f} s" if min(bounds) == max(bounds)
            else f"+{min(bounds) / 1000:.0f}..{max(bounds) / 1000:.0f} s"
        )  # fmt: skip
        margin = "-" if not over else f"{max(over) / 1000:+.2f} s"
        echo(
            f"{name:<24}{len(lat):>4}{_fmt(p50, '{:.0f} ms'):>9}{_fmt(p95, '{:.0f} ms'):>9}"
            f"{_fmt(top, '{:.0f} ms'):>9}{bound:>13}{margin:>15}"
        )
    echo(
        "(n: required alerts found, the sample of each percentile; worst - bound > 0 is late."
        " environment: raised when its averaging window closes, so its bound is the window's"
    )
    echo(" span; inactivity: 3 h of daytime at the life's pace, see docs/simulator.md)")
    echo("")
    echo("== messages per stage ==")
    echo(f"simulated lamps → MQTT   {stats.published} published ({c.valid - c.duplicates} valid, "
         f"{c.duplicates} duplicates, {c.junk} junk, {c.delayed} reordered or replayed late; "
         f"of the incidents' own messages {c.scripted_duplicates} duplicated, "
         f"{c.scripted_delayed} reordered); "
         f"player lag max {stats.max_lag_ms:.0f} ms")  # fmt: skip
    echo(f"connector → Kafka        {produced} on lamp.messages.v1, {dlq} on lamp.dlq.v1 "
         f"(junk sent: {c.junk})")  # fmt: skip
    if worker:
        outs = ", ".join(
            f"{k.removeprefix(run.prefix)} {v:.0f}" for k, v in sorted(worker.items()) if k != "in"
        )
        echo(
            f"worker(s)                {worker.get('in', 0):.0f} records in (every lamp on the "
            f"broker, not only the home's); out: {outs}"
        )
    ours = {lamp for _, lamp in sim.config.lamp_ids()}
    alerts = sum(1 for _, a in run.alerts if a["lamp_id"] in ours)
    echo(f"alerts.v1 (this run)     {alerts} records; lamp.late.v1 {late}; "
         f"activity.hourly.v1 {hourly}")  # fmt: skip
    echo("")
    where_next(run, sim)
    echo("")
    verdict = "PASS" if result.ok else "FAIL"
    echo(f"{verdict}: {len(result.missed_critical)} critical alert(s) missed, "
         f"{len(result.false_critical)} false critical alert(s); every kind: "
         f"{len(result.missed)} missed, {len(result.false)} false, {len(result.late)} late "
         f"(after condition + {ON_TIME_MS / 1000:.1f} s critical, + "
         f"{WARNING_ON_TIME_MS / 1000:.0f} s warning), {len(result.early)} early")  # fmt: skip


def ask_the_api(run: DemoRun, config: Any) -> None:
    """What support would see: the demo's site through the running query API, with a token."""
    import urllib.error

    from api.tokens import create_token

    site, lamp = config.lamp_ids()[0]
    try:
        run.token = create_token(run.settings.postgres.conninfo(), f"demo-{run.tag}", "support")
    except Exception as exc:  # noqa: BLE001 - the report goes on without the API part
        run.api_lines.append(f"no API token: {type(exc).__name__}: {exc}")
        return

    def get(path: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{run.api_port}{path}",
            headers={"Authorization": f"Bearer {run.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our API
            return json.loads(response.read())

    try:
        alerts = get(f"/alerts?site={site}&limit=500")["items"]
        kinds = sorted({a["kind"] for a in alerts})
        run.api_lines.append(f"GET /alerts?site={site}: {len(alerts)} alerts ({', '.join(kinds)})")
        activity = get(f"/lamps/{lamp}/activity")
        live = [p for p in activity["points"] if p["live"]]
        messages = sum(p["messages"] for p in live)
        state = "live from its worker" if activity["live"]["available"] else "not live"
        run.api_lines.append(
            f"GET /lamps/{lamp}/activity: {len(live)} open hour(s), {messages} messages, {state}"
        )
        found = get(f"/messages/search?site={site}&type=fall_suspected&limit=5")["items"]
        run.api_lines.append(f"GET /messages/search?site={site}&type=fall_suspected: {len(found)}")
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        run.api_lines.append(f"the API did not answer as expected: {exc}")


def where_next(run: DemoRun, sim: Simulation) -> None:
    echo, settings = run.echo, run.settings
    site, lamp = sim.config.lamp_ids()[0]
    echo("== what support sees (the query API, during the run) ==")
    for line in run.api_lines or ["(the API was not asked: detection-only run)"]:
        echo(line)
    echo("== where to look next ==")
    base = settings.api.public_url or f"http://{settings.api.host}:{settings.api.port}"
    if run.token:
        echo("start the API with `.venv/bin/veilleuse api`, then (a support token, made for you):")
        auth = f'-H "Authorization: Bearer {run.token}"'
        echo(f"curl {auth} '{base}/alerts?site={site}'")
        echo(f"curl {auth} '{base}/lamps/{lamp}/activity?granularity=day'")
        echo(f"curl {auth} '{base}/messages/search?q=on_floor&site={site}'")
        echo(f"interactive docs: {base}/docs")
    echo(f"logs of the processes: {run.log_dir}")
