"""Rules 1, 2, 4, 5 and 6 of the lamp protocol on hand-written traces through a real engine."""

from __future__ import annotations

import random

import orjson
import pytest

from agents.testing import T0_MS, Trace, at, seconds
from pipeline.settings import DetectionSettings

FALL_KINDS = ("fall", "fall_recovered")
RAISED = ("fall", "raised")
RESOLVED = ("fall", "resolved")
RECOVERED = [("fall_recovered", "raised"), ("fall_recovered", "resolved")]


def on_floor(t: Trace, start_s: float, end_s: float, **kw: object) -> list:
    return t.postures(start_s, end_s, "on_floor", zone="floor", **kw)


def fell_at_10(t: Trace, down_until_s: float = 37) -> None:
    """Standing, a suspicion at 10 s, then on the floor every 5 s from 12 s."""
    t.feed(t.posture(0, "standing"), t.fall(10), *on_floor(t, 12, down_until_s))


# -- rule 1: confidence and the 30 s -----------------------------------------------------------


def test_suspicion_at_the_confidence_threshold_is_confirmed() -> None:
    """A confidence of exactly 0.6 counts (>= 0.6)."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.fall(10, confidence=0.6), *on_floor(t, 12, 37))
    t.run_until(41)
    assert t.steps(*FALL_KINDS) == [RAISED]
    assert t.alerts[0].details["confidence"] == "0.60"


def test_suspicion_below_the_confidence_threshold_is_ignored() -> None:
    """0.59 raises nothing, even when the lamp goes silent after it."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.fall(10, confidence=0.59))
    t.run_until(120)
    assert t.steps(*FALL_KINDS) == []
    assert "fall:confirm" not in t.timers


def test_confidence_threshold_is_configurable() -> None:
    """VEILLEUSE_RULES__FALL__MIN_CONFIDENCE moves the threshold."""
    t = Trace(rule_settings={"fall": {"min_confidence": 0.5}})
    t.feed(t.posture(0, "standing"), t.fall(10, confidence=0.55))
    t.run_until(41)
    assert t.steps(*FALL_KINDS) == [RAISED]


def test_fall_is_raised_at_30_s_of_lamp_time_not_before() -> None:
    """The confirmation waits exactly 30 s after the suspicion's ts, then raises at once."""
    t = Trace()
    fell_at_10(t, down_until_s=37)
    assert t.run_until(39.999) == []
    [alert] = t.run_until(40)
    assert (alert.kind, alert.state, alert.severity) == ("fall", "raised", "critical")
    assert alert.incident_started_at == at(10)
    assert alert.emitted_at == at(40)
    assert alert.lamp_id == "L-000123"
    assert alert.site_id == "fr-lyon-12"
    assert alert.details == {
        "reason": "fall_not_recovered",
        "confidence": "0.82",
        "zone": "floor",
        "lamp_time": str(at(40)),
    }


def test_confirmation_time_is_configurable() -> None:
    """VEILLEUSE_RULES__FALL__CONFIRM_S moves the deadline."""
    t = Trace(rule_settings={"fall": {"confirm_s": 10}})
    fell_at_10(t, down_until_s=17)
    assert t.run_until(19.999) == []
    assert [a.emitted_at for a in t.run_until(20)] == [at(20)]


def test_getting_up_at_29_s_is_a_recovery_not_a_fall() -> None:
    """Standing 29 s after the suspicion: one fall_recovered (info, raised then resolved)."""
    t = Trace()
    fell_at_10(t, down_until_s=37)
    t.feed(t.posture(39, "standing"))
    t.run_until(300)
    assert t.steps(*FALL_KINDS) == RECOVERED
    raised, resolved = t.of(*FALL_KINDS)
    assert raised.alert_id == resolved.alert_id
    assert raised.severity == "info"
    assert raised.incident_started_at == at(10)
    assert resolved.details["reason"] == "got_up"
    assert t.timers.get("fall:confirm") is None


def test_sitting_up_also_counts_as_recovery() -> None:
    """Sitting up is getting back up, like standing."""
    t = Trace()
    fell_at_10(t, down_until_s=27)
    t.feed(t.posture(30, "sitting"))
    t.run_until(300)
    assert t.steps(*FALL_KINDS) == RECOVERED


def test_getting_up_at_31_s_resolves_the_raised_fall() -> None:
    """Standing 31 s after the suspicion: the fall was raised at 30 s, then resolved."""
    t = Trace()
    fell_at_10(t, down_until_s=37)
    t.feed(t.posture(41, "standing"))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]
    raised, resolved = t.alerts
    assert raised.alert_id == resolved.alert_id
    assert resolved.incident_started_at == at(10)
    assert resolved.emitted_at == at(41)
    assert resolved.details["reason"] == "stood_up"
    assert resolved.details["posture"] == "standing"


# -- rule 2: long lie --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("posture", "zone"), [("on_floor", "floor"), ("lying", "room"), ("lying", "bathroom")]
)
def test_long_lie_without_suspicion_is_a_fall(posture: str, zone: str) -> None:
    """60 s down (on_floor, or lying outside bed) without fall_suspected raises a fall."""
    t = Trace()
    t.feed(t.posture(0, "standing"), *t.postures(5, 60, posture, zone=zone))
    assert t.run_until(64.999) == []
    [alert] = t.run_until(65)
    assert (alert.kind, alert.state, alert.severity) == ("fall", "raised", "critical")
    assert alert.incident_started_at == at(5)
    assert alert.details["reason"] == "long_lie"
    assert alert.details["zone"] == zone


