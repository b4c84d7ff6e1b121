"""The agent ``summarise_nights``: one night summary per lamp and local night (22:00-07:00 site
time), emitted once when the lamp's clock passes 07:00 plus the grace. Driven through the testing
kit only: its fold with :class:`~agents.testing.Trace`, the agent itself (topics, Avro, settings,
changelog and restarts) with :class:`~agents.testing.AgentDriver`."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

import schemas
from agents.detect_incidents import AGENT as DETECT_INCIDENTS
from agents.summarise_nights import (
    AGENT,
    NightSummaryRule,
    NightSummarySettings,
    night_around,
)
from agents.testing import T0_MS, AgentDriver, Trace, at
from pipeline.errors import ConfigurationError
from pipeline.records import KafkaRecord
from pipeline.settings import DetectionSettings, Settings, load_settings

PARIS = ZoneInfo("Europe/Paris")
GRACE_S = 120
# The trace starts 2025-11-27 09:00 in Paris (CET, UTC+1): its first night is 22:00-07:00.
EVENING = date(2025, 11, 27)


def local(hour: int, minute: int = 0, evening: date = EVENING, zone: ZoneInfo = PARIS) -> float:
    """Seconds from the trace's start to ``hour:minute`` local time in the night of
    ``evening`` (hours before noon are the next morning's)."""
    day = evening.toordinal() + (hour < 12)
    when = datetime.combine(date.fromordinal(day), datetime.min.time().replace(hour=hour))
    when = when.replace(minute=minute, tzinfo=zone)
    return (when.timestamp() * 1000 - T0_MS) / 1000


NIGHT_START, NIGHT_END = local(22), local(7)


@dataclass(frozen=True)
class Stay:
    """The resident in one posture and zone from ``start`` to ``end`` (seconds)."""

    start: float
    end: float
    posture: str
    zone: str


def bed(start: float, end: float) -> Stay:
    return Stay(start, end, "lying", "bed")


def life(
    t: Trace,
    stays: Sequence[Stay],
    bed_motions: Iterable[float] = (),
    heard: tuple[float, float] | None = None,
    silent: Sequence[tuple[float, float]] = (),
    step_s: float = 30,
) -> list[KafkaRecord]:
    """The lamp's messages in device order: postures every ``step_s`` while the resident is
    seen (one 'absent' when not), motions in bed, a temperature reading every 60 s over
    ``heard`` (default: the stays' span); nothing within ``silent`` (lamp offline)."""
    plan: list[tuple[float, str, dict[str, Any]]] = []
    for stay in stays:
        s = stay.start
        while s < stay.end:
            persons = 0 if stay.posture == "absent" else 1
            plan.append((s, "posture", {"posture": stay.posture, "zone": stay.zone, "p": persons}))
            if stay.posture == "absent":
                break  # the protocol: a posture on every change, then every 5 s while seen
            s += step_s
    plan += [(s, "motion", {}) for s in bed_motions]
    first, last = heard or (stays[0].start, stays[-1].end)
    s = first
    while s < last:
        plan.append((s + 0.5, "temperature", {}))
        s += 60
    plan.sort(key=lambda item: item[0])
    records = []
    for s, kind, fields in plan:  # created in time order: seq follows the device's order
        if any(a <= s < b for a, b in silent):
            continue
        if kind == "posture":
            records.append(
                t.posture(s, fields["posture"], zone=fields["zone"], persons=fields["p"])
            )
        elif kind == "motion":
            records.append(t.motion(s, zone="bed"))
        else:
            records.append(t.temperature(s, 21.0))
    return records


def trace(**kw: Any) -> Trace:
    return Trace(rules=[NightSummaryRule], **kw)


def nights(t: Trace) -> list[dict[str, Any]]:
    return [record for kind, _, record in t.emitted if kind == "night_summary"]


def the_night(t: Trace) -> dict[str, Any]:
    t.run_until(NIGHT_END + GRACE_S + 1)
    (night,) = nights(t)
    return night


def a_night(t: Trace) -> list[KafkaRecord]:
    """21:30-23:00 sitting in the room, asleep, 02:00-02:10 in the bathroom, asleep, 05:00-05:20
    out of the room, asleep until 07:30; motions in bed at 23:30, 00:15, 03:00 and 04:00."""
    return life(
        t,
        [
            Stay(local(21, 30), local(23), "sitting", "room"),
            bed(local(23), local(2)),
            Stay(local(2), local(2, 10), "standing", "bathroom"),
            bed(local(2, 10), local(5)),
            Stay(local(5), local(5, 20), "absent", "room"),
            bed(local(5, 20), local(7, 30)),
        ],
        bed_motions=[local(23, 30), local(0, 15), local(3), local(4)],
    )


EXPECTED = {
    "lamp_id": "L-000123",
    "site_id": "fr-lyon-12",
    "night_of": EVENING,
    "time_zone": "Europe/Paris",
    "night_start": at(NIGHT_START),
    "night_end": at(NIGHT_END),
    "night_minutes": 540,
    "covered_minutes": 540,
    "minutes_in_bed": 450,
    "minutes_out_of_bed": 90,  # 22:00-23:00, 02:00-02:10, 05:00-05:20
    "bed_exits": 2,
    "bathroom_visits": 1,
    "room_exits": 1,
    "restless_motion_events": 4,
    "restlessness_per_hour": 0.5,  # 4 in 7.5 h in bed
    "longest_still_minutes": 105,  # 00:15-02:00
    "latest_return_to_bed": at(local(5, 20)),
    "latest_return_to_bed_local": "05:20",
}


def figures(night: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in night.items() if k != "messages"}


# -- the figures --------------------------------------------------------------------------------


def test_a_nights_figures() -> None:
    t = trace()
    t.deliver(a_night(t))
    night = the_night(t)
    assert figures(night) == EXPECTED
    # a reading each minute and a posture each 30 s of the night (the resident always seen
    # but for one 'absent'), plus 4 motions
    assert night["messages"] == 540 + 2 * (540 - 20) + 1 + 4


def test_the_record_fits_its_schema() -> None:
    t = trace()
    t.deliver(a_night(t))
    night = the_night(t)
    writer = schemas.schema("night_summary.v1")
    _, decoded = schemas.decode(schemas.encode(writer, {**night, "emitted_at": at(NIGHT_END)}))
    assert decoded["night_of"] == EVENING
    assert schemas.millis(decoded["latest_return_to_bed"]) == night["latest_return_to_bed"]
    assert decoded["minutes_in_bed"] == 450


def test_minutes_count_the_night_only() -> None:
    """In bed from 20:00 to 09:00 without moving: the night's 540 minutes, no more; the still
    stretch is cut at 22:00 and 07:00; going to bed before the night is no return to bed."""
    t = trace()
    t.deliver(life(t, [Stay(local(19), local(20), "standing", "room"), bed(local(20), local(9))]))
    night = the_night(t)
    assert night["minutes_in_bed"] == 540
    assert night["minutes_out_of_bed"] == 0
    assert night["longest_still_minutes"] == 540
    assert night["bed_exits"] == 0
    assert night["restlessness_per_hour"] == 0.0
    assert night["latest_return_to_bed"] is None
    assert night["latest_return_to_bed_local"] is None


def test_what_counts_as_in_bed_out_of_bed_and_a_visit() -> None:
    """Sitting in bed is in bed; standing by the bed, lying on the room's floor or in the
    bathroom is out of bed; each move into the bathroom is a visit, each 'absent' a room exit."""
    t = trace()
    t.deliver(
        life(
            t,
            [
                Stay(local(21, 50), local(22, 30), "sitting", "bed"),
                Stay(local(22, 30), local(22, 40), "standing", "bed"),
                Stay(local(22, 40), local(22, 50), "standing", "bathroom"),
                Stay(local(22, 50), local(23), "lying", "room"),
                Stay(local(23), local(23, 10), "sitting", "bathroom"),
                Stay(local(23, 10), local(23, 20), "absent", "room"),
                Stay(local(23, 20), local(23, 30), "standing", "entrance"),
                bed(local(23, 30), local(7, 10)),
            ],
        )
    )
    night = the_night(t)
    assert night["minutes_in_bed"] == 30 + 450
    assert night["minutes_out_of_bed"] == 60
    assert night["bed_exits"] == 1
    assert night["bathroom_visits"] == 2
    assert night["room_exits"] == 1
    assert night["latest_return_to_bed_local"] == "23:30"


def test_restlessness_counts_motion_in_bed_while_in_bed_only() -> None:
    """Motion in the bed zone while the resident is out of bed (making the bed), or in another
    zone while in bed (staff), is not restlessness and does not break a still stretch."""
    t = trace()
    records = life(
        t,
        [Stay(local(21, 50), local(23), "standing", "bed"), bed(local(23), local(7, 10))],
        bed_motions=[local(22, 30), local(1)],
    )
    records.append(t.motion(local(3), zone="room", arrive_s=local(3)))
    t.deliver(records)
    night = the_night(t)
    assert night["restless_motion_events"] == 1  # 01:00; at 22:30 the resident was up
    assert night["restlessness_per_hour"] == round(1 / 8, 1)
    assert night["longest_still_minutes"] == 360  # 01:00-07:00, the room's motion at 03:00 aside


def test_motion_below_the_restless_level_does_not_count() -> None:
    t = trace(rule_settings={"night_summary": {"restless_min_level": 50}})
    t.deliver(life(t, [bed(local(21, 50), local(7, 10))], bed_motions=[local(1)]))  # level 40
    night = the_night(t)
    assert night["restless_motion_events"] == 0
    assert night["longest_still_minutes"] == 540


def test_the_latest_return_is_the_last_one() -> None:
    t = trace()
    stays = [bed(local(21, 50), local(1))]
    stays += [Stay(local(1), local(1, 5), "standing", "bathroom"), bed(local(1, 5), local(4))]
    stays += [Stay(local(4), local(4, 12), "sitting", "room"), bed(local(4, 12), local(7, 10))]
    t.deliver(life(t, stays))
    night = the_night(t)
    assert night["latest_return_to_bed_local"] == "04:12"
    assert night["bed_exits"] == 2


# -- emission -----------------------------------------------------------------------------------


def test_emitted_once_when_the_lamps_clock_passes_the_end_plus_the_grace() -> None:
    t = trace()
    records = a_night(t)
    t.deliver(r for r in records if r.timestamp_ms < at(NIGHT_END + GRACE_S - 1))
    t.run_until(NIGHT_END + GRACE_S - 1)
    assert nights(t) == []
    t.run_until(NIGHT_END + GRACE_S + 1)
    assert len(nights(t)) == 1
    t.deliver(r for r in records if r.timestamp_ms >= at(NIGHT_END + GRACE_S - 1))
    t.run_until(NIGHT_END + 3 * 86_400)  # silent since 07:30: no more nights
    assert len(nights(t)) == 1
    assert "night_summary:close" not in t.timers


@pytest.mark.parametrize("skew_s", [-120, 120])
def test_the_night_is_cut_on_the_lamps_clock(skew_s: float) -> None:
    """A lamp's clock is off by up to ±120 s: its night, and its emission, follow its clock,
    as the hourly figures do (and keep running while it is silent)."""
    t = trace(skew_s=skew_s)
    t.deliver(life(t, [bed(local(21, 50), local(6))]))  # then silent
    t.run_until(NIGHT_END + GRACE_S - skew_s - 1)
    assert nights(t) == []
    t.run_until(NIGHT_END + GRACE_S - skew_s + 1)
    (night,) = nights(t)
    assert night["night_end"] == at(NIGHT_END)
    # the lamp covers 5 min past its last message at 05:59:30 (lamp time 05:59:30 + skew)
    assert night["covered_minutes"] == night["minutes_in_bed"] == 485 + skew_s // 60


def test_consecutive_nights_are_emitted_one_each() -> None:
    t = trace()
    second = date(2025, 11, 28)
    stays = [bed(local(21, 50), local(7, 10))]
    stays += [Stay(local(7, 10), local(21, 50, second), "sitting", "room")]
    stays += [bed(local(21, 50, second), local(7, 10, second))]
    t.deliver(life(t, stays))
    t.run_until(local(7, 10, second) + 600)
    first, then = nights(t)
    assert (first["night_of"], then["night_of"]) == (EVENING, second)
    assert first["minutes_in_bed"] == then["minutes_in_bed"] == 540
    assert then["latest_return_to_bed"] is None  # went to bed at 21:50: before the night


def test_a_restart_mid_night_changes_nothing() -> None:
    """A worker killed mid-night: its successor reads the lamp's state from the changelog
    and emits the same night, once."""
    records = a_night(trace())
    t = trace()
    half = len(records) // 2
    t.deliver(records[:half])
    t.restart()
    t.deliver(records[half:])
    t.run_until(NIGHT_END + GRACE_S + 1)
    t.restart()
    t.run_until(NIGHT_END + 86_400)
    (night,) = nights(t)
    assert figures(night) == EXPECTED


# -- duplicates, reordering, late records -------------------------------------------------------


def test_duplicates_count_once() -> None:
    t = trace()
    records = a_night(t)
    again = [r for r in records if (r.offset % 3 == 0)]
    t.deliver(records + [_arriving(r, r.timestamp_ms + 20_000) for r in again])
    assert figures(the_night(t)) == EXPECTED


def test_reordering_within_the_protocols_30_s_changes_nothing() -> None:
    t = trace()
    rng = random.Random(13)
    records = a_night(t)
    t.deliver(_arriving(r, r.timestamp_ms + rng.randrange(0, 30_000)) for r in records)
    assert figures(the_night(t)) == EXPECTED
    assert t.late == []


def test_a_record_later_than_the_grace_is_late_and_not_counted() -> None:
    t = trace()
    records = a_night(t)
    motion = t.motion(local(3, 30), zone="bed", arrive_s=local(3, 40))
    night_record_after_close = t.motion(local(6, 50), zone="bed", arrive_s=NIGHT_END + 600)
    t.deliver([*records, motion])
    night = the_night(t)
    t.feed(night_record_after_close)
    assert night["restless_motion_events"] == 4
    assert [reason for _, reason in t.late] == [
        "night_summary:out_of_order",
        "night_summary:night_closed",
    ]
    assert len(nights(t)) == 1


@pytest.mark.parametrize(
    ("replay_after_s", "late"),
    [(0, False), (60, False), (300, True)],
)
def test_a_wifi_outage_replayed(replay_after_s: float, late: bool) -> None:
    """The lamp buffers 01:00-01:10 during an outage and replays it when it reconnects at
    01:10, before its new messages, or after them: within the grace that changes nothing;
    later, the replay is late and the outage uncovered."""
    t = trace()
    records = a_night(t)
    outage = [r for r in records if at(local(1)) <= r.timestamp_ms < at(local(1, 10))]
    replay_at = at(local(1, 10) + replay_after_s)
    replayed = [_arriving(r, replay_at + i) for i, r in enumerate(outage)]
    t.deliver([r for r in records if r not in outage] + replayed)
    night = the_night(t)
    if late:
        assert {reason for _, reason in t.late} == {"night_summary:out_of_order"}
        assert night["covered_minutes"] == 540 - 5  # 01:04:30 (00:59:30 + 5 min) to 01:10:00
    else:
        assert t.late == []
        assert figures(night) == EXPECTED


def _arriving(record: KafkaRecord, arrive_ms: int) -> KafkaRecord:
    return KafkaRecord(
        record.topic,
        record.partition,
        record.offset,
        arrive_ms,
        record.key,
        record.value,
        record.headers,
    )


# -- partial nights -----------------------------------------------------------------------------


def test_a_lamp_offline_for_part_of_the_night() -> None:
    """Silent from 01:00 to 03:00: the lamp covers 5 min past its last message (rule 8), the
    rest of the gap counts in no figure, and getting back a posture in bed afterwards is not a
    return to bed (the resident's status was unknown)."""
    t = trace()
    records = life(t, [bed(local(21, 50), local(7, 10))], silent=[(local(1), local(3))])
    t.deliver(records)
    night = the_night(t)
    # not covered from 01:04:30 (00:59:30 + 5 min) to 03:00: 115.5 min of 540
    assert night["covered_minutes"] == 425  # 424.5, rounded half up
    assert night["minutes_in_bed"] == night["covered_minutes"]
    assert night["minutes_out_of_bed"] == 0
    assert night["latest_return_to_bed"] is None
    assert night["longest_still_minutes"] == 240  # 03:00-07:00; before: 22:00-01:04:30


def test_a_last_will_ends_coverage_at_once() -> None:
    t = trace()
    records = life(t, [bed(local(21, 50), local(7, 10))], silent=[(local(1), local(3))])
    records.append(t.last_will(local(1, 1)))
    t.deliver(records)
    night = the_night(t)
    assert night["covered_minutes"] == 540 - 119  # 01:01 to 03:00


def test_a_lamp_switched_on_mid_night() -> None:
    t = trace()
    t.deliver(life(t, [bed(local(2), local(7, 10))]))
    night = the_night(t)
    assert night["covered_minutes"] == night["minutes_in_bed"] == 300
    assert night["night_minutes"] == 540


def test_a_visit_under_way_when_the_lamp_comes_online_is_not_counted() -> None:
    """The resident's status is unknown before the first posture (or after a gap): found in
    the bathroom, they may have gone there before, so no visit; going back to bed from there
    is a return to bed."""
    t = trace()
    stays = [Stay(local(2), local(2, 5), "standing", "bathroom"), bed(local(2, 5), local(7, 10))]
    t.deliver(life(t, stays))
    night = the_night(t)
    assert night["bathroom_visits"] == 0
    assert night["minutes_out_of_bed"] == 5
    assert night["latest_return_to_bed_local"] == "02:05"


def test_a_lamp_silent_all_night_emits_nothing_and_stops_its_timers() -> None:
    t = trace()
    t.deliver(life(t, [Stay(local(12), local(20), "sitting", "room")]))
    t.run_until(NIGHT_END + 2 * 86_400)
    assert nights(t) == []
    assert t.timers == {}


def test_a_lamp_rebooting_mid_night_keeps_its_night() -> None:
    """The lamp reboots at 02:00 (30 s silent) and its clock is corrected by 3 minutes: the
    rule's times move with it, nothing is late, and the night stays whole."""
    t = trace(skew_s=90)
    first = life(t, [bed(local(21, 50), local(2))])
    t.reboot(skew_s=-90)
    second = life(t, [bed(local(2, 0) + 30, local(7, 10))])
    t.deliver(first + second)
    t.run_until(NIGHT_END + GRACE_S + 91)
    (night,) = nights(t)
    assert t.engine.counts["reboots"] == 1
    assert t.late == []
    # The clock went back 3 min: the lamp read 01:56:30-01:59:30 twice, counted once.
    assert night["covered_minutes"] == night["minutes_in_bed"] == 540


# -- time zones and daylight saving -------------------------------------------------------------


@pytest.mark.parametrize(
    ("evening", "length"),
    [
        (date(2026, 10, 24), 600),  # clocks go back at 03:00 on the 25th
        (date(2026, 3, 28), 480),  # clocks go forward at 02:00 on the 29th
        (date(2026, 6, 13), 540),
    ],
)
def test_dst_nights_are_longer_or_shorter(evening: date, length: int) -> None:
    t = trace()
    start, end = local(21, 50, evening), local(7, 10, evening)
    stays = [bed(start, local(1, 0, evening))]
    stays += [Stay(local(1, 0, evening), local(1, 10, evening), "standing", "bathroom")]
    stays += [bed(local(1, 10, evening), end)]
    t.deliver(life(t, stays))
    t.run_until(local(7, evening=evening) + GRACE_S + 1)
    (night,) = nights(t)
    assert night["night_of"] == evening
    assert night["night_minutes"] == night["covered_minutes"] == length
    assert night["minutes_in_bed"] == length - 10
    assert night["latest_return_to_bed_local"] == "01:10"
    assert night["night_end"] - night["night_start"] == length * 60_000


def test_the_october_night_in_paris_holds_the_repeated_hour() -> None:
    """On 2026-10-25 the hour 02:00-03:00 happens twice: a return to bed in the second one is
    02:40 local, 01:40 UTC, and the night ends at 07:00 CET (06:00 UTC)."""
    start, end, evening = night_around(
        int(datetime(2026, 10, 24, 21, tzinfo=UTC).timestamp() * 1000),
        PARIS,
        *NightSummaryRule(DetectionSettings()).bounds,
    )
    assert evening == date(2026, 10, 24)
    assert start == int(datetime(2026, 10, 24, 20, tzinfo=UTC).timestamp() * 1000)
    assert end == int(datetime(2026, 10, 25, 6, tzinfo=UTC).timestamp() * 1000)
    t = trace()
    second_0240 = (int(datetime(2026, 10, 25, 1, 40, tzinfo=UTC).timestamp() * 1000) - T0_MS) / 1000
    stays = [bed(local(21, 50, evening), second_0240 - 600)]
    stays += [Stay(second_0240 - 600, second_0240, "standing", "bathroom")]
    stays += [bed(second_0240, local(7, 10, evening))]
    t.deliver(life(t, stays))
    t.run_until(local(7, evening=evening) + GRACE_S + 1)
    (night,) = nights(t)
    assert night["latest_return_to_bed_local"] == "02:40"
    assert night["minutes_out_of_bed"] == 10


def test_a_sites_zone_comes_from_the_detection_settings() -> None:
    """``site_timezones`` maps a site (or a site prefix ending in '-') to its zone, as for
    rule 9; the others use ``default_timezone``."""
    config = DetectionSettings(site_timezones={"us-": "America/New_York"})
    t = trace(site_id="us-nyc-3", config=config)
    evening = date(2025, 11, 27)
    new_york = ZoneInfo("America/New_York")
    t.deliver(life(t, [bed(local(21, 50, evening, new_york), local(7, 10, evening, new_york))]))
    t.run_until(local(7, 0, evening, new_york) + GRACE_S + 1)
    (night,) = nights(t)
    assert night["time_zone"] == "America/New_York"
    assert night["night_start"] == int(datetime(2025, 11, 28, 3, tzinfo=UTC).timestamp() * 1000)
    assert night["minutes_in_bed"] == 540


# -- settings -----------------------------------------------------------------------------------


def test_a_night_needs_a_length() -> None:
    with pytest.raises(ValidationError, match="same time"):
        NightSummarySettings(start="07:00", end="07:00")


def test_a_night_within_one_day() -> None:
    """An end after the start: the night does not span midnight."""
    t = trace(rule_settings={"night_summary": {"start": "00:00", "end": "06:00"}})
    t.deliver(life(t, [bed(local(21, 50), local(7, 10))]))
    t.run_until(local(6) + GRACE_S + 1)
    (night,) = nights(t)
    assert night["night_minutes"] == night["minutes_in_bed"] == 360
    assert night["night_of"] == date(2025, 11, 28)


def test_a_reboot_while_observations_wait_for_the_grace() -> None:
    """The last 2 minutes before a reboot are still buffered (not folded) when the clock is
    corrected: they move with it, so the resident getting up just after the reboot is one bed
    exit, not several interleaved with the old clock's postures."""
    t = trace(skew_s=90)
    first = life(t, [bed(local(21, 50), local(2))])
    t.reboot(skew_s=-90)
    second = life(t, [Stay(local(2) + 30, local(2, 10), "standing", "room")])
    second += life(t, [bed(local(2, 10), local(7, 10))])
    t.deliver(first + second)
    t.run_until(NIGHT_END + GRACE_S + 91)
    (night,) = nights(t)
    assert t.late == []
    assert night["bed_exits"] == 1
    assert night["latest_return_to_bed_local"] == "02:08"  # 02:10 on a clock 90 s slow


# -- the agent: topics, Avro, settings, changelog ---------------------------------------------

PREFIX = "t."
NIGHTLY = PREFIX + "activity.nightly.v1"


def agent_settings(**agents: dict[str, Any]) -> Settings:
    return load_settings(kafka={"topic_prefix": PREFIX}, agents=agents, _env_file=None)


def driver(settings: Settings | None = None) -> AgentDriver:
    return AgentDriver(AGENT, settings or agent_settings())


def as_read(night: dict[str, Any]) -> dict[str, Any]:
    """A night of the fold as a consumer reads it from the topic, less ``emitted_at``."""
    writer = schemas.schema("night_summary.v1")
    _, decoded = schemas.decode(schemas.encode(writer, {**night, "emitted_at": 0}))
    return {k: v for k, v in decoded.items() if k != "emitted_at"}


def read(d: AgentDriver) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "emitted_at"} for r in d.records(NIGHTLY)]


