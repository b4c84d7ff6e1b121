"""The notifier's flow at rule 10's real timings (2, 4, 5 minutes) on a test clock, with
in-memory stand-ins for Redis, PostgreSQL and the channels (the real ones are exercised by
tests/integration/notifier)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from notifier.channels import Delivery, Notification, Recipient
from notifier.policy import AlertState, Audience
from notifier.service import Notifier
from notifier.store import Claimed, Job, Step, choose_recipients, state_from_fields
from pipeline.records import KafkaRecord
from pipeline.settings import load_settings
from schemas import encode, schema

MIN = 60_000
T0 = 1_764_230_400_000


class TestClock:
    __test__ = False

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


class MemoryTimers:
    """Timers' semantics (see store.py's scripts) in a dict."""

    def __init__(self) -> None:
        self.due: dict[str, int] = {}
        self.states: dict[str, dict[str, str]] = {}

    def raised(self, state: AlertState, first: tuple[Job, int] | None) -> bool:
        fields = self.states.setdefault(state.alert_id, {})
        if "raised_ms" in fields:
            return False
        fields.update(
            raised_ms=str(state.raised_ms),
            kind=state.kind,
            severity=state.severity,
            site_id=state.site_id,
            lamp_id=state.lamp_id,
            incident_started_ms=str(state.incident_started_ms),
        )
        if first is not None:
            self.due.setdefault(first[0].member, first[1])
        return True

    def acknowledged(self, alert_id: str, by: str, at_ms: int) -> bool:
        fields = self.states.setdefault(alert_id, {})
        fields["acknowledged"] = "1"
        if "ack_ms" in fields:
            return False
        fields.update(ack_ms=str(at_ms), ack_by=by)
        return True

    def resolved(self, alert_id: str, resolved_ms: int, close_due_ms: int) -> bool:
        fields = self.states.setdefault(alert_id, {})
        if "resolved_ms" in fields:
            return False
        fields["resolved_ms"] = str(resolved_ms)
        self.due.setdefault(Job("close", alert_id).member, close_due_ms)
        return True

    def closed(self, alert_id: str) -> None:
        self.states.setdefault(alert_id, {})["closed"] = "1"

    def state(self, alert_id: str) -> tuple[AlertState | None, dict[str, str]]:
        fields = dict(self.states.get(alert_id, {}))
        return state_from_fields(alert_id, fields), fields

    def claim(self, now_ms: int, lease_ms: int, limit: int) -> list[Claimed]:
        due = sorted((score, member) for member, score in self.due.items() if score <= now_ms)
        claimed = []
        for _, member in due[:limit]:
            self.due[member] = now_ms + lease_ms
            claimed.append(Claimed(Job.parse(member), now_ms + lease_ms))
        return claimed

    def complete(self, claimed: Claimed, following: tuple[Job, int] | None) -> bool:
        if self.due.get(claimed.job.member) != claimed.token:
            return False
        del self.due[claimed.job.member]
        if following is not None:
            self.due.setdefault(following[0].member, following[1])
        return True

    def reschedule(self, claimed: Claimed, due_ms: int) -> bool:
        if self.due.get(claimed.job.member) != claimed.token:
            return False
        self.due[claimed.job.member] = due_ms
        return True


class MemoryJournal:
    def __init__(self, staff: Sequence[tuple[str, str | None, str | None, bool]]) -> None:
        self.alerts: dict[str, dict[str, Any]] = {}
        self.events: dict[tuple[str, str, int], Step] = {}
        self.staff = staff

    async def alert(self, row: Any, *steps: Step) -> list[bool]:
        self.alerts.setdefault(row["alert_id"], dict(row))
        return await self.steps(*steps)

    async def steps(self, *steps: Step) -> list[bool]:
        new = []
        for step in steps:
            key = (step.alert_id, step.step, step.occurrence)
            known = step.alert_id in self.alerts and key not in self.events
            if known:
                self.events[key] = step
            new.append(known)
        return new

    async def has_step(self, alert_id: str, step: str, occurrence: int) -> bool:
        return (alert_id, step, occurrence) in self.events

    async def recipients(self, site_id: str, audience: Audience) -> tuple[list[Recipient], bool]:
        return choose_recipients(self.staff, audience)

    async def close(self) -> None:
        return None

    def life(self, alert_id: str) -> list[tuple[str, int, int]]:
        rows = [s for (a, _, _), s in self.events.items() if a == alert_id]
        return [(s.step, s.occurrence, s.emitted_ms) for s in rows]


class RecordingChannel:
    name = "webhook"

    def __init__(self) -> None:
        self.sent: list[tuple[int, Notification]] = []
        self.clock: TestClock | None = None
        self.failing = False

    async def send(self, notification: Notification) -> Delivery:
        assert self.clock is not None
        delivery = Delivery(self.name)
        for recipient in notification.recipients:
            if self.failing:
                delivery.failed[recipient.name] = "down"
            else:
                delivery.delivered.append(recipient.name)
        if not self.failing:
            self.sent.append((self.clock.now, notification))
        return delivery


STAFF = [("ana", "ana@x", None, True), ("bob", "bob@x", None, False)]


def notifier(
    *others: RecordingChannel, channel: RecordingChannel | None = None
) -> tuple[Notifier, TestClock, MemoryJournal, RecordingChannel, MemoryTimers]:
    clock = TestClock(T0)
    journal = MemoryJournal(STAFF)
    channel = channel or RecordingChannel()
    for each in (channel, *others):
        each.clock = clock
    timers = MemoryTimers()
    settings = load_settings()
    service = Notifier(
        settings,
        timers=timers,  # type: ignore[arg-type]
        records_journal=journal,  # type: ignore[arg-type]
        timers_journal=journal,  # type: ignore[arg-type]
        channels=[channel, *others],
        clock=clock,
    )
    return service, clock, journal, channel, timers


def alert_record(
    state: str, at_ms: int, severity: str = "critical", offset: int = 0, alert_id: str = "a-1"
) -> KafkaRecord:
    value = encode(
        schema("alert.v1"),
        {
            "alert_id": alert_id,
            "kind": "fall",
            "severity": severity,
            "state": state,
            "site_id": "s",
            "lamp_id": "L-1",
            "incident_started_at": at_ms - 30_000,
            "emitted_at": at_ms,
            "details": {},
        },
    )
    return KafkaRecord("alerts.v1", 0, offset, at_ms, b"L-1", value)


def ack_record(at_ms: int, by: str) -> KafkaRecord:
    value = encode(
        schema("alert_ack.v1"),
        {"alert_id": "a-1", "lamp_id": "L-1", "acknowledged_by": by, "acknowledged_at": at_ms},
    )
    return KafkaRecord("alerts.acks.v1", 0, 0, at_ms, b"L-1", value)


async def advance(service: Notifier, clock: TestClock, to_ms: int, step_ms: int = 1000) -> None:
    """Poll the timers every ``step_ms`` of test time up to ``to_ms``."""
    while clock.now < to_ms:
        clock.now = min(to_ms, clock.now + step_ms)
        await service.run_due()


async def test_rule_10_at_its_real_timings_on_a_test_clock() -> None:
    service, clock, journal, channel, _ = notifier()
    await service.apply(alert_record("raised", T0))
    await service.apply(alert_record("raised", T0))  # a replay changes nothing
    await service.run_due()
    await advance(service, clock, T0 + 7 * MIN)

    sent = [(at - T0, n.slot, n.audience, [r.name for r in n.recipients]) for at, n in channel.sent]
    assert sent == [
        (0, 1, Audience.ON_DUTY, ["ana"]),
        (2 * MIN, 2, Audience.ON_DUTY, ["ana"]),
        (4 * MIN, 3, Audience.ALL_STAFF, ["ana", "bob"]),
        (6 * MIN, 4, Audience.ALL_STAFF, ["ana", "bob"]),
    ]
    await service.apply(ack_record(T0 + 7 * MIN, "bob"))
    await advance(service, clock, T0 + 20 * MIN)
    assert len(channel.sent) == 4  # nothing after the acknowledgement

    await service.apply(alert_record("resolved", T0 + 21 * MIN, offset=1))
    await advance(service, clock, T0 + 26 * MIN - 1000)
    assert ("closed", 1) not in [(s, o) for s, o, _ in journal.life("a-1")]
    await advance(service, clock, T0 + 26 * MIN)
    assert journal.life("a-1") == [
        ("raised", 1, T0),
        ("notified", 1, T0),
        ("notified", 2, T0 + 2 * MIN),
        ("escalated", 1, T0 + 4 * MIN),
        ("notified", 3, T0 + 4 * MIN),
        ("notified", 4, T0 + 6 * MIN),
        ("acknowledged", 1, T0 + 7 * MIN),
        ("resolved", 1, T0 + 21 * MIN),
        ("closed", 1, T0 + 26 * MIN),
    ]
    assert journal.events[("a-1", "acknowledged", 1)].details == {"acknowledged_by": "bob"}


async def test_a_resolved_alert_is_not_renotified_even_unacknowledged() -> None:
    service, clock, _, channel, _ = notifier()
    await service.apply(alert_record("raised", T0))
    await advance(service, clock, T0 + 1 * MIN)
    await service.apply(alert_record("resolved", T0 + 1 * MIN, offset=1))
    await advance(service, clock, T0 + 10 * MIN)
    assert [n.slot for _, n in channel.sent] == [1]


async def test_an_acknowledgement_read_before_its_alert_still_counts() -> None:
    service, clock, journal, channel, _ = notifier()
    await service.apply(ack_record(T0 + 1000, "ana"))
    await service.apply(alert_record("raised", T0))
    await advance(service, clock, T0 + 5 * MIN)
    assert channel.sent == []
    assert ("a-1", "acknowledged", 1) in journal.events


async def test_a_notification_that_reached_nobody_is_retried_not_recorded() -> None:
    service, clock, journal, channel, timers = notifier()
    channel.failing = True
    await service.apply(alert_record("raised", T0))
    await service.run_due()
    assert ("a-1", "notified", 1) not in journal.events
    assert timers.due == {"notify|a-1|1": T0 + 10_000}  # retry_s
    channel.failing = False
    await advance(service, clock, T0 + 10_000)
    assert [(at - T0, n.slot) for at, n in channel.sent] == [(10_000, 1)]
    assert timers.due == {"notify|a-1|2": T0 + 2 * MIN}


async def test_a_notification_recorded_before_a_crash_is_not_sent_again() -> None:
    service, _, journal, channel, timers = notifier()
    await service.apply(alert_record("raised", T0))
    # The previous owner sent and recorded slot 1, then died before completing its timer.
    await journal.steps(Step("a-1", "notified", 1, T0, {}))
    await service.run_due()
    assert channel.sent == []
    assert timers.due == {"notify|a-1|2": T0 + 2 * MIN}


class HangingChannel(RecordingChannel):
    """An endpoint that accepts and does not answer, for one alert (or all), until released."""

    def __init__(self, name: str = "webhook", alert_id: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.alert_id = alert_id
        self.release = asyncio.Event()
        self.hanging = asyncio.Event()

    async def send(self, notification: Notification) -> Delivery:
        if self.alert_id in (None, notification.alert_id):
            self.hanging.set()
            await self.release.wait()
        return await super().send(notification)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (a hang shows as a timeout, not a pass)."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


async def test_an_endpoint_that_hangs_for_one_alert_does_not_hold_another_alerts_notification() -> (
    None
):
    hanging = HangingChannel(alert_id="a-1")
    service, _, journal, channel, _ = notifier(channel=hanging)
    await service.apply(alert_record("raised", T0, alert_id="a-1"))
    await service.apply(alert_record("raised", T0, offset=1, alert_id="a-2"))
    polling = asyncio.create_task(service.run_due())
    try:
        await until(lambda: ("a-2", "notified", 1) in journal.events)
        assert [n.alert_id for _, n in channel.sent] == ["a-2"]
        assert not polling.done()  # a-1's endpoint still hangs
    finally:
        hanging.release.set()
    assert await asyncio.wait_for(polling, 5) == 2
    assert ("a-1", "notified", 1) in journal.events


async def test_a_channel_that_hangs_does_not_hold_the_other_channel() -> None:
    webhook = HangingChannel()
    email = RecordingChannel()
    email.name = "email"
    service, _, journal, _, _ = notifier(email, channel=webhook)
    await service.apply(alert_record("raised", T0))
    polling = asyncio.create_task(service.run_due())
    try:
        await until(lambda: len(email.sent) == 1)
        assert webhook.sent == [] and not polling.done()
    finally:
        webhook.release.set()
    await asyncio.wait_for(polling, 5)
    assert len(webhook.sent) == 1
    through = journal.events[("a-1", "notified", 1)].details["through"]
    assert set(through) == {"webhook", "email"}


async def test_the_timer_loop_goes_on_while_an_earlier_alerts_endpoint_hangs() -> None:
    """a-2 is raised after the loop claimed a-1, whose endpoint hangs: the next poll claims
    and notifies a-2 without waiting for a-1's send to end."""
    hanging = HangingChannel(alert_id="a-1")
    service, _, journal, channel, _ = notifier(channel=hanging)
    stop = asyncio.Event()
    loop = asyncio.create_task(service.timer_loop(stop))
    try:
        await service.apply(alert_record("raised", T0, alert_id="a-1"))
        await until(hanging.hanging.is_set)
        await service.apply(alert_record("raised", T0, offset=1, alert_id="a-2"))
        await until(lambda: ("a-2", "notified", 1) in journal.events)
        assert [n.alert_id for _, n in channel.sent] == ["a-2"]
        assert service.health.backlog() == 1  # a-1's timer, claimed and still running
    finally:
        hanging.release.set()
        stop.set()
        await asyncio.wait_for(loop, 5)
    assert ("a-1", "notified", 1) in journal.events
    assert service.health.backlog() == 0


async def test_a_timer_run_late_sends_one_catch_up_with_the_latest_slots_audience() -> None:
    """The notifier was away from 1 to 5 minutes: slot 2's timer (due at 2 min) runs at 5 min,
    when slot 3 (all staff, the escalation, due at 4 min) is due too: slot 3 alone goes out,
    to all staff, then slot 4 on schedule. Not slot 2 to the staff on duty first."""
    service, clock, journal, channel, _ = notifier()
    await service.apply(alert_record("raised", T0))
    await service.run_due()
    clock.now = T0 + 5 * MIN  # nothing polled meanwhile
    await service.run_due()
    await advance(service, clock, T0 + 6 * MIN)
    sent = [(at - T0, n.slot, n.audience) for at, n in channel.sent]
    assert sent == [
        (0, 1, Audience.ON_DUTY),
        (5 * MIN, 3, Audience.ALL_STAFF),
        (6 * MIN, 4, Audience.ALL_STAFF),
    ]
    assert ("a-1", "escalated", 1) in journal.events
    assert ("a-1", "notified", 2) not in journal.events
