"""Rule 7: room temperature averaging below 17 °C or above 28 °C over 10 minutes.

Hopping windows of event time (10 min, every minute by default) each emit their mean once,
when the lamp's watermark passes their end plus the grace; a mean out of range raises the
``environment`` alert, the next one back in range resolves it. Readings later than the grace
go to the late output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from pydantic import Field

from agents.events import LampEvent
from agents.eventtime import WindowSpec
from agents.rules.base import Rule, RuleContext, RuleSettings, RuleState

CLOSE = "close"


class EnvironmentSettings(RuleSettings):
    low_c: float = Field(17, description="Rule 7: lowest acceptable mean (°C).")
    high_c: float = Field(28, description="Rule 7: highest acceptable mean (°C).")
    window_s: int = Field(600, gt=0, description="Rule 7: averaging window.")
    step_s: int = Field(
        60, gt=0, description="Rule 7: hop of the averaging window (window = hop: tumbling)."
    )
    min_samples: int = Field(
        5, ge=1, description="Rule 7: fewest readings for a window's mean to count."
    )


@dataclass
class EnvironmentState(RuleState):
    # [start, sum, count] per open window, oldest first.
    windows: list[list[float]] = field(default_factory=list)


@dataclass
class EnvironmentRule(Rule[EnvironmentState]):
    name = "environment"
    handles = frozenset({"temperature"})
    state_type = EnvironmentState
    settings_type = EnvironmentSettings
    settings: EnvironmentSettings = field(default_factory=EnvironmentSettings, repr=False)

    @cached_property
    def spec(self) -> WindowSpec:
        c, s = self.config, self.settings
        return WindowSpec(c.ms(s.window_s), c.ms(s.step_s), c.ms(c.window_grace_s))

    def on_event(self, state: EnvironmentState, event: LampEvent, ctx: RuleContext) -> None:
        spec, now = self.spec, ctx.now
        celsius = event.number("celsius")
        counted = False
        for start in spec.starts(event.ts):
            if spec.is_closed(start, now):
                continue
            counted = True
            for window in state.windows:
                if window[0] == start:
                    window[1] += celsius
                    window[2] += 1
                    break
            else:
                state.windows.append([start, celsius, 1])
        if not counted:
            ctx.late("window_closed")
            return
        state.windows.sort(key=lambda w: w[0])
        ctx.set_timer(CLOSE, spec.closes_at(int(state.windows[0][0])))

    def on_timer(self, state: EnvironmentState, timer: str, ctx: RuleContext) -> None:
        spec, now, c = self.spec, ctx.now, self.settings
        while state.windows and spec.is_closed(int(state.windows[0][0]), now):
            start, total, count = state.windows.pop(0)
            if count < c.min_samples:
                continue
            mean = total / count
            out_of_range = mean < c.low_c or mean > c.high_c
            if out_of_range and state.incident is None:
                details = {
                    "mean_celsius": f"{mean:.1f}",
                    "window_start": str(int(start)),
                    "condition": "cold" if mean < c.low_c else "hot",
                }
                state.incident = ctx.raise_alert(
                    self.name, "environment", "warning", int(start), details
                )
            elif not out_of_range and state.incident is not None:
                ctx.resolve(state.incident, {"mean_celsius": f"{mean:.1f}"})
                state.incident = None
                state.closed_at = int(start)
        if state.windows:
            ctx.set_timer(CLOSE, spec.closes_at(int(state.windows[0][0])))
