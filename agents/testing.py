"""The testing kit: run rules over hand-written lamp traces in event time, no Kafka, no faust.

Shipped in the package for anyone writing a rule (or an agent made of rules)::

    from agents.testing import Trace

    t = Trace(rules=[MyRule], rule_settings={"my_rule": {"after_s": 60}})
    t.feed(t.button(5), t.button(20, "cancel"))  # lamp events, in arrival order
    t.run_until(600)  # wall time passes: the rules' timers fire
    assert t.steps("my_kind") == [("my_kind", "raised"), ("my_kind", "resolved")]

A trace is protocol-shaped records through the real engine (:class:`PartitionEngine`):
decoding, the lamp's clock, deduplication, timers and acknowledgements behave as in a worker.

Times are seconds from the trace's start on the lamp's clock. ``arrive`` says when the record
reaches the pipeline (wall seconds from the same start, the lamp clock's ``skew_s`` aside),
so reordering, late replays and clock offsets are written as they happen in the field.

:meth:`Trace.feed` processes records one by one in the order given, letting wall time pass up
to each record's arrival first (the worker's timer tick between records, the worst case for
reordering); :meth:`Trace.feed_batch` processes records as one batch, without ticks between.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from agents.api import AgentSpec
from agents.detection import LampState, PartitionEngine
from agents.rules import build_rules
from agents.rules.base import Alert, Rule, RuleState
from pipeline.records import KafkaRecord
from pipeline.settings import DetectionSettings, Settings

if TYPE_CHECKING:
    from agents.runtime.streaming import BatchAgent

T0_MS = 1_764_230_400_000  # 2025-11-27 08:00:00 UTC = 09:00 in Paris


def at(seconds: float) -> int:
    """Epoch ms of ``seconds`` after the trace's start."""
    return T0_MS + round(seconds * 1000)


