"""The baseline's per-message logic: parsing and rule 1 the old stack's way."""

from __future__ import annotations

from devtools.bench.baseline import Fall, FallCheck, parse


def check() -> FallCheck:
    return FallCheck(min_confidence=0.6, confirm_ms=30_000, staff_min_persons=2)


def suspicion(lamp: str, ts: int, confidence: float = 0.9) -> dict[str, object]:
    return {"lamp_id": lamp, "ts": ts, "type": "fall_suspected", "confidence": confidence}


def posture(lamp: str, what: str, persons: int = 1) -> dict[str, object]:
    return {"lamp_id": lamp, "ts": 0, "type": "posture", "posture": what, "persons": persons}


def test_a_suspicion_not_followed_by_getting_up_is_due_after_the_confirm_time() -> None:
    rule = check()
    rule.on_message("s", suspicion("L-1", 1_000))
    assert rule.due(30_999) == []
    assert rule.due(31_000) == [Fall("s", "L-1", 31_000)]
    assert rule.due(99_000) == []  # raised once


def test_getting_up_within_the_confirm_time_cancels_it() -> None:
    rule = check()
    rule.on_message("s", suspicion("L-1", 1_000))
    rule.on_message("s", posture("L-1", "sitting"))
    assert rule.due(60_000) == []


def test_a_low_confidence_or_staff_present_raises_nothing() -> None:
    rule = check()
    rule.on_message("s", suspicion("L-1", 1_000, confidence=0.5))
    rule.on_message("s", posture("L-2", "standing", persons=2))
    rule.on_message("s", suspicion("L-2", 1_000))
    assert rule.due(60_000) == []


def test_a_repeated_suspicion_keeps_the_first_deadline() -> None:
    rule = check()
    rule.on_message("s", suspicion("L-1", 1_000))
    rule.on_message("s", suspicion("L-1", 5_000))
    assert rule.due(31_000) == [Fall("s", "L-1", 31_000)]


def test_a_boolean_confidence_is_not_a_number() -> None:
    rule = check()
    rule.on_message("s", {"lamp_id": "L-1", "ts": 1, "type": "fall_suspected", "confidence": True})
    assert rule.pending == {}


def test_parse_takes_the_site_from_the_topic_and_skips_junk() -> None:
    good = b'{"v":1,"lamp_id":"L-1","seq":1,"ts":5,"type":"motion","zone":"room","level":3}'
    assert parse("lamps/fr-lyon-12/L-1/events", good) == (
        "fr-lyon-12",
        {"v": 1, "lamp_id": "L-1", "seq": 1, "ts": 5, "type": "motion", "zone": "room", "level": 3},
    )
    assert parse("lamps/fr-lyon-12/L-2/events", good) is None  # lamp_id mismatch
    assert parse("lamps/fr-lyon-12/L-1/events", b"not json") is None
    assert parse("lamps/fr-lyon-12/L-1/events", b"[1, 2]") is None
    assert parse("other/topic", good) is None
