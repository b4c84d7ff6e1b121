"""The MQTT→Kafka connector: every lamp message into Kafka, at least once, never silently dropped.

- Subscribes over MQTT 5 to the lamps' ``events``, ``telemetry`` and ``status`` topics through a
  shared subscription, with a persistent session (clean start off, session expiry > 0) and a
  stable client id per replica and broker. Several source brokers are read at once.
- Manual acknowledgement: the PUBACK of a QoS 1 message goes out only after Kafka acknowledged
  its record (acks=all, idempotent producer), in arrival order. The MQTT 5 Receive Maximum caps
  unacknowledged deliveries per connection, and reading pauses when ``max_in_flight`` records
  are waiting for Kafka: while Kafka is slow or down, the broker keeps the backlog.
- The hot path avoids per-message overheads (BENCHMARKS.md, the connector's CPU per message):
  PUBLISH packets are decoded without paho's per-message objects, and the PUBACKs a Kafka
  batch frees leave in one write.
- Valid messages go to ``lamp.messages.v1`` (key ``lamp_id``, the payload bytes as received,
  MQTT metadata in headers); rejected ones to ``lamp.dlq.v1`` with the reason, then are acked.
- On SIGTERM it stops reading, lets in-flight records finish (or, past the drain timeout,
  leaves them unacknowledged for the broker to redeliver) and disconnects keeping its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from connectors.ledger import AckLedger, Delivery
from connectors.mqtt_asyncio import AsyncioMqtt, Received
from connectors.validation import Accepted, validate
from pipeline.errors import VeilleuseError
from pipeline.health import Health
from pipeline.kafka_producer import KafkaWriteError, ResilientProducer
from pipeline.settings import MqttBroker, Settings
from pipeline.topics import LAMP_DLQ, LAMP_MESSAGES, topic_name

log = logging.getLogger(__name__)

CHANNELS = ("events", "telemetry", "status")
# A rejected payload is kept whole in the DLQ up to this size; beyond it (far past the protocol's
# 4 KiB) only its head is kept, flagged, so one huge message cannot exceed Kafka's request size
# and block every acknowledgement behind it.
DLQ_MAX_PAYLOAD_BYTES = 256 * 1024
BOOL_HEADER = {False: b"false", True: b"true"}
QOS_HEADER = {0: b"0", 1: b"1", 2: b"2"}

# paho's message, or the connector's own decoding of a PUBLISH (connectors/mqtt_asyncio.py)
Message = mqtt.MQTTMessage | Received


class ConnectorError(VeilleuseError):
    """The connector stopped because one of its tasks failed."""


class ConnectorMetrics:
    """Prometheus metrics of one connector: received = produced + rejected + in flight."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.received = Counter(
            "veilleuse_connector_received", "MQTT messages received", ["broker"], registry=registry
        )
        self.produced = Counter(
            "veilleuse_connector_produced",
            "valid messages acknowledged by Kafka on lamp.messages.v1",
            ["broker"],
            registry=registry,
        )
        self.rejected = Counter(
            "veilleuse_connector_rejected",
            "invalid messages acknowledged by Kafka on lamp.dlq.v1",
            ["broker", "reason"],
            registry=registry,
        )
        self.redelivered = Counter(
            "veilleuse_connector_redelivered",
            "deliveries flagged dup by the broker (a duplicate downstream)",
            ["broker"],
            registry=registry,
        )
        self.retained = Counter(
            "veilleuse_connector_retained_replays",
            "retained messages replayed at subscription time",
            ["broker"],
            registry=registry,
        )
        self.subscribed = Gauge(
            "veilleuse_connector_subscribed",
            "1 once the broker granted every subscription of the current connection",
            ["broker"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "veilleuse_connector_in_flight", "records waiting for Kafka", registry=registry
        )
        self.paused = Gauge(
            "veilleuse_connector_reading_paused", "1 while reading is paused", registry=registry
        )
        self.kafka_errors = Counter(
            "veilleuse_connector_kafka_errors", "failed Kafka writes (retried)", registry=registry
        )
        self.reconnects = Counter(
            "veilleuse_connector_mqtt_connects",
            "MQTT connections made",
            ["broker"],
            registry=registry,
        )
        self.ack_latency = Histogram(
            "veilleuse_connector_ack_latency_seconds",
            "MQTT receive to Kafka acknowledgement",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )


@dataclass(slots=True)
class Envelope:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    delivery: Delivery
    connection: BrokerConnection
    reason: str | None  # None: valid


def _log_rejected(envelope: Envelope, metadata: Any) -> None:
    """The DLQ decision, once Kafka holds the record: where it is, which lamp, why."""
    headers = dict(envelope.headers)
    log.info(
        "rejected %s: %s",
        envelope.reason,
        headers.get("reject.detail", b"").decode(errors="replace"),
        extra={
            "component": "connector",
            "throttle": True,  # a flood of junk must not flood the log
            "lamp_id": envelope.key.decode(errors="replace") if envelope.key else None,
            "mqtt_topic": headers.get("mqtt.topic", b"").decode(errors="replace"),
            "topic": metadata.topic,
            "partition": metadata.partition,
            "offset": metadata.offset,
            "reason": envelope.reason,
        },
    )


class BrokerConnection:
    """The connector's session with one source broker."""

    def __init__(
        self, source: MqttSource, broker: MqttBroker, client_id: str | None = None
    ) -> None:
        settings = source.settings.mqtt
        self.source = source
        self.broker = broker
        self.ledger = AckLedger()
        self.client_id = client_id or f"{settings.client_id}-{broker.name}"
        self.mqtt = AsyncioMqtt(
            host=broker.host,
            port=broker.port,
            client_id=self.client_id,
            username=settings.username,
            password=settings.password.get_secret_value(),
            tls=broker.tls,
            ca_file=str(broker.ca_file) if broker.ca_file else None,
            clean_start=False,
            session_expiry_s=settings.session_expiry_s,
            receive_maximum=source.settings.connector.receive_maximum,
            keepalive_s=settings.keepalive_s,
            manual_ack=True,
        )
        name = broker.name
        metrics = source.metrics
        self.count_received = metrics.received.labels(name).inc
        self.count_produced = metrics.produced.labels(name).inc
        self.broker_header = name.encode()
        self.mqtt.client.on_message = self._on_message
        # Whole PUBLISH packets skip paho's decoding (BufferedClient.take_publish).
        self.mqtt.client.on_publish_received = self._received
        self.mqtt.client.on_subscribe = self._on_subscribe
        self.mqtt.on_connected = self._on_connected
        self.mqtt.on_connection_lost = self._on_lost
        self.lost = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.subscriptions_granted = 0  # SUBACKs so far: the restart guard waits for a new one
        self.session_present = False  # as the last CONNACK said

    def filters(self) -> list[str]:
        group = self.source.settings.mqtt.share_group
        prefix = f"$share/{group}/" if group else ""
        return [f"{prefix}lamps/+/+/{channel}" for channel in CHANNELS]

    def _on_connected(self, session_present: bool) -> None:
        self.lost.clear()
        self.session_present = session_present
        dropped = self.ledger.forget_older_than(self.mqtt.generation)
        self.source.metrics.reconnects.labels(self.broker.name).inc()
        log.info(
            "connected to %s (session present: %s; %d deliveries of the previous connection "
            "will be redelivered)",
            self.broker.name,
            session_present,
            dropped,
            extra={"component": "connector"},
        )
        self.subscribe()

    def subscribe(self) -> None:
        # Retain handling 1: retained messages only for a subscription that did not exist yet.
        options = SubscribeOptions(qos=1, retainHandling=1)
        self.mqtt.client.subscribe([(f, options) for f in self.filters()])

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            log.error("broker %s refused subscriptions: %s", self.broker.name, refused)
            return
        self.source.metrics.subscribed.labels(self.broker.name).set(1)
        self.subscriptions_granted += 1
        self.subscribed.set()
        log.info("subscribed on %s to %s", self.broker.name, self.filters())

    def _on_lost(self, reason: str) -> None:
        log.warning("lost the connection to %s: %s", self.broker.name, reason)
        self.source.metrics.subscribed.labels(self.broker.name).set(0)
        self.subscribed.clear()
        self.lost.set()

    def _received(self, message: Received) -> None:
        self._on_message(self.mqtt.client, None, message)

    def _on_message(self, _c: Any, _u: Any, message: Message) -> None:
        self.source.accept(self, message)

    async def run(self, stopping: asyncio.Event) -> None:
        """Stay connected until stopping; replica 0 also keeps the restart guard and drains the
        sessions of retired replicas (connectors/sessions.py)."""
        from connectors.sessions import helpers_of

        helpers = [asyncio.create_task(helper) for helper in helpers_of(self, stopping)]
        try:
            await self.stay_connected(stopping)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def before_connect(self) -> None:
        """A hook of the restart guard (connectors/sessions.py); may raise ConnectionError."""

    async def stay_connected(self, stopping: asyncio.Event) -> None:
        """Connect, and reconnect with jittered exponential backoff, until stopping.

        The cap is short (``reconnect_max_s``, 2 s): lamps come back within seconds of a broker
        restart, and on a broker that forgets shared subscriptions every second without ours
        would be caught only by the restart guard.
        """
        first, cap = 0.2, self.source.settings.mqtt.reconnect_max_s
        delay = first
        while not stopping.is_set():
            try:
                await self.before_connect()
                await self.mqtt.connect()
            except ConnectionError as exc:
                wait = min(delay, cap) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
                log.warning(
                    "MQTT %s: %s; retrying in %.1fs",
                    self.broker.name,
                    exc,
                    wait,
                    extra={"component": "connector", "client_id": self.client_id},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), wait)
                delay = min(delay * 2, cap)
                continue
            delay = first
            lost, stop = (
                asyncio.ensure_future(self.lost.wait()),
                asyncio.ensure_future(stopping.wait()),
            )
            await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            stop.cancel()