def test_long_lie_raised_when_the_lamp_goes_silent() -> None:
    """One on_floor posture, then silence: the long lie still fires at 60 s."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.posture(5, "on_floor", "floor"))
    assert t.run_until(64.999) == []
    assert t.steps(*FALL_KINDS) == []
    t.run_until(65)
    assert t.steps(*FALL_KINDS) == [RAISED]


def test_long_lie_time_is_configurable() -> None:
    """VEILLEUSE_RULES__FALL__LONG_LIE_S moves the long lie's deadline."""
    t = Trace(rule_settings={"fall": {"long_lie_s": 20}})
    t.feed(t.posture(0, "standing"), t.posture(5, "on_floor", "floor"))
    assert t.run_until(24.999) == []
    assert [a.emitted_at for a in t.run_until(25)] == [at(25)]


def test_down_for_59_s_then_standing_raises_nothing() -> None:
    """Getting up after 59 s on the floor is not a long lie."""
    t = Trace()
    t.feed(t.posture(0, "standing"), *on_floor(t, 5, 60), t.posture(64, "standing"))
    t.run_until(600)
    assert t.steps(*FALL_KINDS) == []


def test_lying_in_bed_raises_nothing() -> None:
    """Lying in bed for an hour is sleeping."""
    t = Trace()
    t.feed(*t.postures(0, 3600, "lying", zone="bed"))
    assert t.steps(*FALL_KINDS) == []
    assert t.timers.get("fall:long_lie") is None


def test_long_lie_then_standing_resolves() -> None:
    """The long-lie fall closes when the resident stands up."""
    t = Trace()
    t.feed(*on_floor(t, 0, 90), t.posture(95, "standing"))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]
    assert t.alerts[1].details["reason"] == "stood_up"


def test_suspicion_during_a_long_lie_confirms_on_its_own_30_s() -> None:
    """on_floor then a suspicion: one fall, confirmed 30 s after the suspicion."""
    t = Trace()
    t.feed(t.posture(0, "on_floor", "floor"), t.fall(10), *on_floor(t, 12, 37))
    assert t.run_until(39.999) == []
    [alert] = t.run_until(120)
    assert alert.emitted_at == at(40)
    assert alert.incident_started_at == at(10)
    assert alert.details["reason"] == "fall_not_recovered"


# -- rule 4: staff in the room -----------------------------------------------------------------


def test_staff_present_at_the_suspicion_raises_nothing() -> None:
    """Two persons seen before the suspicion: floor care, no fall and no long lie."""
    t = Trace()
    t.feed(t.posture(0, "standing", persons=2), t.fall(10), *on_floor(t, 12, 300, persons=2))
    t.run_until(400)
    assert t.steps(*FALL_KINDS) == []


def test_the_staff_threshold_is_configurable() -> None:
    """VEILLEUSE_RULES__FALL__STAFF_MIN_PERSONS=3: two persons are not staff, the fall is
    raised; three are."""
    two = Trace(rule_settings={"fall": {"staff_min_persons": 3}})
    two.feed(two.posture(0, "standing", persons=2), two.fall(10), *on_floor(two, 12, 60, persons=2))
    two.run_until(60)
    assert two.steps(*FALL_KINDS) == [RAISED]
    three = Trace(rule_settings={"fall": {"staff_min_persons": 3}})
    three.feed(
        three.posture(0, "standing", persons=3), three.fall(10), *on_floor(three, 12, 60, persons=3)
    )
    three.run_until(60)
    assert three.steps(*FALL_KINDS) == []


def test_staff_arriving_during_the_30_s_raises_nothing() -> None:
    """A caregiver arriving 15 s after the suspicion cancels the confirmation."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.fall(10), *on_floor(t, 12, 20))
    t.feed(*on_floor(t, 25, 300, persons=2))
    t.run_until(400)
    assert t.steps(*FALL_KINDS) == []
    assert "fall:confirm" not in t.timers


def test_staff_arriving_just_before_the_deadline_raises_nothing() -> None:
    """Staff seen at 29.5 s, then the lamp goes silent: nothing at the deadline."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.fall(10), *on_floor(t, 12, 37))
    t.feed(t.posture(39.5, "on_floor", "floor", persons=3))
    t.run_until(300)
    assert t.steps(*FALL_KINDS) == []


def test_staff_leaving_a_resident_on_the_floor_starts_a_long_lie() -> None:
    """Once staff are gone (persons back to 1), 60 s more on the floor is a fall."""
    t = Trace()
    t.feed(*on_floor(t, 0, 100, persons=2), *on_floor(t, 105, 180))
    assert t.steps(*FALL_KINDS) == [RAISED]
    assert t.alerts[0].incident_started_at == at(105)
    assert t.alerts[0].emitted_at == at(165)


# -- rule 6: the silent lamp -------------------------------------------------------------------


@pytest.mark.parametrize("skew_s", [0, 120, -120])
def test_silent_lamp_fall_is_raised_within_2_s_of_its_deadline(skew_s: float) -> None:
    """Suspicion, then not one more message: the fall is raised by wall time alone."""
    t = Trace(skew_s=skew_s)
    t.feed(t.posture(0, "standing"), t.fall(10))
    deadline = at(10 + 30)  # the suspicion's wall time + 30 s
    assert t.engine.next_due() == deadline
    assert t.run_until(39.9) == []
    [alert] = t.run_until(45)
    assert alert.state == "raised"
    assert 0 <= alert.emitted_at - deadline <= 2000
    assert alert.incident_started_at == at(10 + skew_s)


