"""Rule 3: a help button pressed is a critical alert at once; a cancel within 30 s resolves it."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from agents.events import LampEvent
from agents.rules.base import Rule, RuleContext, RuleSettings, RuleState


class HelpButtonSettings(RuleSettings):
    cancel_s: float = Field(30, gt=0, description="A cancel within this time resolves a request.")


@dataclass
class HelpButtonState(RuleState):
    TIME_FIELDS = ("closed_at", "last_cancel_at")

    last_cancel_at: int = -1


@dataclass
class HelpButtonRule(Rule[HelpButtonState]):
    name = "help_button"
    handles = frozenset({"button"})
    state_type = HelpButtonState
    settings_type = HelpButtonSettings
    settings: HelpButtonSettings = field(default_factory=HelpButtonSettings, repr=False)

    def on_event(self, state: HelpButtonState, event: LampEvent, ctx: RuleContext) -> None:
        action, ts = event.str_field("action"), event.ts
        window = round(self.settings.cancel_s * 1000)
        if action == "cancel":
            state.last_cancel_at = max(state.last_cancel_at, ts)
            incident = state.incident
            if incident is not None and incident.started_at <= ts <= incident.started_at + window:
                ctx.resolve(
                    incident,
                    {"reason": "cancelled", "accessory_id": event.str_field("accessory_id")},
                )
                state.incident = None
                state.closed_at = ts
            return
        if state.incident is not None or ts <= state.closed_at:
            return  # one alert per incident; duplicates and stragglers of a closed one
        details = {"action": action, "accessory_id": event.str_field("accessory_id")}
        incident = ctx.raise_alert(self.name, "help_requested", "critical", ts, details)
        if ts <= state.last_cancel_at <= ts + window:
            # Reordered: its cancel arrived first. The request still happened: record both.
            ctx.resolve(incident, {"reason": "cancelled"})
            state.closed_at = state.last_cancel_at
        else:
            state.incident = incident
