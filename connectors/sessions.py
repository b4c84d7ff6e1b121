"""The connector's sessions beside its own: the restart guard, and retired replicas' sessions.

Both run in replica 0 only (the client id's ordinal, ``…-0``, as a StatefulSet names its pods)
and write through the connector's normal path: Kafka first, then the PUBACK, in order.

- **Restart guard.** Mosquitto 2.0 (Debian 12's 2.0.11) saves a persistent session's plain
  subscriptions but not its shared ones (measured, docs/mqtt.md): after a broker restart the
  replicas' sessions come back without their ``$share/…`` subscriptions, and every lamp message
  until a replica subscribes again is acknowledged to the lamp and matched by nobody. The guard
  is a second persistent session of replica 0 with *plain* subscriptions to the lamps' topics,
  which the broker does keep. Each time the guard connects it forwards what reaches it, until a
  marker it publishes itself comes back to it: the marker is published only after this replica
  had a fresh SUBACK for its shared subscriptions, so everything behind it was also dealt to the
  group. Later deliveries are acknowledged and dropped. The price: the broker sends replica 0
  every lamp message twice, and the messages of a restart (or of the guard's own downtime) reach
  Kafka twice (duplicates, never a loss). Brokers that keep shared subscriptions (EMQX with
  durable sessions) turn it off per broker: ``restart_guard: false``.
- **Retired replicas.** A replica removed for good leaves its session in the share group, and
  the broker keeps dealing it its share (Mosquitto 2.0.11 deals round-robin to offline members
  too, measured). Replica 0 looks, at start and every ``drain_interval_s``, for sessions of the
  ordinals ``replicas`` … ``max_ordinal - 1``; one that exists is taken over (clean start off),
  unsubscribed from the share group so that nothing new is dealt to it, emptied into Kafka, and
  ended with a session expiry of 0. Taking over a replica that is in fact still running costs
  duplicates only: it reconnects, takes its session back, and subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
import uuid
from collections.abc import Coroutine
from enum import Enum
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import CollectorRegistry, Counter, Gauge

from connectors.ledger import Delivery
from connectors.mqtt_asyncio import AsyncioMqtt
from connectors.mqtt_source import CHANNELS, BrokerConnection, Message
from pipeline.lamps import CONNECTOR_CONTROL_PREFIX

log = logging.getLogger(__name__)

ORDINAL = re.compile(r"^(?P<base>.+)-(?P<ordinal>\d+)$")
# A retired session is empty once nothing arrived for this long after the broker confirmed the
# unsubscription (queued messages follow one another at the broker's pace, milliseconds apart).
QUIET_S = 1.5
DRAIN_TIMEOUT_S = 300.0
# The restart guard's heartbeat (a retained message: when it was last connected), and how much
# earlier than that the broker must have started for the guard's backlog to be redundant: the
# broker's uptime is refreshed every 10 s ($SYS interval), plus clock skew between hosts.
HEARTBEAT_S = 5.0
RESTART_MARGIN_S = 15.0
UPTIME_TOPIC = "$SYS/broker/uptime"


class SessionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.guard_forwarded = Counter(
            "veilleuse_connector_restart_guard_forwarded",
            "deliveries of the restart guard written to Kafka (after a restart: duplicates too)",
            ["broker"],
            registry=registry,
        )
        self.guard_dropped = Counter(
            "veilleuse_connector_restart_guard_dropped",
            "deliveries of the restart guard acknowledged without writing (the group had them)",
            ["broker"],
            registry=registry,
        )
        self.guard_armed = Gauge(
            "veilleuse_connector_restart_guard_forwarding",
            "1 while the restart guard forwards (until its marker came back)",
            ["broker"],
            registry=registry,
        )
        self.retired_found = Gauge(
            "veilleuse_connector_retired_sessions",
            "sessions of retired replicas (ordinal >= replicas) found by the last scan: a session "
            "in the share group with no client behind it",
            ["broker"],
            registry=registry,
        )
        self.retired_drained = Counter(
            "veilleuse_connector_retired_sessions_drained",
            "sessions of retired replicas emptied into Kafka and ended",
            ["broker"],
            registry=registry,
        )


@functools.cache
def metrics_of(registry: CollectorRegistry) -> SessionMetrics:
    return SessionMetrics(registry)


def ordinal_of(client_id: str) -> tuple[str, int] | None:
    """``("veilleuse-connector", 0)`` for ``veilleuse-connector-0``; None without an ordinal."""
    match = ORDINAL.fullmatch(client_id)
    return (match["base"], int(match["ordinal"])) if match else None


def helpers_of(
    connection: BrokerConnection, stopping: asyncio.Event
) -> list[Coroutine[Any, Any, None]]:
    """What replica 0 runs beside its connection to one broker."""
    source = connection.source
    named = ordinal_of(source.settings.mqtt.client_id)
    if type(connection) is not BrokerConnection or named is None or named[1] != 0:
        return []
    helpers: list[Coroutine[Any, Any, None]] = []
    if connection.broker.restart_guard and source.settings.mqtt.share_group:
        helpers.append(RestartGuard(connection).stay_connected(stopping))
    if source.settings.connector.replicas > 0:
        helpers.append(drain_retired_forever(connection, named[0], stopping))
    return helpers


class GuardState(Enum):
    FORWARDING = "forwarding"
    DROPPING = "dropping"


class RestartGuard(BrokerConnection):
    """Replica 0's plain persistent subscription, kept by brokers across restarts."""

    def __init__(self, main: BrokerConnection) -> None:
        settings = main.source.settings.mqtt
        super().__init__(
            main.source, main.broker, client_id=f"{settings.client_id}-guard-{main.broker.name}"
        )
        self.main = main
        self.marker_topic = f"{CONNECTOR_CONTROL_PREFIX}/{self.client_id}/marker"
        self.heartbeat_topic = f"{CONNECTOR_CONTROL_PREFIX}/{self.client_id}/seen"
        self.token = b""
        self.state = GuardState.FORWARDING
        self.metrics = metrics_of(main.source.metrics.registry)
        self.marking: asyncio.Task[None] | None = None
        self.beating: asyncio.Task[None] | None = None
        self.backlog_redundant = False

    def filters(self) -> list[str]:
        return [f"lamps/+/+/{channel}" for channel in CHANNELS] + [self.marker_topic]

    async def stay_connected(self, stopping: asyncio.Event) -> None:
        try:
            await super().stay_connected(stopping)
        finally:
            for task in (self.marking, self.beating):
                if task is not None:
                    task.cancel()
            await self.mqtt.close()  # keeping the session: it is the guard

    async def before_connect(self) -> None:
        """Decide, before taking the session, whether what it queued can be dropped: when the
        broker ran throughout since the guard was last connected (its retained heartbeat against
        the broker's uptime), the shared subscriptions were there all along. Only Mosquitto
        publishes ``$SYS/broker/uptime``; elsewhere the backlog is always forwarded."""
        self.backlog_redundant = False
        await self.main.mqtt.connected.wait()
        if not self.main.session_present:
            return  # replica 0's own session is new: the group may have lacked its share
        started, seen = await self._probe()
        if started is not None and seen is not None:
            self.backlog_redundant = started < seen - RESTART_MARGIN_S

    async def _probe(self) -> tuple[float | None, float | None]:
        """(when the broker started, when the guard was last connected), epoch seconds."""
        settings = self.source.settings.mqtt
        probe = AsyncioMqtt(
            host=self.broker.host,
            port=self.broker.port,
            client_id=f"{self.client_id}-probe",
            username=settings.username,
            password=settings.password.get_secret_value(),
            tls=self.broker.tls,
            ca_file=str(self.broker.ca_file) if self.broker.ca_file else None,
        )
        found: dict[str, bytes] = {}

        def retained(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            found.setdefault(message.topic, bytes(message.payload))

        probe.client.on_message = retained
        try:
            await probe.connect()
            probe.client.subscribe([(UPTIME_TOPIC, 0), (self.heartbeat_topic, 0)])
            deadline = time.monotonic() + 1.0  # retained messages follow the SUBACK at once
            while len(found) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            await probe.close()
        now = time.time()
        started = seen = None
        with contextlib.suppress(ValueError, IndexError):
            started = now - int(found[UPTIME_TOPIC].split()[0])
        with contextlib.suppress(ValueError, KeyError):
            seen = int(found[self.heartbeat_topic]) / 1000
        return started, seen

    async def _beat(self) -> None:
        while self.mqtt.connected.is_set():
            self.mqtt.client.publish(
                self.heartbeat_topic, str(time.time_ns() // 1_000_000), qos=1, retain=True
            )
            await asyncio.sleep(HEARTBEAT_S)

    def _on_connected(self, session_present: bool) -> None:
        self.lost.clear()
        self.ledger.forget_older_than(self.mqtt.generation)
        # Whatever this connection brings first may have been missed by the share group, unless
        # the broker ran throughout since the guard was last here.
        self._arm()
        if self.backlog_redundant:
            self.state = GuardState.DROPPING
            self.metrics.guard_armed.labels(self.broker.name).set(0)
        log.info(
            "restart guard connected to %s (its session kept: %s); %s",
            self.broker.name,
            session_present,
            "the broker ran throughout: nothing to forward"
            if self.backlog_redundant
            else "forwarding until its marker",
            extra={"component": "connector", "client_id": self.client_id},
        )
        if self.beating is not None:
            self.beating.cancel()
        self.beating = asyncio.get_running_loop().create_task(self._beat())
        # Retain handling 2: no retained replays, which are old news the group never lost.
        options = SubscribeOptions(qos=1, retainHandling=2)
        self.mqtt.client.subscribe([(f, options) for f in self.filters()])

    def _arm(self) -> None:
        self.state = GuardState.FORWARDING
        self.token = uuid.uuid4().hex.encode()
        self.metrics.guard_armed.labels(self.broker.name).set(1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            log.error(
                "broker %s refused the restart guard's subscriptions: %s",
                self.broker.name,
                refused,
                extra={"component": "connector", "client_id": self.client_id},
            )
            return
        if self.marking is not None:
            self.marking.cancel()
        self.marking = asyncio.get_running_loop().create_task(self._mark(self.token))

    async def _mark(self, token: bytes) -> None:
        """Publish the marker once the group is known to hold its subscriptions again."""
        granted = self.main.subscriptions_granted
        if self.main.mqtt.connected.is_set():
            self.main.subscribe()  # a fresh SUBACK: the broker has the shared subscription now
        while self.main.subscriptions_granted <= granted:
            await asyncio.sleep(0.05)
        if token == self.token and self.mqtt.connected.is_set():
            self.mqtt.client.publish(self.marker_topic, token, qos=1)

    def _on_lost(self, reason: str) -> None:
        log.log(
            logging.INFO if self.source.stopping.is_set() else logging.WARNING,
            "restart guard lost its connection to %s: %s",
            self.broker.name,
            reason,
            extra={"component": "connector", "client_id": self.client_id},
        )
        self.lost.set()

    def _on_message(self, _c: Any, _u: Any, message: Message) -> None:
        if self.source.stopping.is_set():
            # Stopping: what was read is handled, nothing more is taken (the broker keeps it).
            self.mqtt.pause_reading()
        if message.topic == self.marker_topic:
            if bytes(message.payload) == self.token and self.state is GuardState.FORWARDING:
                self.state = GuardState.DROPPING
                self.metrics.guard_armed.labels(self.broker.name).set(0)
                log.info(
                    "restart guard on %s: marker back, the share group has the rest",
                    self.broker.name,
                    extra={"component": "connector", "client_id": self.client_id},
                )
            self._ack_now(message)
            return
        if self.state is GuardState.FORWARDING:
            self.metrics.guard_forwarded.labels(self.broker.name).inc()
            self.source.accept(self, message)
            return
        self.metrics.guard_dropped.labels(self.broker.name).inc()
        self._ack_now(message)

    def _ack_now(self, message: Message) -> None:
        """Acknowledge without writing, in arrival order (behind forwards still in flight)."""
        delivery = Delivery(message.mid, message.qos, self.mqtt.generation, time.time_ns())
        self.ledger.add(delivery)
        for ready in self.ledger.complete(delivery, self.mqtt.generation):
            self.mqtt.client.ack(ready.mid, ready.qos)


class RetiredSession(BrokerConnection):
    """The session of a replica removed for good: taken over, emptied into Kafka, ended."""

    def __init__(self, main: BrokerConnection, client_id: str) -> None:
        super().__init__(main.source, main.broker, client_id=client_id)
        self.main = main
        self.session_present = False
        self.unsubscribed = asyncio.Event()
        self.last_message = time.monotonic()
        self.received = 0

    def _on_connected(self, session_present: bool) -> None:
        self.lost.clear()
        self.session_present = session_present
        if session_present:
            # Nothing new is dealt to it from now on; what it holds still comes.
            self.mqtt.client.unsubscribe(self.main.filters())

    def _on_lost(self, reason: str) -> None:
        self.lost.set()

    def _on_message(self, _c: Any, _u: Any, message: Message) -> None:
        self.last_message = time.monotonic()
        self.received += 1
        self.source.accept(self, message)

    async def drain(self) -> bool:
        """True if a session was found (and emptied and ended, or left for the next scan)."""
        try:
            return await self._drain()
        finally:
            await self.mqtt.close()  # no-op after an ending DISCONNECT; keeps it otherwise

    async def _drain(self) -> bool:
        self.mqtt.client.on_unsubscribe = lambda *_: self.unsubscribed.set()
        try:
            await self.mqtt.connect()
        except ConnectionError as exc:
            log.warning(
                "retired session %s: %s",
                self.client_id,
                exc,
                extra={"component": "connector", "client_id": self.client_id},
            )
            return False
        if not self.session_present:
            await self.mqtt.close(session_expiry_s=0)  # the empty session connecting made
            return False
        log.warning(
            "found the session of retired replica %s on %s: draining it",
            self.client_id,
            self.broker.name,
            extra={"component": "connector", "client_id": self.client_id},
        )
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and not self.lost.is_set():
            quiet = time.monotonic() - self.last_message >= QUIET_S
            if self.unsubscribed.is_set() and quiet and not self.ledger.pending:
                with contextlib.suppress(Exception):
                    self.mqtt.client.loop_write()  # the last PUBACKs before the DISCONNECT
                await self.mqtt.close(session_expiry_s=0)
                log.info(
                    "retired session %s drained (%d messages) and ended",
                    self.client_id,
                    self.received,
                    extra={"component": "connector", "client_id": self.client_id},
                )
                metrics_of(self.source.metrics.registry).retired_drained.labels(
                    self.broker.name
                ).inc()
                return True
            await asyncio.sleep(0.1)
        # Taken back by its replica (it was alive after all), or too slow: keep the session;
        # whatever was written but not acknowledged is redelivered (a duplicate).
        log.warning(
            "retired session %s not ended (%s); next scan",
            self.client_id,
            "taken over" if self.lost.is_set() else "timeout",
            extra={"component": "connector", "client_id": self.client_id},
        )
        return True


async def drain_retired(main: BrokerConnection, base: str) -> int:
    """One scan of the retired ordinals on one broker; returns how many sessions were found."""
    config = main.source.settings.connector
    found = 0
    for ordinal in range(config.replicas, config.max_ordinal):
        client_id = f"{base}-{ordinal}-{main.broker.name}"
        if await RetiredSession(main, client_id).drain():
            found += 1
    metrics_of(main.source.metrics.registry).retired_found.labels(main.broker.name).set(found)
    return found


async def drain_retired_forever(main: BrokerConnection, base: str, stopping: asyncio.Event) -> None:
    interval = main.source.settings.connector.drain_interval_s
    while not stopping.is_set():
        await main.subscribed.wait()  # our own share first: the group must not be left empty
        try:
            await drain_retired(main, base)
        except Exception:  # a failed scan is retried, never fatal
            log.exception(
                "scan for retired sessions failed",
                extra={"component": "connector", "broker": main.broker.name},
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