def test_silent_lamp_fall_is_raised_by_a_periodic_tick() -> None:
    """A worker ticking every 200 ms raises it within one tick of the deadline."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.fall(10))
    engine = t.engine
    tick = at(10)
    while not engine.outputs.alerts:
        tick += 200
        t.wall_ms = tick
        engine.advance(tick)
    [alert] = engine.take_outputs().alerts
    assert 0 <= alert.emitted_at - at(40) <= 200


# -- rule 5: one alert per incident ------------------------------------------------------------


def test_duplicated_records_raise_and_resolve_once() -> None:
    """Every record delivered three times (QoS 1): one raised, one resolved."""
    t = Trace()
    records = [t.posture(0, "standing"), t.fall(10), *on_floor(t, 12, 57)]
    records += [t.posture(60, "standing"), t.posture(65, "standing")]
    for record in records:
        t.feed(record, record, record)
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]
    assert t.engine.counts["duplicates"] == 2 * len(records)


def test_repeated_suspicions_during_an_incident_raise_once() -> None:
    """Suspicions before and after the alert belong to the same incident."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.fall(10), t.fall(15), *on_floor(t, 17, 22), t.fall(25))
    t.feed(*on_floor(t, 27, 42), t.fall(45, confidence=0.95), *on_floor(t, 47, 57))
    t.feed(t.posture(60, "standing"))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]
    assert t.alerts[0].incident_started_at == at(10)


def test_duplicate_suspicion_after_the_incident_closed_raises_nothing() -> None:
    """A late duplicate of the suspicion (same seq and ts) cannot reopen the incident."""
    t = Trace()
    suspicion = t.fall(10)
    t.feed(t.posture(0, "standing"), suspicion, *on_floor(t, 12, 42), t.posture(60, "standing"))
    t.feed(suspicion, suspicion)
    t.run_until(300)
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]


def test_straggler_suspicion_forgotten_by_the_deduplicator_raises_nothing() -> None:
    """Once the deduplicator forgot it, the closed incident's time still filters it out."""
    t = Trace(config=DetectionSettings(dedup_max_entries=16))
    suspicion = t.fall(10)
    t.feed(t.posture(0, "standing"), suspicion, *on_floor(t, 12, 42), t.posture(60, "standing"))
    t.feed(*t.postures(65, 200, "standing"))
    late_copy = t.fall(10, seq=1, arrive_s=205)
    t.feed(late_copy)
    t.run_until(300)
    assert t.engine.counts["duplicates"] == 0
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]


def test_a_new_fall_after_the_incident_closed_is_a_new_alert() -> None:
    """Fall, stand up, fall again: two incidents, two alert ids."""
    t = Trace()
    fell_at_10(t, down_until_s=42)
    t.feed(t.posture(50, "standing"), t.fall(100), *on_floor(t, 102, 135))
    t.feed(t.posture(140, "sitting"))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED, RAISED, RESOLVED]
    first, second = t.alerts[0], t.alerts[2]
    assert first.alert_id != second.alert_id
    assert second.incident_started_at == at(100)


# -- reordering (up to 30 s) -------------------------------------------------------------------


def test_reordered_got_up_arriving_before_the_deadline_is_a_recovery() -> None:
    """The standing at 20 s arrives at 35 s, after on_floor records it preceded: the resident
    got up within the 30 s, so it is a fall_recovered; the older on_floor stragglers that
    arrive after it do not start a long lie."""
    t = Trace()
    standing = t.posture(20, "standing", arrive_s=35)
    early_floor = [t.posture(s, "on_floor", "floor", arrive_s=s + 20) for s in (12, 15)]
    t.deliver([t.posture(0, "standing"), t.fall(10), *early_floor, standing])
    t.deliver(t.postures(25, 100, "sitting"))
    t.run_until(300)
    assert t.steps(*FALL_KINDS) == RECOVERED
    assert t.alerts[0].emitted_at == at(35)


def test_reordered_got_up_arriving_after_the_deadline_resolves_the_alert() -> None:
    """Alarms fire on the lamp's clock without waiting for reordering: at 40 s no record has
    shown the resident up, so the fall is raised then (rule 6 forbids waiting the 30 s that
    reordering may take). The resident's "got up" records (20 s onwards) arrive late, from
    45 s: the first of them resolves the alert (stood_up) and nothing more is raised."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.fall(10), *on_floor(t, 12, 17))
    t.deliver(t.posture(s, "standing", arrive_s=s + 25) for s in (20, 25, 30, 35, 40, 45))
    t.run_until(300)
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]
    raised, resolved = t.alerts
    assert raised.emitted_at == at(40)
    assert resolved.emitted_at == at(45)
    assert resolved.details["reason"] == "stood_up"


def test_older_got_up_arriving_after_later_on_floor_records_does_not_resolve() -> None:
    """The standing at 20 s arrives at 45 s, after on_floor records of 25..40 s arrived: the
    newest postures say the resident is on the floor, so the raised fall stays open (one
    incident) until a newer record shows them up."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.fall(10), t.posture(12, "on_floor", "floor"))
    t.feed(*on_floor(t, 25, 40))
    t.feed(t.posture(20, "standing", arrive_s=45))
    t.feed(*on_floor(t, 45, 200))
    assert t.steps(*FALL_KINDS) == [RAISED]
    t.feed(t.posture(205, "standing"))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]
    assert t.alerts[1].emitted_at == at(205)


