"""Rule 8 of the lamp protocol: a lamp offline, on hand-written traces through a real engine."""

from __future__ import annotations

import pytest

from agents.testing import Trace, at

OFFLINE = "lamp_offline"
RAISED = (OFFLINE, "raised")
RESOLVED = (OFFLINE, "resolved")


def test_last_will_raises_at_once() -> None:
    """The broker's last will (seq 0, ts 0) raises lamp_offline when it arrives."""
    t = Trace()
    t.feed(t.heartbeat(0))
    [alert] = t.feed(t.last_will(30))
    assert (alert.kind, alert.state, alert.severity) == (OFFLINE, "raised", "warning")
    assert alert.emitted_at == at(30)
    assert alert.incident_started_at == at(30)  # the lamp's clock when it arrived
    assert alert.details["reason"] == "last_will"


def test_last_will_of_a_skewed_lamp_starts_on_its_clock() -> None:
    """The last will has no time of its own: it happened at the lamp clock's now."""
    t = Trace(skew_s=120)
    t.feed(t.heartbeat(0))
    [alert] = t.feed(t.last_will(30))
    assert alert.incident_started_at == at(30 + 120)


def test_status_offline_sent_by_the_lamp_raises() -> None:
    """A lamp saying online: false itself raises too (reason status_offline)."""
    t = Trace()
    [alert] = t.feed(t.status(5, online=False))
    assert alert.details["reason"] == "status_offline"


def test_silence_of_5_minutes_raises_not_before() -> None:
    """Last message at 60 s: nothing at 359.999 s, raised at 360 s, started at 60 s."""
    t = Trace()
    t.feed(*[t.heartbeat(s) for s in range(0, 61, 60)])
    assert t.run_until(359.999) == []
    [alert] = t.run_until(360)
    assert (alert.state, alert.emitted_at) == ("raised", at(360))
    assert alert.incident_started_at == at(60)
    assert alert.details["reason"] == "silent"


@pytest.mark.parametrize("skew_s", [120, -120])
def test_silence_of_a_skewed_lamp_is_measured_in_wall_time(skew_s: float) -> None:
    """5 minutes of wall time after the last message, whatever the lamp's clock says."""
    t = Trace(skew_s=skew_s)
    t.feed(t.heartbeat(0))
    assert t.run_until(299.999) == []
    assert [a.emitted_at for a in t.run_until(301)] == [at(300)]


def test_regular_messages_keep_the_lamp_online() -> None:
    """A heartbeat every 60 s for an hour raises nothing."""
    t = Trace()
    t.feed(*[t.heartbeat(s) for s in range(0, 3601, 60)])
    assert t.steps(OFFLINE) == []


def test_silence_threshold_is_configurable() -> None:
    """VEILLEUSE_RULES__LAMP_OFFLINE__OFFLINE_AFTER_S moves the threshold."""
    t = Trace(rule_settings={"lamp_offline": {"offline_after_s": 60}})
    t.feed(t.heartbeat(0))
    assert t.run_until(59.999) == []
    assert [a.emitted_at for a in t.run_until(61)] == [at(60)]


def test_speaking_again_resolves_and_a_new_silence_raises_again() -> None:
    """Any message after the silence resolves (back_online); a new silence is a new alert."""
    t = Trace()
    t.feed(t.heartbeat(0))
    t.run_until(400)
    [resolved] = t.feed(t.motion(450))
    assert resolved.state == "resolved"
    assert resolved.emitted_at == at(450)
    assert resolved.details["reason"] == "back_online"
    assert resolved.details["type"] == "motion"
    t.run_until(800)
    assert t.steps(OFFLINE) == [RAISED, RESOLVED, RAISED]
    assert t.alerts[2].emitted_at == at(750)
    assert t.alerts[0].alert_id != t.alerts[2].alert_id


def test_lamp_speaking_after_its_last_will_resolves() -> None:
    """The lamp reconnects and publishes online: true: resolved."""
    t = Trace()
    t.feed(t.heartbeat(0), t.last_will(30))
    t.feed(t.status(90, online=True))
    assert t.steps(OFFLINE) == [RAISED, RESOLVED]


def test_second_last_will_while_offline_does_not_raise_again() -> None:
    """A repeated last will (or one after the silence alert) joins the open incident."""
    t = Trace()
    t.feed(t.heartbeat(0), t.last_will(30), t.last_will(40))
    t.run_until(1000)
    assert t.steps(OFFLINE) == [RAISED]
    t.feed(t.heartbeat(1000))
    t.run_until(1400)  # silent again: raised at 1300 s
    t.feed(t.last_will(1500))
    assert t.steps(OFFLINE) == [RAISED, RESOLVED, RAISED]


def test_last_will_cancels_the_silence_deadline() -> None:
    """After a last will, the silence deadline does not raise a second alert."""
    t = Trace()
    t.feed(t.heartbeat(0), t.last_will(30))
    assert "lamp_offline:silence" not in t.timers
    t.run_until(1000)
    assert t.steps(OFFLINE) == [RAISED]


def test_offline_deadline_survives_a_restart() -> None:
    """Restarted while the lamp is silent: the silence alert still fires on time."""
    t = Trace()
    t.feed(t.heartbeat(0))
    t.run_until(100)
    t.restart()
    t.run_until(400)
    assert [(a.kind, a.emitted_at) for a in t.of(OFFLINE)] == [(OFFLINE, at(300))]
