"""Rule 9 of the lamp protocol: no motion for 3 hours of daytime, in the site's local time.

The trace starts (T0) on 2025-11-27 at 09:00 in Paris (08:00 UTC), 03:00 in New York.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from agents.rules.inactivity import InactivitySettings, inactivity_due, site_zone
from agents.testing import T0_MS, Trace, at
from pipeline.settings import DetectionSettings

INACTIVITY = "inactivity"
RAISED = (INACTIVITY, "raised")
RESOLVED = (INACTIVITY, "resolved")
HOUR = 3600
PARIS = ZoneInfo("Europe/Paris")


def local(ms: int, zone: ZoneInfo = PARIS) -> str:
    return datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M:%S")


def test_trace_starts_at_9_in_paris() -> None:
    """The times below rely on it."""
    assert local(T0_MS) == "2025-11-27 09:00:00"


def test_no_motion_for_3_hours_of_daytime_raises_at_noon() -> None:
    """Motion at 09:00, then only heartbeats: raised at 12:00 local, not at 11:59:59."""
    t = Trace()
    t.feed(t.motion(0), *[t.heartbeat(s) for s in range(60, 3 * HOUR, 60)])
    assert t.steps(INACTIVITY) == []
    assert t.run_until(3 * HOUR - 0.001) == []
    [alert] = t.run_until(3 * HOUR + 30)
    assert (alert.kind, alert.state, alert.severity) == (INACTIVITY, "raised", "warning")
    assert local(alert.emitted_at) == "2025-11-27 12:00:00"
    assert alert.incident_started_at == at(0)
    assert alert.details["no_motion_since"] == str(at(0))


def test_first_message_starts_the_clock_without_motion() -> None:
    """A lamp that never saw motion: 3 hours after its first message (a heartbeat)."""
    t = Trace()
    t.feed(t.heartbeat(0))
    t.run_until(4 * HOUR)
    [alert] = t.of(INACTIVITY)
    assert local(alert.emitted_at) == "2025-11-27 12:00:00"


def test_motion_keeps_the_resident_active() -> None:
    """Motion every 2 h 59 min through the day raises nothing."""
    t = Trace()
    t.feed(*[t.motion(s) for s in range(0, 12 * HOUR, 3 * HOUR - 60)])
    assert t.steps(INACTIVITY) == []


def test_motion_at_19h_is_due_next_day_at_11h() -> None:
    """Only daytime counts: motion at 19:00 then nothing is due at 11:00 the next day."""
    t = Trace()
    t.feed(t.motion(10 * HOUR))  # 19:00
    t.run_until(26 * HOUR - 0.001)
    assert t.steps(INACTIVITY) == []
    t.run_until(27 * HOUR)
    [alert] = t.of(INACTIVITY)
    assert local(alert.emitted_at) == "2025-11-28 11:00:00"


def test_motion_at_night_is_due_at_11h() -> None:
    """Motion at 06:00 (before the day starts): due 3 hours into the day, 11:00."""
    t = Trace()
    t.feed(t.motion(21 * HOUR))  # 06:00 the next day
    t.run_until(30 * HOUR)
    [alert] = t.of(INACTIVITY)
    assert local(alert.emitted_at) == "2025-11-28 11:00:00"


def test_motion_resolves_and_restarts_the_count() -> None:
    """Raised at 12:00; motion at 12:30 resolves it; the next is due at 15:30."""
    t = Trace()
    t.feed(t.motion(0))
    t.run_until(3 * HOUR)
    t.feed(t.motion(3.5 * HOUR, zone="bathroom"))
    resolved = t.of(INACTIVITY)[-1]
    assert resolved.state == "resolved"
    assert resolved.details["reason"] == "motion"
    assert resolved.details["zone"] == "bathroom"
    t.run_until(7 * HOUR)
    assert t.steps(INACTIVITY) == [RAISED, RESOLVED, RAISED]
    assert local(t.of(INACTIVITY)[2].emitted_at) == "2025-11-27 15:30:00"
    assert t.of(INACTIVITY)[0].alert_id != t.of(INACTIVITY)[2].alert_id


def test_reordered_older_motion_does_not_move_the_deadline_back() -> None:
    """A motion record older than the last one seen changes nothing."""
    t = Trace()
    t.feed(t.motion(0), t.motion(HOUR), t.motion(HOUR - 20, arrive_s=HOUR + 5))
    t.run_until(5 * HOUR)
    [alert] = t.of(INACTIVITY)
    assert local(alert.emitted_at) == "2025-11-27 13:00:00"


@pytest.mark.parametrize(
    "zones",
    [
        {"us-nyc-1": "America/New_York"},
        {"us-": "America/New_York"},
        {"us-": "America/Los_Angeles", "us-nyc-": "America/New_York"},
    ],
)
def test_site_timezones_are_honoured(zones: dict[str, str]) -> None:
    """A site in New York (exact id, or longest prefix ending in '-'): motion at 03:00 New
    York time is due at 11:00 New York time (16:00 UTC)."""
    t = Trace(site_id="us-nyc-1", config=DetectionSettings(site_timezones=zones))
    t.feed(t.motion(0))
    t.run_until(9 * HOUR)
    [alert] = t.of(INACTIVITY)
    assert local(alert.emitted_at, ZoneInfo("America/New_York")) == "2025-11-27 11:00:00"
    assert alert.emitted_at == at(8 * HOUR)


def test_default_timezone_is_configurable() -> None:
    """Sites not listed use default_timezone (Asia/Tokyo: T0 is 17:00 there). Motion at
    17:00 is due at 20:00 (3 hours fit, the end included); motion at 20:01 is due at 11:00
    the next day."""
    tokyo = ZoneInfo("Asia/Tokyo")
    t = Trace(config=DetectionSettings(default_timezone="Asia/Tokyo"))
    t.feed(t.motion(0))
    t.run_until(3 * HOUR)
    t.feed(t.motion(3 * HOUR + 60))
    t.run_until(30 * HOUR)
    assert t.steps(INACTIVITY) == [RAISED, RESOLVED, RAISED]
    first, _, second = t.of(INACTIVITY)
    assert local(first.emitted_at, tokyo) == "2025-11-27 20:00:00"
    assert local(second.emitted_at, tokyo) == "2025-11-28 11:00:00"


def test_site_zone_falls_back_to_the_default() -> None:
    """An unlisted site, or a prefix without a trailing '-', gets the default zone."""
    config = DetectionSettings(site_timezones={"us": "America/New_York"})
    assert site_zone(config, "us-nyc-1") == PARIS


def test_day_bounds_are_configurable() -> None:
    """rules.inactivity.day_start/day_end and after_s move the due time."""
    config = InactivitySettings(day_start="07:00", day_end="22:00", after_s=HOUR)
    last = int(datetime(2025, 11, 27, 21, 30, tzinfo=PARIS).timestamp() * 1000)
    due = inactivity_due(last, PARIS, config)
    assert local(due) == "2025-11-28 08:00:00"


def test_day_bounds_are_configurable_through_the_rule_settings() -> None:
    """VEILLEUSE_RULES__INACTIVITY__AFTER_S=3600 (a trace's rule settings): motion at
    09:00 Paris, nothing after, is due at 10:00, not 12:00."""
    t = Trace(rule_settings={"inactivity": {"after_s": HOUR}})
    t.feed(t.motion(0))
    t.run_until(HOUR - 1)
    assert t.steps("inactivity") == []
    t.run_until(HOUR)
    assert t.steps("inactivity") == [("inactivity", "raised")]


def test_inactivity_due_across_a_daylight_saving_change() -> None:
    """The local day bounds hold across the change to summer time (2026-03-29 in Paris)."""
    config = InactivitySettings()
    last = int(datetime(2026, 3, 28, 19, 0, tzinfo=PARIS).timestamp() * 1000)
    assert local(inactivity_due(last, PARIS, config)) == "2026-03-29 11:00:00"


def test_inactivity_deadline_survives_a_restart() -> None:
    """Restarted during the 3 hours: the stored deadline still fires at 12:00."""
    t = Trace()
    t.feed(t.motion(0))
    t.run_until(HOUR)
    t.restart()
    t.run_until(4 * HOUR)
    [alert] = t.of(INACTIVITY)
    assert local(alert.emitted_at) == "2025-11-27 12:00:00"
