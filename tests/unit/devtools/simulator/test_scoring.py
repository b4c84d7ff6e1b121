"""The demo's verdict: an alert must come within its bounds, and nothing else may be raised."""

from __future__ import annotations

from devtools.simulator.model import Expectation, GroundTruth, NonIncident
from devtools.simulator.scoring import SeenAlert, score

LAMP = "L-1"
LAMPS = {LAMP}


def truth() -> GroundTruth:
    """A fall whose 30 s end at 40 s, a help request at 10 s, a recovery at 20 s, and no
    motion until 100 s (ms after the start); no fall during floor care from 200 s."""
    return GroundTruth(
        expected=[
            Expectation(LAMP, "s", "help_requested", 10_000, 9_000, 12_000, "help_pressed"),
            Expectation(LAMP, "s", "fall_recovered", 20_000, 19_000, 22_000, "fall_recovered"),
            Expectation(LAMP, "s", "fall", 40_000, 39_000, 42_000, "fall"),
            Expectation(LAMP, "s", "inactivity", 100_000, 99_000, 110_000, "no motion"),
        ],
        non_incidents=[NonIncident(LAMP, "s", "fall", 200_000, 260_000, "floor_care")],
    )


def on_time() -> list[SeenAlert]:
    return [
        SeenAlert("h", LAMP, "help_requested", "critical", 10_040),
        SeenAlert("r", LAMP, "fall_recovered", "info", 20_030),
        SeenAlert("f", LAMP, "fall", "critical", 40_035),
        SeenAlert("i", LAMP, "inactivity", "warning", 100_050),
    ]


def test_every_alert_within_its_bounds_passes_with_its_lateness_measured() -> None:
    result = score(truth(), on_time(), LAMPS)
    assert result.ok, result
    fall = result.kinds["fall"]
    assert (fall.expected, fall.found, fall.on_time) == (1, 1, 1)
    assert fall.latencies_ms == [35]
    assert fall.bounds_ms == [2_000]
    assert fall.over_ms == [35 - 2_000]
    assert result.kinds["inactivity"].bounds_ms == [10_000]


def test_a_critical_alert_later_than_its_deadline_plus_2_s_fails() -> None:
    """Rule 6: 2 s after the fall's 30 s, not the 30 s of grace the demo used to give."""
    alerts = [a for a in on_time() if a.kind != "fall"]
    alerts.append(SeenAlert("f", LAMP, "fall", "critical", 42_001))
    result = score(truth(), alerts, LAMPS)
    assert not result.ok
    assert [(e.kind, a.at_ms) for e, a in result.late] == [("fall", 42_001)]
    assert result.kinds["fall"].late == 1
    assert result.kinds["fall"].over_ms == [1]
    assert not result.missed and not result.false  # told apart: late, not missed + false


def test_the_2_s_bound_itself_passes() -> None:
    alerts = [a for a in on_time() if a.kind != "fall"]
    alerts.append(SeenAlert("f", LAMP, "fall", "critical", 42_000))
    assert score(truth(), alerts, LAMPS).ok


def test_a_fall_raised_before_its_confirmation_fails() -> None:
    """Raised at the suspicion (no 30 s of confirmation): early, and a failure."""
    alerts = [a for a in on_time() if a.kind != "fall"]
    alerts.append(SeenAlert("f", LAMP, "fall", "critical", 10_030))
    result = score(truth(), alerts, LAMPS)
    assert not result.ok
    assert [(e.kind, a.at_ms) for e, a in result.early] == [("fall", 10_030)]
    assert result.kinds["fall"].early == 1


def test_a_false_inactivity_alert_fails() -> None:
    alerts = [*on_time(), SeenAlert("i2", LAMP, "inactivity", "warning", 160_000)]
    result = score(truth(), alerts, LAMPS)
    assert not result.ok
    assert [(a.kind, why) for a, why in result.false] == [("inactivity", "")]
    assert not result.false_critical  # a warning: failing all the same


def test_a_missed_non_critical_alert_fails() -> None:
    alerts = [a for a in on_time() if a.kind != "fall_recovered"]
    result = score(truth(), alerts, LAMPS)
    assert not result.ok
    assert [e.kind for e in result.missed] == ["fall_recovered"]
    assert not result.missed_critical


def test_a_false_alarm_during_a_non_incident_names_it() -> None:
    alerts = [*on_time(), SeenAlert("x", LAMP, "fall", "critical", 230_000)]
    result = score(truth(), alerts, LAMPS)
    assert not result.ok
    assert result.false_critical[0][1] == "floor_care"


def test_the_same_alert_read_twice_is_one_alert() -> None:
    """At-least-once reading: the same alert_id again is a duplicate delivery, dropped."""
    alerts = [*on_time(), SeenAlert("f", LAMP, "fall", "critical", 40_500)]
    result = score(truth(), alerts, LAMPS)
    assert result.ok, result
    assert result.kinds["fall"].found == 1


def test_a_second_alert_for_one_incident_fails() -> None:
    """Rule 5: one alert per incident. A second alert_id for the same fall is false."""
    alerts = [*on_time(), SeenAlert("f2", LAMP, "fall", "critical", 40_500)]
    result = score(truth(), alerts, LAMPS)
    assert not result.ok
    assert [why for _, why in result.false] == ["a second alert for the incident of f"]


def test_alerts_of_other_lamps_are_not_ours() -> None:
    alerts = [*on_time(), SeenAlert("o", "someone-else", "fall", "critical", 60_000)]
    assert score(truth(), alerts, LAMPS).ok


def test_a_borderline_alert_may_be_raised_or_not_and_never_steals_a_required_match() -> None:
    """A motion within the margin of rule 9's deadline: allowed, not required. An alert in
    both windows is the required expectation's."""
    t = truth()
    t.expected.append(
        Expectation(LAMP, "s", "inactivity", 98_000, 97_000, 108_000, "no motion", required=False)
    )
    assert score(t, on_time(), LAMPS).ok
    result = score(t, [a for a in on_time() if a.kind != "inactivity"], LAMPS)
    assert [e.due_ms for e in result.missed] == [100_000]
    both = [*on_time(), SeenAlert("i0", LAMP, "inactivity", "warning", 98_100)]
    result = score(t, both, LAMPS)
    assert result.ok, result
    assert result.kinds["inactivity"].tolerated == 1
