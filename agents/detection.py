"""The detection engine: every rule, per lamp, over one partition's records. Pure.

For each record: decode (or dead-letter with the reason), advance the lamp's clock, drop
duplicates, fire the lamp's deadlines that fall before the record's event time, then hand the
event to the rules that handle its type. :meth:`PartitionEngine.advance` fires the deadlines
that the passing of wall time reached, so a silent lamp's fall is still raised on time.

Everything a lamp's rules know is one :class:`LampState`, written to the changelog once per
batch when it changed. Alerts, late and dead-lettered records collect in :class:`Outputs`
until the batch is committed.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from agents.events import DecodeError, LampEvent, decode_event
from agents.eventtime import Deduplicator, LampClock
from agents.rules.base import Alert, Incident, Rule, RuleState, alert_id_for
from pipeline.records import KafkaRecord
from pipeline.settings import DetectionSettings

log = logging.getLogger(__name__)

STATE_VERSION = 3
MAX_TIMER_FIRINGS = 1000


@dataclass
class LampState:
    lamp_id: str
    site_id: str
    partition: int
    clock: LampClock
    dedup: Deduplicator
    timers: dict[str, int] = field(default_factory=dict)  # "rule:name" -> event-time ms
    rules: dict[str, RuleState] = field(default_factory=dict)

    def next_deadline(self) -> int | None:
        return min(self.timers.values()) if self.timers else None


@dataclass
class Outputs:
    alerts: list[Alert] = field(default_factory=list)
    late: list[tuple[KafkaRecord, str]] = field(default_factory=list)
    dead: list[tuple[KafkaRecord, str, str]] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    records: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    # wall time (ms) of the deadlines that raised or resolved alerts when wall time reached them
    deadlines: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.alerts or self.late or self.dead or self.changed or self.records)


class _Context:
    """The :class:`RuleContext` of one lamp; ``rule`` and ``now`` are set before each call."""

    __slots__ = ("config", "engine", "lamp", "lamp_id", "now", "record", "rule", "site_id")

    def __init__(self, engine: PartitionEngine, lamp: LampState) -> None:
        self.engine = engine
        self.lamp = lamp
        self.lamp_id = lamp.lamp_id
        self.site_id = lamp.site_id
        self.config = engine.config
        self.rule = ""
        self.now = 0
        self.record: KafkaRecord | None = None

    def raise_alert(
        self, rule: str, kind: str, severity: str, started_at: int, details: dict[str, str]
    ) -> Incident:
        incident = Incident(
            alert_id_for(self.lamp_id, rule, started_at), kind, severity, started_at
        )
        self._emit(incident, "raised", details)
        return incident

    def resolve(self, incident: Incident, details: dict[str, str]) -> None:
        self._emit(incident, "resolved", details)

    def _emit(self, incident: Incident, state: str, details: dict[str, str]) -> None:
        engine = self.engine
        alert = Alert(
            incident.alert_id,
            incident.kind,
            incident.severity,
            state,
            self.site_id,
            self.lamp_id,
            incident.started_at,
            engine.wall_clock(),
            {**details, "lamp_time": str(self.now)},
        )
        engine.outputs.alerts.append(alert)
        engine.counts[f"alert.{incident.kind}.{state}"] += 1

    def set_timer(self, name: str, at: int) -> None:
        self.lamp.timers[f"{self.rule}:{name}"] = at

    def cancel_timer(self, name: str) -> None:
        self.lamp.timers.pop(f"{self.rule}:{name}", None)

    def late(self, reason: str) -> None:
        if self.record is not None:
            late = self.engine.outputs.late
            if late and late[-1][0] is self.record:  # late for several rules: one record
                late[-1] = (self.record, f"{late[-1][1]},{self.rule}:{reason}")
            else:
                late.append((self.record, f"{self.rule}:{reason}"))
                self.engine.counts["late"] += 1

    def emit(self, kind: str, record: dict[str, Any]) -> None:
        self.engine.outputs.records.append((kind, self.lamp_id, record))
        self.engine.counts[f"emitted.{kind}"] += 1


class PartitionEngine:
    """The rules over the lamps of one input partition."""

    def __init__(
        self,
        partition: int,
        rules: Iterable[Rule],  # type: ignore[type-arg]
        config: DetectionSettings,
        load: Callable[[str], bytes | None],
        wall_clock: Callable[[], int],
    ) -> None:
        self.partition = partition
        self.rules = {rule.name: rule for rule in rules}
        self.by_type: dict[str, list[Rule]] = {}  # type: ignore[type-arg]
        for rule in self.rules.values():
            for kind in rule.handles:
                self.by_type.setdefault(kind, []).append(rule)
        self.config = config
        self.load = load
        self.wall_clock = wall_clock
        self.lamps: dict[str, LampState] = {}
        self.contexts: dict[str, _Context] = {}
        self.heap: list[tuple[int, str]] = []
        self.scheduled: dict[str, int] = {}
        # Restored states not decoded yet (lamp id -> stored bytes): decoded when the lamp is
        # heard from or its deadline fires (:meth:`restore`). Decoding every lamp of the
        # partitions a worker takes over costs ~0.1 ms of CPU each, which blinded the worker's
        # other partitions for seconds at 50,000 lamps (docs/runtime.md, "Failover").
        self.pending: dict[str, bytes] = {}
        self.outputs = Outputs()
        self.counts: Counter[str] = Counter()
        self._future_ms = config.ms(config.max_future_skew_s)
        self._horizon_ms = config.ms(config.dedup_horizon_s)

    # -- state ------------------------------------------------------------------------------

    def lamp(self, lamp_id: str, site_id: str) -> LampState:
        state = self.lamps.get(lamp_id)
        if state is None:
            stored = self._stored(lamp_id)
            state = self.decode_state(stored) if stored is not None else None
            if state is None:
                state = LampState(
                    lamp_id,
                    site_id,
                    self.partition,
                    LampClock(),
                    Deduplicator(self._horizon_ms, self.config.dedup_max_entries),
                    rules={name: rule.new_state() for name, rule in self.rules.items()},
                )
            self.lamps[lamp_id] = state
        return state

    def peek(self, lamp_id: str) -> LampState | None:
        """The state of a lamp of this partition, or None when the partition never saw it."""
        state = self.lamps.get(lamp_id)
        if state is None:
            stored = self._stored(lamp_id)
            state = self.decode_state(stored) if stored is not None else None
            if state is not None:
                self.lamps[lamp_id] = state
        return state

    def _stored(self, lamp_id: str) -> bytes | None:
        """A lamp's stored state not decoded yet, handed out once."""
        data = self.pending.pop(lamp_id, None)
        return data if data is not None else self.load(lamp_id)

    def encode_state(self, lamp_id: str) -> bytes:
        """JSON, a NUL byte (JSON never holds one), then the deduplicator's raw array."""
        s = self.lamps[lamp_id]
        header = orjson.dumps(
            {
                "v": STATE_VERSION,
                "lamp_id": s.lamp_id,
                "site_id": s.site_id,
                "partition": s.partition,
                "clock": s.clock.dump(),
                "timers": s.timers,
                "rules": {name: rule.dump() for name, rule in s.rules.items()},
            }
        )
        return header + b"\x00" + s.dedup.dump()

    def decode_state(self, data: bytes) -> LampState | None:
        try:
            head, _, dedup = data.partition(b"\x00")
            raw: dict[str, Any] = orjson.loads(head)
            if raw.get("v") != STATE_VERSION:
                raise ValueError(f"state version {raw.get('v')!r}, expected {STATE_VERSION}")
            rules = {
                name: self.rules[name].state_type.load(value)
                for name, value in raw["rules"].items()
                if name in self.rules
            }
            for name, rule in self.rules.items():  # a rule added since the state was written
                if name not in rules:
                    rules[name] = rule.new_state()
            return LampState(
                raw["lamp_id"],
                raw["site_id"],
                raw["partition"],
                LampClock.load(raw["clock"]),
                Deduplicator.load(dedup, self._horizon_ms, self.config.dedup_max_entries),
                {k: v for k, v in raw["timers"].items() if k.split(":", 1)[0] in self.rules},
                rules,
            )
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            # A state we cannot read must not stop the partition: start the lamp afresh.
            log.error("unreadable lamp state, starting afresh: %s", exc)
            self.counts["state_unreadable"] += 1
            return None

    def restore(self, stored: Iterable[bytes]) -> int:
        """After recovery: schedule the deadlines of the stored lamps of this partition, so
        that silent ones still fire, without decoding them (each is decoded when heard from or
        when its deadline fires). The number of lamps with a deadline."""
        restored = 0
        for data in stored:
            head = stored_head(data)
            if head is None:
                self.counts["state_unreadable"] += 1
                continue
            if head.get("partition") != self.partition:
                continue
            if self.schedule_stored(head):
                self.pending[head["lamp_id"]] = data
                restored += 1
        return restored

    def schedule_stored(self, head: dict[str, Any]) -> bool:
        """Schedule the next deadline of a stored lamp not decoded yet, from its state's JSON
        head (:func:`stored_head`), as :meth:`_schedule` would once decoded: False when it has
        none (or is already in memory, its own deadlines scheduled)."""
        try:
            lamp_id = head["lamp_id"]
            if head.get("v") != STATE_VERSION or lamp_id in self.lamps:
                return False
            dues = [
                at for name, at in head["timers"].items() if name.split(":", 1)[0] in self.rules
            ]
            if not dues:
                return False
            offset = head["clock"][0]
            first = min(dues)
            due = first if offset is None else first - offset  # LampClock.wall_at
        except (AttributeError, IndexError, KeyError, TypeError):
            return False  # decoded (and reported) when the lamp is heard from
        scheduled = self.scheduled.get(lamp_id)
        if scheduled is None or due < scheduled:
            self.scheduled[lamp_id] = due
            heapq.heappush(self.heap, (due, lamp_id))
        return True

    def take_outputs(self) -> Outputs:
        outputs, self.outputs = self.outputs, Outputs()
        return outputs

    # -- records ----------------------------------------------------------------------------

    def process(self, record: KafkaRecord) -> None:
        self.counts["records"] += 1
        topic_header = record.header("mqtt.topic")
        try:
            event = decode_event(
                record.key,
                record.value,
                topic_header.decode(errors="replace") if topic_header else None,
                record.timestamp_ms,
                self._future_ms,
            )
        except DecodeError as exc:
            self.outputs.dead.append((record, exc.reason.value, exc.detail))
            self.counts[f"dead.{exc.reason.value}"] += 1
            return
        self.apply(event, record)

    def apply(self, event: LampEvent, record: KafkaRecord | None = None) -> None:
        lamp = self.lamp(event.lamp_id, event.site_id)
        clock = lamp.clock
        if event.is_last_will:
            # No time of its own: it happened now, on the lamp's clock.
            event_ts = clock.now(event.ingest_ms)
        else:
            # Duplicates first: a duplicate must not teach the clock anything (an old low seq
            # would look like a reboot).
            lamp_now = clock.now(event.ingest_ms) if clock.offset is not None else event.ts
            if lamp.dedup.is_duplicate(event.seq, event.ts, lamp_now):
                self.counts["duplicates"] += 1
                return
            offset_before = clock.offset
            uptime = event.payload.get("uptime_s") if event.type == "heartbeat" else None
            if clock.observe(
                event.seq, event.ts, event.ingest_ms, uptime if type(uptime) is int else None
            ):
                self.counts["reboots"] += 1
                if offset_before is not None and clock.offset is not None:
                    self._rebase(lamp, clock.offset - offset_before)
            event_ts = event.ts
        if event.site_id != lamp.site_id:
            lamp.site_id = event.site_id
            self.contexts.pop(lamp.lamp_id, None)
        ctx = self.contexts.get(lamp.lamp_id)
        if ctx is None:
            ctx = self.contexts[lamp.lamp_id] = _Context(self, lamp)
        ctx.record = record
        timers = lamp.timers
        if timers and min(timers.values()) <= event_ts:
            self._fire(lamp, ctx, event_ts, now=None)
        ctx.now = max(event_ts, clock.now(event.ingest_ms))
        for rule in self.by_type.get(event.type, ()):
            ctx.rule = rule.name
            rule.on_event(lamp.rules[rule.name], event, ctx)
        ctx.record = None
        self.outputs.changed.add(lamp.lamp_id)
        self._schedule(lamp)

    def _rebase(self, lamp: LampState, shift_ms: int) -> None:
        """The lamp's clock was reset at reboot: move its deadlines and the rules' times with
        it, so that deadlines keep their wall time and new records compare with old ones."""
        if not shift_ms:
            return
        lamp.timers = {name: at + shift_ms for name, at in lamp.timers.items()}
        for state in lamp.rules.values():
            state.rebase(shift_ms)

    def acknowledge(self, lamp_id: str, alert_id: str, by: str, at_wall_ms: int) -> bool:
        """Staff acknowledged ``alert_id``: the rule that raised it closes the incident."""
        lamp = self.peek(lamp_id)
        if lamp is None:
            return False
        ctx = self.contexts.get(lamp_id) or _Context(self, lamp)
        ctx.now = lamp.clock.now(at_wall_ms)
        closed = False
        for name, state in lamp.rules.items():
            if state.incident is not None and state.incident.alert_id == alert_id:
                ctx.rule = name
                self.rules[name].on_ack(state, alert_id, by, ctx)
                closed = True
        if closed:
            self.outputs.changed.add(lamp_id)
            self._schedule(lamp)
        return closed

    # -- time -------------------------------------------------------------------------------

    def advance(self, wall_ms: int) -> None:
        """Fire every deadline that the lamps' clocks reached by ``wall_ms``."""
        heap, scheduled, outputs = self.heap, self.scheduled, self.outputs
        while heap and heap[0][0] <= wall_ms:
            due, lamp_id = heapq.heappop(heap)
            if scheduled.get(lamp_id) != due:
                continue  # superseded by an earlier entry
            del scheduled[lamp_id]
            lamp = self.lamps.get(lamp_id) or self.peek(lamp_id)  # restored, not decoded yet
            if lamp is None:
                continue  # its stored state was unreadable (counted): it starts afresh
            deadline = lamp.next_deadline()
            if deadline is None:
                continue
            true_due = lamp.clock.wall_at(deadline)
            if true_due > wall_ms:  # the deadline moved later since this entry was pushed
                self._schedule(lamp)
                continue
            ctx = self.contexts.get(lamp_id)
            if ctx is None:
                ctx = self.contexts[lamp_id] = _Context(self, lamp)
            now = lamp.clock.now(wall_ms)
            before = len(outputs.alerts)
            self._fire(lamp, ctx, now, now=now)
            if len(outputs.alerts) > before:
                outputs.deadlines.append(true_due)
            outputs.changed.add(lamp_id)
            self._schedule(lamp)

    def _fire(self, lamp: LampState, ctx: _Context, until: int, now: int | None) -> None:
        """Fire the lamp's timers due by ``until`` in deadline order; each one sees ``now``,
        or its own deadline when ``now`` is None (firing in event order before a record)."""
        timers = lamp.timers
        for _ in range(MAX_TIMER_FIRINGS):
            if not timers:
                return
            name = min(timers, key=timers.__getitem__)
            deadline = timers[name]
            if deadline > until:
                return
            del timers[name]
            rule_name, timer = name.split(":", 1)
            ctx.rule = rule_name
            ctx.now = deadline if now is None else now
            self.rules[rule_name].on_timer(lamp.rules[rule_name], timer, ctx)
            self.counts["timers_fired"] += 1
        log.error("lamp %s: a rule keeps re-arming a due timer", lamp.lamp_id)

    def _schedule(self, lamp: LampState) -> None:
        # Lazily: an entry is pushed only when the lamp's next deadline moves earlier. Most
        # records move it later (the offline rule's silence timer), and pushing for those
        # would grow the heap by one entry per record; :meth:`advance` re-checks on pop.
        timers = lamp.timers
        if not timers:
            return  # a leftover entry is dropped when it pops
        due = lamp.clock.wall_at(min(timers.values()))
        lamp_id = lamp.lamp_id
        scheduled = self.scheduled.get(lamp_id)
        if scheduled is None or due < scheduled:
            self.scheduled[lamp_id] = due
            heapq.heappush(self.heap, (due, lamp_id))

    def next_due(self) -> int | None:
        """The earliest wall time at which :meth:`advance` has something to fire."""
        while self.heap and self.scheduled.get(self.heap[0][1]) != self.heap[0][0]:
            heapq.heappop(self.heap)
        return self.heap[0][0] if self.heap else None


