"""Consumers of alerts.v1 on the real Kafka: ``veilleuse alerts tail`` following a worker, the
Python example, and a Java program decoding with Apache Avro's own single-object decoder."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import schemas
from devtools.smoke import connector_with_lamps, lamp_message
from devtools.stack.context import StackContext
from devtools.stack.kafka import SASL_USER, Kafka
from pipeline import clients
from pipeline.settings import Settings
from pipeline.topics import ALERTS, topic_name
from tests.conftest import under_ci
from tests.integration.agents.conftest import DetectionRun, LampSender, read_records

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "consume_alerts.py"
JAVA_PROJECT = ROOT / "examples" / "java-alerts-consumer"
SITE = "it-oncall-1"
OTHER_SITE = "it-oncall-2"
CONFIRM_S = 2  # rule 1's 30 s, shortened: the fall is raised by the worker's timer all the same


# -- helpers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    text: str
    at_ms: int  # wall clock when the test read it


@dataclass
class TailProcess:
    """``python -m cli alerts tail …`` as the person on call runs it; lines timestamped."""

    args: list[str]
    env: dict[str, str]
    out: list[Line] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    readers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> TailProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "alerts", "tail", *self.args],
            # Unbuffered or not, a line must reach a pipe (`| grep`) as soon as it is printed.
            env={**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.readers = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for reader in self.readers:
            reader.start()
        return self

    def _read_out(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for text in self.proc.stdout:
            self.out.append(Line(text.rstrip("\n"), int(time.time() * 1000)))

    def _read_err(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for text in self.proc.stderr:
            self.err.append(text.rstrip("\n"))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def describe(self) -> str:
        return f"tail {self.args}: stdout {[x.text for x in self.out]}, stderr {self.err}"

    async def wait(self, predicate: Callable[[], bool], timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert self.alive(), f"exited:\n{self.describe()}"
            assert time.monotonic() < deadline, f"timed out:\n{self.describe()}"
            await asyncio.sleep(0.05)

    async def ready(self) -> None:
        """Until it says it follows: from then on, nothing appended is missed."""
        await self.wait(lambda: any(e.startswith("following ") for e in self.err))

    async def lines(self, count: int, timeout_s: float = 30) -> list[Line]:
        await self.wait(lambda: len(self.out) >= count, timeout_s)
        return list(self.out)

    def interrupt(self, sig: signal.Signals = signal.SIGINT) -> int:
        """Ctrl-C (or SIGTERM): the exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(15)
        self.close()
        return code

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        self.close()

    def close(self) -> None:
        """Once it has exited: every line read, the pipes closed."""
        for reader in self.readers:
            reader.join(5)
        if self.proc is not None:
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def tails() -> Iterator[Callable[..., TailProcess]]:
    started: list[TailProcess] = []

    def start(run: DetectionRun, *args: str) -> TailProcess:
        tail = TailProcess(list(args), {"VEILLEUSE_KAFKA__TOPIC_PREFIX": run.prefix}).start()
        started.append(tail)
        return tail

    yield start
    for tail in started:
        tail.kill()


# Up, a fall suspected, on the floor, then silence: the worker confirms the fall CONFIRM_S on.
FALL_AND_SILENCE: list[dict[str, Any]] = [
    {"type": "posture", "posture": "standing", "zone": "room", "confidence": 0.9, "persons": 1},
    {"type": "fall_suspected", "confidence": 0.8, "zone": "floor"},
    {"type": "posture", "posture": "on_floor", "zone": "floor", "confidence": 0.8, "persons": 1},
]


async def raise_fall(lamps: LampSender, site: str, lamp: str) -> None:
    """FALL_AND_SILENCE straight to lamp.messages.v1, as the connector would write it."""
    for fields in FALL_AND_SILENCE:
        await lamps.send(
            site, lamp, fields["type"], **{k: v for k, v in fields.items() if k != "type"}
        )


