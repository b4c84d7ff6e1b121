"""Rule 8: a last will saying offline, or 5 minutes without any message, until the lamp speaks."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from agents.events import LampEvent
from agents.rules.base import Rule, RuleContext, RuleSettings, RuleState

SILENCE = "silence"


class LampOfflineSettings(RuleSettings):
    offline_after_s: float = Field(300, gt=0, description="Rule 8: silence that is offline.")


@dataclass
class LampOfflineState(RuleState):
    TIME_FIELDS = ("closed_at", "last_heard_at")

    last_heard_at: int = -1


@dataclass
class LampOfflineRule(Rule[LampOfflineState]):
    name = "lamp_offline"
    handles = frozenset(
        {"motion", "posture", "fall_suspected", "button", "temperature", "heartbeat", "status"}
    )
    state_type = LampOfflineState
    settings_type = LampOfflineSettings
    settings: LampOfflineSettings = field(default_factory=LampOfflineSettings, repr=False)

    def on_event(self, state: LampOfflineState, event: LampEvent, ctx: RuleContext) -> None:
        now = ctx.now
        if event.type == "status" and not event.payload["online"]:
            ctx.cancel_timer(SILENCE)
            if state.incident is None:
                reason = "last_will" if event.is_last_will else "status_offline"
                state.incident = ctx.raise_alert(
                    self.name, "lamp_offline", "warning", now, {"reason": reason}
                )
            return
        # Any other message, even a late replay, is the lamp speaking now.
        state.last_heard_at = now
        if state.incident is not None:
            ctx.resolve(state.incident, {"reason": "back_online", "type": event.type})
            state.incident = None
            state.closed_at = now
        ctx.set_timer(SILENCE, now + self.config.ms(self.settings.offline_after_s))

    def on_timer(self, state: LampOfflineState, timer: str, ctx: RuleContext) -> None:
        if timer == SILENCE and state.incident is None:
            details = {"reason": "silent", "silent_s": f"{self.settings.offline_after_s:.0f}"}
            state.incident = ctx.raise_alert(
                self.name, "lamp_offline", "warning", state.last_heard_at, details
            )
