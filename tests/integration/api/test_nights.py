"""The night summaries through the real API process, from its real PostgreSQL: per lamp over a
range of nights and per site for one night, with every role."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from api.problems import INVALID_CURSOR, INVALID_INPUT
from tests.integration.api.conftest import SITE_A, SITE_B, ApiRun
from tests.integration.api.test_endpoints import problem

PARIS = ZoneInfo("Europe/Paris")
TODAY = datetime.now(UTC).date()
LAST_NIGHT = TODAY - timedelta(days=1)


@pytest.fixture(autouse=True)
def services(require) -> None:  # type: ignore[no-untyped-def]
    require("postgres", "kafka", "elasticsearch", "redis")


def night(lamp: str, site: str, night_of: date, bed_exits: int) -> dict[str, Any]:
    start = datetime.combine(night_of, time(22), PARIS)
    end = datetime.combine(night_of + timedelta(days=1), time(7), PARIS)
    returned = end - timedelta(hours=2, minutes=13)
    return {
        "lamp_id": lamp,
        "site_id": site,
        "night_of": night_of,
        "time_zone": "Europe/Paris",
        "night_start": start,
        "night_end": end,
        "night_minutes": round((end - start).total_seconds() / 60),
        "covered_minutes": 530,
        "messages": 7000 + bed_exits,
        "minutes_in_bed": 470,
        "minutes_out_of_bed": 60,
        "bed_exits": bed_exits,
        "bathroom_visits": 2,
        "room_exits": 0,
        "restless_motion_events": 94,
        "restlessness_per_hour": 12.0,
        "longest_still_minutes": 131,
        "latest_return_to_bed": returned,
        "latest_return_to_bed_local": returned.astimezone(PARIS).strftime("%H:%M"),
        "emitted_at": end + timedelta(minutes=2),
    }


# L-A1 and L-A2 (site A) and L-B1 (site B) have rows in `lamps`; L-A9 has only nights.
NIGHTS = [
    night("L-A1", SITE_A, LAST_NIGHT - timedelta(days=2), 1),
    night("L-A1", SITE_A, LAST_NIGHT - timedelta(days=1), 2),
    night("L-A1", SITE_A, LAST_NIGHT, 3),
    night("L-A1", SITE_A, LAST_NIGHT - timedelta(days=40), 4),
    night("L-A2", SITE_A, LAST_NIGHT, 5),
    night("L-A9", SITE_A, LAST_NIGHT, 6),
    night("L-A9", SITE_A, LAST_NIGHT - timedelta(days=1), 7),
    night("L-B1", SITE_B, LAST_NIGHT, 8),
]


@pytest.fixture(scope="module", autouse=True)
def nights(api_run: ApiRun) -> None:
    columns = list(NIGHTS[0])
    with psycopg.connect(api_run.settings.postgres.conninfo()) as conn:
        for row in NIGHTS:
            conn.execute(
                f"INSERT INTO night_summaries ({', '.join(columns)}, source_partition, "  # noqa: S608 - our column names
                f"source_offset) VALUES ({', '.join(['%s'] * len(columns))}, 0, 0)",
                [row[c] for c in columns],
            )


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    """A seeded night as the API answers it (dates and times as ISO 8601)."""
    return {
        key: value.isoformat() if isinstance(value, date) else value for key, value in row.items()
    }


def bed_exits(nights: list[dict[str, Any]]) -> list[int]:
    return [n["bed_exits"] for n in nights]


def same_instant(a: str, b: str) -> bool:
    return datetime.fromisoformat(a) == datetime.fromisoformat(b)


@pytest.mark.parametrize("role", ["support", "staff_a", "admin"])
def test_a_lamps_nights_oldest_first_by_default_the_last_two_weeks(
    api_run: ApiRun, role: str
) -> None:
    response = api_run.get(role, "/lamps/L-A1/nights")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["lamp_id"], body["site_id"]) == ("L-A1", SITE_A)
    assert bed_exits(body["nights"]) == [1, 2, 3]  # the one 40 nights ago is out of range
    got, want = body["nights"][-1], as_json(NIGHTS[2])
    for key, value in want.items():
        if key in {"night_start", "night_end", "latest_return_to_bed", "emitted_at"}:
            assert same_instant(got[key], value), key
        else:
            assert got[key] == value, key
    assert set(got) == set(want)


def test_a_range_of_nights_from_inclusive_to_exclusive(api_run: ApiRun) -> None:
    start = (LAST_NIGHT - timedelta(days=40)).isoformat()
    end = LAST_NIGHT.isoformat()
    response = api_run.get("support", "/lamps/L-A1/nights", **{"from": start, "to": end})
    assert response.status_code == 200, response.text
    assert bed_exits(response.json()["nights"]) == [4, 1, 2]
    one = {"from": LAST_NIGHT.isoformat(), "to": TODAY.isoformat()}
    assert bed_exits(api_run.get("support", "/lamps/L-A1/nights", **one).json()["nights"]) == [3]


def test_a_lamp_known_only_by_its_nights_is_served(api_run: ApiRun) -> None:
    body = api_run.get("staff_a", "/lamps/L-A9/nights").json()
    assert (body["site_id"], bed_exits(body["nights"])) == (SITE_A, [7, 6])
    problem(api_run.get("staff_b", "/lamps/L-A9/nights"), 404)


@pytest.mark.parametrize("end", ["2020-01-01", "0001-01-03", "9999-12-31"])
def test_a_range_without_nights_is_an_empty_list(api_run: ApiRun, end: str) -> None:
    body = api_run.get("support", "/lamps/L-A1/nights", to=end).json()
    assert body == {"lamp_id": "L-A1", "site_id": SITE_A, "nights": []}


@pytest.mark.parametrize(("role", "lamp"), [("staff_b", "L-A1"), ("staff_a", "L-B1")])
def test_a_staff_token_finds_no_lamp_of_another_site(api_run: ApiRun, role: str, lamp: str) -> None:
    body = problem(api_run.get(role, f"/lamps/{lamp}/nights"), 404)
    assert lamp in body["detail"]


def test_an_unknown_lamp_is_not_found(api_run: ApiRun) -> None:
    problem(api_run.get("support", "/lamps/L-NOPE/nights"), 404)


@pytest.mark.parametrize("role", [None, "revoked", "forged"])
def test_no_valid_token_no_nights(api_run: ApiRun, role: str | None) -> None:
    for path in ("/lamps/L-A1/nights", f"/sites/{SITE_A}/nights"):
        problem(api_run.get(role, path), 401)


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"from": "2026-11-27", "to": "2026-11-20"}, 400, "from must be before to"),
        ({"from": "2026-11-27", "to": "2026-11-27"}, 400, "from must be before to"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, 400, "at most 366"),
        ({"from": "2026-13-01"}, 422, "from"),
        ({"from": "1764230400"}, 422, "date YYYY-MM-DD"),
        ({"to": "2026-11-27T08:00:00Z"}, 422, "date YYYY-MM-DD"),
        ({"night": "2026-11-27"}, 422, "unknown query parameter"),
    ],
)
def test_bad_night_ranges_are_clear_problems(
    api_run: ApiRun, params: dict[str, str], status: int, words: str
) -> None:
    body = problem(api_run.get("support", "/lamps/L-A1/nights", **params), status)
    assert words in str(body), body
    if status == 422:
        assert (body["type"], body["title"]) == (INVALID_INPUT, "Invalid input")


def test_a_sites_latest_night_by_default_every_lamp(api_run: ApiRun) -> None:
    body = api_run.get("staff_a", f"/sites/{SITE_A}/nights").json()
    assert [(n["lamp_id"], n["night_of"]) for n in body["items"]] == [
        ("L-A1", LAST_NIGHT.isoformat()),
        ("L-A2", LAST_NIGHT.isoformat()),
        ("L-A9", LAST_NIGHT.isoformat()),
    ]
    assert body["next_cursor"] is None
    earlier = (LAST_NIGHT - timedelta(days=1)).isoformat()
    body = api_run.get("support", f"/sites/{SITE_A}/nights", night=earlier).json()
    assert [(n["lamp_id"], n["bed_exits"]) for n in body["items"]] == [("L-A1", 2), ("L-A9", 7)]
    assert api_run.get("support", "/sites/no-such-home/nights").json()["items"] == []


def test_a_sites_nights_page_with_a_cursor(api_run: ApiRun) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        body = api_run.get("support", f"/sites/{SITE_A}/nights", **params).json()
        seen += [n["lamp_id"] for n in body["items"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert seen == ["L-A1", "L-A2", "L-A9"]
    body = problem(api_run.get("support", f"/sites/{SITE_A}/nights", cursor="garbage"), 400)
    assert body["type"] == INVALID_CURSOR


def test_a_staff_token_may_not_read_another_sites_nights(api_run: ApiRun) -> None:
    body = problem(api_run.get("staff_b", f"/sites/{SITE_A}/nights"), 403)
    assert SITE_A in body["detail"]
    assert api_run.get("staff_b", f"/sites/{SITE_B}/nights").json()["items"][0]["lamp_id"] == (
        "L-B1"
    )


def test_the_openapi_document_describes_the_nights(api_run: ApiRun) -> None:
    spec = api_run.get(None, "/openapi.json").json()
    lamp = spec["paths"]["/lamps/{lamp_id}/nights"]["get"]
    assert {p["name"] for p in lamp["parameters"]} == {"lamp_id", "from", "to"}
    assert {"200", "400", "401", "403", "404", "422", "503"} <= set(lamp["responses"])
    site = spec["paths"]["/sites/{site_id}/nights"]["get"]
    assert {p["name"] for p in site["parameters"]} == {"site_id", "night", "limit", "cursor"}
    night = spec["components"]["schemas"]["Night"]["properties"]
    assert {"minutes_out_of_bed", "bathroom_visits", "latest_return_to_bed_local"} <= set(night)