def alert(site: str, lamp: str, kind: str, **extra: Any) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    return {
        "alert_id": f"{lamp}-{kind}-{now_ms}",
        "kind": kind,
        "severity": "critical",
        "state": "raised",
        "site_id": site,
        "lamp_id": lamp,
        "incident_started_at": now_ms - 1000,
        "emitted_at": now_ms,
        "details": {"zone": "floor"},
        **extra,
    }


async def produce(run: DetectionRun, values: list[bytes]) -> list[tuple[int, int]]:
    """``values`` to partition 0 of alerts.v1, in order: their (partition, offset)."""
    producer = clients.producer(run.settings)
    await producer.start()
    try:
        topic = topic_name(run.settings, ALERTS)
        sent = [await producer.send_and_wait(topic, v, key=b"L", partition=0) for v in values]
        return [(meta.partition, meta.offset) for meta in sent]
    finally:
        await producer.stop()


def plain(decoded: dict[str, Any]) -> dict[str, Any]:
    """A Python-decoded alert with its times in epoch ms, as any Avro library renders them."""
    return {
        key: schemas.millis(value) if isinstance(value, datetime) else value
        for key, value in decoded.items()
    }


# -- veilleuse alerts tail -------------------------------------------------------------------------


async def test_tail_shows_a_fall_raised_through_the_pipeline_within_a_second(
    detection_run: DetectionRun, tails: Callable[..., TailProcess], require: Any
) -> None:
    """A lamp falls and goes silent over real MQTT, the connector writes it to Kafka, a real
    worker's timer confirms the fall: on the on-call tail (its site, falls only) less than a
    second after the alert's append. The site's help request and another site's fall are in
    the unfiltered ``--json`` tail, not in the filtered one."""
    require("kafka", "mosquitto")
    run = detection_run
    worker = run.worker("w1", VEILLEUSE_RULES__FALL__CONFIRM_S=str(CONFIRM_S))
    await asyncio.to_thread(run.wait_for_assignment, [worker])
    async with connector_with_lamps(run.settings, 2, "oncall") as (_, fleet, creds):
        site, fallen, caller = creds[0].site_id, creds[0].lamp_id, creds[1].lamp_id
        on_call = tails(run, "--site", site, "--kind", "fall")
        everything = tails(run, "--json")
        await on_call.ready()
        await everything.ready()

        for seq, fields in enumerate(FALL_AND_SILENCE):
            fleet.publish(fallen, "events", lamp_message(fallen, seq, **fields))
        fleet.publish(
            caller,
            "events",
            lamp_message(caller, 0, type="button", accessory_id="pendant", action="press"),
        )
        await fleet.wait_acked(30)
        async with LampSender(run.settings) as lamps:
            await raise_fall(lamps, OTHER_SITE, "L-fall-1")
        shown = [json.loads(line.text) for line in await everything.lines(3)]

    assert sorted((a["site_id"], a["lamp_id"], a["kind"], a["state"]) for a in shown) == sorted(
        [
            (site, fallen, "fall", "raised"),
            (site, caller, "help_requested", "raised"),
            (OTHER_SITE, "L-fall-1", "fall", "raised"),
        ]
    )
    (line,) = await on_call.lines(1)
    await asyncio.sleep(1)  # room for a line the filter should have dropped
    assert len(on_call.out) == 1, on_call.describe()

    fall = next(a for a in shown if a["lamp_id"] == fallen)
    emitted, *columns, alert_id = line.text.split()[:7]
    facts = line.text.split()[7:]
    assert (*columns, alert_id) == (
        site,
        fallen,
        "fall",
        "critical",
        "raised",
        fall["alert_id"],
    )
    assert emitted == fall["emitted_at"]
    assert datetime.fromisoformat(emitted).utcoffset() is not None  # ISO 8601, in UTC
    assert "zone=floor" in facts

    records = await read_records(run.settings, topic_name(run.settings, ALERTS), 3)
    (record,) = [r for r in records if schemas.decode(r.value)[1]["alert_id"] == alert_id]
    assert (fall["kafka"]["partition"], fall["kafka"]["offset"]) == (
        record.partition,
        record.offset,
    )
    late_ms = line.at_ms - record.timestamp
    print(f"fall on the on-call tail {late_ms} ms after its append")  # noqa: T201 - -s shows it
    assert late_ms < 1000, f"the fall was on the tail {late_ms} ms after its append"

    assert on_call.interrupt() == 0, on_call.describe()
    assert everything.interrupt(signal.SIGTERM) == 0, everything.describe()
    assert not [e for e in on_call.err + everything.err if "skipped" in e or "Traceback" in e]
    assert worker.alive(), worker.log_tail()