@dataclass
class Trace:
    lamp_id: str = "L-000123"
    site_id: str = "fr-lyon-12"
    skew_s: float = 0.0  # the lamp's clock minus the true time
    config: DetectionSettings = field(default_factory=DetectionSettings)
    # The rules to run (default: every installed one) and their settings sections, as
    # ``VEILLEUSE_RULES__<RULE>__<FIELD>`` would give them: rule name -> field -> value.
    rules: Iterable[type[Rule]] | None = None  # type: ignore[type-arg]
    rule_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seq: int = 0
    offset: int = 0
    wall_ms: int = T0_MS
    store: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.engine = self._new_engine()
        self.alerts: list[Alert] = []
        self.late: list[tuple[KafkaRecord, str]] = []
        self.dead: list[tuple[KafkaRecord, str, str]] = []
        self.emitted: list[tuple[str, str, dict[str, Any]]] = []

    def _new_engine(self) -> PartitionEngine:
        if self.rules is not None:
            self.rules = tuple(self.rules)  # iterated at every restart
        rules = build_rules(self.config, self.rule_settings, self.rules)
        return PartitionEngine(0, rules, self.config, self.store.get, lambda: self.wall_ms)

    # -- building records ----------------------------------------------------------------

    def record(  # noqa: PLR0917 - the trace builders read best positionally
        self,
        at_s: float,
        kind: str,
        arrive_s: float | None = None,
        seq: int | None = None,
        ts: int | None = None,
        channel: str = "events",
        **fields: Any,
    ) -> KafkaRecord:
        if seq is None:
            seq = self.seq
            self.seq = (self.seq + 1) % 2**32
        if ts is None:
            ts = at(at_s + self.skew_s)
        payload = {"v": 1, "lamp_id": self.lamp_id, "seq": seq, "ts": ts, "type": kind, **fields}
        arrive = at_s if arrive_s is None else arrive_s
        self.offset += 1
        return KafkaRecord(
            "lamp.messages.v1",
            0,
            self.offset,
            at(arrive),
            self.lamp_id.encode(),
            orjson.dumps(payload),
            (("mqtt.topic", f"lamps/{self.site_id}/{self.lamp_id}/{channel}".encode()),),
        )

    def posture(
        self, at_s: float, posture: str, zone: str = "room", persons: int = 1, **kw: Any
    ) -> KafkaRecord:
        return self.record(
            at_s, "posture", posture=posture, zone=zone, confidence=0.9, persons=persons, **kw
        )

    def postures(
        self, start_s: float, end_s: float, posture: str, step_s: float = 5, **kw: Any
    ) -> list[KafkaRecord]:
        """One posture every ``step_s`` from ``start_s`` to ``end_s`` inclusive."""
        return [self.posture(s, posture, **kw) for s in seconds(start_s, end_s, step_s)]

    def fall(
        self, at_s: float, confidence: float = 0.82, zone: str = "floor", **kw: Any
    ) -> KafkaRecord:
        return self.record(at_s, "fall_suspected", confidence=confidence, zone=zone, **kw)

    def button(self, at_s: float, action: str = "press", **kw: Any) -> KafkaRecord:
        return self.record(at_s, "button", accessory_id="pendant-1", action=action, **kw)

    def motion(self, at_s: float, zone: str = "room", **kw: Any) -> KafkaRecord:
        return self.record(at_s, "motion", zone=zone, level=40, **kw)

    def temperature(self, at_s: float, celsius: float, **kw: Any) -> KafkaRecord:
        return self.record(at_s, "temperature", channel="telemetry", celsius=celsius, **kw)

    def heartbeat(self, at_s: float, **kw: Any) -> KafkaRecord:
        return self.record(
            at_s, "heartbeat", channel="telemetry", fw="1.4.2", uptime_s=100, rssi=-60, **kw
        )

    def status(self, at_s: float, online: bool, **kw: Any) -> KafkaRecord:
        return self.record(at_s, "status", channel="status", online=online, **kw)

    def last_will(self, arrive_s: float) -> KafkaRecord:
        return self.record(
            arrive_s, "status", arrive_s=arrive_s, seq=0, ts=0, channel="status", online=False
        )

    def reboot(self, skew_s: float = 0.0) -> None:
        """The lamp reboots: ``seq`` restarts at 0 and its clock is resynchronised."""
        self.seq = 0
        self.skew_s = skew_s

    # -- running -------------------------------------------------------------------------

    def feed(self, *records: KafkaRecord) -> list[Alert]:
        """Process records in the order given (their arrival order), advancing wall time."""
        before = len(self.alerts)
        for record in records:
            self.run_until((record.timestamp_ms - T0_MS) / 1000)
            self.engine.process(record)
            self._collect()
        return self.alerts[before:]

    def deliver(self, records: Iterable[KafkaRecord]) -> list[Alert]:
        """Feed records in the order they arrive (by record time; ties in the order given)."""
        return self.feed(*sorted(records, key=lambda r: r.timestamp_ms))

    def feed_batch(self, *records: KafkaRecord) -> list[Alert]:
        """Process records as one batch: no timer tick between them, as the worker does."""
        before = len(self.alerts)
        if records:
            self.run_until((records[0].timestamp_ms - T0_MS) / 1000)
        for record in records:
            self.engine.process(record)
        self._collect()
        return self.alerts[before:]

    def run_until(self, wall_s: float) -> list[Alert]:
        """Let wall time pass (the lamp silent), firing deadlines as the worker's tick does."""
        before = len(self.alerts)
        target = at(wall_s)
        while True:
            due = self.engine.next_due()
            if due is None or due > target:
                break
            self.wall_ms = max(self.wall_ms, due)
            self.engine.advance(self.wall_ms)
            self._collect()
        self.wall_ms = max(self.wall_ms, target)
        self.engine.advance(self.wall_ms)
        self._collect()
        return self.alerts[before:]

    def acknowledge(self, alert_id: str, by: str, wall_s: float) -> bool:
        """Staff acknowledge ``alert_id`` at ``wall_s``."""
        self.run_until(wall_s)
        closed = self.engine.acknowledge(self.lamp_id, alert_id, by, self.wall_ms)
        self._collect()
        return closed

    def restart(self) -> None:
        """A worker restart: the committed state is all that survives."""
        self._collect()
        self.engine = self._new_engine()
        self.engine.restore(self.store.values())

    def _collect(self) -> None:
        outputs = self.engine.take_outputs()
        self.alerts += outputs.alerts
        self.late += outputs.late
        self.dead += outputs.dead
        self.emitted += outputs.records
        for lamp_id in outputs.changed:
            self.store[lamp_id] = self.engine.encode_state(lamp_id)

    # -- reading -------------------------------------------------------------------------

    def steps(self, *kinds: str) -> list[tuple[str, str]]:
        """(kind, state) of the alerts emitted so far, of ``kinds`` only if given."""
        return [(a.kind, a.state) for a in self.of(*kinds)]

    def of(self, *kinds: str) -> list[Alert]:
        return [a for a in self.alerts if not kinds or a.kind in kinds]

    def rule_state(self, rule: str) -> RuleState:
        return self._lamp().rules[rule]

    @property
    def timers(self) -> dict[str, int]:
        return self._lamp().timers

    def _lamp(self) -> LampState:
        # After a restart the lamp's state stays encoded until it is needed (lazy restore).
        lamp = self.engine.peek(self.lamp_id)
        if lamp is None:
            raise KeyError(self.lamp_id)
        return lamp


