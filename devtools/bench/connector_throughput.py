"""Throughput of one connector process: QoS 1 messages/s acknowledged after the Kafka write,
and the connector's CPU time per message.

Runs its own Mosquitto (the stack's limits, a free port, a temporary folder: nobody else's test
traffic reaches the measured connector, and the bench's backlog reaches nobody else's sessions)
and writes to Kafka topics of its own (a unique prefix, deleted at the end). Measurements:

- backlog: the broker holds a backlog for the connector's persistent session, published while
  it was stopped; the connector is started and timed until it has written all of it and
  acknowledged it. Its own ceiling: the publishers do not compete for the two cores.
- live: ``--publishers`` publisher processes and the connector at once for ``--seconds``.
- compare (``--old REV``): the backlog drain alternates between the connector at a git revision
  (``git archive`` into a temporary folder, run from there: the working tree is not touched)
  and the working tree's, ``--rounds`` pairs. One publish fills both sides' sessions (each side
  has its own share group), so the pair drains the same messages.
- ``--profile``: one more backlog drain of the working tree under cProfile; prints where the
  time goes (cProfile slows every Python call: shares, not rates).

CPU time is the connector process's user + system time from /proc (every thread: the metrics
endpoint's scrapes, four a second, included) between two samples of its ``produced`` counter, so
start-up is left out; µs per message is that time over the messages written between the two.
Each publisher process reports its own CPU time, and the broker's is read from /proc too.

    .venv/bin/python -m devtools.bench.connector_throughput [--backlog 200000] [--seconds 20]
        [--publishers 2] [--lamps 500] [--old REV --rounds 3] [--profile] [--out FILE.json]

It prints what it measured and writes the raw results (JSON, default under
devtools/bench/results/); nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from devtools.bench.broker_provisioning import wait_connects
from devtools.bench.detection_ab import extract
from devtools.bench.detection_throughput import cpu_seconds, delete_topics, with_prefix
from devtools.bench.probes import cpu_model
from devtools.fleet import Fleet
from pipeline.lamps import ComponentAccount, Credential, MosquittoCredentials
from pipeline.ports import free_port
from pipeline.settings import MqttBroker, Settings, load_settings
from pipeline.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "devtools" / "bench" / "results"
MODULE = "devtools.bench.connector_throughput"
CONNECTOR_CODE = (
    "connectors/mqtt_source.py",
    "connectors/mqtt_asyncio.py",
    "connectors/ledger.py",
    "connectors/validation.py",
    "schemas/lamp_protocol.py",
    "pipeline/kafka_producer.py",
)
POLL_S = 0.25


# -- the bench's own broker -------------------------------------------------------------------


@dataclass
class Broker:
    """A Mosquitto of the bench's own, configured as the stack's (limits included)."""

    folder: Path
    settings: Settings
    lamps: int
    proc: subprocess.Popen[bytes] | None = None
    creds: list[Credential] = field(default_factory=list)
    broker: MqttBroker = field(init=False)

    def __post_init__(self) -> None:
        self.broker = MqttBroker(
            name="bench", host="127.0.0.1", port=free_port(), restart_guard=False
        )

    def start(self) -> None:
        mqtt = self.settings.mqtt
        account = ComponentAccount(
            mqtt.username, mqtt.password.get_secret_value(), read=("lamps/#",)
        )
        # The acl_file form (a section per lamp): this broker loads no plugin.
        credentials = MosquittoCredentials(self.folder, (account,), per_lamp_acl=True)
        site = f"bench-{uuid.uuid4().hex[:6]}"
        self.creds = credentials.provision([(site, f"{site}-{i:05d}") for i in range(self.lamps)])
        lines = [
            "per_listener_settings false",
            f"listener {self.broker.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {credentials.password_file}",
            f"acl_file {credentials.acl_file}",
            "persistence false",
            "log_dest stdout",
            "max_queued_messages 1000000",
            "max_inflight_messages 1000",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # it would drop to `mosquitto` and lose its files
        conf = self.folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        with (self.folder / "mosquitto.log").open("ab") as log:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
        asyncio.run(wait_connects(self.broker, mqtt.username, mqtt.password.get_secret_value()))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def cpu_s(self) -> float:
        assert self.proc is not None  # noqa: S101
        return cpu_seconds(self.proc.pid)


# -- publishers ---------------------------------------------------------------------------------


def payload(lamp_id: str, seq: int) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "lamp_id": lamp_id,
            "seq": seq,
            "ts": int(time.time() * 1000),
            "type": "motion",
            "zone": "room",
            "level": seq % 101,
        }
    ).encode()


async def publish(broker: MqttBroker, creds: list[Credential], count: int, seconds: float) -> int:
    """Publish round-robin, as fast as the broker acknowledges, until ``count`` or ``seconds``."""
    fleet = Fleet(broker, creds, max_inflight=100)
    await fleet.connect()
    started, sent, seq = time.monotonic(), 0, 0
    try:
        while sent < count and time.monotonic() - started < seconds:
            for cred in creds[: count - sent]:
                fleet.publish(cred.lamp_id, "events", payload(cred.lamp_id, seq))
            sent += min(len(creds), count - sent)
            seq += 1
            while fleet.unacked > 20_000:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0)
        await fleet.wait_acked(300)
    finally:
        await fleet.close()
    return sent


def publisher_process(
    broker: MqttBroker,
    creds: list[Credential],
    count: int,
    seconds: float,
    result: multiprocessing.Queue[tuple[int, float, float]],
) -> None:
    started = time.monotonic()
    sent = asyncio.run(publish(broker, creds, count, seconds))
    result.put((sent, time.process_time(), time.monotonic() - started))


@dataclass
class Published:
    messages: int
    seconds: float  # wall time of the slowest publisher, connections included
    cpu_s: float  # all publishers' CPU time
    publishers: int

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_s / self.messages * 1e6


def start_publishers(
    broker: MqttBroker, creds: list[Credential], count: int, seconds: float, processes: int
) -> tuple[list[multiprocessing.Process], multiprocessing.Queue[tuple[int, float, float]]]:
    result: multiprocessing.Queue[tuple[int, float, float]] = multiprocessing.Queue()
    procs = []
    for i in range(processes):
        share = count // processes + (1 if i < count % processes else 0)
        proc = multiprocessing.Process(
            target=publisher_process,
            args=(broker, creds[i::processes], share, seconds, result),
        )
        proc.start()
        procs.append(proc)
    return procs, result


def join_publishers(
    procs: list[multiprocessing.Process], result: multiprocessing.Queue[tuple[int, float, float]]
) -> Published:
    outcomes = [result.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join()
    return Published(
        messages=sum(o[0] for o in outcomes),
        seconds=max(o[2] for o in outcomes),
        cpu_s=sum(o[1] for o in outcomes),
        publishers=len(procs),
    )


# -- the connector --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One version of the connector: a tree of the project and its own share group."""

    label: str  # "new" (the working tree) or "old"
    tree: Path
    revision: str
    group: str