def test_older_got_up_arriving_before_the_deadline_then_down_again() -> None:
    """Standing at 20 s arrives at 35 s, after on_floor records of 25 and 30 s: the resident
    got up within the 30 s (fall_recovered) and was down again from 25 s. The long lie that
    follows is raised, at most the reordering delay (30 s) after 60 s from 25 s: the down
    records that arrived before the recovery do not count towards it."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.fall(10), t.posture(12, "on_floor", "floor"))
    t.feed(*on_floor(t, 25, 30), t.posture(20, "standing", arrive_s=35))
    t.feed(*on_floor(t, 35, 200))
    assert t.steps(*FALL_KINDS) == [*RECOVERED, RAISED]
    long_lie = t.alerts[-1]
    assert long_lie.details["reason"] == "long_lie"
    assert at(85) <= long_lie.emitted_at <= at(85 + 30)


def test_suspicion_arriving_after_the_got_up_record_is_a_recovery() -> None:
    """The suspicion is delayed 20 s, behind the standing it preceded: a recovery."""
    t = Trace()
    t.deliver([t.posture(0, "standing"), t.fall(10, arrive_s=30), t.posture(20, "standing")])
    t.run_until(300)
    assert t.steps(*FALL_KINDS) == RECOVERED
    assert t.alerts[0].incident_started_at == at(10)


def test_staff_posture_reordered_before_the_suspicion_still_counts() -> None:
    """Two persons seen at 8 s, that record arriving after the suspicion at 10 s: no alert."""
    t = Trace()
    t.deliver(
        [
            t.posture(0, "standing"),
            t.posture(8, "sitting", persons=2, arrive_s=12),
            t.fall(10),
            t.posture(11, "on_floor", "floor", persons=2, arrive_s=20),
        ]
    )
    t.run_until(300)
    assert t.steps(*FALL_KINDS) == []


@pytest.mark.parametrize("seed", range(12))
def test_shuffled_incident_raises_one_fall_never_early(seed: int) -> None:
    """Each record of an incident is delayed 0-30 s at random: still one fall raised, never
    before its 30 s, at most 30 s late (a lamp clock estimated from delayed records only),
    resolved once the standing at 100 s arrives."""
    rng = random.Random(seed)
    t = Trace()
    t.feed(*t.postures(0, 5, "standing"))
    times = [10, *range(12, 100, 5), 100, 105]
    records = []
    for s in times:
        arrive = s + rng.uniform(0, 29.9)
        if s == 10:
            records.append(t.fall(s, arrive_s=arrive))
        elif s < 100:
            records.append(t.posture(s, "on_floor", "floor", arrive_s=arrive))
        else:
            records.append(t.posture(s, "standing", arrive_s=arrive))
    t.deliver(records)
    t.run_until(400)
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]
    raised, resolved = t.alerts
    assert raised.incident_started_at == at(10)
    assert at(40) <= raised.emitted_at <= at(70)
    assert resolved.emitted_at >= at(100)
    assert resolved.details["reason"] == "stood_up"


# -- decisions in event time (found by the demo's stricter scoring) ----------------------------


def raised_at(t: Trace, kind: str = "fall") -> list[float]:
    """Wall seconds (after the trace's start) at which ``kind`` was raised."""
    return [(a.emitted_at - T0_MS) / 1000 for a in t.of(kind) if a.state == "raised"]


def test_a_fall_just_after_the_caregiver_left_with_that_posture_reordered() -> None:
    """A caregiver is seen until 5 s, the resident alone at 8 s, falls at 10 s and stays down.
    The "alone" posture is delayed 12 s by the network. In event time the resident was alone
    when they fell: the fall is due at 40 s. (The rule once judged rule 4 on the last posture
    received, dropped the suspicion and raised only the long lie, at 71 s; with a caregiver
    back before that, never: a fall missed in the demo's home.)"""
    t = Trace()
    t.deliver([
        t.posture(0, "standing", persons=2),
        t.posture(5, "standing", persons=2),
        t.posture(8, "standing", persons=1, arrive_s=20),
        t.fall(10),
        *t.postures(11, 56, "on_floor", zone="floor"),
    ])  # fmt: skip
    t.run_until(80)
    assert raised_at(t) == [40]
    assert t.alerts[0].incident_started_at == at(10)


def test_a_late_posture_showing_staff_at_the_suspicion_silences_it() -> None:
    """The mirror case: the suspicion at 10 s and a posture of 12 s (the resident alone on the
    floor) arrive first, then a posture of 9 s showing a caregiver: staff were there at the
    suspicion, which raises nothing (rule 4). The resident alone on the floor from 12 s is
    still rule 2's: a long lie at 72 s if nobody comes."""
    t = Trace()
    t.deliver([
        t.posture(0, "standing"),
        t.fall(10),
        t.posture(12, "on_floor", zone="floor"),
        t.posture(9, "standing", persons=2, arrive_s=15),
    ])  # fmt: skip
    t.run_until(71)
    assert t.steps(*FALL_KINDS) == []
    t.run_until(80)
    assert raised_at(t) == [72]
    assert t.alerts[0].details["reason"] == "long_lie"


def test_a_long_lie_counts_from_the_earliest_down_posture_not_the_first_received() -> None:
    """Sitting, then lying on the room's floor from 10 s; that first "down" posture is delayed
    12 s, the next ones are not. Rule 2: 60 s of event time on the floor, due at 70 s (the
    rule once started its clock at the 15 s posture received first: raised at 75 s)."""
    t = Trace()
    t.deliver([
        t.posture(0, "sitting"),
        t.posture(5, "sitting"),
        t.posture(10, "lying", arrive_s=22),
        *t.postures(15, 80, "on_floor", zone="floor"),
    ])  # fmt: skip
    t.run_until(90)
    assert raised_at(t) == [70]
    assert t.alerts[0].incident_started_at == at(10)
    assert (t.alerts[0].details["reason"], t.alerts[0].details["zone"]) == ("long_lie", "room")


def test_a_late_suspicion_of_a_fall_the_resident_got_up_from_is_still_a_recovery() -> None:
    """Standing, a suspicion at 2 s delayed 20 s, on the floor at 3 and 8 s, sitting from 12 s:
    the resident got up within the 30 s, a ``fall_recovered``. The "down" postures arrived
    first and opened (then closed) a long-lie phase; the rule once ignored the late suspicion
    as older than that phase, and reported nothing."""
    t = Trace()
    t.deliver([
        t.posture(0, "standing"),
        t.fall(2, arrive_s=22),
        t.posture(3, "on_floor", zone="floor"),
        t.posture(8, "on_floor", zone="floor"),
        *t.postures(12, 32, "sitting"),
    ])  # fmt: skip
    t.run_until(60)
    assert t.steps(*FALL_KINDS) == RECOVERED
    assert t.alerts[0].incident_started_at == at(2)


def test_an_earlier_suspicion_arriving_late_brings_the_deadline_forward() -> None:
    """Two suspicions of one fall, at 8 and 18 s; the first is delayed 15 s. The fall is
    due 30 s after the first (38 s), not after the one received first (48 s)."""
    t = Trace()
    t.deliver([
        t.posture(0, "standing"),
        t.fall(8, arrive_s=23),
        t.posture(10, "on_floor", zone="floor"),
        t.fall(18),
        *t.postures(15, 60, "on_floor", zone="floor"),
    ])  # fmt: skip
    t.run_until(90)
    assert raised_at(t) == [38]
    assert t.alerts[0].incident_started_at == at(8)


def test_a_suspicion_during_a_long_lie_does_not_postpone_it() -> None:
    """Lying on the floor from 10 s (long lie due at 70 s), a suspicion at 58 s (due at 88 s):
    the earlier deadline raises the fall, as a long lie."""
    t = Trace()
    t.feed(t.posture(0, "standing"), *t.postures(10, 55, "lying"), t.fall(58))
    t.feed(*t.postures(60, 100, "on_floor", zone="floor"))
    t.run_until(120)
    assert raised_at(t) == [70]
    assert t.alerts[0].details["reason"] == "long_lie"
    assert t.alerts[0].incident_started_at == at(10)


def test_a_lamp_flooding_postures_keeps_a_bounded_history() -> None:
    """200 postures within 2 s (a faulty lamp): the state keeps at most 16 of them, and a
    fall among them is still judged (on the floor, alone, 60 s: a long lie)."""
    t = Trace()
    t.feed(*t.postures(0, 1.99, "on_floor", step_s=0.01, zone="floor"))
    assert len(t.rule_state("fall").postures) <= 16  # type: ignore[attr-defined]
    t.run_until(70)
    assert raised_at(t) == [60]


def random_day(rng: random.Random) -> list[tuple[float, str, dict[str, object]]]:
    """(event seconds, type, fields) of a lamp's 400 s: spells of 10-90 s standing, sitting,
    on the floor (with or without a caregiver), in bed or lying on the room's floor, a
    suspicion just before most "down" spells and a few false ones."""
    spells = [("standing", "room", 1), ("sitting", "room", 1), ("on_floor", "floor", 1),
              ("lying", "bed", 1), ("on_floor", "floor", 2), ("standing", "room", 2),
              ("lying", "room", 1)]  # fmt: skip
    day: list[tuple[float, str, dict[str, object]]] = [
        (s, "posture", {"posture": "standing", "zone": "room", "persons": 1, "confidence": 0.9})
        for s in (0, 5)
    ]
    start = 10.0
    while start < 400:
        posture, zone, persons = rng.choice(spells)
        length = rng.choice([10, 20, 25, 35, 50, 70, 90])
        if posture in ("on_floor", "lying") and rng.random() < 0.7:
            suspicion = {"confidence": 0.8, "zone": "floor"}
            day.append((start - rng.uniform(0, 3), "fall_suspected", suspicion))
        elif rng.random() < 0.08:
            suspicion = {"confidence": 0.7, "zone": "room"}
            day.append((start + rng.uniform(0, 5), "fall_suspected", suspicion))
        fields = {"posture": posture, "zone": zone, "persons": persons, "confidence": 0.9}
        day += [(s, "posture", fields) for s in seconds(start, start + length - 1, 5)]
        start += length
    return sorted(day, key=lambda r: r[0])


def falls_of(day: list[tuple[float, str, dict[str, object]]], delays: list[float]) -> list:
    """[started_at, raised_at, resolved_at or None] of each fall alert of the day delivered
    with these network delays."""
    t = Trace()
    t.deliver(
        [
            t.record(s, kind, arrive_s=s + d, **f)
            for (s, kind, f), d in zip(day, delays, strict=True)
        ]
    )
    t.run_until(900)
    assert t.dead == []
    falls: dict[str, list] = {}
    for a in t.of("fall"):
        falls.setdefault(a.alert_id, [a.incident_started_at, None, None])
        falls[a.alert_id][1 if a.state == "raised" else 2] = a.emitted_at
    return list(falls.values())


@pytest.mark.parametrize("seed", range(100))
def test_reordering_within_30_s_misses_no_fall_and_raises_none_early(seed: int) -> None:
    """A random lamp day delivered in event-time order and again with every record (after the
    first two) delayed 0-30 s at random, the protocol's bound. Every fall of the ordered
    delivery is raised in the reordered one too, from the same start, or falls inside a fall
    alert open at that moment (rule 5: one incident); none is raised before its 30 s.
    Reordering may still add a fall: a "got up" or "caregiver came" posture arriving after
    the deadline cannot stop an alarm that rule 6 forbids holding back. The rule of 682f163
    failed this on 14 of these 100 seeds and 79 of seeds 0-499 (the cases above); this one
    passes all 500 (measured 2026-12-02)."""
    rng = random.Random(seed)
    day = random_day(rng)
    ordered = falls_of(day, [0.0] * len(day))
    delays = [0.0 if s < 8 else rng.uniform(0, 29.9) for s, _, _ in day]
    reordered = falls_of(day, delays)
    for started, raised, _ in ordered:
        same = [f for f in reordered if f[0] == started]
        open_then = [f for f in reordered if f[1] <= raised and (f[2] is None or f[2] >= raised)]
        assert same or open_then, f"fall of {(started - T0_MS) / 1000} s missed"
    assert all(raised >= started + 30_000 for started, raised, _ in reordered)


# -- late replay after an outage ---------------------------------------------------------------


def outage_then_replay(t: Trace, replay: list) -> None:
    """On time until 60 s; the Wi-Fi drops; everything since arrives at once at 600 s."""
    t.feed(*t.postures(0, 60, "standing"))
    t.feed(*replay)


def test_late_replay_of_a_fall_raises_it_and_the_lamp_offline_alert() -> None:
    """Buffered for 9 minutes, then replayed at once: the lamp is offline from 360 s (5 min
    of silence), back online at 600 s, and the replayed fall (suspicion, then 40 s on the
    floor) is raised as soon as it arrives."""
    t = Trace()
    replay = [t.fall(100, arrive_s=600)]
    replay += [t.posture(s, "on_floor", "floor", arrive_s=600) for s in range(102, 141, 5)]
    outage_then_replay(t, replay)
    assert t.steps() == [
        ("lamp_offline", "raised"),
        ("lamp_offline", "resolved"),
        RAISED,
    ]
    offline, back, fall = t.alerts
    assert offline.emitted_at == at(360)
    assert offline.incident_started_at == at(60)
    assert back.emitted_at == at(600)
    assert fall.emitted_at == at(600)
    assert fall.incident_started_at == at(100)


def test_late_replay_in_one_batch_sees_the_resident_get_up() -> None:
    """A replay processed as one batch: the deadline fires on the replayed records' time, so
    a recovery within the 30 s is a fall_recovered, not a fall."""
    t = Trace()
    replay = [t.fall(100, arrive_s=600)]
    replay += [t.posture(s, "on_floor", "floor", arrive_s=600) for s in (102, 107)]
    replay += [t.posture(s, "standing", arrive_s=600) for s in (112, 117, 122, 127, 132)]
    t.feed(*t.postures(0, 60, "standing"))
    t.feed_batch(*replay)
    t.run_until(700)
    assert t.steps(*FALL_KINDS) == RECOVERED


def test_late_replay_in_one_batch_fires_deadlines_in_event_time_order() -> None:
    """A replay processed as one batch, the resident getting up 45 s after the suspicion:
    the deadline passed within the batch fires before the later records, so it is a fall
    (raised, then resolved by the standing), not a recovery."""
    t = Trace()
    replay = [t.fall(100, arrive_s=600)]
    replay += [t.posture(s, "on_floor", "floor", arrive_s=600) for s in range(102, 141, 5)]
    replay += [t.posture(145, "standing", arrive_s=600)]
    t.feed(*t.postures(0, 60, "standing"))
    t.feed_batch(*replay)
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]
    raised, resolved = t.of(*FALL_KINDS)
    assert raised.details["lamp_time"] == str(at(130))
    assert resolved.details["reason"] == "stood_up"