def test_the_agent_emits_the_folds_night_once_on_its_topic() -> None:
    t = trace()
    records = a_night(t)
    t.deliver(records)
    fold = the_night(t)
    d = driver()
    d.replay(sorted(records, key=lambda r: r.timestamp_ms), topic=PREFIX + "lamp.messages.v1")
    d.run_until(at(NIGHT_END + GRACE_S + 1))
    assert read(d) == [as_read(fold)]
    (key, _), *_ = d.on(NIGHTLY)
    assert key == b"L-000123"  # keyed by lamp, like every lamp topic
    assert [topic for topic, *_ in d.produced] == [NIGHTLY]  # no side output: detection's
    (when,) = [r["emitted_at"] for r in d.records(NIGHTLY)]
    # emitted as the lamp's clock passed 07:00 plus the grace (its records arrive on time)
    assert at(NIGHT_END + GRACE_S) <= schemas.millis(when) <= at(NIGHT_END + GRACE_S + 60)


def test_the_agent_killed_mid_night_emits_the_same_night_once() -> None:
    """Only the committed changelog survives each restart (one in the night, one after its
    end): the successor emits the same night, once."""
    records = sorted(a_night(trace()), key=lambda r: r.timestamp_ms)
    expected = driver()
    expected.replay(records, topic=PREFIX + "lamp.messages.v1")
    expected.run_until(at(NIGHT_END + 86_400))
    d = driver()
    third = len(records) // 3
    d.replay(records[:third], topic=PREFIX + "lamp.messages.v1")
    d.restart()
    d.replay(records[third:], topic=PREFIX + "lamp.messages.v1")
    d.run_until(at(NIGHT_END + GRACE_S + 1))
    d.restart()
    d.run_until(at(NIGHT_END + 86_400))
    assert read(d) == read(expected)
    (night,) = read(d)
    assert night["minutes_in_bed"] == EXPECTED["minutes_in_bed"]
    assert b"L-000123" in d.table  # its own table: the lamp's state, keyed by lamp


def test_the_agents_settings_are_its_own_section() -> None:
    t = trace()
    records = sorted(a_night(t), key=lambda r: r.timestamp_ms)
    d = driver(agent_settings(summarise_nights={"restless_min_level": 50}))
    d.replay(records, topic=PREFIX + "lamp.messages.v1")
    d.run_until(at(NIGHT_END + GRACE_S + 1))
    (night,) = read(d)
    assert night["restless_motion_events"] == 0  # the trace's motions are of level 40
    with pytest.raises(ConfigurationError, match="VEILLEUSE_AGENTS__SUMMARISE_NIGHTS__"):
        driver(agent_settings(summarise_nights={"start": "7 pm"}))


def test_detection_no_longer_summarises_nights() -> None:
    records = sorted(a_night(trace()), key=lambda r: r.timestamp_ms)
    d = AgentDriver(DETECT_INCIDENTS, agent_settings())
    d.replay(records, topic=PREFIX + "lamp.messages.v1")
    d.run_until(at(NIGHT_END + 3_600))
    assert d.on(NIGHTLY) == []
