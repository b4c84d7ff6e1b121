"""Rule 3: a help button pressed is a critical alert at once; a cancel within 30 s resolves it."""

from __future__ import annotations

from dataclasses import dataclass

from agents.events import LampEvent
from agents.rules.base import Rule, RuleContext, RuleState


@dataclass
class HelpButtonState(RuleState):
    TIME_FIELDS = ("closed_at", "last_cancel_at")

    last_cancel_at: int = -1


@dataclass
class HelpButtonRule(Rule[HelpButtonState]):
    name = "help_button"
    handles = frozenset({"button"})
    state_type = HelpButtonState

    def on_event(self, state: HelpButtonState, event: LampEvent, ctx: RuleContext) -> None:
        action, ts = event.str_field("action"), event.ts
        window = self.config.ms(self.config.help_cancel_s)
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
