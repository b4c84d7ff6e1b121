"""Rule 10 as pure decisions: what is sent when, given an alert's state and the time.

No I/O here. An alert's notifications are numbered *slots* from the moment it was raised (its
``emitted_at``, the anchor): slots before ``escalate`` go to the staff on duty every
``renotify``; from ``escalate`` on, to all staff of the site, every ``renotify``. With the
defaults (2 and 4 minutes): slot 1 at 0 (on duty), slot 2 at 2 min (on duty), slot 3 at 4 min
(all staff: the escalation), slot 4 at 6 min (all staff)... until acknowledged or resolved. Only
``renotify_severities`` get more than slot 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pipeline.settings import NotifierSettings


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class Audience(StrEnum):
    ON_DUTY = "on_duty"
    ALL_STAFF = "all_staff"


@dataclass(frozen=True, slots=True)
class Timings:
    renotify_ms: int
    escalate_ms: int
    autoclose_ms: int
    notify_severities: frozenset[str]
    renotify_severities: frozenset[str]

    @classmethod
    def from_settings(cls, notifier: NotifierSettings) -> Timings:
        return cls(
            renotify_ms=notifier.ms(notifier.renotify_s),
            escalate_ms=notifier.ms(notifier.escalate_s),
            autoclose_ms=notifier.ms(notifier.autoclose_s),
            notify_severities=frozenset(notifier.notify_severities),
            renotify_severities=frozenset(notifier.renotify_severities),
        )

    @property
    def slots_before_escalation(self) -> int:
        """Slots (k ≥ 0) with k * renotify < escalate: those sent to the staff on duty."""
        return max(1, math.ceil(self.escalate_ms / self.renotify_ms))

    def offset_ms(self, slot: int) -> int:
        """When slot ``slot`` (1-based) is due, after the anchor."""
        if slot < 1:
            raise ValueError(f"slot {slot} < 1")
        before = self.slots_before_escalation
        if slot <= before:
            return (slot - 1) * self.renotify_ms
        return self.escalate_ms + (slot - 1 - before) * self.renotify_ms

    def audience(self, slot: int) -> Audience:
        return Audience.ON_DUTY if slot <= self.slots_before_escalation else Audience.ALL_STAFF

    def escalates(self, slot: int) -> bool:
        """The slot that first reaches all staff: the 'escalated' step."""
        return slot == self.slots_before_escalation + 1

    def notifies(self, severity: str) -> bool:
        return severity in self.notify_severities

    def renotifies(self, severity: str) -> bool:
        return severity in self.renotify_severities


@dataclass(frozen=True, slots=True)
class AlertState:
    """What the notifier knows of one alert (kept in Redis)."""

    alert_id: str
    kind: str
    severity: str
    site_id: str
    lamp_id: str
    incident_started_ms: int
    raised_ms: int  # the anchor: emitted_at of its raised record
    acknowledged: bool = False
    resolved: bool = False
    closed: bool = False


@dataclass(frozen=True, slots=True)
class Next:
    """The next notification of an alert: slot number and due time (epoch ms)."""

    slot: int
    due_ms: int


def first_notification(state: AlertState, timings: Timings) -> Next | None:
    """On the raised record: slot 1 at once, if this severity is notified at all."""
    if not timings.notifies(state.severity) or state.acknowledged or state.resolved:
        return None
    return Next(1, state.raised_ms)


def should_send(state: AlertState | None) -> bool:
    """A due notification is sent only while the alert is open and unacknowledged."""
    return state is not None and not state.acknowledged and not state.resolved and not state.closed


def slot_to_send(state: AlertState, slot: int, now_ms: int, timings: Timings) -> int:
    """The slot a due timer sends: its own, or, when it runs so late that later slots are due
    too (its claimer died, a store was down), the latest of them, with that slot's audience:
    one catch-up, not the missed slot and then the catch-up."""
    if not timings.renotifies(state.severity):
        return slot
    latest = slot
    while state.raised_ms + timings.offset_ms(latest + 1) <= now_ms:
        latest += 1
    return latest


def after_notification(state: AlertState, slot: int, now_ms: int, timings: Timings) -> Next | None:
    """The notification that follows slot ``slot``, sent at ``now_ms``; None: no more.

    A notifier that was down past whole slots does not send one per missed slot: it goes to the
    latest slot already due (sent at once, with that slot's audience), then on schedule.
    """
    if not timings.renotifies(state.severity) or not should_send(state):
        return None
    following = slot + 1
    while state.raised_ms + timings.offset_ms(following + 1) <= now_ms:
        following += 1
    return Next(following, max(state.raised_ms + timings.offset_ms(following), now_ms))


def close_due_ms(resolved_ms: int, timings: Timings) -> int:
    """Rule 10: an alert closes ``autoclose`` after its resolved record (off the floor)."""
    return resolved_ms + timings.autoclose_ms
