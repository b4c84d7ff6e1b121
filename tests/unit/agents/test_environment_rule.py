"""Rule 7 of the lamp protocol: room temperature averaged over 10-minute hopping windows.

Windows of 600 s start every 60 s of event time (T0 is on a minute) and close 120 s (the
grace) after their end; a window counts with 5 readings or more.
"""

from __future__ import annotations

from agents.events import LampEvent
from agents.rules.base import Incident
from agents.rules.environment import EnvironmentRule, EnvironmentState
from agents.testing import Trace, at
from pipeline.settings import DetectionSettings

ENV = "environment"
RAISED = (ENV, "raised")
RESOLVED = (ENV, "resolved")


def readings(t: Trace, start_s: int, end_s: int, celsius: float | list[float]) -> list:
    """One reading a minute from ``start_s`` to ``end_s`` inclusive (values cycled)."""
    values = celsius if isinstance(celsius, list) else [celsius]
    return [
        t.temperature(s, values[i % len(values)])
        for i, s in enumerate(range(start_s, end_s + 1, 60))
    ]


def test_cold_room_raises_one_warning() -> None:
    """Readings alternating 16 and 17 °C (mean 16.5) for 20 minutes: one warning, cold.
    The first window with 5 readings (starting at -300 s) closes at 420 s: raised then."""
    t = Trace()
    t.feed(*readings(t, 0, 1200, [16.0, 17.0]))
    t.run_until(3000)
    assert t.steps(ENV) == [RAISED]
    [alert] = t.of(ENV)
    assert (alert.severity, alert.emitted_at) == ("warning", at(420))
    assert alert.details["condition"] == "cold"
    assert alert.details["window_start"] == str(at(-300))
    assert float(alert.details["mean_celsius"]) < 17
    assert alert.incident_started_at == at(-300)


def test_hot_room_raises_one_warning() -> None:
    """29 °C for 20 minutes: one warning, hot."""
    t = Trace()
    t.feed(*readings(t, 0, 1200, 29.0))
    t.run_until(3000)
    assert t.steps(ENV) == [RAISED]
    assert t.of(ENV)[0].details["condition"] == "hot"
    assert t.of(ENV)[0].details["mean_celsius"] == "29.0"


def test_readings_in_range_raise_nothing() -> None:
    """17 and 28 °C are acceptable (the bounds are exclusive); so are means between."""
    t = Trace()
    t.feed(*readings(t, 0, 1800, [17.0, 28.0, 17.0]))
    t.feed(*readings(t, 1860, 3600, 28.0))
    t.run_until(5000)
    assert t.steps(ENV) == []


def test_single_cold_readings_do_not_raise_if_the_mean_is_fine() -> None:
    """One 10 °C reading in ten at 21 °C averages 19.9 °C: nothing."""
    t = Trace()
    t.feed(*readings(t, 0, 3600, [10.0, *[21.0] * 9]))
    assert t.steps(ENV) == []


def test_back_in_range_resolves() -> None:
    """16 °C for 20 minutes then 21 °C: resolved by the first window whose mean is 17.0 or
    more (start 780 s: 8 readings at 16, 2 at 21), closing at 1500 s."""
    t = Trace()
    t.feed(*readings(t, 0, 1200, 16.0), *readings(t, 1260, 2400, 21.0))
    assert t.steps(ENV) == [RAISED, RESOLVED]
    raised, resolved = t.of(ENV)
    assert resolved.alert_id == raised.alert_id
    assert resolved.emitted_at == at(1500)
    assert resolved.details["mean_celsius"] == "17.0"


def test_cold_again_after_resolution_is_a_new_alert() -> None:
    """Cold, fine, cold again: two incidents with different ids."""
    t = Trace()
    t.feed(*readings(t, 0, 1200, 16.0), *readings(t, 1260, 2400, 21.0))
    t.feed(*readings(t, 2460, 3600, 15.0))
    assert t.steps(ENV) == [RAISED, RESOLVED, RAISED]
    assert t.of(ENV)[0].alert_id != t.of(ENV)[2].alert_id


def test_fewer_than_min_samples_readings_do_not_count() -> None:
    """A reading every 150 s leaves 4 in each 10-minute window: below 5, nothing."""
    t = Trace()
    t.feed(*[t.temperature(s, 10.0) for s in range(0, 3600, 150)])
    t.run_until(5000)
    assert t.steps(ENV) == []


def test_min_samples_is_configurable() -> None:
    """With VEILLEUSE_RULES__ENVIRONMENT__MIN_SAMPLES=4 the same readings raise."""
    t = Trace(rule_settings={"environment": {"min_samples": 4}})
    t.feed(*[t.temperature(s, 10.0) for s in range(0, 3600, 150)])
    t.run_until(5000)
    assert t.steps(ENV) == [RAISED]