async def test_tail_reports_an_undecodable_record_and_goes_on(
    detection_run: DetectionRun, tails: Callable[..., TailProcess]
) -> None:
    """From the beginning: a record that is not an alert is named on stderr (topic, partition,
    offset), the alerts before and after it are shown, and so are those appended later."""
    run = detection_run
    writer = schemas.schema("alert.v1")
    topic = topic_name(run.settings, ALERTS)
    positions = await produce(
        run,
        [
            schemas.encode(writer, alert(SITE, "L-1", "fall")),
            b"\x00not an alert",
            schemas.encode(writer, alert(OTHER_SITE, "L-2", "fall")),
            schemas.encode(writer, alert(SITE, "L-3", "help_requested")),
        ],
    )
    tail = tails(run, "--from-beginning", "--site", SITE, "--json")
    await tail.ready()
    first = await tail.lines(2)
    assert [json.loads(x.text)["lamp_id"] for x in first] == ["L-1", "L-3"]
    _, junk_offset = positions[1]
    assert any(
        "skipped undecodable record" in e
        and f"topic={topic}, partition=0, offset={junk_offset}" in e
        for e in tail.err
    ), tail.describe()

    await produce(run, [schemas.encode(writer, alert(SITE, "L-4", "fall"))])
    later = await tail.lines(3)
    assert json.loads(later[2].text)["lamp_id"] == "L-4"
    assert tail.interrupt() == 0, tail.describe()


# -- the Python example ----------------------------------------------------------------------------


KINDS_OF_LAMPS = [("L-1", "fall"), ("L-2", "help_requested")]


async def test_python_example_consumes_alerts(detection_run: DetectionRun) -> None:
    """examples/consume_alerts.py, run as a team would: prints the alerts as JSON lines, and
    names a record it cannot decode and goes on."""
    run = detection_run
    writer = schemas.schema("alert.v1")
    data = [schemas.encode(writer, alert(SITE, lamp, kind)) for lamp, kind in KINDS_OF_LAMPS]
    await produce(run, [data[0], b"junk", data[1]])
    sent = [plain(schemas.decode(value)[1]) for value in data]
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(EXAMPLE),
            "--bootstrap",
            run.settings.kafka.bootstrap_servers,
            "--topic",
            topic_name(run.settings, ALERTS),
            "--group",
            f"{run.prefix}example",
            "--count",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    times = ("incident_started_at", "emitted_at")
    assert [{k: v for k, v in a.items() if k not in times} for a in printed] == [
        {k: v for k, v in a.items() if k not in times} for a in sent
    ]
    for shown, original in zip(printed, sent, strict=True):
        for key in times:
            assert schemas.millis(datetime.fromisoformat(shown[key])) == original[key]
    assert [a["lamp_id"] for a in printed] == [lamp for lamp, _ in KINDS_OF_LAMPS]
    assert f"skipped {topic_name(run.settings, ALERTS)}[0]@1" in done.stderr


# -- a consumer in Java ----------------------------------------------------------------------------