class MqttSource:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.messages_topic = topic_name(settings, LAMP_MESSAGES)
        self.dlq_topic = topic_name(settings, LAMP_DLQ)
        self.config = settings.connector
        self.metrics = ConnectorMetrics(registry or CollectorRegistry())
        self.connections = [BrokerConnection(self, b) for b in settings.mqtt.brokers]
        self.queue: deque[Envelope] = deque()
        self.queue_ready = asyncio.Event()
        self.in_flight = 0
        self.paused = False
        self.stopping = asyncio.Event()
        self.health = Health(
            "connector",
            stall_after_s=settings.health.stall_after_s,
            stuck_after_s=settings.health.stuck_after_s,
            registry=self.metrics.registry,
        )
        self.health.backlog = lambda: self.in_flight
        # Read at each scrape: setting a gauge per message cost more than the Kafka write.
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self._acks_to_flush: set[BrokerConnection] = set()  # PUBACKs queued, not yet written
        self.health.conditions.append(self._unsubscribed)
        self.producer = ResilientProducer(
            settings,
            component="connector",
            health=self.health,
            linger_ms=self.config.linger_ms,
            max_batch_size=self.config.batch_bytes,
            request_timeout_ms=self.config.kafka_timeout_ms,
        )

    def _unsubscribed(self) -> str | None:
        """Until every broker granted the subscriptions, lamps' messages reach no one here."""
        missing = [c.broker.name for c in self.connections if not c.subscribed.is_set()]
        return f"not subscribed on {', '.join(missing)}" if missing else None

    # -- MQTT side (callbacks on the loop) -------------------------------------------------------

    def accept(self, connection: BrokerConnection, message: Message) -> None:
        received_ns = time.time_ns()
        connection.count_received()
        dup, retain = message.dup, message.retain
        if dup:
            self.metrics.redelivered.labels(connection.broker.name).inc()
        if retain:
            self.metrics.retained.labels(connection.broker.name).inc()
        delivery = Delivery(message.mid, message.qos, connection.mqtt.generation, received_ns)
        connection.ledger.add(delivery)
        topic = message.topic
        payload = bytes(message.payload)
        headers = [
            ("mqtt.topic", topic.encode()),
            ("mqtt.qos", QOS_HEADER[message.qos]),
            ("mqtt.retain", BOOL_HEADER[retain]),
            ("mqtt.dup", BOOL_HEADER[dup]),
            ("source.broker", connection.broker_header),
            ("received.at.ms", str(received_ns // 1_000_000).encode()),
        ]
        verdict = validate(topic, payload)
        if isinstance(verdict, Accepted):
            envelope = Envelope(
                self.messages_topic,
                verdict.lamp_id.encode(),
                payload,
                headers,
                delivery,
                connection,
                None,
            )
        else:
            headers += [
                ("reject.reason", verdict.reason.value.encode()),
                ("reject.detail", verdict.detail.encode()),
            ]
            if len(payload) > DLQ_MAX_PAYLOAD_BYTES:
                headers += [
                    ("payload.truncated", b"true"),
                    ("payload.size", str(len(payload)).encode()),
                ]
                payload = payload[:DLQ_MAX_PAYLOAD_BYTES]
            key = verdict.lamp_id.encode() if verdict.lamp_id else None
            envelope = Envelope(
                self.dlq_topic, key, payload, headers, delivery, connection, verdict.reason.value
            )
        self.queue.append(envelope)
        if not self.queue_ready.is_set():
            self.queue_ready.set()
        self.in_flight += 1
        if self.in_flight >= self.config.max_in_flight:
            self._pause()

    def _pause(self) -> None:
        self.paused = True
        for connection in self.connections:
            connection.mqtt.pause_reading()
        self.metrics.paused.set(1)

    def _resume(self) -> None:
        if not self.paused or self.stopping.is_set():
            return
        self.paused = False
        self.metrics.paused.set(0)
        for connection in self.connections:
            connection.mqtt.resume_reading()

    # -- Kafka side ------------------------------------------------------------------------------

    async def _start_producer(self) -> None:
        await self.producer.start()

    async def _write_loop(self) -> None:
        while True:
            if not self.queue:
                self.queue_ready.clear()
                await self.queue_ready.wait()
                continue
            envelope = self.queue.popleft()
            try:
                future = await self.producer.send(
                    envelope.topic, envelope.value, key=envelope.key, headers=envelope.headers
                )
            except KafkaWriteError as exc:  # Kafka down or slow: keep it, retry
                self._retry_later(envelope, exc)
                continue
            future.add_done_callback(functools.partial(self._written, envelope))

    def _retry_later(self, envelope: Envelope, exc: BaseException) -> None:
        self.metrics.kafka_errors.inc()
        log.warning(
            "Kafka write failed (%s: %s); retrying",
            type(exc).__name__,
            exc,
            extra={"topic": envelope.topic, "component": "connector", "throttle": True},
        )
        loop = asyncio.get_running_loop()
        loop.call_later(self.config.retry_backoff_s, self._requeue, envelope)

    def _requeue(self, envelope: Envelope) -> None:
        self.queue.appendleft(envelope)
        self.queue_ready.set()

    def _written(self, envelope: Envelope, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self._retry_later(envelope, future.exception() or asyncio.CancelledError())
            return
        connection = envelope.connection
        if envelope.reason is None:
            connection.count_produced()
        else:
            self.metrics.rejected.labels(connection.broker.name, envelope.reason).inc()
            _log_rejected(envelope, future.result())
        self.metrics.ack_latency.observe((time.time_ns() - envelope.delivery.received_ns) / 1e9)
        self.in_flight -= 1
        if connection.mqtt.connected.is_set():
            client = connection.mqtt.client
            for delivery in connection.ledger.complete(
                envelope.delivery, connection.mqtt.generation
            ):
                if delivery.qos == 1:
                    client.queue_puback(delivery.mid)
                else:  # QoS 2 (never subscribed to): paho's PUBCOMP, behind the rest
                    client.ack(delivery.mid, delivery.qos)
            if not self._acks_to_flush:
                # Kafka acknowledges a batch at once: its records' callbacks are all queued on
                # the loop already, so this runs after them and their PUBACKs leave in one
                # write (per connection), in their order.
                asyncio.get_running_loop().call_soon(self._flush_acks)
            self._acks_to_flush.add(connection)
        else:
            connection.ledger.complete(envelope.delivery, -1)  # acks impossible: redelivered
        if self.in_flight <= self.config.max_in_flight // 2:
            self._resume()

    def _flush_acks(self) -> None:
        self.health.progress()
        for connection in self._acks_to_flush:
            connection.mqtt.client.flush_pubacks()
        self._acks_to_flush.clear()

    # -- life cycle ------------------------------------------------------------------------------

    async def ready(self) -> None:
        """Until every broker granted the subscriptions: before that, messages reach no one."""
        await asyncio.gather(*(c.subscribed.wait() for c in self.connections))

    def count(self, name: str, **labels: str) -> float:
        """The sum of a counter's samples whose labels include ``labels``."""
        total = 0.0
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if (
                    sample.name == f"veilleuse_connector_{name}_total"
                    and labels.items() <= sample.labels.items()
                ):
                    total += sample.value
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain and disconnect."""
        starting = asyncio.create_task(self._start_producer())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # told to stop before Kafka could be reached: nothing was taken
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            log.info("stopped before Kafka was reachable; no MQTT message was taken")
            return
        stopping.cancel()
        self.health.start()
        writer = asyncio.create_task(self._write_loop())
        sessions = [asyncio.create_task(c.run(self.stopping)) for c in self.connections]
        log.info(
            "connector running: brokers %s, share group %s",
            [c.broker.name for c in self.connections],
            self.settings.mqtt.share_group,
        )
        failures: list[BaseException] = []

        def failed(task: asyncio.Task[None]) -> None:
            # Nothing awaits these tasks until shutdown: without this, a crashed writer would
            # leave a connector that reads nothing, reporting nothing.
            if task.cancelled() or task.exception() is None:
                return
            failures.append(task.exception() or RuntimeError())
            log.error(
                "connector task %s failed; stopping",
                task.get_name(),
                exc_info=task.exception(),
                extra={"component": "connector"},
            )
            stop.set()

        for task in (writer, *sessions):
            task.add_done_callback(failed)
        await stop.wait()
        await self.shutdown(writer, sessions)
        if failures:
            raise ConnectorError(f"connector stopped after a failure: {failures[0]!r}") from (
                failures[0]
            )

    async def shutdown(
        self, writer: asyncio.Task[None], sessions: list[asyncio.Task[None]]
    ) -> None:
        log.info("stopping: %d records in flight", self.in_flight)
        self._pause()
        self.stopping.set()
        deadline = time.monotonic() + self.config.drain_timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning(
                "drain timeout: %d records left unacknowledged; the broker redelivers them",
                self.in_flight,
            )
        for connection in self.connections:
            with contextlib.suppress(Exception):
                connection.mqtt.client.loop_write()  # flush the last PUBACKs
            await connection.mqtt.close()
        for task in [writer, *sessions]:
            task.cancel()
        await asyncio.gather(writer, *sessions, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.stop(), 10)
        log.info("stopped")


def run_connector(settings: Settings) -> None:
    """The ``veilleuse connector`` process: metrics endpoint, signals, run until told to stop."""
    from pipeline.metrics import serve
    from pipeline.process import run_until_stopped

    async def main(stop: asyncio.Event) -> None:
        registry = CollectorRegistry()
        source = MqttSource(settings, registry)
        if settings.connector.metrics_port:
            serve(registry, settings.connector.metrics_port, source.health)
        source.health.watch()
        beating = asyncio.create_task(source.health.beat_forever())
        try:
            await source.run(stop)
        finally:
            beating.cancel()

    run_until_stopped(main)


def discard_sessions(settings: Settings) -> list[str]:
    """Delete this replica's sessions on every broker (see ``discard_session``): its own and
    its restart guard's (replica 0's; connecting to discard a missing one leaves nothing)."""
    from connectors.mqtt_asyncio import discard_session

    mqtt = settings.mqtt

    async def main() -> list[str]:
        done = []
        for broker, suffix in itertools.product(mqtt.brokers, ("", "-guard")):
            client_id = f"{mqtt.client_id}{suffix}-{broker.name}"
            await discard_session(
                host=broker.host,
                port=broker.port,
                client_id=client_id,
                username=mqtt.username,
                password=mqtt.password.get_secret_value(),
                tls=broker.tls,
                ca_file=str(broker.ca_file) if broker.ca_file else None,
            )
            done.append(client_id)
        return done

    return asyncio.run(main())
