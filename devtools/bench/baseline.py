"""The old stack's design, rebuilt as the bench's baseline.

One process, one MQTT connection, one message at a time: paho delivers a message, the
callback parses it, INSERTs it into PostgreSQL and commits, sends one index request to
Elasticsearch, evaluates the fall rule inline, and returns; only then does paho acknowledge
the QoS 1 delivery and hand over the next one. Fall deadlines are checked between messages and
at least every 50 ms when idle. This is how the old stack worked (the issue's words: "one
worker taking each MQTT message and writing it synchronously to PostgreSQL and
Elasticsearch").

What is kept fair: the same broker, the connector's own account, MQTT 5 subscriptions of only
the bench's sites, a persistent connection to PostgreSQL and to Elasticsearch (no connection
per message), a prepared INSERT, the synchronous Elasticsearch client with its default
refresh (no ``refresh=wait_for``). It evaluates only rule 1 (a confirmed fall, with rule 4's
staff exception), the cheapest part of detection: the comparison flatters the baseline.
It does nothing the pipeline guarantees beyond that (no deduplication, no ordering, no
event-time windows, no exactly-once): a slower baseline would only be slower.

Its tables live in the bench's scratch database, created here (they are the bench's, not the
product's schema: no migration).
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from agents.rules import rule_settings
from agents.rules.fall import FallSettings
from pipeline.settings import Settings

log = logging.getLogger(__name__)

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


class Baseline:
    """The worker: see the module docstring."""

    def __init__(self, settings: Settings, *, sites: list[str], index: str, client_id: str):
        self.settings = settings
        self.sites = sites
        self.index = index
        self.client_id = client_id
        fall = rule_settings(settings, FallSettings)
        self.rule = FallCheck(
            fall.min_confidence, int(fall.confirm_s * 1000), fall.staff_min_persons
        )
        self.processed = 0
        self.stopping = False
        self.conn: Any = None
        self.es: Any = None

    def handle(self, topic: str, payload: bytes) -> None:
        """One message, start to end, before the next one."""
        parsed = parse(topic, payload)
        if parsed is None:
            return
        site_id, message = parsed
        received_at = int(time.time() * 1000)
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
        self.es.index(index=self.index, document={**message, "site_id": site_id})
        self.rule.on_message(site_id, message)
        self.processed += 1
        self.raise_due()

    def raise_due(self) -> None:
        for fall in self.rule.due(int(time.time() * 1000)):
            self.conn.execute(
                INSERT_ALERT,
                (fall.site_id, fall.lamp_id, "fall", fall.due_at_ms, int(time.time() * 1000)),
            )
            self.conn.commit()
            log.info("fall alert", extra={"lamp_id": fall.lamp_id, "site_id": fall.site_id})

    def run(self) -> None:
        import paho.mqtt.client as mqtt
        import psycopg
        from paho.mqtt.enums import CallbackAPIVersion

        from pipeline import clients

        broker = self.settings.mqtt.brokers[0]
        self.conn = psycopg.connect(self.settings.postgres.conninfo())
        self.conn.execute(SCHEMA)
        self.conn.commit()
        self.es = clients.elasticsearch(self.settings)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        client.username_pw_set(
            self.settings.mqtt.username, self.settings.mqtt.password.get_secret_value()
        )
        if broker.tls:
            client.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None)
        subscribed: list[bool] = []

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            self.handle(msg.topic, msg.payload)

        def on_subscribe(*_args: Any) -> None:
            subscribed.append(True)
            log.info("baseline subscribed", extra={"sites": len(self.sites)})

        client.on_message = on_message
        client.on_subscribe = on_subscribe
        client.connect(broker.host, broker.port, keepalive=self.settings.mqtt.keepalive_s)
        topics = [(f"lamps/{site}/+/events", 1) for site in self.sites] + [
            (f"lamps/{site}/+/telemetry", 0) for site in self.sites
        ]
        client.subscribe(topics)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        try:
            while not self.stopping:
                client.loop(timeout=0.05)
                self.raise_due()
        finally:
            client.disconnect()
            self.es.close()
            self.conn.close()
        log.info("baseline stopped", extra={"processed": self.processed})

    def _stop(self, *_args: Any) -> None:
        self.stopping = True


def run_baseline(settings: Settings, *, sites: list[str], index: str, client_id: str) -> None:
    Baseline(settings, sites=sites, index=index, client_id=client_id).run()