def sasl_ssl_options(settings: Settings) -> list[str]:
    """The stack's TLS listener with its username and password, as production consumers
    connect: the Kafka client's own settings, passed through ``--property``."""
    kafka = Kafka(StackContext(settings))
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required"
        f' username="{SASL_USER}" password="{kafka.sasl_password()}";'
    )
    properties = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.jaas.config": jaas,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(kafka.tls_dir / "ca.crt"),
    }
    bootstrap = f"127.0.0.1:{settings.stack.kafka_secure_port}"
    return ["--bootstrap", bootstrap] + [
        arg for key, value in properties.items() for arg in ("--property", f"{key}={value}")
    ]


@pytest.fixture(scope="session")
def java_alerts_consumer() -> list[str]:
    """The Java consumer built with Maven (offline from ~/.m2 when it can, else resolving from
    Maven Central once): the command that runs it."""
    missing = [tool for tool in ("mvn", "java") if shutil.which(tool) is None]
    if missing:
        message = f"{' and '.join(missing)} not found: install a JDK ≥ 17 and Maven"
        if under_ci():
            pytest.fail(message)
        pytest.skip(message)
    build = ["mvn", "-B", "-q", "-f", str(JAVA_PROJECT / "pom.xml"), "compile"]
    done = subprocess.run([*build, "-o"], capture_output=True, text=True, check=False)
    if done.returncode != 0:  # something not in ~/.m2 yet
        done = subprocess.run(build, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    target = JAVA_PROJECT / "target"
    classpath = f"{target / 'classes'}:{(target / 'classpath.txt').read_text().strip()}"
    return ["java", "-cp", classpath, "veilleuse.examples.AlertsConsumer"]


async def test_java_consumer_decodes_what_a_worker_wrote(
    detection_run: DetectionRun, java_alerts_consumer: list[str]
) -> None:
    """Apache Avro's BinaryMessageDecoder, with a SchemaStore of the released .avsc files,
    reads a fall and a help request a real worker wrote, and a record of alert.v1's first
    released version (resolved to the current reader), exactly as the schemas package does;
    over TLS with a password, as a team's consumer connects in production."""
    run = detection_run
    topic = topic_name(run.settings, ALERTS)
    worker = run.worker("w1", VEILLEUSE_RULES__FALL__CONFIRM_S=str(CONFIRM_S))
    await asyncio.to_thread(run.wait_for_assignment, [worker])
    async with LampSender(run.settings) as lamps:
        await raise_fall(lamps, SITE, "L-fall-0")
        await lamps.send(SITE, "L-help-0", "button", accessory_id="pendant", action="press")
    written = await read_records(run.settings, topic, 2, timeout_s=60)
    assert len(written) == 2, worker.log_tail()
    first_release = schemas.registry().version("alert.v1", 1)
    await produce(run, [schemas.encode(first_release, alert(SITE, "L-old-0", "fall"))])

    records = await read_records(run.settings, topic, 3)
    decoded = [schemas.decode(r.value) for r in records]
    assert {writer.version for writer, _ in decoded} >= {1}
    expected = {(a["alert_id"], a["state"]): plain(a) for _, a in decoded}
    assert {a["kind"] for a in expected.values()} == {"fall", "help_requested"}

    done = await asyncio.to_thread(
        subprocess.run,
        [
            *java_alerts_consumer,
            *sasl_ssl_options(run.settings),
            "--topic",
            topic,
            "--schemas",
            str(schemas.SCHEMA_DIR / schemas.RELEASED),
            "--reader",
            str(schemas.SCHEMA_DIR / "alert.v1.avsc"),
            "--count",
            str(len(expected)),
            "--timeout-s",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from_java = [json.loads(line) for line in done.stdout.splitlines()]
    assert {(a["alert_id"], a["state"]): a for a in from_java} == expected
    for version in schemas.registry().released["alert.v1"]:
        assert version.fingerprint.hex() in done.stderr  # Avro's fingerprint is the wire's
    assert "skipped" not in done.stderr