def connector_env(side: Side, broker: MqttBroker, prefix: str, port: int) -> dict[str, str]:
    env = {
        **os.environ,
        "VEILLEUSE_MQTT__BROKERS": json.dumps([broker.model_dump(mode="json")]),
        "VEILLEUSE_MQTT__SHARE_GROUP": side.group,
        # No ordinal: no restart guard (replica 0's second copy of each message) in this bench.
        "VEILLEUSE_MQTT__CLIENT_ID": side.group,
        "VEILLEUSE_MQTT__SESSION_EXPIRY_S": "900",
        "VEILLEUSE_CONNECTOR__METRICS_PORT": str(port),
        "VEILLEUSE_KAFKA__TOPIC_PREFIX": prefix,
        "VEILLEUSE_LOG_LEVEL": "WARNING",
    }
    env.pop("PYTHONPATH", None)
    if side.tree != REPO:
        env["PYTHONPATH"] = str(side.tree)
    return env


class Connector:
    """``python -m cli connector`` of one side, with its metrics endpoint."""

    def __init__(
        self,
        side: Side,
        broker: MqttBroker,
        prefix: str,
        log: Path,
        profile: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.log = log
        argv = [sys.executable]
        if profile is not None:
            argv += ["-m", "cProfile", "-o", str(profile)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "-m", "cli", "connector"],
                cwd=side.tree,
                env=connector_env(side, broker, prefix, self.port),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name + json.dumps(sample.labels, sort_keys=True)] = sample.value
        return out

    def produced(self) -> float:
        m = self.metrics()
        return sum(v for k, v in m.items() if k.startswith("veilleuse_connector_produced_total"))

    def wait_subscribed(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.metrics().get('veilleuse_connector_subscribed{"broker": "bench"}') == 1:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"connector exited: see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"connector did not subscribe: see {self.log}")
            time.sleep(0.1)

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(90)


@dataclass
class Drain:
    """One connector's pass over a backlog (or a live run), between two samples."""

    kind: str  # backlog | live
    label: str
    round: int
    started_utc: str
    messages: int  # written between the first and the last sample
    seconds: float  # between the first and the last sample
    total_seconds: float  # from the process start (start-up included) to the last sample
    total_messages: int
    cpu_s: float  # the connector's user + system time between the samples
    broker_cpu_s: float
    load_before: float
    load_after: float
    publishers: dict[str, Any] | None = None

    @property
    def per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_s / self.messages * 1e6

    @property
    def cores(self) -> float:
        return self.cpu_s / self.seconds


Sample = tuple[float, float, float, float]  # monotonic time, produced, connector CPU, broker CPU


def sample(connector: Connector, broker: Broker) -> Sample:
    return (time.monotonic(), connector.produced(), connector.cpu_s(), broker.cpu_s())


def measure(
    connector: Connector,
    broker: Broker,
    until: int,
    started: float,
    *,
    kind: str,
    label: str,
    round_: int,
    first: Sample | None = None,
    load_before: float | None = None,
) -> Drain:
    """Sample the connector's counter and CPU until ``until`` messages are written."""
    load_before = os.getloadavg()[0] if load_before is None else load_before
    if first is None:
        connector.wait_subscribed()
        first = sample(connector, broker)
    last = first
    deadline = time.monotonic() + 900
    while last[1] < until:
        if connector.proc.poll() is not None:
            raise RuntimeError(f"connector exited: see {connector.log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{last[1]:.0f}/{until} written after 900 s: see {connector.log}")
        rate = (last[1] - first[1]) / max(last[0] - first[0], 1e-3)
        # Finer near the end, so that the last sample is close to the real end.
        time.sleep(0.02 if until - last[1] < rate * 0.5 else POLL_S)
        last = sample(connector, broker)
    return Drain(
        kind=kind,
        label=label,
        round=round_,
        started_utc=datetime.fromtimestamp(time.time() - (last[0] - started), UTC).strftime(
            "%H:%M:%S"
        ),
        messages=int(last[1] - first[1]),
        seconds=last[0] - first[0],
        total_seconds=last[0] - started,
        total_messages=int(last[1]),
        cpu_s=last[2] - first[2],
        broker_cpu_s=last[3] - first[3],
        load_before=load_before,
        load_after=os.getloadavg()[0],
    )


def drain(side: Side, broker: Broker, prefix: str, *, sent: int, round_: int, work: Path) -> Drain:
    started = time.monotonic()
    connector = Connector(side, broker.broker, prefix, work / f"{side.label}.log")
    try:
        return measure(
            connector, broker, sent, started, kind="backlog", label=side.label, round_=round_
        )
    finally:
        connector.stop()


def live(
    side: Side, broker: Broker, prefix: str, *, seconds: float, publishers: int, work: Path
) -> Drain:
    """Publishers and the connector at once: from the publishers' start until all they
    published is written (their connections' set-up included)."""
    started = time.monotonic()
    connector = Connector(side, broker.broker, prefix, work / f"{side.label}-live.log")
    try:
        connector.wait_subscribed()
        load_before = os.getloadavg()[0]
        first = sample(connector, broker)
        procs, result = start_publishers(broker.broker, broker.creds, 10**9, seconds, publishers)
        published = join_publishers(procs, result)
        run = measure(
            connector,
            broker,
            published.messages,
            started,
            kind="live",
            label=side.label,
            round_=0,
            first=first,
            load_before=load_before,
        )
    finally:
        connector.stop()
    run.publishers = {**asdict(published), "cpu_us_per_message": published.cpu_us_per_message}
    return run


# -- reporting ------------------------------------------------------------------------------------


def describe(run: Drain) -> str:
    return (
        f"{run.kind} {run.label} (round {run.round}): {run.per_s:,.0f} msg/s "
        f"({run.messages:,} in {run.seconds:.2f}s between samples; {run.total_messages:,} in "
        f"{run.total_seconds:.2f}s from the process start); connector CPU {run.cpu_s:.2f}s = "
        f"{run.cores:.2f} cores, {run.cpu_us_per_message:.1f} µs/msg; broker "
        f"{run.broker_cpu_s / run.messages * 1e6:.1f} µs/msg; load average "
        f"{run.load_before:.2f}→{run.load_after:.2f}"
    )


def summary(runs: list[Drain]) -> list[str]:
    lines = ["", "| side | runs | msg/s median (min-max) | connector µs CPU/msg median (min-max) |"]
    lines.append("|---|---|---|---|")
    backlog = [r for r in runs if r.kind == "backlog"]
    for label in ("old", "new"):
        side = [r for r in backlog if r.label == label]
        if not side:
            continue
        rates, cpus = [r.per_s for r in side], [r.cpu_us_per_message for r in side]
        lines.append(
            f"| {label} | {len(side)} | {statistics.median(rates):,.0f} "
            f"({min(rates):,.0f}-{max(rates):,.0f}) | {statistics.median(cpus):.1f} "
            f"({min(cpus):.1f}-{max(cpus):.1f}) |"
        )
    pairs: dict[int, dict[str, Drain]] = {}
    for r in backlog:
        pairs.setdefault(r.round, {})[r.label] = r
    complete = [p for p in pairs.values() if {"old", "new"} <= p.keys()]
    if complete:
        rate = [p["new"].per_s / p["old"].per_s for p in complete]
        cpu = [p["new"].cpu_us_per_message / p["old"].cpu_us_per_message for p in complete]
        lines.append("")
        lines.append(
            f"new/old msg/s over {len(complete)} pairs: median {statistics.median(rate):.2f} "
            f"[{min(rate):.2f}-{max(rate):.2f}] (above 1: the new code is faster)"
        )
        lines.append(
            f"new/old connector CPU µs per message over {len(complete)} pairs: median "
            f"{statistics.median(cpu):.2f} [{min(cpu):.2f}-{max(cpu):.2f}] (below 1: cheaper)"
        )
    return lines


def profile_lines(path: Path, top: int = 30) -> None:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


# -- main ---------------------------------------------------------------------------------------


def main() -> None:  # noqa: PLR0912 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lamps", type=int, default=500)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="live run; 0: none")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--old", help="git revision to compare with the working tree")
    parser.add_argument("--rounds", type=int, default=1, help="backlog drains per side")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, help="raw results (JSON); default under results/")
    args = parser.parse_args()

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt  # the clean-up below: the broker, the topics

    signal.signal(signal.SIGTERM, on_term)
    now = datetime.now(UTC)
    out_path: Path = args.out or RESULTS / f"connector_throughput-{now:%Y%m%dT%H%M}Z.json"
    work = Path(tempfile.mkdtemp(prefix="connector-bench-"))
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-connector-{tag}."
    settings = with_prefix(load_settings(), prefix)
    sides = [Side("new", REPO, "working tree", f"bench{tag}new")]
    if args.old:
        commit, tree = extract(args.old, work / "old")
        sides.insert(0, Side("old", tree, commit, f"bench{tag}old"))
    command = " ".join([".venv/bin/python", "-m", MODULE, *sys.argv[1:]])
    print(f"command: {command}")
    print(
        f"machine: {platform.node()}, {cpu_model()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f}"
    )
    for side in sides:
        print(f"side {side.label}: {side.revision} ({side.tree})")
    broker = Broker(work / "broker", settings, args.lamps)
    broker.folder.mkdir()
    runs: list[Drain] = []
    publishes: list[dict[str, Any]] = []
    profile_file: Path | None = None
    try:
        asyncio.run(ensure_topics(settings))
        broker.start()
        print(f"broker: own Mosquitto on port {broker.broker.port}, {args.lamps} lamps")
        for side in sides:  # each side's persistent session (and a warm-up of its imports)
            connector = Connector(side, broker.broker, prefix, work / f"{side.label}.log")
            connector.wait_subscribed()
            connector.stop()
        for round_ in range(1, args.rounds + 1):
            procs, result = start_publishers(
                broker.broker, broker.creds, args.backlog, 3600, args.publishers
            )
            published = join_publishers(procs, result)
            publishes.append(asdict(published))
            print(
                f"round {round_}: {published.messages:,} QoS 1 messages published in "
                f"{published.seconds:.1f}s by {published.publishers} processes "
                f"({published.messages / published.seconds:,.0f} msg/s, publishers' CPU "
                f"{published.cpu_us_per_message:.1f} µs/msg) while the connectors were stopped",
                flush=True,
            )
            order = sides if round_ % 2 else sides[::-1]
            for side in order:
                run = drain(side, broker, prefix, sent=published.messages, round_=round_, work=work)
                runs.append(run)
                print(describe(run), flush=True)
        if args.profile:
            procs, result = start_publishers(
                broker.broker, broker.creds, args.backlog, 3600, args.publishers
            )
            published = join_publishers(procs, result)
            new = sides[-1]
            for side in sides[:-1]:  # the other sessions got it too: drain them unmeasured
                drain(side, broker, prefix, sent=published.messages, round_=0, work=work)
            profile_file = work / "connector.prof"
            started = time.monotonic()
            connector = Connector(new, broker.broker, prefix, work / "profile.log", profile_file)
            try:
                run = measure(
                    connector,
                    broker,
                    published.messages,
                    started,
                    kind="backlog-cprofile",
                    label="new",
                    round_=0,
                )
            finally:
                connector.stop()
            print(describe(run) + " (under cProfile: slower)", flush=True)
            runs.append(run)
            profile_lines(profile_file)
        if args.seconds > 0:
            for side in sides:
                run = live(
                    side,
                    broker,
                    prefix,
                    seconds=args.seconds,
                    publishers=args.publishers,
                    work=work,
                )
                runs.append(run)
                pub = run.publishers or {}
                print(
                    describe(run) + f"; {pub.get('publishers')} publishers: "
                    f"{pub.get('messages', 0) / pub.get('seconds', 1):,.0f} msg/s offered, "
                    f"their CPU {pub.get('cpu_us_per_message', 0):.1f} µs/msg",
                    flush=True,
                )
                for other in sides:  # their sessions got it too: drained, unmeasured
                    if other is not side:
                        sent = int(pub.get("messages", 0))
                        drain(other, broker, prefix, sent=sent, round_=0, work=work)
        for line in summary(runs):
            print(line)
    finally:
        broker.stop()
        asyncio.run(delete_topics(settings, [prefix]))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(
            json.dumps(
                {
                    "command": command,
                    "started_utc": now.isoformat(),
                    "machine": {
                        "node": platform.node(),
                        "cpu": cpu_model(),
                        "cores": os.cpu_count(),
                        "python": platform.python_version(),
                    },
                    "sides": [
                        {"label": s.label, "revision": s.revision, "tree": str(s.tree)}
                        for s in sides
                    ],
                    "publishes": publishes,
                    "runs": [
                        {
                            **asdict(r),
                            "per_s": r.per_s,
                            "cpu_us_per_message": r.cpu_us_per_message,
                        }
                        for r in runs
                    ],
                },
                indent=2,
            )
            + "\n"
        )
        print(f"raw results: {os.path.relpath(out_path)}")
        if profile_file is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"profile kept: {profile_file}")


if __name__ == "__main__":
    main()
