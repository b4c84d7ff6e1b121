"""The board's live feed without Kafka: what an event carries, which subscriber gets it, and a
stalled subscriber losing events instead of growing; the alert page's timeline labels."""

from __future__ import annotations

from datetime import UTC, datetime

from api.console.live import QUEUE_SIZE, Subscriber, event_of
from api.console.pages import timeline

ALERT = {
    "alert_id": "a-1",
    "kind": "unknown",
    "kind_name": "wandering",
    "severity": "critical",
    "state": "raised",
    "site_id": "site-a",
    "lamp_id": "L-1",
    "incident_started_at": datetime(2026, 12, 2, 13, 0, tzinfo=UTC),
    "emitted_at": 1796216400500,  # as an int when no logical type applied
    "details": {"zone": "floor"},
}


def test_an_event_carries_the_alert_with_iso_times_and_its_kind_by_name() -> None:
    assert event_of(ALERT) == {
        "alert_id": "a-1",
        "kind": "wandering",
        "severity": "critical",
        "state": "raised",
        "site_id": "site-a",
        "lamp_id": "L-1",
        "incident_started_at": "2026-12-02T13:00:00+00:00",
        "emitted_at": "2026-12-02T13:00:00.500000+00:00",
    }


def test_a_subscriber_wants_its_sites_only() -> None:
    assert Subscriber(frozenset({"site-a"})).wants("site-a")
    assert not Subscriber(frozenset({"site-a"})).wants("site-b")
    assert Subscriber(None).wants("site-b")


async def test_a_stalled_subscriber_drops_events_beyond_its_queue() -> None:
    subscriber = Subscriber(None)
    for index in range(QUEUE_SIZE + 3):
        subscriber.offer({"n": index})
    assert (subscriber.queue.qsize(), subscriber.dropped) == (QUEUE_SIZE, 3)
    assert (await subscriber.queue.get()) == {"n": 0}


def test_a_second_notification_is_a_renotification() -> None:
    at = datetime(2026, 12, 2, tzinfo=UTC)
    steps = [
        {"step": "raised", "occurrence": 1, "emitted_at": at, "details": {}},
        {"step": "notified", "occurrence": 1, "emitted_at": at, "details": {}},
        {"step": "notified", "occurrence": 2, "emitted_at": at, "details": {}},
        {"step": "escalated", "occurrence": 1, "emitted_at": at, "details": {}},
    ]
    labels = [(s["step"], s["label"]) for s in timeline(steps)]
    assert labels == [
        ("raised", "raised"),
        ("notified", "notified"),
        ("notified", "renotified"),
        ("escalated", "escalated"),
    ]
