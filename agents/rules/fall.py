"""Rules 1, 2, 4 and 5: a fall, confirmed or found lying, raised once per incident.

Phases of one lamp::

    idle --fall_suspected >= 0.6--> suspected --30 s, not up--> alerted --stands up / ack--> idle
      \\--on_floor / lying outside bed--> lying --60 s--------------/
    suspected --stands or sits within 30 s--> idle (fall_recovered, info)

While two or more persons are seen (staff present) nothing is raised.

Decisions follow event time, not the order records arrive in: the rule keeps the lamp's
postures (and suspicions) of the last ``reorder_s`` of event time, so a record that arrives late
within the protocol's bound is judged against the postures around it: who was in the room at
the suspicion, whether the resident got up within its 30 s, when the time on the floor began.
Suspicions covered by an incident already closed are ignored, so duplicates and stragglers
cannot reopen it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from agents.events import LampEvent
from agents.rules.base import Rule, RuleContext, RuleSettings, RuleState

UPRIGHT = frozenset({"standing", "sitting"})
CONFIRM = "confirm"
LONG_LIE = "long_lie"

# What a posture says of the resident, as kept in the state's history.
OTHER, UP, DOWN = 0, 1, 2
# Postures kept at most, whatever the window: a lamp sends one every 5 s (and on each change),
# about 7 in 30 s; a lamp flooding postures must not grow its state (and changelog record).
MAX_POSTURES = 16


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
    reorder_s: float = Field(
        30,
        ge=0,
        description="Event time of postures kept per lamp to judge a record arriving out of "
        "order against the ones around it (the protocol's reordering bound).",
    )


def is_down(posture: str, zone: str) -> bool:
    return posture == "on_floor" or (posture == "lying" and zone != "bed")


@dataclass
class FallState(RuleState):
    TIME_FIELDS = ("closed_at", "started_at", "last_down_at", "down_since")

    phase: str = "idle"  # idle | suspected | lying | alerted
    started_at: int = -1
    confidence: float = 0.0
    zone: str = ""
    last_down_at: int = -1
    # The resident's current time on the floor, alone (rule 2), in "lying" and "suspected".
    down_since: int = -1
    down_zone: str = ""
    # [ts, OTHER | UP | DOWN, persons, zone] in event-time order: the last ``reorder_s`` and the one
    # posture before (who was in the room at the start of that window).
    postures: list[list[Any]] = field(default_factory=list)
    # [ts, confidence, zone] of the suspicions of the same window, decided or not.
    suspicions: list[list[Any]] = field(default_factory=list)
    # [started_at, closed_at] of the incidents closed in that window that raised or decided
    # something (a fall alert, a recovery): the suspicions they cover are not judged again.
    closed: list[list[int]] = field(default_factory=list)

    @classmethod
    def load(cls, data: dict[str, Any]) -> Any:
        state = super().load(data)
        if "postures" not in data:
            # Stored before the rule kept postures: its time on the floor was the lying
            # phase's start, and who was in the room the last posture's persons.
            if state.phase == "lying":
                state.down_since, state.down_zone = state.started_at, state.zone
            if data.get("persons_at", -1) >= 0:
                state.postures = [[data["persons_at"], OTHER, data.get("persons", 1), ""]]
        return state

    def rebase(self, shift_ms: int) -> None:
        super().rebase(shift_ms)
        for entries in (self.postures, self.suspicions, self.closed):
            for entry in entries:
                entry[0] += shift_ms
        for span in self.closed:
            span[1] += shift_ms


@dataclass
class FallRule(Rule[FallState]):
    name = "fall"
    handles = frozenset({"fall_suspected", "posture"})
    state_type = FallState
    settings_type = FallSettings
    settings: FallSettings = field(default_factory=FallSettings, repr=False)

    def on_event(self, state: FallState, event: LampEvent, ctx: RuleContext) -> None:
        if event.type == "fall_suspected":
            confidence = event.number("confidence")
            if confidence < self.settings.min_confidence:
                return
            zone = event.str_field("zone")
            suspicion = [event.ts, confidence, zone]
            if suspicion not in state.suspicions:
                bisect.insort(state.suspicions, suspicion, key=lambda s: s[0])
            self._judge_suspicion(state, event.ts, confidence, zone, ctx)
        else:
            self._on_posture(state, event, ctx)
        self._forget_old(state)

    # -- what the history says ------------------------------------------------------------

    def _staff(self, persons: int) -> bool:
        return persons >= self.settings.staff_min_persons

    def _persons_at(self, state: FallState, ts: int) -> int:
        """Persons seen by the last posture at or before ``ts`` (none known: the resident)."""
        i = bisect.bisect_right(state.postures, ts, key=lambda p: p[0])
        return state.postures[i - 1][2] if i else 1

    def _alone_down(self, posture: list[Any]) -> bool:
        return posture[1] == DOWN and not self._staff(posture[2])

    def _down_since(self, state: FallState) -> int | None:
        """Start of the resident's current time on the floor, alone, after the last closed
        incident: the earliest of the newest postures that all show it (None: they don't)."""
        start = None
        for posture in reversed(state.postures):
            if posture[0] <= state.closed_at or not self._alone_down(posture):
                break
            start = posture[0]
        return start

    def _forget_old(self, state: FallState) -> None:
        postures, suspicions, closed = state.postures, state.suspicions, state.closed
        newest = postures[-1][0] if postures else -1
        if suspicions and suspicions[-1][0] > newest:
            newest = suspicions[-1][0]
        cutoff = newest - self.config.ms(self.settings.reorder_s)
        while len(postures) > 1 and postures[1][0] <= cutoff:
            del postures[0]
        if len(postures) > MAX_POSTURES:
            del postures[: len(postures) - MAX_POSTURES]
        if suspicions and suspicions[0][0] < cutoff:
            state.suspicions = [s for s in suspicions if s[0] >= cutoff]
        if closed and closed[0][1] < cutoff:
            state.closed = [c for c in closed if c[1] >= cutoff]

    # -- rule 1 ---------------------------------------------------------------------------

    def _judge_suspicion(
        self, state: FallState, ts: int, confidence: float, zone: str, ctx: RuleContext
    ) -> None:
        if state.phase == "alerted" or (state.phase == "suspected" and ts >= state.started_at):
            return  # rule 5: part of the open incident
        confirm_ms = self.config.ms(self.settings.confirm_s)
        if ts <= state.closed_at:
            oldest = state.postures[0][0] if state.postures else ts + 1
            covered = any(start - confirm_ms <= ts <= end for start, end in state.closed)
            if covered or ts < oldest:
                return  # a straggler of a closed incident, or too old to be judged
        if self._staff(self._persons_at(state, ts)):
            return  # rule 4 (judged again if a late posture shows the room otherwise)
        for p_ts, kind, persons, _ in state.postures:
            if ts < p_ts < ts + confirm_ms and kind == UP:
                # The resident was seen up within the 30 s (that posture arrived first).
                self._recovered(state, ts, confidence, zone, ctx)
                state.closed.append([ts, p_ts])
                state.closed_at = max(state.closed_at, p_ts)
                return
            if ts <= p_ts < ts + confirm_ms and self._staff(persons):
                return  # staff came within the 30 s
        # A new incident, or an earlier start of the one suspected (that suspicion arrived late).
        state.phase = "suspected"
        state.started_at = ts
        state.confidence = confidence
        state.zone = zone
        ctx.set_timer(CONFIRM, ts + confirm_ms)

    # -- postures -------------------------------------------------------------------------

    def _on_posture(self, state: FallState, event: LampEvent, ctx: RuleContext) -> None:
        ts = event.ts
        posture, zone = event.str_field("posture"), event.str_field("zone")
        kind = UP if posture in UPRIGHT else DOWN if is_down(posture, zone) else OTHER
        persons = event.integer("persons")
        entry = [ts, kind, persons, zone]
        if state.postures and ts < state.postures[-1][0]:
            bisect.insort(state.postures, entry, key=lambda p: p[0])
        else:
            state.postures.append(entry)
        if kind == DOWN:
            state.last_down_at = max(state.last_down_at, ts)
        if state.phase == "suspected":
            if ts < state.started_at:
                if self._staff(self._persons_at(state, state.started_at)):
                    self._close(state, ts, ctx)  # staff were there at the suspicion after all
            elif kind == UP and ts > state.started_at:
                self._recovered(state, state.started_at, state.confidence, state.zone, ctx)
                state.closed.append([state.started_at, ts])
                self._close(state, ts, ctx)
            elif self._staff(persons):
                self._close(state, ts, ctx)
        elif (
            state.phase == "alerted"
            and kind == UP
            # Only a posture newer than every "down" one says the resident got up: a reordered
            # older "standing" must not resolve the alert while later records show them down.
            and ts > max(state.started_at, state.last_down_at)
        ):
            if state.incident is not None:
                ctx.resolve(state.incident, {"reason": "stood_up", "posture": posture})
            state.closed.append([state.started_at, ts])
            self._close(state, ts, ctx)
        if state.suspicions and state.phase in ("idle", "lying"):
            self._rejudge_suspicions(state, ts, ctx)
        if state.phase in ("idle", "lying", "suspected"):
            self._track_long_lie(state, entry, ctx)

    def _rejudge_suspicions(self, state: FallState, ts: int, ctx: RuleContext) -> None:
        """A late posture may change who was in the room at a later suspicion (rule 4)."""
        for s_ts, confidence, zone in list(state.suspicions):
            if s_ts >= ts and state.phase in ("idle", "lying"):
                self._judge_suspicion(state, s_ts, confidence, zone, ctx)

    # -- rule 2 ---------------------------------------------------------------------------

    def _track_long_lie(self, state: FallState, posture: list[Any], ctx: RuleContext) -> None:
        """Rule 2, after ``posture`` was added; it runs beside a suspicion too: whichever
        deadline comes first raises the fall."""
        if 0 <= state.down_since <= posture[0] and not self._alone_down(posture):
            # Up, in bed, gone or with staff: that time on the floor is over.
            state.down_since = -1
            ctx.cancel_timer(LONG_LIE)
            if state.phase == "lying":
                self._close(state, posture[0], ctx)
        if state.down_since >= 0 and posture is state.postures[-1]:
            return  # still down, and only a late posture can move the start back
        since = self._down_since(state)
        if since is None or 0 <= state.down_since <= since:
            return
        # A new time on the floor, or an earlier start of this one (its first posture arrived
        # late): 60 s from its first posture.
        state.down_since = since
        state.down_zone = next(p[3] for p in state.postures if p[0] == since)
        if state.phase != "suspected":
            state.phase = "lying"
            state.started_at = since
        ctx.set_timer(LONG_LIE, since + self.config.ms(self.settings.long_lie_s))

    # -- timers and acknowledgements ------------------------------------------------------

    def on_timer(self, state: FallState, timer: str, ctx: RuleContext) -> None:
        if state.phase not in ("suspected", "lying"):
            return
        if timer == LONG_LIE and state.down_since < 0:
            return
        if state.postures and self._staff(state.postures[-1][2]):
            self._close(state, ctx.now, ctx)
            return
        if timer == CONFIRM and state.phase == "suspected":
            details = {
                "reason": "fall_not_recovered",
                "confidence": f"{state.confidence:.2f}",
                "zone": state.zone,
            }
        elif timer == LONG_LIE:
            state.started_at = state.down_since
            details = {"reason": "long_lie", "zone": state.down_zone}
        else:
            return
        ctx.cancel_timer(CONFIRM)
        ctx.cancel_timer(LONG_LIE)
        state.down_since = -1
        state.incident = ctx.raise_alert(self.name, "fall", "critical", state.started_at, details)
        state.phase = "alerted"

    def on_ack(self, state: FallState, alert_id: str, by: str, ctx: RuleContext) -> None:
        if state.incident is not None and state.incident.alert_id == alert_id:
            started_at = state.started_at
            super().on_ack(state, alert_id, by, ctx)
            state.closed.append([started_at, state.closed_at])
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
        state.down_since = -1
        state.closed_at = max(state.closed_at, at)
