"""The demo's night: where it falls, which lamps it expects a summary of, and the verdict."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import date, datetime
from zoneinfo import ZoneInfo

from devtools.demo_nights import (
    NIGHT_MINUTES,
    NightCheck,
    count_summaries,
    heard_during,
    judge,
    plan_night,
)
from devtools.simulator.presets import short_config
from pipeline.settings import Settings

PARIS = ZoneInfo("Europe/Paris")
# 2026-12-02 14:07:31 in Paris.
NOW = datetime(2026, 12, 2, 14, 7, 31, tzinfo=PARIS).timestamp()


def test_the_night_starts_this_minute_in_the_sites_zone() -> None:
    settings = Settings(detection={"site_timezones": {"demo-x-000": "America/New_York"}})
    night = plan_night(settings, "demo-x-000", 24.0, NOW)
    assert night.env() == {
        "VEILLEUSE_AGENTS__SUMMARISE_NIGHTS__START": "08:07",
        "VEILLEUSE_AGENTS__SUMMARISE_NIGHTS__END": f"08:{7 + NIGHT_MINUTES:02d}",
    }
    assert night.night_of == date(2026, 12, 2)
    assert night.end_ms - night.start_ms == NIGHT_MINUTES * 60_000
    assert night.start_ms <= NOW * 1000 < night.end_ms


def test_a_night_across_midnight_is_named_by_its_evening() -> None:
    late = datetime(2026, 12, 2, 23, 59, 10, tzinfo=PARIS).timestamp()
    night = plan_night(Settings(), "demo-x-000", 24.0, late)
    assert night.env()["VEILLEUSE_AGENTS__SUMMARISE_NIGHTS__END"] == "00:02"
    assert night.night_of == date(2026, 12, 2)


def test_the_lamps_heard_are_those_stamped_within_the_night() -> None:
    config = short_config(0, seed=3, run="demo-t", factor=5.0)
    start_ms = int(NOW * 1000)
    config = replace(config, start_ms=start_ms)
    lamps = {lamp for _, lamp in config.lamp_ids()}
    night = plan_night(Settings(), config.lamp_ids()[0][0], 24.0, NOW)
    heard = heard_during(config, night)
    assert heard and heard <= lamps
    # A night before the run heard no lamp.
    before = plan_night(Settings(), config.lamp_ids()[0][0], 24.0, NOW - 3600)
    assert heard_during(config, before) == set()


def test_the_verdict_wants_one_summary_per_lamp_heard() -> None:
    night = plan_night(Settings(), "demo-x-000", 24.0, NOW)
    row = {"lamp_id": "L-1", "night_of": "2026-12-02"}
    records = [
        {"lamp_id": "L-1", "night_of": date(2026, 12, 2)},
        {"lamp_id": "L-2", "night_of": date(2026, 12, 2)},
        {"lamp_id": "L-2", "night_of": date(2026, 12, 2)},
        {"lamp_id": "L-2", "night_of": date(2026, 12, 1)},  # another night: not counted
    ]
    counted = count_summaries(records, night)
    assert counted == Counter({"L-1": 1, "L-2": 2})

    good = NightCheck(night, {"L-1"}, {"L-1", "L-3"}, {"L-1": row}, Counter({"L-1": 1}))
    good.lamp_view = {"lamp_id": "L-1", "nights": [row]}
    judge(good)
    assert good.ok, good.problems

    doubled = NightCheck(night, {"L-1", "L-2"}, {"L-1", "L-2"}, {"L-1": row}, counted)
    judge(doubled)
    assert not doubled.ok
    assert any("L-2: 2 summaries" in p for p in doubled.problems)
    assert any("L-2: no summary" in p for p in doubled.problems)

    nobody = NightCheck(night, set(), {"L-1"})
    judge(nobody)
    assert not nobody.ok
