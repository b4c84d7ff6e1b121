"""Rules 1, 2, 4 and 5: a fall, confirmed or found lying, raised once per incident.

Phases of one lamp::

    idle --fall_suspected >= 0.6--> suspected --30 s, not up--> alerted --stands up / ack--> idle
      \\--on_floor / lying outside bed--> lying --60 s--------------/
    suspected --stands or sits within 30 s--> idle (fall_recovered, info)

While two or more persons are seen (staff present) nothing is raised. Records older than the
incident that was closed last are ignored, so duplicates and stragglers cannot reopen it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from agents.events import LampEvent
from agents.rules.base import Rule, RuleContext, RuleSettings, RuleState

UPRIGHT = frozenset({"standing", "sitting"})
CONFIRM = "confirm"
LONG_LIE = "long_lie"


class FallSettings(RuleSettings):
    min_confidence: float = Field(
        0.6, ge=0, le=1, description="Rule 1: lowest fall_suspected confidence considered."
    )
    confirm_s: float = Field(
        30, gt=0, description="Rule 1: time without getting up that confirms a fall."
    )
    long_lie_s: float = Field(
        60, gt=0, description="Rule 2: time on the floor (or lying outside bed) that is a fall."
    )
    staff_min_persons: int = Field(
        2, ge=2, description="Rule 4: persons seen from which staff is taken to be present."
    )


def is_down(posture: str, zone: str) -> bool:
    return posture == "on_floor" or (posture == "lying" and zone != "bed")


@dataclass
class FallState(RuleState):
    TIME_FIELDS = ("closed_at", "started_at", "persons_at", "last_upright_at", "last_down_at")

    phase: str = "idle"  # idle | suspected | lying | alerted
    started_at: int = -1
    confidence: float = 0.0
    zone: str = ""
    persons: int = 0
    persons_at: int = -1
    last_upright_at: int = -1
    last_down_at: int = -1


@dataclass
class FallRule(Rule[FallState]):
    name = "fall"
    handles = frozenset({"fall_suspected", "posture"})
    state_type = FallState
    settings_type = FallSettings
    settings: FallSettings = field(default_factory=FallSettings, repr=False)

    def on_event(self, state: FallState, event: LampEvent, ctx: RuleContext) -> None:
        if event.type == "fall_suspected":
            self._on_suspicion(state, event, ctx)
        else:
            self._on_posture(state, event, ctx)

    def _staff_present(self, state: FallState) -> bool:
        return state.persons >= self.settings.staff_min_persons

    def _on_suspicion(self, state: FallState, event: LampEvent, ctx: RuleContext) -> None:
        confidence = event.number("confidence")
        if confidence < self.settings.min_confidence or event.ts <= state.closed_at:
            return
        if state.phase in ("suspected", "alerted") or self._staff_present(state):
            return
        confirm_ms = self.config.ms(self.settings.confirm_s)
        if event.ts < state.last_upright_at < event.ts + confirm_ms:
            # Reordered: the resident was already seen up again within the 30 s.
            self._recovered(state, event.ts, confidence, event.str_field("zone"), ctx)
            state.closed_at = state.last_upright_at
            return
        ctx.cancel_timer(LONG_LIE)
        state.phase = "suspected"
        state.started_at = event.ts
        state.confidence = confidence
        state.zone = event.str_field("zone")
        ctx.set_timer(CONFIRM, event.ts + confirm_ms)

    def _on_posture(self, state: FallState, event: LampEvent, ctx: RuleContext) -> None:
        ts = event.ts
        if ts >= state.persons_at:
            state.persons, state.persons_at = event.integer("persons"), ts
        posture, zone = event.str_field("posture"), event.str_field("zone")
        if posture in UPRIGHT:
            state.last_upright_at = max(state.last_upright_at, ts)
        elif is_down(posture, zone):
            state.last_down_at = max(state.last_down_at, ts)
        if state.phase == "suspected" and ts >= state.started_at:
            if posture in UPRIGHT:
                self._recovered(state, state.started_at, state.confidence, state.zone, ctx)
                self._close(state, ts, ctx)
            elif self._staff_present(state):
                self._close(state, ts, ctx)
        elif state.phase == "lying" and ts >= state.started_at:
            if not is_down(posture, zone) or self._staff_present(state):
                self._close(state, ts, ctx)
        elif (
            state.phase == "alerted"
            and posture in UPRIGHT
            # Only a posture newer than every "down" one says the resident got up: a reordered
            # older "standing" must not resolve the alert while later records show them down.
            and ts > max(state.started_at, state.last_down_at)
        ):
            if state.incident is not None:
                ctx.resolve(state.incident, {"reason": "stood_up", "posture": posture})
            self._close(state, ts, ctx)
        elif (
            state.phase == "idle"
            and is_down(posture, zone)
            and ts > max(state.closed_at, state.last_upright_at)
            and not self._staff_present(state)
        ):
            state.phase = "lying"
            state.started_at = ts
            state.zone = zone
            ctx.set_timer(LONG_LIE, ts + self.config.ms(self.settings.long_lie_s))

    def on_timer(self, state: FallState, timer: str, ctx: RuleContext) -> None:
        expected = {CONFIRM: "suspected", LONG_LIE: "lying"}.get(timer)
        if state.phase != expected:
            return
        if self._staff_present(state):
            self._close(state, ctx.now, ctx)
            return
        if timer == CONFIRM:
            details = {
                "reason": "fall_not_recovered",
                "confidence": f"{state.confidence:.2f}",
                "zone": state.zone,
            }
        else:
            details = {"reason": "long_lie", "zone": state.zone}
        state.incident = ctx.raise_alert(self.name, "fall", "critical", state.started_at, details)
        state.phase = "alerted"

    def on_ack(self, state: FallState, alert_id: str, by: str, ctx: RuleContext) -> None:
        if state.incident is not None and state.incident.alert_id == alert_id:
            super().on_ack(state, alert_id, by, ctx)
            state.phase = "idle"

    def _recovered(
        self, state: FallState, started_at: int, confidence: float, zone: str, ctx: RuleContext
    ) -> None:
        details = {"reason": "got_up", "confidence": f"{confidence:.2f}", "zone": zone}
        event = ctx.raise_alert("fall_recovered", "fall_recovered", "info", started_at, details)
        ctx.resolve(event, details)

    def _close(self, state: FallState, at: int, ctx: RuleContext) -> None:
        ctx.cancel_timer(CONFIRM)
        ctx.cancel_timer(LONG_LIE)
        state.phase = "idle"
        state.incident = None
        state.closed_at = max(state.closed_at, at)