def test_late_replay_ticked_between_records_raises_then_resolves() -> None:
    """The same replay, with the worker's tick between its records: the fall's 30 s passed
    on the lamp's clock long ago, so it is raised as soon as the suspicion is in, and the
    standing replayed right after resolves it (documents the engine: alarms never wait)."""
    t = Trace()
    replay = [t.fall(100, arrive_s=600)]
    replay += [t.posture(s, "on_floor", "floor", arrive_s=600) for s in (102, 107)]
    replay += [t.posture(s, "standing", arrive_s=600) for s in (112, 117, 122, 127, 132)]
    outage_then_replay(t, replay)
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]


# -- clock skew --------------------------------------------------------------------------------


def incident_trace(t: Trace) -> None:
    fell_at_10(t, down_until_s=57)
    t.feed(t.posture(60, "standing"))


@pytest.mark.parametrize("skew_s", [120, -120])
def test_lamp_clock_off_by_120_s_gives_the_same_alerts(skew_s: float) -> None:
    """Same wall-time alerts as with a true clock; incident_started_at is the lamp's time."""
    true, skewed = Trace(), Trace(skew_s=skew_s)
    incident_trace(true)
    incident_trace(skewed)
    assert skewed.steps() == true.steps() == [RAISED, RESOLVED]
    assert [a.emitted_at for a in skewed.alerts] == [at(40), at(60)]
    assert [a.incident_started_at for a in skewed.alerts] == [at(10 + skew_s)] * 2


