"""The agent ``summarise_nights``: the night summary care teams read in the morning, per lamp
and local night (22:00 to 07:00 in the site's time zone): how the resident slept. Not an alert.

Built only on the agent API (:mod:`agents.api`) and the rules engine (:mod:`agents.detection`,
:mod:`agents.rules.base`), as any team's agent would be: it reads ``lamp.messages.v1``, keeps
its own table (``night_state``: each lamp's clock, deduplication and night so far), emits one
``night_summary.v1`` record per lamp and night on ``activity.nightly.v1`` (key ``lamp_id``) and
reads its settings from ``VEILLEUSE_AGENTS__SUMMARISE_NIGHTS__<FIELD>`` (and the shared
``VEILLEUSE_DETECTION__*``: the grace, the sites' time zones). A worker runs it next to
``detect_incidents`` on the same topic: one consumer group, one transaction per batch.

The fold (:class:`NightSummaryRule`, pure) is a rule of the engine, which gives it the lamp's
clock, deduplication, reboots and timers as detection has them. The figures depend on the order
of events (how long a posture lasted, when the resident got back into bed), so the fold does
not count as records arrive, as the hourly figures do: it buffers each lamp's observations and
folds them **in event-time order** once they are older than the lamp's newest event by more than
the grace (``window_grace_s``, 2 min: above the protocol's 30 s of reordering). The fold keeps
the resident's status (in bed, out of bed, in the bathroom, out of the room, unknown) and the
lamp's coverage, and accounts every millisecond of the night to them. A night closes, and its
one record is emitted, when the lamp's clock passes its end plus the grace (a timer, so a
silent lamp's night closes too); records of a closed night, or older than the fold, are counted
late (``summarise_nights.late`` in the worker's engine counters; ``detect_incidents`` owns the
lamp side outputs, ``lamp.late.v1`` and ``lamp.dlq.v1``, so a record is dead-lettered once).

Coverage follows rule 8: the lamp covers the time from each of its messages until it has been
silent for ``silence_s`` (5 min), or until an offline status (or the broker's last will). Time
not covered counts in no figure; after a gap the resident's status is unknown until the next
posture. A night with no covered minute emits nothing, and a lamp silent since then sets no
further timer.

Nights are calendar times of the site's zone (``DetectionSettings.site_timezones``, else
``default_timezone``), cut on the lamp's clock like the hourly windows: a lamp's night is 9 h,
or 10 h / 8 h on the nights the clocks go back / forward.
"""

from __future__ import annotations

import logging
from bisect import insort
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import Field, model_validator

from agents.api import AgentSettings, AgentSpec, Output, StateTable, WallClock
from agents.detection import PartitionEngine, restore_engines
from agents.events import LampEvent
from agents.rules.base import Rule, RuleContext, RuleSettings, RuleState
from agents.rules.inactivity import site_zone
from agents.runtime.streaming import BatchResult, Produce
from pipeline.records import KafkaRecord
from pipeline.settings import Settings
from pipeline.topics import ACTIVITY_NIGHTLY, LAMP_MESSAGES, topic_name
from schemas import encode, schema

log = logging.getLogger(__name__)

NIGHT_SUMMARY = "night_summary"  # the kind given to ``ctx.emit``
CLOSE = "close"
MINUTE_MS = 60_000
HOUR_MS = 3_600_000

# What an observation says. The first five are the resident's status from a posture; in the
# buffer an observation is one integer, ``ts * 8 + code``: sorted by time, then by code, so
# that a posture is folded before a motion of the same millisecond.
UNKNOWN, IN_BED, OUT_OF_BED, BATHROOM, ABSENT = range(5)
BED_MOTION = 5  # motion in the bed zone, at or above ``restless_min_level``
HEARD = 6  # any other message: the lamp is online
OFFLINE = 7  # status online false, or the broker's last will
CODES = 8
OUT = frozenset({OUT_OF_BED, BATHROOM, ABSENT})

# Positions in a night's figures (a list: compact in the changelog).
COVERED, IN_BED_MS, OUT_MS, MESSAGES, BED_EXITS, BATHROOM_VISITS, ROOM_EXITS = range(7)
RESTLESS, LONGEST_STILL = range(7, 9)


