"""Rule 9: no motion for 3 hours of daytime (08:00 to 20:00, the site's local time).

Only daytime counts: the alert is due 3 hours after the later of the last motion and the
start of the day, if that is still daytime, otherwise 3 hours into the next day. The clock
starts with the lamp's first message, so a lamp that never saw motion is covered too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from pydantic import Field

from agents.events import LampEvent
from agents.rules.base import Rule, RuleContext, RuleSettings, RuleState
from pipeline.settings import DetectionSettings

DUE = "due"


class InactivitySettings(RuleSettings):
    after_s: float = Field(10_800, gt=0, description="Daytime without motion that is an alert.")
    day_start: str = Field(
        "08:00", pattern=r"^\d\d:\d\d$", description="Daytime start, site local time."
    )
    day_end: str = Field(
        "20:00", pattern=r"^\d\d:\d\d$", description="Daytime end, site local time."
    )


def site_zone(config: DetectionSettings, site_id: str) -> ZoneInfo:
    zones = config.site_timezones
    if site_id in zones:
        return ZoneInfo(zones[site_id])
    prefixes = [p for p in zones if p.endswith("-") and site_id.startswith(p)]
    if prefixes:
        return ZoneInfo(zones[max(prefixes, key=len)])
    return ZoneInfo(config.default_timezone)


def inactivity_due(last_motion_ms: int, zone: ZoneInfo, config: InactivitySettings) -> int:
    """When an inactivity alert is due if no motion follows ``last_motion_ms``."""
    day_start = time.fromisoformat(config.day_start)
    day_end = time.fromisoformat(config.day_end)
    span = timedelta(seconds=config.after_s)
    local = datetime.fromtimestamp(last_motion_ms / 1000, zone)
    day = local.date()
    for _ in range(3):
        start = datetime.combine(day, day_start, zone)
        end = datetime.combine(day, day_end, zone)
        begin = max(local, start)
        if begin + span <= end:
            return int((begin + span).timestamp() * 1000)
        day += timedelta(days=1)
    raise ValueError("rules.inactivity.after_s does not fit in the daytime")


@dataclass
class InactivityState(RuleState):
    TIME_FIELDS = ("closed_at", "last_motion_at")

    last_motion_at: int = -1
    # Cache: motion between these two times (the last computation's day) is due 3 h later.
    plain_from: int = -1
    plain_until: int = -1


@dataclass
class InactivityRule(Rule[InactivityState]):
    name = "inactivity"
    handles = frozenset(
        {"motion", "posture", "fall_suspected", "button", "temperature", "heartbeat", "status"}
    )
    state_type = InactivityState
    settings_type = InactivitySettings
    settings: InactivitySettings = field(default_factory=InactivitySettings, repr=False)

    def on_event(self, state: InactivityState, event: LampEvent, ctx: RuleContext) -> None:
        if event.is_last_will:
            return
        if event.type != "motion" and state.last_motion_at >= 0:
            return
        if event.ts <= state.last_motion_at:
            return
        state.last_motion_at = event.ts
        if state.incident is not None and event.type == "motion":
            ctx.resolve(state.incident, {"reason": "motion", "zone": event.str_field("zone")})
            state.incident = None
            state.closed_at = event.ts
        ctx.set_timer(DUE, self._due(state, event.ts, ctx.site_id))

    def _due(self, state: InactivityState, ts: int, site_id: str) -> int:
        settings = self.settings
        span = round(settings.after_s * 1000)
        if state.plain_from <= ts <= state.plain_until:
            return ts + span  # motion is frequent: skip the calendar most of the time
        zone = site_zone(self.config, site_id)
        due = inactivity_due(ts, zone, settings)
        local = datetime.fromtimestamp(ts / 1000, zone).date()
        start = datetime.combine(local, time.fromisoformat(settings.day_start), zone)
        end = datetime.combine(local, time.fromisoformat(settings.day_end), zone)
        state.plain_from = int(start.timestamp() * 1000)
        state.plain_until = int(end.timestamp() * 1000) - span
        return due

    def on_timer(self, state: InactivityState, timer: str, ctx: RuleContext) -> None:
        if timer == DUE and state.incident is None:
            details = {"no_motion_since": str(state.last_motion_at)}
            state.incident = ctx.raise_alert(
                self.name, "inactivity", "warning", state.last_motion_at, details
            )