@pytest.mark.parametrize("skew_s", [120, -120])
def test_skewed_lamp_long_lie_fires_on_wall_time(skew_s: float) -> None:
    """The long lie of a skewed lamp fires 60 s of wall time after it started."""
    t = Trace(skew_s=skew_s)
    t.feed(t.posture(0, "standing"), t.posture(5, "on_floor", "floor"))
    assert t.run_until(64.999) == []
    [alert] = t.run_until(70)
    assert alert.emitted_at == at(65)
    assert alert.incident_started_at == at(5 + skew_s)


# -- reboot ------------------------------------------------------------------------------------


def rebooting_lamp(skew_before_s: float) -> Trace:
    """A lamp at seq 1000 with a clock off by ``skew_before_s``, standing from 0 to 100 s,
    rebooting at 105 s: seq back to 0, clock right."""
    t = Trace(skew_s=skew_before_s, seq=1000)
    t.feed(*t.postures(0, 100, "standing"))
    t.reboot(skew_s=0)
    return t


@pytest.mark.parametrize("skew_before_s", [120, 0, -120])
def test_messages_after_a_reboot_are_not_duplicates(skew_before_s: float) -> None:
    """seq restarts at 0: the new (seq, ts) pairs are new messages, and the reboot is seen."""
    t = Trace(skew_s=skew_before_s, seq=0)
    t.feed(*t.postures(0, 500, "standing"))  # seq 0..100 before the reboot
    t.reboot(skew_s=0)
    t.feed(t.button(510))
    assert t.steps("help_requested") == [("help_requested", "raised")]
    assert t.engine.counts["duplicates"] == 0
    assert t.engine.counts["reboots"] == 1