def new_figures() -> list[int]:
    return [0] * 9


class NightSummarySettings(AgentSettings, RuleSettings):
    """``VEILLEUSE_AGENTS__SUMMARISE_NIGHTS__<FIELD>``: the agent's settings, which are its
    fold's (a rule's settings, for the engine)."""

    start: str = Field(
        "22:00", pattern=r"^\d\d:\d\d$", description="Start of the night, site local time."
    )
    end: str = Field(
        "07:00",
        pattern=r"^\d\d:\d\d$",
        description="End of the night, site local time (the next day if not after start).",
    )
    silence_s: float = Field(
        300,
        gt=0,
        description="Silence after which the lamp no longer covers the night (rule 8's offline).",
    )
    restless_min_level: int = Field(
        0,
        ge=0,
        le=100,
        description="Lowest motion level (0..100) of a motion in bed that counts as restless.",
    )

    @model_validator(mode="after")
    def _a_night_has_a_length(self) -> NightSummarySettings:
        if self.start == self.end:
            raise ValueError("agents.summarise_nights: start and end are the same time")
        return self


def night_around(ts: int, zone: ZoneInfo, start: time, end: time) -> tuple[int, int, date]:
    """The night holding ``ts``, or else the next one: its start, its end (epoch ms) and the
    local date of its evening. Calendar arithmetic in ``zone``, so DST nights are 1 h longer
    or shorter."""
    spans_midnight = end <= start
    day = datetime.fromtimestamp(ts / 1000, zone).date() - timedelta(days=1)
    while True:
        night_end = datetime.combine(day + timedelta(days=int(spans_midnight)), end, zone)
        end_ms = int(night_end.timestamp() * 1000)
        if ts < end_ms:
            night_start = datetime.combine(day, start, zone)
            return int(night_start.timestamp() * 1000), end_ms, day
        day += timedelta(days=1)


def resident_status(posture: str, zone: str) -> int:
    """Where a posture puts the resident (the posture describes the resident, not staff)."""
    if posture == "absent":
        return ABSENT  # seen nowhere in the room or its bathroom: out of the room
    if zone == "bathroom":
        return BATHROOM
    if zone == "bed" and posture in {"lying", "sitting"}:
        return IN_BED  # as the hourly figures' minutes in bed
    return OUT_OF_BED


