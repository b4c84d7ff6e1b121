"""Rule 10's schedule as pure decisions: re-notify every 2 min, all staff at 4 min, close 5 min
after resolved, nothing once acknowledged."""

from __future__ import annotations

from dataclasses import replace

import pytest

from notifier.policy import (
    AlertState,
    Audience,
    Next,
    Timings,
    after_notification,
    close_due_ms,
    first_notification,
    should_send,
    slot_to_send,
)
from notifier.store import Job, StoreError, choose_recipients
from pipeline.settings import NotifierSettings

MIN = 60_000
T0 = 1_764_230_400_000

TIMINGS = Timings.from_settings(NotifierSettings())


def alert(severity: str = "critical", **changes: object) -> AlertState:
    state = AlertState("a-1", "fall", severity, "fr-lyon-12", "L-1", T0 - 30_000, T0)
    return replace(state, **changes)  # type: ignore[arg-type]


def run_schedule(state: AlertState, until_ms: int) -> list[tuple[int, int, Audience]]:
    """(slot, due offset, audience) of every notification up to ``until_ms``, each sent on time."""
    sent = []
    step = first_notification(state, TIMINGS)
    while step is not None and step.due_ms <= until_ms:
        sent.append((step.slot, step.due_ms - T0, TIMINGS.audience(step.slot)))
        step = after_notification(state, step.slot, step.due_ms, TIMINGS)
    return sent


def test_the_defaults_are_the_rule() -> None:
    assert (TIMINGS.renotify_ms, TIMINGS.escalate_ms, TIMINGS.autoclose_ms) == (
        2 * MIN,
        4 * MIN,
        5 * MIN,
    )


def test_a_critical_alert_is_renotified_every_2_minutes_and_escalated_at_4() -> None:
    assert run_schedule(alert(), T0 + 9 * MIN) == [
        (1, 0, Audience.ON_DUTY),
        (2, 2 * MIN, Audience.ON_DUTY),
        (3, 4 * MIN, Audience.ALL_STAFF),
        (4, 6 * MIN, Audience.ALL_STAFF),
        (5, 8 * MIN, Audience.ALL_STAFF),
    ]
    assert [slot for slot in range(1, 6) if TIMINGS.escalates(slot)] == [3]


def test_escalation_that_is_not_a_multiple_of_the_renotify_period_comes_on_time() -> None:
    timings = Timings(120_000, 300_000, 0, frozenset({"critical"}), frozenset({"critical"}))
    assert [timings.offset_ms(s) for s in range(1, 6)] == [0, 120_000, 240_000, 300_000, 420_000]
    assert [timings.audience(s) for s in (3, 4)] == [Audience.ON_DUTY, Audience.ALL_STAFF]
    assert timings.escalates(4)


def test_escalation_before_the_first_reminder() -> None:
    timings = Timings(120_000, 60_000, 0, frozenset({"critical"}), frozenset({"critical"}))
    assert [timings.offset_ms(s) for s in (1, 2, 3)] == [0, 60_000, 180_000]
    assert timings.audience(1) is Audience.ON_DUTY
    assert timings.escalates(2)
    with pytest.raises(ValueError, match="slot 0"):
        timings.offset_ms(0)


def test_a_warning_is_notified_once_and_info_not_at_all() -> None:
    assert run_schedule(alert("warning"), T0 + 30 * MIN) == [(1, 0, Audience.ON_DUTY)]
    assert first_notification(alert("info"), TIMINGS) is None


def test_nothing_is_sent_after_an_acknowledgement_or_a_resolution() -> None:
    for done in (alert(acknowledged=True), alert(resolved=True), alert(closed=True)):
        assert not should_send(done)
        assert after_notification(done, 1, T0, TIMINGS) is None
    assert first_notification(alert(acknowledged=True), TIMINGS) is None
    assert not should_send(None)
    assert should_send(alert())


def test_a_late_notification_keeps_the_schedule() -> None:
    # Slot 1 sent 10 s late: slot 2 is still due 2 min after the alert was raised.
    assert after_notification(alert(), 1, T0 + 10_000, TIMINGS) == Next(2, T0 + 2 * MIN)


def test_after_downtime_one_catch_up_with_the_current_audience_then_on_schedule() -> None:
    # Down from slot 1 until 5 min: slots 2 and 3 passed; slot 3 (all staff) is sent at once.
    step = after_notification(alert(), 1, T0 + 5 * MIN, TIMINGS)
    assert step == Next(3, T0 + 5 * MIN)
    assert TIMINGS.audience(step.slot) is Audience.ALL_STAFF
    assert after_notification(alert(), 3, T0 + 5 * MIN, TIMINGS) == Next(4, T0 + 6 * MIN)


def test_an_alert_closes_5_minutes_after_its_resolved_record() -> None:
    assert close_due_ms(T0 + 7 * MIN, TIMINGS) == T0 + 12 * MIN


def test_jobs_round_trip_and_junk_is_refused() -> None:
    for job in (Job("notify", "a-1", 3), Job("close", "a-1")):
        assert Job.parse(job.member) == job
    for junk in ("notify|a-1", "notify|a-1|x", "close", "other|a|1"):
        with pytest.raises(StoreError):
            Job.parse(junk)


def test_on_duty_staff_first_all_staff_on_escalation_everyone_when_nobody_is_on_duty() -> None:
    staff = [
        ("ana", "ana@example.org", None, True),
        ("bob", None, "http://nurse-call/bob", False),
    ]
    on_duty, fallback = choose_recipients(staff, Audience.ON_DUTY)
    assert ([r.name for r in on_duty], fallback) == (["ana"], False)
    everyone, fallback = choose_recipients(staff, Audience.ALL_STAFF)
    assert ([r.name for r in everyone], fallback) == (["ana", "bob"], False)
    off_duty = [(n, e, w, False) for n, e, w, _ in staff]
    nobody, fallback = choose_recipients(off_duty, Audience.ON_DUTY)
    assert ([r.name for r in nobody], fallback) == (["ana", "bob"], True)


def test_a_timer_run_late_sends_the_latest_slot_due_not_its_own() -> None:
    # Slot 2's timer (due at 2 min) runs at 5 min: slot 3 (all staff, at 4 min) is due too.
    assert slot_to_send(alert(), 2, T0 + 5 * MIN, TIMINGS) == 3
    assert slot_to_send(alert(), 2, T0 + 2 * MIN, TIMINGS) == 2  # on time: its own
    assert slot_to_send(alert(), 2, T0 + 4 * MIN - 1, TIMINGS) == 2
    warning = alert(severity="warning")  # notified once: no later slot
    assert slot_to_send(warning, 1, T0 + 10 * MIN, TIMINGS) == 1