# Where the rules' part of a stored state's JSON head begins (encode_state writes it last). The
# sequence cannot occur inside a JSON string (a quote there is escaped), so its first
# occurrence is the top-level key.
_RULES_KEY = b',"rules":{'


def stored_head(data: bytes) -> dict[str, Any] | None:
    """The JSON head of a stored lamp state (:meth:`PartitionEngine.encode_state`) without its
    rules: its version, lamp, partition, clock and timers, for scheduling the lamp without
    decoding it (the rules are most of the head: parsing without them is 4x cheaper, 1.0 vs
    4.1 µs per lamp); None if unreadable."""
    end = data.find(b"\x00")
    if end < 0:
        end = len(data)
    cut = data.find(_RULES_KEY, 0, end)
    try:
        head = orjson.loads(data[:cut] + b"}" if cut >= 0 else data[:end])
    except orjson.JSONDecodeError:
        return None
    return head if isinstance(head, dict) else None


def _taker(stored: dict[str, bytes]) -> Callable[[str], bytes | None]:
    """A lamp's stored state, handed out once (the engine keeps it in memory after)."""

    def take(lamp_id: str) -> bytes | None:
        return stored.pop(lamp_id, None)

    return take


def restore_engines(
    partitions: Sequence[int],
    stored: Iterable[bytes],
    new_engine: Callable[[int, Callable[[str], bytes | None]], PartitionEngine],
    counts: Counter[str],
    component: str,
) -> dict[int, PartitionEngine]:
    """The engines of newly assigned partitions, from every state of an agent's recovered
    table (``stored``): one pass over it (a rebalance reassigns every partition, and a worker
    may hold 100,000 lamps), reading only each state's JSON head. Every lamp stays encoded
    until it is heard from or its deadline fires (:meth:`PartitionEngine.schedule_stored`
    schedules the deadlines), so that handing partitions over costs next to nothing.
    ``new_engine(partition, load)`` makes an engine whose ``load`` hands out the stored state
    of a lamp of that partition."""
    wanted: dict[int, dict[str, bytes]] = {p: {} for p in partitions}
    engines = {p: new_engine(p, _taker(wanted[p])) for p in partitions}
    with_deadlines: Counter[int] = Counter()
    for data in stored:
        head = stored_head(data)
        try:
            if head is None:
                raise TypeError("not a JSON object")
            partition = head["partition"]
            lamps = wanted.get(partition)
            if lamps is None:
                continue
            lamps[head["lamp_id"]] = data
        except (KeyError, TypeError):
            counts["state_unreadable"] += 1
            continue
        if engines[partition].schedule_stored(head):
            with_deadlines[partition] += 1
    for partition in partitions:
        log.info(
            "partition %d: %d lamps known, %d with deadlines",
            partition,
            len(wanted[partition]),
            with_deadlines[partition],
            extra={"partition": partition, "component": component},
        )
    return engines