def minutes(ms: int) -> int:
    return (ms + MINUTE_MS // 2) // MINUTE_MS


@dataclass
class NightState(RuleState):
    # Times of the lamp's clock, moved at a reboot. Not the night's bounds (calendar times) nor
    # ``closed_at`` (the end of the last closed night, a bound).
    TIME_FIELDS = (
        "cursor",
        "newest",
        "covered_until",
        "still_since",
        "latest_return",
        "accounted_until",
    )

    buffer: list[int] = field(default_factory=list)  # ts * 8 + code, sorted, not folded yet
    newest: int = -1  # the newest event time seen
    cursor: int = -1  # the fold's position: time is accounted up to here
    status: int = UNKNOWN
    covered_until: int = -1  # the lamp covers the time up to here
    still_since: int = -1  # in bed without bed motion since (-1: not)
    night_start: int = -1
    night_end: int = -1
    night_of: str = ""  # ISO date
    time_zone: str = ""
    figures: list[int] = field(default_factory=new_figures)
    latest_return: int = -1
    # After a clock set back at a reboot, the lamp's clock reads again times already accounted:
    # durations are not accounted again before this time (counts still are).
    accounted_until: int = -1

    def rebase(self, shift_ms: int) -> None:
        before = self.cursor
        super().rebase(shift_ms)
        self.buffer = [entry + shift_ms * CODES for entry in self.buffer]
        if shift_ms < 0:
            self.accounted_until = max(self.accounted_until, before)


@dataclass
class NightSummaryRule(Rule[NightState]):
    name = "night_summary"
    handles = frozenset(
        {"motion", "posture", "fall_suspected", "button", "temperature", "heartbeat", "status"}
    )
    state_type = NightState
    settings_type = NightSummarySettings
    settings: NightSummarySettings = field(default_factory=NightSummarySettings, repr=False)
    emits = {NIGHT_SUMMARY: Output(ACTIVITY_NIGHTLY, "night_summary.v1")}  # noqa: RUF012

    @cached_property
    def grace_ms(self) -> int:
        return self.config.ms(self.config.window_grace_s)

    @cached_property
    def silence_ms(self) -> int:
        return round(self.settings.silence_s * 1000)

    @cached_property
    def bounds(self) -> tuple[time, time]:
        return time.fromisoformat(self.settings.start), time.fromisoformat(self.settings.end)

    # -- events ----------------------------------------------------------------------------

    def on_event(self, state: NightState, event: LampEvent, ctx: RuleContext) -> None:
        if event.is_last_will:
            ts, code = ctx.now, OFFLINE  # it has no time of its own: it happened now
        else:
            ts, code = event.ts, self.code(event)
        if state.cursor < 0:
            # The first message: an earlier one may still come within the grace.
            state.cursor = ts - self.grace_ms
            self._open_night(state, state.cursor, ctx)
        if ts < state.cursor:
            self._late(state, ts, ctx)
            return
        insort(state.buffer, ts * CODES + code)
        state.newest = max(state.newest, ts)
        self._fold(state, state.newest - self.grace_ms, ctx)
        self._arm(state, ctx)

    def code(self, event: LampEvent) -> int:
        payload, kind = event.payload, event.type
        if kind == "posture":
            return resident_status(payload["posture"], payload["zone"])
        if kind == "motion":
            if (
                payload["zone"] == "bed"
                and event.integer("level") >= self.settings.restless_min_level
            ):
                return BED_MOTION
            return HEARD
        if kind == "status" and not payload["online"]:
            return OFFLINE
        return HEARD

    def _late(self, state: NightState, ts: int, ctx: RuleContext) -> None:
        """Behind the fold: order-dependent figures cannot take it. Only a record that falls in
        a night is reported late; a daytime straggler changes nothing that is emitted."""
        start, end, _ = night_around(ts, self._zone(ctx), *self.bounds)
        if start <= ts < end:
            ctx.late("night_closed" if ts < state.closed_at else "out_of_order")

    # -- time ------------------------------------------------------------------------------

    def on_timer(self, state: NightState, timer: str, ctx: RuleContext) -> None:
        if timer != CLOSE or state.night_end < 0:
            return
        end = state.night_end
        if ctx.now >= end + self.grace_ms:  # (a reboot may have moved the timer earlier)
            self._fold(state, end, ctx)
            self._advance(state, end, ctx)  # closes the night, even if nothing was heard
        self._arm(state, ctx)

    def _arm(self, state: NightState, ctx: RuleContext) -> None:
        if state.buffer or state.covered_until > state.cursor:
            ctx.set_timer(CLOSE, state.night_end + self.grace_ms)
        else:
            ctx.cancel_timer(CLOSE)  # silent since before this night: nothing to close

    # -- the fold, in event-time order -----------------------------------------------------

    def _fold(self, state: NightState, until: int, ctx: RuleContext) -> None:
        """Fold the buffered observations older than ``until``, oldest first."""
        buffer = state.buffer
        limit = until * CODES
        done = 0
        for entry in buffer:
            if entry >= limit:
                break
            self._observe(state, entry // CODES, entry % CODES, ctx)
            done += 1
        del buffer[:done]

    def _observe(self, state: NightState, ts: int, code: int, ctx: RuleContext) -> None:
        self._advance(state, ts, ctx)
        if code == OFFLINE:
            if state.covered_until > ts:
                self._lose_coverage(state, ts)
            state.covered_until = ts
            return
        state.covered_until = ts + self.silence_ms
        in_night = state.night_start <= ts < state.night_end
        figures = state.figures
        if in_night:
            figures[MESSAGES] += 1
        if code < BED_MOTION:
            self._status(state, ts, code, in_night)
        elif code == BED_MOTION and state.status == IN_BED:
            if in_night:
                figures[RESTLESS] += 1
            self._end_still(state, ts)
            state.still_since = ts

    def _advance(self, state: NightState, to: int, ctx: RuleContext) -> None:
        """Account the time from the cursor to ``to`` to the status, the coverage and the
        nights; lose coverage and close nights on the way."""
        while True:
            cursor = state.cursor
            if cursor >= state.night_end:
                self._close_night(state, to, ctx)
                continue
            if cursor >= to:
                return
            in_night = cursor >= state.night_start
            step_to = min(to, state.night_end if in_night else state.night_start)
            covered = cursor < state.covered_until
            if covered:
                step_to = min(step_to, state.covered_until)
                span = step_to - max(cursor, state.accounted_until)
                if in_night and span > 0:
                    figures = state.figures
                    figures[COVERED] += span
                    if state.status == IN_BED:
                        figures[IN_BED_MS] += span
                    elif state.status in OUT:
                        figures[OUT_MS] += span
            state.cursor = step_to
            if covered and step_to == state.covered_until:
                self._lose_coverage(state, step_to)

    def _lose_coverage(self, state: NightState, at: int) -> None:
        self._end_still(state, at)
        state.status = UNKNOWN  # until the next posture: the resident may have moved meanwhile

    def _status(self, state: NightState, ts: int, status: int, in_night: bool) -> None:
        old = state.status
        if status == old:
            return
        if in_night:
            figures = state.figures
            if old == IN_BED:
                figures[BED_EXITS] += 1
            if status == BATHROOM and old != UNKNOWN:
                figures[BATHROOM_VISITS] += 1
            if status == ABSENT and old != UNKNOWN:
                figures[ROOM_EXITS] += 1
            if status == IN_BED and old in OUT:
                state.latest_return = ts
        if old == IN_BED:
            self._end_still(state, ts)
        if status == IN_BED:
            state.still_since = ts
        state.status = status

    def _end_still(self, state: NightState, at: int) -> None:
        self._still_candidate(state, at)
        state.still_since = -1

    @staticmethod
    def _still_candidate(state: NightState, at: int) -> None:
        """The still stretch running up to ``at``, clipped to the night, may be the longest."""
        if state.still_since < 0:
            return
        span = min(at, state.night_end) - max(state.still_since, state.night_start)
        figures = state.figures
        figures[LONGEST_STILL] = max(figures[LONGEST_STILL], span)

    # -- nights ----------------------------------------------------------------------------

    @staticmethod
    def _zone(ctx: RuleContext) -> ZoneInfo:
        return site_zone(ctx.config, ctx.site_id)

    def _open_night(self, state: NightState, at: int, ctx: RuleContext) -> None:
        zone = self._zone(ctx)
        state.night_start, state.night_end, evening = night_around(at, zone, *self.bounds)
        state.night_of = evening.isoformat()
        state.time_zone = zone.key
        state.figures = new_figures()
        state.latest_return = -1

    def _close_night(self, state: NightState, to: int, ctx: RuleContext) -> None:
        """The fold passed the night's end: emit it (if the lamp covered any of it), then open
        the next night, or the one holding ``to`` when the lamp is silent until then."""
        self._still_candidate(state, state.night_end)  # the stretch may go on past 07:00
        if state.figures[COVERED] > 0:
            ctx.emit(NIGHT_SUMMARY, self.summary(state, ctx.lamp_id, ctx.site_id))
        state.closed_at = state.night_end
        silent = state.covered_until <= state.cursor
        self._open_night(state, max(state.night_end, to) if silent else state.night_end, ctx)

    def summary(self, state: NightState, lamp_id: str, site_id: str) -> dict[str, Any]:
        """The record of the state's night as it stands (``night_summary.v1`` less
        ``emitted_at``, which the agent adds)."""
        f = state.figures
        in_bed_ms = f[IN_BED_MS]
        returned = state.latest_return
        local_return = None
        if returned >= 0:
            when = datetime.fromtimestamp(returned / 1000, ZoneInfo(state.time_zone))
            local_return = when.strftime("%H:%M")
        return {
            "lamp_id": lamp_id,
            "site_id": site_id,
            "night_of": date.fromisoformat(state.night_of),
            "time_zone": state.time_zone,
            "night_start": state.night_start,
            "night_end": state.night_end,
            "night_minutes": minutes(state.night_end - state.night_start),
            "covered_minutes": minutes(f[COVERED]),
            "messages": f[MESSAGES],
            "minutes_in_bed": minutes(in_bed_ms),
            "minutes_out_of_bed": minutes(f[OUT_MS]),
            "bed_exits": f[BED_EXITS],
            "bathroom_visits": f[BATHROOM_VISITS],
            "room_exits": f[ROOM_EXITS],
            "restless_motion_events": f[RESTLESS],
            "restlessness_per_hour": (
                round(f[RESTLESS] * HOUR_MS / in_bed_ms, 1) if in_bed_ms >= MINUTE_MS else None
            ),
            "longest_still_minutes": minutes(f[LONGEST_STILL]),
            "latest_return_to_bed": returned if returned >= 0 else None,
            "latest_return_to_bed_local": local_return,
        }


# -- the agent ---------------------------------------------------------------------------------


class SummariseNights:
    """The :class:`~agents.runtime.streaming.BatchAgent` running the fold over a partition's
    lamps: one engine per assigned partition, the summaries encoded as ``night_summary.v1``."""

    name = "summarise_nights"
    table_name = "night_state"

    def __init__(
        self, settings: Settings, own: NightSummarySettings, wall_clock: WallClock
    ) -> None:
        self.config = settings.detection
        self.rules = (NightSummaryRule(self.config, own),)
        self.topics: tuple[str, ...] = (topic_name(settings, LAMP_MESSAGES),)
        self.output_topic = topic_name(settings, ACTIVITY_NIGHTLY)
        self.schema = schema("night_summary.v1")
        self.wall_clock = wall_clock
        self.engines: dict[int, PartitionEngine] = {}
        self.counts: Counter[str] = Counter()
        self._result = BatchResult()

    def assign(self, partitions: Sequence[int], stored: Iterable[bytes]) -> None:
        def new_engine(partition: int, load: Callable[[str], bytes | None]) -> PartitionEngine:
            return PartitionEngine(partition, self.rules, self.config, load, self.wall_clock)

        self.engines.update(restore_engines(partitions, stored, new_engine, self.counts, self.name))

    def revoke(self, partition: int) -> None:
        engine = self.engines.pop(partition, None)
        if engine is not None:
            self.counts.update(engine.counts)

    def process(self, partition: int, records: list[KafkaRecord]) -> None:
        engine = self.engines[partition]
        for record in records:
            engine.process(record)
        self._collect(engine)

    def advance(self, partition: int, wall_ms: int) -> None:
        engine = self.engines[partition]
        due = engine.next_due()
        if due is None or due > wall_ms:
            return
        engine.advance(wall_ms)
        self._collect(engine)

    def _collect(self, engine: PartitionEngine) -> None:
        outputs = engine.take_outputs()
        if not outputs:
            return
        result = self._result
        now_ms = self.wall_clock()
        for _, lamp_id, figures in outputs.records:
            result.produce.append(
                Produce(
                    self.output_topic,
                    lamp_id.encode(),
                    encode(self.schema, {**figures, "emitted_at": now_ms}),
                    log=(
                        f"night summary of {figures['night_of']}",
                        {"lamp_id": lamp_id, "site_id": figures["site_id"], "component": self.name},
                    ),
                )
            )
        # Late and undecodable records are only counted (engine.counts): detect_incidents
        # already writes them to lamp.late.v1 / lamp.dlq.v1.
        if outputs.changed:
            changelog = result.changelog.setdefault(engine.partition, {})
            for lamp_id in outputs.changed:
                changelog[lamp_id.encode()] = engine.encode_state(lamp_id)

    def take_result(self) -> BatchResult:
        result, self._result = self._result, BatchResult()
        return result


def _build(settings: Settings, own: NightSummarySettings, wall_clock: WallClock) -> SummariseNights:
    return SummariseNights(settings, own, wall_clock)


AGENT = AgentSpec(
    name=SummariseNights.name,
    help="The care team's night summary: per lamp and local night (22:00-07:00 site time), "
    "minutes in and out of bed, bathroom visits, room exits, restlessness, the longest still "
    "period and the latest return to bed, emitted once the night is over.",
    reads=(LAMP_MESSAGES,),
    table=StateTable(
        SummariseNights.table_name,
        "Every lamp's night so far (clock, duplicates, the fold's buffer and figures).",
    ),
    build=_build,
    emits=(Output(ACTIVITY_NIGHTLY, "night_summary.v1"),),
    settings_type=NightSummarySettings,
    reads_settings=("detection",),
)