def seconds(start_s: float, end_s: float, step_s: float) -> list[float]:
    """``start_s``, ``start_s + step_s``, ... up to ``end_s`` inclusive."""
    count = round((end_s - start_s) / step_s) + 1
    return [start_s + i * step_s for i in range(count) if start_s + i * step_s <= end_s + 1e-9]


class AgentDriver:
    """Runs a registered agent (:class:`~agents.api.AgentSpec`) as a worker would, without
    Kafka: records in, per partition and in offset order; wall time passes, firing what is due;
    every batch's changelog kept in a dict, so :meth:`restart` recovers from it like a worker
    after a crash. What the agent produced is in :attr:`produced` (topic, key, value, headers).

    ::

        driver = AgentDriver(AGENT, load_settings(kafka={"topic_prefix": "t."}))
        driver.send("t.lamp.messages.v1", key=b"L-1", value=b"...", at_ms=T0_MS)
        driver.run_until(T0_MS + 60_000)
        [(topic, key, value, headers)] = driver.produced
    """

    def __init__(
        self,
        spec: AgentSpec,
        settings: Settings,
        partitions: Iterable[int] = (0,),
        start_ms: int = T0_MS,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.partitions = tuple(partitions)
        self.wall_ms = start_ms
        self.table: dict[bytes, bytes] = {}
        self.produced: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.agent = self._start()

    def _start(self) -> BatchAgent:
        from agents.registry import agent_settings

        own = agent_settings(self.spec, self.settings)
        agent = self.spec.build(self.settings, own, lambda: self.wall_ms)
        agent.assign(list(self.partitions), list(self.table.values()))
        return agent

    def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        at_ms: int | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
    ) -> None:
        """One record reaches the agent at ``at_ms`` (wall time; default: now), processed as a
        batch of its own after the deadlines due before it fired."""
        at_ms = self.wall_ms if at_ms is None else at_ms
        self.run_until(at_ms)
        partition = self.partitions[0] if partition is None else partition
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[topic, partition] = offset + 1
        record = KafkaRecord(topic, partition, offset, at_ms, key, value, tuple(headers))
        self.agent.process(partition, [record])
        self._commit()

    def replay(self, records: Iterable[KafkaRecord], topic: str | None = None) -> None:
        """``records`` (built by a :class:`Trace`, or read back from Kafka) reach the agent in
        the order given, each at its own timestamp (its ingest time), with its key, value and
        headers, on ``topic`` if given (else its own) and the driver's first partition."""
        for record in records:
            self.send(
                topic or record.topic,
                record.value or b"",
                key=record.key,
                at_ms=record.timestamp_ms,
                headers=record.headers,
            )

    def run_until(self, wall_ms: int) -> None:
        """Wall time passes up to ``wall_ms``: each partition's due deadlines fire."""
        self.wall_ms = max(self.wall_ms, wall_ms)
        for partition in self.partitions:
            self.agent.advance(partition, self.wall_ms)
        self._commit()

    def restart(self) -> None:
        """A crash and a restart: only what was committed (the changelog) survives."""
        self.agent = self._start()

    def _commit(self) -> None:
        result = self.agent.take_result()
        for item in result.produce:
            self.produced.append((item.topic, item.key, item.value, list(item.headers)))
        for changes in result.changelog.values():
            for key, value in changes.items():
                if value is None:
                    self.table.pop(key, None)
                else:
                    self.table[key] = value

    def on(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        """(key, value) of what was produced to ``topic``."""
        return [(key, value) for name, key, value, _ in self.produced if name == topic]

    def records(self, topic: str) -> list[dict[str, Any]]:
        """What was produced to ``topic``, decoded from Avro (with the writer schema each
        record names), in the order produced."""
        from schemas import decode

        return [decode(value)[1] for _, value in self.on(topic)]
