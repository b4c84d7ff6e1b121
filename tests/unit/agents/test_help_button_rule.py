"""Rule 3 of the lamp protocol: the help button, on hand-written traces through a real engine."""

from __future__ import annotations

import pytest

from agents.testing import Trace, at
from pipeline.settings import DetectionSettings

HELP = "help_requested"
RAISED = (HELP, "raised")
RESOLVED = (HELP, "resolved")


@pytest.mark.parametrize("action", ["press", "long_press"])
def test_press_raises_a_critical_alert_at_once(action: str) -> None:
    """press and long_press raise help_requested the moment the record is processed."""
    t = Trace()
    [alert] = t.feed(t.button(5, action))
    assert (alert.kind, alert.state, alert.severity) == (HELP, "raised", "critical")
    assert alert.emitted_at == at(5)
    assert alert.incident_started_at == at(5)
    assert alert.details["action"] == action
    assert alert.details["accessory_id"] == "pendant-1"


def test_press_of_a_skewed_lamp_starts_on_its_clock() -> None:
    """incident_started_at is the lamp's ts; emitted_at the wall time."""
    t = Trace(skew_s=-120)
    [alert] = t.feed(t.button(5))
    assert alert.incident_started_at == at(5 - 120)
    assert alert.emitted_at == at(5)


@pytest.mark.parametrize("after_s", [1, 29, 30])
def test_cancel_within_30_s_resolves(after_s: float) -> None:
    """A cancel 1, 29 or 30 s after the press resolves the alert (reason cancelled)."""
    t = Trace()
    t.feed(t.button(5), t.button(5 + after_s, "cancel"))
    assert t.steps(HELP) == [RAISED, RESOLVED]
    raised, resolved = t.alerts
    assert resolved.alert_id == raised.alert_id
    assert resolved.emitted_at == at(5 + after_s)
    assert resolved.details["reason"] == "cancelled"


def test_cancel_after_31_s_does_not_resolve() -> None:
    """A cancel 31 s after the press is too late: the alert stays open."""
    t = Trace()
    t.feed(t.button(5), t.button(36, "cancel"))
    t.run_until(600)
    assert t.steps(HELP) == [RAISED]
    assert t.rule_state("help_button").incident is not None


def test_cancel_window_is_configurable() -> None:
    """rules.help_button.cancel_s moves the window."""
    t = Trace(rule_settings={"help_button": {"cancel_s": 60}})
    t.feed(t.button(5), t.button(50, "cancel"))
    assert t.steps(HELP) == [RAISED, RESOLVED]


def test_cancel_without_a_press_does_nothing() -> None:
    """A lone cancel raises and resolves nothing."""
    t = Trace()
    t.feed(t.button(5, "cancel"))
    t.run_until(100)
    assert t.steps(HELP) == []


def test_duplicates_of_the_press_after_a_cancel_do_not_reraise() -> None:
    """QoS 1 redelivers the press after its cancel: still one raised, one resolved."""
    t = Trace()
    press = t.button(5)
    t.feed(press, press, t.button(15, "cancel"), press, press)
    t.run_until(100)
    assert t.steps(HELP) == [RAISED, RESOLVED]
    assert t.engine.counts["duplicates"] == 3


def test_press_straggler_forgotten_by_the_deduplicator_does_not_reraise() -> None:
    """Once the deduplicator forgot the press, its time (before the cancel) still filters it."""
    t = Trace(config=DetectionSettings(dedup_max_entries=16))
    press = t.button(5)
    t.feed(press, t.button(15, "cancel"), *[t.heartbeat(s) for s in range(20, 60, 2)])
    t.feed(press)
    assert t.engine.counts["duplicates"] == 0
    assert t.steps(HELP) == [RAISED, RESOLVED]


def test_second_press_during_an_open_incident_does_not_raise() -> None:
    """One alert per incident: pressing again while it is open raises nothing new."""
    t = Trace()
    t.feed(t.button(5), t.button(10), t.button(12, "long_press"), t.button(60))
    assert t.steps(HELP) == [RAISED]


def test_press_after_the_cancel_is_a_new_incident() -> None:
    """Press, cancel, press again later: a second alert with another id, not cancelled by
    the earlier cancel."""
    t = Trace()
    t.feed(t.button(5), t.button(10, "cancel"), t.button(100))
    t.run_until(300)
    assert t.steps(HELP) == [RAISED, RESOLVED, RAISED]
    assert t.alerts[0].alert_id != t.alerts[2].alert_id
    assert t.alerts[2].incident_started_at == at(100)


def test_reordered_cancel_arriving_before_its_press() -> None:
    """The cancel (10 s) arrives before its press (5 s, delayed to 20 s): the request is
    still recorded, raised and resolved at once."""
    t = Trace()
    press = t.button(5, arrive_s=20)
    cancel = t.button(10, "cancel", arrive_s=12)
    t.deliver([cancel, press])
    assert t.steps(HELP) == [RAISED, RESOLVED]
    raised, resolved = t.alerts
    assert raised.emitted_at == resolved.emitted_at == at(20)
    assert raised.incident_started_at == at(5)
    assert resolved.details["reason"] == "cancelled"
    assert t.rule_state("help_button").incident is None


def test_reordered_cancel_too_late_for_its_press_does_not_resolve() -> None:
    """A cancel 40 s after the press, arriving before it: the press stays open."""
    t = Trace()
    t.deliver([t.button(5, arrive_s=50), t.button(45, "cancel")])
    assert t.steps(HELP) == [RAISED]


def test_acknowledge_closes_the_help_request() -> None:
    """Staff acknowledge an uncancelled request: resolved, and a later press raises again."""
    t = Trace()
    [raised] = t.feed(t.button(5))
    assert t.acknowledge(raised.alert_id, "nurse-2", 60)
    t.feed(t.button(100))
    assert t.steps(HELP) == [RAISED, RESOLVED, RAISED]
    assert t.alerts[1].details["acknowledged_by"] == "nurse-2"


def test_help_request_survives_a_restart() -> None:
    """Restarted between press and cancel: the cancel still resolves the stored incident."""
    t = Trace()
    t.feed(t.button(5))
    t.restart()
    t.feed(t.button(5 + 20, "cancel"))
    assert t.steps(HELP) == [RAISED, RESOLVED]
