"""The old stack's design, rebuilt as the bench's baseline: its strongest fair version.

A Sidekiq-style worker pool: one process, one MQTT connection (the connector's account, MQTT 5,
subscribed to the bench's sites only, QoS 1 on ``events``), and ``threads`` worker threads
(``--baseline-threads``, 10 by default), each with its own PostgreSQL connection and its own
Elasticsearch client. paho hands each message to the thread that owns its lamp (by a hash of
the lamp id, so one lamp's messages stay in order); the thread parses it, INSERTs it into
PostgreSQL and commits, sends one index request to Elasticsearch, evaluates the fall rule
inline, and only then acknowledges the QoS 1 delivery (paho's manual acknowledgements: the
broker keeps up to its ``max_inflight_messages`` unacknowledged deliveries in flight, so the
threads work in parallel, and a message is acknowledged only once stored, as the connector
acknowledges only once Kafka has it). The acknowledgements of different threads go out in the
order their work ends, not the order of arrival (MQTT asks for the latter; Mosquitto frees a
slot per packet id either way). Fall deadlines are checked by each thread between messages and
at least every 50 ms when idle. This is how the old stack worked (the issue's words: "one
worker taking each MQTT message and writing it synchronously to PostgreSQL and
Elasticsearch"), with the pool a Sidekiq process runs.

What is kept fair: the same broker, persistent connections to PostgreSQL and Elasticsearch (no
connection per message), a prepared INSERT, the synchronous Elasticsearch client with its
default refresh (no ``refresh=wait_for``). It evaluates only rule 1 (a confirmed fall, with
rule 4's staff exception), the cheapest part of detection: the comparison flatters the
baseline. It does nothing the pipeline guarantees beyond that (no deduplication, no event-time
windows, no exactly-once): a slower baseline would only be slower.

Its tables live in the bench's scratch database, created here (they are the bench's, not the
product's schema: no migration). How many messages it stored so far is written to
``progress_file`` every 0.2 s, so the bench does not count rows in the database it measures.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agents.rules import rule_settings
from agents.rules.fall import FallSettings
from pipeline.settings import Settings

log = logging.getLogger(__name__)

# A Sidekiq process's default concurrency is 5 to 10 threads; 10, each with its own database
# connection, is the strong end of it.
DEFAULT_THREADS = 10

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_baseline_messages (
    id bigserial PRIMARY KEY,
    site_id text NOT NULL,
    lamp_id text NOT NULL,
    seq bigint,
    ts bigint,
    type text,
    payload jsonb NOT NULL,
    received_at bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS bench_baseline_alerts (
    id bigserial PRIMARY KEY,
    site_id text NOT NULL,
    lamp_id text NOT NULL,
    kind text NOT NULL,
    due_at bigint NOT NULL,
    raised_at bigint NOT NULL
);
"""
INSERT_MESSAGE = (
    "INSERT INTO bench_baseline_messages (site_id, lamp_id, seq, ts, type, payload, received_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
INSERT_ALERT = (
    "INSERT INTO bench_baseline_alerts (site_id, lamp_id, kind, due_at, raised_at)"
    " VALUES (%s, %s, %s, %s, %s)"
)
UPRIGHT = frozenset({"standing", "sitting"})


@dataclass(frozen=True)
class Fall:
    site_id: str
    lamp_id: str
    due_at_ms: int


@dataclass
class FallCheck:
    """Rule 1 the simple way: a suspicion ≥ ``min_confidence`` not followed by an upright
    posture within ``confirm_ms`` is a fall, raised once; nothing while ``staff_min_persons``
    or more people are seen. Deadlines are wall-clock (the old stack had no event time)."""

    min_confidence: float
    confirm_ms: int
    staff_min_persons: int
    pending: dict[str, Fall] = field(default_factory=dict)
    persons: dict[str, int] = field(default_factory=dict)

    def on_message(self, site_id: str, message: dict[str, Any]) -> None:
        lamp_id = str(message.get("lamp_id"))
        kind = message.get("type")
        if kind == "posture":
            persons = message.get("persons")
            if isinstance(persons, int):
                self.persons[lamp_id] = persons
            if message.get("posture") in UPRIGHT:
                self.pending.pop(lamp_id, None)  # got up: recovered, no alarm
        elif kind == "fall_suspected":
            confidence = message.get("confidence")
            ts = message.get("ts")
            if (
                isinstance(confidence, int | float)
                and not isinstance(confidence, bool)
                and confidence >= self.min_confidence
                and isinstance(ts, int)
                and lamp_id not in self.pending
                and self.persons.get(lamp_id, 0) < self.staff_min_persons
            ):
                self.pending[lamp_id] = Fall(site_id, lamp_id, ts + self.confirm_ms)

    def due(self, now_ms: int) -> list[Fall]:
        falls = [fall for fall in self.pending.values() if fall.due_at_ms <= now_ms]
        for fall in falls:
            del self.pending[fall.lamp_id]
        return falls


def parse(topic: str, payload: bytes) -> tuple[str, dict[str, Any]] | None:
    """``(site_id, message)`` of a lamp topic's payload; None for junk (skipped, as the old
    stack did)."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "lamps":
        return None
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or message.get("lamp_id") != parts[2]:
        return None
    return parts[1], message


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Worker:
    """One thread of the pool: its own PostgreSQL connection and Elasticsearch client, its
    share of the lamps (by lamp id, so that one lamp's messages stay in order and its rule
    state in one thread), and rule 1 inline."""

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.inbox: queue.SimpleQueue[tuple[str, bytes, int, int]] = queue.SimpleQueue()
        settings = baseline.settings
        fall = rule_settings(settings, FallSettings)
        self.rule = FallCheck(
            fall.min_confidence, int(fall.confirm_s * 1000), fall.staff_min_persons
        )
        self.processed = 0
        # Wall seconds spent waiting on each store (where a thread's time goes, logged at the
        # end: round trips, not CPU, bound a thread).
        self.postgres_s = 0.0
        self.elasticsearch_s = 0.0
        self.conn: Any = None
        self.es: Any = None

    def run(self) -> None:
        import psycopg

        from pipeline import clients

        baseline = self.baseline
        self.conn = psycopg.connect(baseline.settings.postgres.conninfo())
        self.es = clients.elasticsearch(baseline.settings)
        try:
            while not baseline.stopping.is_set():
                try:
                    topic, payload, mid, qos = self.inbox.get(timeout=0.05)
                except queue.Empty:
                    self.raise_due()
                    continue
                self.handle(topic, payload)
                # The delivery is acknowledged only once the message is stored and indexed
                # (as the connector acknowledges only after Kafka has it).
                if qos > 0:
                    baseline.client.ack(mid, qos)
                self.raise_due()
        finally:
            self.es.close()
            self.conn.close()

    def handle(self, topic: str, payload: bytes) -> None:
        """One message, start to end, before this thread's next one."""
        parsed = parse(topic, payload)
        if parsed is None:
            return
        site_id, message = parsed
        received_at = int(time.time() * 1000)
        started = time.perf_counter()
        self.conn.execute(
            INSERT_MESSAGE,
            (
                site_id,
                message["lamp_id"],
                _int(message.get("seq")),
                _int(message.get("ts")),
                str(message.get("type")),
                payload.decode(),
                received_at,
            ),
            prepare=True,
        )
        self.conn.commit()
        stored = time.perf_counter()
        self.es.index(index=self.baseline.index, document={**message, "site_id": site_id})
        self.elasticsearch_s += time.perf_counter() - stored
        self.postgres_s += stored - started
        self.rule.on_message(site_id, message)
        self.processed += 1

    def raise_due(self) -> None:
        for fall in self.rule.due(int(time.time() * 1000)):
            self.conn.execute(
                INSERT_ALERT,
                (fall.site_id, fall.lamp_id, "fall", fall.due_at_ms, int(time.time() * 1000)),
            )
            self.conn.commit()
            log.info("fall alert", extra={"lamp_id": fall.lamp_id, "site_id": fall.site_id})


class Baseline:
    """The worker pool: see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        sites: list[str],
        index: str,
        client_id: str,
        threads: int = DEFAULT_THREADS,
        progress_file: Path | None = None,
    ):
        self.settings = settings
        self.sites = sites
        self.index = index
        self.client_id = client_id
        self.progress_file = progress_file
        self.stopping = threading.Event()
        self.client: Any = None
        self.workers = [Worker(self) for _ in range(max(threads, 1))]

    @property
    def processed(self) -> int:
        return sum(w.processed for w in self.workers)

    def dispatch(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """To the thread owning the lamp (the topic's third level)."""
        parts = topic.split("/", 3)
        lamp = parts[2] if len(parts) > 2 else topic
        worker = self.workers[zlib.crc32(lamp.encode()) % len(self.workers)]
        worker.inbox.put((topic, payload, mid, qos))

    def write_progress(self) -> None:
        """The messages stored so far, for the bench (a file: counting rows would load the
        database the baseline is measured on)."""
        if self.progress_file is None:
            return
        tmp = self.progress_file.with_suffix(".tmp")
        tmp.write_text(str(self.processed))
        tmp.replace(self.progress_file)

    def run(self) -> None:
        import paho.mqtt.client as mqtt
        import psycopg
        from paho.mqtt.enums import CallbackAPIVersion

        broker = self.settings.mqtt.brokers[0]
        with psycopg.connect(self.settings.postgres.conninfo()) as conn:
            conn.execute(SCHEMA)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client = client
        client.username_pw_set(
            self.settings.mqtt.username, self.settings.mqtt.password.get_secret_value()
        )
        if broker.tls:
            client.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None)
        threads = [
            threading.Thread(target=w.run, name=f"baseline-{i}", daemon=True)
            for i, w in enumerate(self.workers)
        ]
        for thread in threads:
            thread.start()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            self.dispatch(msg.topic, msg.payload, msg.mid, msg.qos)

        def on_subscribe(*_args: Any) -> None:
            log.info(
                "baseline subscribed", extra={"sites": len(self.sites), "threads": len(threads)}
            )

        client.on_message = on_message
        client.on_subscribe = on_subscribe
        client.connect(broker.host, broker.port, keepalive=self.settings.mqtt.keepalive_s)
        topics = [(f"lamps/{site}/+/events", 1) for site in self.sites] + [
            (f"lamps/{site}/+/telemetry", 0) for site in self.sites
        ]
        client.subscribe(topics)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        next_progress = 0.0
        try:
            while not self.stopping.is_set():
                client.loop(timeout=0.05)
                if time.monotonic() >= next_progress:
                    self.write_progress()
                    next_progress = time.monotonic() + 0.2
        finally:
            self.stopping.set()
            for thread in threads:
                thread.join(10)
            client.disconnect()
            self.write_progress()
        done = max(self.processed, 1)
        # In the message: the JSON log keeps only its context fields from ``extra``.
        log.info(
            "baseline stopped: %d messages by %d threads; per message, %.1f ms waiting on "
            "PostgreSQL (INSERT + commit) and %.1f ms on Elasticsearch (index), wall time",
            self.processed,
            len(self.workers),
            sum(w.postgres_s for w in self.workers) / done * 1e3,
            sum(w.elasticsearch_s for w in self.workers) / done * 1e3,
        )

    def _stop(self, *_args: Any) -> None:
        self.stopping.set()


def run_baseline(
    settings: Settings,
    *,
    sites: list[str],
    index: str,
    client_id: str,
    threads: int = DEFAULT_THREADS,
    progress_file: Path | None = None,
) -> None:
    Baseline(
        settings,
        sites=sites,
        index=index,
        client_id=client_id,
        threads=threads,
        progress_file=progress_file,
    ).run()