@pytest.mark.parametrize("skew_before_s", [120, -120])
def test_fall_after_a_reboot_fires_on_time(skew_before_s: float) -> None:
    """The clock resynchronised at reboot: the fall's deadline is 30 s of true time after
    the suspicion, not early and not late, and times seen before the reboot (standing at
    100 s, 120 s ahead) do not pass for a recovery."""
    t = rebooting_lamp(skew_before_s)
    t.feed(*t.postures(110, 195, "standing"), t.fall(200), *on_floor(t, 202, 227))
    assert t.run_until(229.999) == []
    t.feed(*on_floor(t, 232, 300))
    assert t.steps(*FALL_KINDS) == [RAISED]
    assert t.alerts[0].emitted_at == at(230)
    assert t.alerts[0].incident_started_at == at(200)
    assert t.alerts[0].details["reason"] == "fall_not_recovered"


def test_staff_seen_before_a_reboot_does_not_hide_a_fall_after_it() -> None:
    """Persons counted before the reboot (on a clock 120 s ahead) are replaced by the
    resident alone after it: the fall is confirmed."""
    t = Trace(skew_s=120, seq=1000)
    t.feed(*t.postures(0, 100, "standing", persons=2))
    t.reboot(skew_s=0)
    t.feed(*t.postures(110, 150, "standing"), t.fall(160), *on_floor(t, 162, 220))
    assert t.steps(*FALL_KINDS) == [RAISED]
    assert t.alerts[0].emitted_at == at(190)


@pytest.mark.parametrize("skew_before_s", [120, -120])
def test_suspicion_before_a_reboot_confirms_on_time_after_it(skew_before_s: float) -> None:
    """Suspicion at 100 s, the lamp reboots at 105 s: its deadline keeps its wall time
    (130 s), and the postures on the new clock are compared with it."""
    t = Trace(skew_s=skew_before_s, seq=1000)
    t.feed(*t.postures(0, 95, "standing"), t.fall(100))
    t.reboot(skew_s=0)
    t.feed(*on_floor(t, 112, 127))
    assert t.run_until(129.999) == []
    assert [a.emitted_at for a in t.run_until(131)] == [at(130)]
    t.feed(*on_floor(t, 132, 150), t.posture(155, "standing"))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]


@pytest.mark.parametrize("skew_before_s", [120, -120])
def test_recovery_after_a_reboot_within_the_30_s(skew_before_s: float) -> None:
    """Suspicion before the reboot, standing 15 s later after it: a recovery, no fall."""
    t = Trace(skew_s=skew_before_s, seq=1000)
    t.feed(*t.postures(0, 95, "standing"), t.fall(100))
    t.reboot(skew_s=0)
    t.feed(t.posture(115, "standing"))
    t.run_until(300)
    assert t.steps(*FALL_KINDS) == RECOVERED


# -- worker restart ----------------------------------------------------------------------------


def test_restart_before_the_deadline_still_raises_once() -> None:
    """Restarted between the suspicion and its deadline, with the lamp silent: the stored
    deadline is restored and fires on time."""
    t = Trace()
    t.feed(t.posture(0, "standing"), t.fall(10), t.posture(12, "on_floor", "floor"))
    t.run_until(20)
    t.restart()
    t.run_until(100)
    assert t.steps(*FALL_KINDS) == [RAISED]
    assert t.alerts[0].emitted_at == at(40)
    t.feed(t.posture(110, "standing"))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]