def test_thresholds_are_configurable() -> None:
    """VEILLEUSE_RULES__ENVIRONMENT__HIGH_C=25: 26 °C is hot."""
    t = Trace(rule_settings={"environment": {"high_c": 25}})
    t.feed(*readings(t, 0, 1200, 26.0))
    assert t.steps(ENV) == [RAISED]


def test_tumbling_windows_when_step_equals_size() -> None:
    """step_s = window_s: one window per 10 minutes, raised when it closes."""
    t = Trace(rule_settings={"environment": {"step_s": 600}})
    t.feed(*readings(t, 0, 1200, 16.0))
    assert t.steps(ENV) == [RAISED]
    assert t.of(ENV)[0].emitted_at == at(600 + 120)
    assert t.of(ENV)[0].details["window_start"] == str(at(0))


def test_windows_close_while_the_lamp_is_silent() -> None:
    """10 cold readings, then silence: the windows still close on the lamp's clock."""
    t = Trace()
    t.feed(*readings(t, 0, 540, 16.0))
    assert t.steps(ENV) == [RAISED]  # window -300 closed at 420 s
    t.run_until(5000)
    assert t.steps(ENV) == [RAISED]
    assert t.rule_state(ENV).windows == []
    assert "environment:close" not in t.timers


def test_reading_later_than_the_grace_goes_to_late_output() -> None:
    """A 300 s reading arriving at 1230 s: every window holding it closed (at 1020 s at the
    latest), so it is late (window_closed) and changes nothing."""
    t = Trace()
    t.feed(*readings(t, 0, 1200, 21.0))
    straggler = t.temperature(300, 5.0, arrive_s=1230)
    t.feed(straggler)
    assert t.late == [(straggler, "environment:window_closed")]
    assert t.engine.counts["late"] == 1
    assert t.steps(ENV) == []


def test_reading_within_the_grace_still_counts() -> None:
    """Every reading 100 s late (heartbeats on time keep the lamp's clock): the readings
    still count in their windows, the first closing at 420 s as if they were on time."""
    t = Trace()
    records = [t.heartbeat(s) for s in range(0, 1201, 30)]
    records += [t.temperature(s, 16.0, arrive_s=s + 100) for s in range(0, 1201, 60)]
    t.deliver(records)
    assert t.late == []
    assert t.steps(ENV) == [RAISED]
    assert t.of(ENV)[0].emitted_at == at(420)
    assert t.of(ENV)[0].details["window_start"] == str(at(-300))


def test_each_window_is_emitted_once() -> None:
    """Closing windows pops them: firing the deadline again emits nothing, even with the
    incident gone (a window is never evaluated twice)."""
    config = DetectionSettings()
    rule = EnvironmentRule(config)
    state = EnvironmentState()
    ctx = FakeContext(config, now=at(0))
    for s in range(0, 600, 60):
        ctx.now = at(s)
        rule.on_event(state, reading(s, 16.0), ctx)
    ctx.now = at(420)
    rule.on_timer(state, "close", ctx)
    assert [a[0] for a in ctx.actions] == ["raise"]
    remaining = [w[0] for w in state.windows]
    assert at(-300) not in remaining
    state.incident = None
    rule.on_timer(state, "close", ctx)
    assert [a[0] for a in ctx.actions] == ["raise"]
    assert [w[0] for w in state.windows] == remaining
    assert ctx.timers["close"] == at(-240 + 600 + 120)


# -- a minimal rule context, to drive the rule without the engine ------------------------------


def reading(s: float, celsius: float) -> LampEvent:
    payload = {"celsius": celsius}
    return LampEvent("L-1", "fr-lyon-12", int(s), at(s), "temperature", payload, at(s))


class FakeContext:
    lamp_id = "L-1"
    site_id = "fr-lyon-12"

    def __init__(self, config: DetectionSettings, now: int) -> None:
        self.config = config
        self.now = now
        self.actions: list[tuple[str, dict[str, str]]] = []
        self.timers: dict[str, int] = {}

    def raise_alert(
        self, rule: str, kind: str, severity: str, started_at: int, details: dict[str, str]
    ) -> Incident:
        self.actions.append(("raise", details))
        return Incident(f"{rule}/{started_at}", kind, severity, started_at)

    def resolve(self, incident: Incident, details: dict[str, str]) -> None:
        self.actions.append(("resolve", details))

    def set_timer(self, name: str, at_ms: int) -> None:
        self.timers[name] = at_ms

    def cancel_timer(self, name: str) -> None:
        self.timers.pop(name, None)

    def late(self, reason: str) -> None:
        self.actions.append(("late", {"reason": reason}))
