"""What support reads: per lamp and hour of event time, the activity figures of the protocol.

Not an alerting rule but computed the same way, per lamp, on the lamp's clock: each hour is a
tumbling window that emits its figures once, on ``activity.hourly.v1``, when the lamp's clock
passes its end plus the grace (``window_grace_s``). Records later than that go to the late
output and are counted. Minutes are counted as bit masks of the hour's 60 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import Field

from agents.api import Output
from agents.events import LampEvent
from agents.eventtime import WindowSpec
from agents.rules.base import Rule, RuleContext, RuleSettings, RuleState
from pipeline.topics import ACTIVITY_HOURLY

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
CLOSE = "close"

# Positions in a window's list (kept as a list: compact in the changelog).
START, MESSAGES, MOTION, ACTIVE, BED, ABSENT, BATHROOM, FALLS, HELP = range(9)
T_COUNT, T_SUM, T_MIN, T_MAX, LAST_SEEN, FIRMWARE = range(9, 15)


def new_window(start: int) -> list[Any]:
    return [start, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, None, None, -1, None]


class ActivityHourlySettings(RuleSettings):
    # Its own copy, not the fall rule's: a rule sees only its own section. Keep them equal.
    fall_min_confidence: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Lowest fall_suspected confidence counted in an hour's falls (as "
        "VEILLEUSE_RULES__FALL__MIN_CONFIDENCE).",
    )


@dataclass
class ActivityState(RuleState):
    TIME_FIELDS = ("closed_at",)

    windows: list[list[Any]] = field(default_factory=list)  # open hours, oldest first
    last_zone: str = ""

    def rebase(self, shift_ms: int) -> None:
        super().rebase(shift_ms)  # open hours keep their start: they are calendar hours


@dataclass
class ActivityHourlyRule(Rule[ActivityState]):
    name = "activity_hourly"
    handles = frozenset(
        {"motion", "posture", "fall_suspected", "button", "temperature", "heartbeat", "status"}
    )
    state_type = ActivityState
    settings_type = ActivityHourlySettings
    settings: ActivityHourlySettings = field(default_factory=ActivityHourlySettings, repr=False)
    emits = {"activity_hourly": Output(ACTIVITY_HOURLY, "activity_hourly.v1")}  # noqa: RUF012

    @cached_property
    def spec(self) -> WindowSpec:
        return WindowSpec(HOUR_MS, HOUR_MS, self.config.ms(self.config.window_grace_s))

    def on_event(self, state: ActivityState, event: LampEvent, ctx: RuleContext) -> None:
        if event.is_last_will:
            return
        ts = event.ts
        start = ts - ts % HOUR_MS
        if self.spec.is_closed(start, ctx.now):
            ctx.late("hour_closed")
            return
        window = self._window(state, start, ctx)
        window[MESSAGES] += 1
        window[LAST_SEEN] = max(window[LAST_SEEN], ts)
        minute = 1 << ((ts - start) // MINUTE_MS)
        payload, kind = event.payload, event.type
        if kind == "motion":
            window[MOTION] += 1
            window[ACTIVE] |= minute
            self._zone(state, window, payload["zone"])
        elif kind == "posture":
            posture, zone = payload["posture"], payload["zone"]
            if zone == "bed" and posture in ("lying", "sitting"):
                window[BED] |= minute
            elif posture == "absent":
                window[ABSENT] |= minute
            self._zone(state, window, zone)
        elif kind == "fall_suspected":
            if event.number("confidence") >= self.settings.fall_min_confidence:
                window[FALLS] += 1
        elif kind == "button":
            if payload["action"] in ("press", "long_press"):
                window[HELP] += 1
        elif kind == "temperature":
            celsius = event.number("celsius")
            window[T_COUNT] += 1
            window[T_SUM] += celsius
            window[T_MIN] = celsius if window[T_MIN] is None else min(window[T_MIN], celsius)
            window[T_MAX] = celsius if window[T_MAX] is None else max(window[T_MAX], celsius)
        elif kind == "heartbeat" and ts >= window[LAST_SEEN]:
            window[FIRMWARE] = payload["fw"]

    def _window(self, state: ActivityState, start: int, ctx: RuleContext) -> list[Any]:
        for window in state.windows:
            if window[START] == start:
                return window
        window = new_window(start)
        state.windows.append(window)
        state.windows.sort(key=lambda w: w[START])
        ctx.set_timer(CLOSE, self.spec.closes_at(state.windows[0][START]))
        return window

    @staticmethod
    def _zone(state: ActivityState, window: list[Any], zone: str) -> None:
        if zone == "bathroom" and state.last_zone != "bathroom":
            window[BATHROOM] += 1
        state.last_zone = zone

    def on_timer(self, state: ActivityState, timer: str, ctx: RuleContext) -> None:
        spec = self.spec
        while state.windows and spec.is_closed(state.windows[0][START], ctx.now):
            window = state.windows.pop(0)
            ctx.emit("activity_hourly", self.figures(window, ctx.lamp_id, ctx.site_id))
        if state.windows:
            ctx.set_timer(CLOSE, spec.closes_at(state.windows[0][START]))

    def live(self, state: ActivityState, lamp_id: str, site_id: str) -> list[dict[str, Any]]:
        return self.open_hours(state, lamp_id, site_id)

    def open_hours(self, state: ActivityState, lamp_id: str, site_id: str) -> list[dict[str, Any]]:
        """The figures so far of the hours not yet emitted (what the query API shows live)."""
        return [self.figures(window, lamp_id, site_id) for window in state.windows]

    @staticmethod
    def figures(window: list[Any], lamp_id: str, site_id: str) -> dict[str, Any]:
        count = window[T_COUNT]
        return {
            "lamp_id": lamp_id,
            "site_id": site_id,
            "hour_start": window[START],
            "messages": window[MESSAGES],
            "motion_events": window[MOTION],
            "active_minutes": window[ACTIVE].bit_count(),
            "minutes_in_bed": window[BED].bit_count(),
            "minutes_absent": window[ABSENT].bit_count(),
            "bathroom_visits": window[BATHROOM],
            "falls": window[FALLS],
            "help_requests": window[HELP],
            "temperature_readings": count,
            "temperature_min": window[T_MIN],
            "temperature_mean": round(window[T_SUM] / count, 3) if count else None,
            "temperature_max": window[T_MAX],
            "last_seen_at": window[LAST_SEEN],
            "firmware": window[FIRMWARE],
        }