def stored_as_before_the_history(t: Trace) -> None:
    """Rewrite the lamp's stored fall state as the rule of 682f163 wrote it (no postures kept,
    the last posture's persons and time, no separate time on the floor)."""
    head, _, dedup = t.store[t.lamp_id].partition(b"\x00")
    raw = orjson.loads(head)
    fall = raw["rules"]["fall"]
    last = fall["postures"][-1]
    for name in ("postures", "suspicions", "closed", "down_since", "down_zone"):
        del fall[name]
    fall |= {"persons": last[2], "persons_at": last[0], "last_upright_at": -1}
    t.store[t.lamp_id] = orjson.dumps(raw) + b"\x00" + dedup


def test_a_long_lie_stored_by_the_previous_version_still_fires() -> None:
    """Upgraded while a resident lies on the floor (a rolling deploy): the long lie that the
    previous version started still fires at its 60 s."""
    t = Trace()
    t.feed(t.posture(0, "standing"), *t.postures(10, 30, "on_floor", zone="floor"))
    stored_as_before_the_history(t)
    t.restart()
    t.run_until(100)
    assert raised_at(t) == [70]
    assert t.alerts[0].details["reason"] == "long_lie"


def test_staff_stored_by_the_previous_version_still_counts() -> None:
    """Upgraded while a caregiver is in the room: a suspicion just after, the lamp silent
    then, is still rule 4's."""
    t = Trace()
    t.feed(*t.postures(0, 20, "standing", persons=2))
    stored_as_before_the_history(t)
    t.restart()
    t.feed(t.fall(22))
    t.run_until(100)
    assert t.steps(*FALL_KINDS) == []


def test_restart_after_the_alert_does_not_raise_it_again() -> None:
    """Restarted after the fall was raised: more floor postures and suspicions, no new raise;
    standing resolves the same alert."""
    t = Trace()
    fell_at_10(t, down_until_s=37)
    t.run_until(41)
    t.restart()
    t.feed(*on_floor(t, 42, 47), t.fall(50), *on_floor(t, 52, 120))
    t.restart()
    t.feed(t.posture(125, "standing"))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]
    assert t.alerts[0].alert_id == t.alerts[1].alert_id


def test_restart_replaying_uncommitted_records_raises_once() -> None:
    """Records replayed after a restart (their offsets not committed) are duplicates."""
    t = Trace()
    records = [t.posture(0, "standing"), t.fall(10), *on_floor(t, 12, 57)]
    t.feed(*records)
    t.restart()
    t.feed(*records[1:])
    t.feed(t.posture(60, "standing"))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]


# -- acknowledgement and ids -------------------------------------------------------------------


def test_acknowledge_closes_the_incident_and_a_new_fall_gets_a_new_id() -> None:
    """Staff acknowledge: a resolved record says who; the next fall is a new alert."""
    t = Trace()
    fell_at_10(t, down_until_s=37)
    [raised] = t.run_until(41)
    assert t.acknowledge(raised.alert_id, "nurse-7", 50)
    ack = t.alerts[-1]
    assert (ack.kind, ack.state, ack.alert_id) == ("fall", "resolved", raised.alert_id)
    assert ack.details["reason"] == "acknowledged"
    assert ack.details["acknowledged_by"] == "nurse-7"
    assert ack.emitted_at == at(50)
    # The nurse helps the resident up; the resident falls again later.
    t.feed(*on_floor(t, 52, 80, persons=2), t.posture(85, "standing", persons=2))
    t.feed(t.posture(100, "standing"), t.fall(200), *on_floor(t, 202, 240))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED, RAISED]
    assert t.alerts[-1].alert_id != raised.alert_id
    assert t.alerts[-1].incident_started_at == at(200)


def test_acknowledge_of_an_unknown_alert_does_nothing() -> None:
    """An id that is not the open incident's (or an unknown lamp) closes nothing."""
    t = Trace()
    fell_at_10(t, down_until_s=37)
    t.run_until(41)
    assert not t.acknowledge("00000000-0000-0000-0000-000000000000", "nurse-7", 50)
    assert not t.engine.acknowledge("L-999", t.alerts[0].alert_id, "nurse-7", at(50))
    t.feed(t.posture(60, "standing"))
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]
    assert t.alerts[-1].details["reason"] == "stood_up"


def test_acknowledge_after_a_restart_loads_the_stored_lamp() -> None:
    """The ack may reach a worker that has not seen the lamp since it restarted."""
    t = Trace()
    fell_at_10(t, down_until_s=37)
    [raised] = t.run_until(41)
    t.restart()
    assert t.acknowledge(raised.alert_id, "nurse-7", 50)
    assert t.steps(*FALL_KINDS) == [RAISED, RESOLVED]


def test_alert_ids_are_deterministic() -> None:
    """The same trace twice gives the same alert ids (and records)."""

    def run() -> list:
        t = Trace()
        fell_at_10(t, down_until_s=57)
        t.feed(t.posture(60, "standing"), t.fall(100), t.posture(110, "standing"))
        t.feed(*on_floor(t, 200, 300))
        return t.alerts

    first, second = run(), run()
    assert [a.kind for a in first] == ["fall", "fall", "fall_recovered", "fall_recovered", "fall"]
    assert first == second
    assert len({a.alert_id for a in first}) == 3
    assert all(a.emitted_at >= T0_MS for a in first)


def test_standing_in_the_same_millisecond_as_the_suspicion_is_not_a_recovery() -> None:
    """Found by the end-to-end demo: a lamp may stamp its last standing posture and the
    suspicion with the same ms; that posture came first (lower seq), so the fall stands."""
    t = Trace()
    t.feed(t.posture(10, "standing"), t.fall(10))
    t.run_until(41)
    assert t.steps(*FALL_KINDS) == [RAISED]
