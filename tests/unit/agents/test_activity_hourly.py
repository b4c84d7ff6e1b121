"""Support's hourly figures: one record per lamp and hour, emitted once when the hour closes."""

from __future__ import annotations

from typing import Any

from agents.testing import T0_MS, Trace

MIN = 60


def hours(t: Trace) -> list[dict[str, Any]]:
    return [record for kind, _, record in t.emitted if kind == "activity_hourly"]


def busy_hour(t: Trace) -> None:
    """An hour of a lamp's life (T0 is 08:00:00 UTC, the start of an hour)."""
    t.feed(
        t.motion(0), t.motion(30), t.motion(5 * MIN),  # 3 motions in 2 distinct minutes
        t.posture(10 * MIN, "lying", zone="bed"), t.posture(11 * MIN + 5, "sitting", zone="bed"),
        t.posture(20 * MIN, "absent"),
        t.motion(30 * MIN, zone="bathroom"), t.posture(31 * MIN, "standing", zone="bathroom"),
        t.motion(40 * MIN, zone="room"), t.motion(50 * MIN, zone="bathroom"),
        t.fall(52 * MIN, confidence=0.8), t.fall(53 * MIN, confidence=0.3),
        t.posture(53 * MIN + 10, "standing"),
        t.button(54 * MIN), t.button(54 * MIN + 5, "cancel"),
        t.temperature(55 * MIN, 20.0), t.temperature(56 * MIN, 22.0),
        t.heartbeat(57 * MIN),
    )  # fmt: skip


def test_the_hours_figures() -> None:
    t = Trace()
    busy_hour(t)
    t.run_until(3600 + 121)
    (hour,) = hours(t)
    assert hour["hour_start"] == T0_MS
    assert (hour["lamp_id"], hour["site_id"]) == ("L-000123", "fr-lyon-12")
    assert hour["motion_events"] == 6
    assert hour["active_minutes"] == 5  # minutes 0, 5, 30, 40, 50
    assert hour["minutes_in_bed"] == 2
    assert hour["minutes_absent"] == 1
    assert hour["bathroom_visits"] == 2  # into the bathroom at 30 and at 50 min
    assert hour["falls"] == 1  # 0.3 is below the threshold
    assert hour["help_requests"] == 1
    assert (hour["temperature_min"], hour["temperature_mean"], hour["temperature_max"]) == (
        20.0,
        21.0,
        22.0,
    )
    assert hour["temperature_readings"] == 2
    assert hour["firmware"] == "1.4.2"
    assert hour["messages"] == 18
    assert hour["last_seen_at"] == T0_MS + 57 * MIN * 1000


def test_emitted_once_when_the_hour_closes_after_the_grace_not_before() -> None:
    t = Trace()
    busy_hour(t)
    t.run_until(3600 + 119)
    assert hours(t) == []
    t.run_until(3600 + 121)
    t.run_until(3 * 3600)
    assert len(hours(t)) == 1


def test_a_record_within_the_grace_counts_a_later_one_goes_to_the_late_output() -> None:
    t = Trace()
    t.feed(t.motion(10))
    t.feed(t.motion(20 * MIN, arrive_s=3600 + 60))  # 60 s after the hour: within the grace
    t.feed(t.motion(25 * MIN, arrive_s=3600 + 180))  # after the grace
    t.run_until(2 * 3600 + 200)
    first = hours(t)[0]
    assert first["motion_events"] == 2
    assert [reason for _, reason in t.late] == ["activity_hourly:hour_closed"]


def test_duplicates_do_not_count_twice() -> None:
    t = Trace()
    motion = t.motion(10)
    t.feed(motion, motion, motion)
    t.run_until(3600 + 121)
    assert hours(t)[0]["motion_events"] == 1


def test_figures_survive_a_restart_mid_hour() -> None:
    t = Trace()
    t.feed(t.motion(10), t.motion(20))
    t.restart()
    t.feed(t.motion(30 * MIN))
    t.run_until(3600 + 121)
    (hour,) = hours(t)
    assert hour["motion_events"] == 3


def test_a_silent_lamps_hour_closes_on_its_clock() -> None:
    """No message after the hour: the lamp's clock still closes it (idle advance)."""
    t = Trace(skew_s=-120)
    t.feed(t.motion(5 * MIN))
    t.run_until(3600 + 120 + 120 - 1)  # the lamp's clock is 120 s behind
    assert hours(t) == []
    t.run_until(3600 + 120 + 120 + 1)
    assert hours(t)[0]["hour_start"] == T0_MS


def test_a_first_message_arriving_late_is_still_deduplicated() -> None:
    """Found by the integration test: before the lamp's clock is known, the deduplicator took
    wall time for "now" and forgot an old first message at once, so its duplicate counted."""
    t = Trace()
    first = t.motion(10, arrive_s=2000)  # older than the deduplicator's 15 min on arrival
    t.feed(first, first)
    t.run_until(3600 + 121 + 1990)  # the lamp's clock runs 1990 s behind the wall
    assert hours(t)[0]["motion_events"] == 1
