"""The API's queries: parameters never pasted into SQL, staff scoping, cursors, live hours."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from api import queries
from api.tokens import Principal

SUPPORT = Principal("desk", "support")
STAFF = Principal("nurse", "staff", ("fr-lyon-12",))
EVIL = "x'); DROP TABLE alerts; --"


def text(query: Any) -> str:
    # as_string needs no server for plain SQL/identifier composition.
    return str(query.as_string(None))  # type: ignore[arg-type]


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    cursor = queries.encode_cursor("alerts", ["2026-11-27T08:00:00+00:00", "a-1"])
    assert queries.decode_cursor("alerts", cursor, 2) == ["2026-11-27T08:00:00+00:00", "a-1"]
    with pytest.raises(queries.BadCursorError, match="another listing"):
        queries.decode_cursor("lamps", cursor, 2)
    with pytest.raises(queries.BadCursorError, match="malformed"):
        queries.decode_cursor("alerts", cursor, 3)
    for junk in ("%%%", "bm90IGpzb24", "", "e30"):
        with pytest.raises(queries.BadCursorError):
            queries.decode_cursor("alerts", junk, 2)


def test_filter_values_travel_as_parameters_not_as_sql() -> None:
    filters = queries.AlertFilter(site=EVIL, lamp=EVIL, kind=EVIL, state="raised")
    query, params = queries.alerts_query(SUPPORT, filters, 10, (datetime.now(UTC), EVIL))
    sql = text(query)
    assert EVIL not in sql
    assert params["site"] == params["lamp"] == params["kind"] == params["after_id"] == EVIL
    assert "ack.alert_id IS NULL" in sql  # the state filter is fixed text
    assert "scope_sites" not in params


def test_a_staff_token_is_scoped_to_its_sites_in_every_listing() -> None:
    query, params = queries.alerts_query(STAFF, queries.AlertFilter(), 10, None)
    assert "a.site_id = ANY(%(scope_sites)s)" in text(query)
    assert params["scope_sites"] == ["fr-lyon-12"]
    query, params = queries.lamps_query(STAFF, None, 10, None)
    assert "l.site_id = ANY(%(scope_sites)s)" in text(query)
    body = queries.search_body(STAFF, queries.SearchFilter(), 10, None)
    assert {"terms": {"site_id": ["fr-lyon-12"]}} in body["query"]["bool"]["filter"]


def test_search_filters_time_bounds_and_search_after() -> None:
    start = datetime(2025, 11, 27, 8, tzinfo=UTC)
    end = datetime(2025, 11, 27, 9, tzinfo=UTC)
    filters = queries.SearchFilter(
        q='floor "unbalanced', lamp="L-1", type="posture", start=start, end=end
    )
    body = queries.search_body(SUPPORT, filters, 25, [1, 2, 3])
    flt = body["query"]["bool"]["filter"]
    assert {"term": {"lamp_id": "L-1"}} in flt
    assert {"term": {"type": "posture"}} in flt
    (bounds,) = [f["range"]["event_time"] for f in flt if "range" in f]
    assert (bounds["gte"], bounds["lt"]) == (1_764_230_400_000, 1_764_234_000_000)
    assert body["query"]["bool"]["must"][0]["simple_query_string"]["query"] == 'floor "unbalanced'
    assert body["search_after"] == [1, 2, 3]
    assert body["size"] == 25


def test_an_open_hour_folds_into_its_day() -> None:
    day_start = datetime(2025, 11, 27, tzinfo=UTC)
    day: dict[str, Any] = dict.fromkeys(queries.COUNTS, 2)
    day.update(
        start=day_start, live=False, temperature_readings=2, temperature_min=19.0,
        temperature_mean=20.0, temperature_max=21.0, last_seen_at=day_start,
    )  # fmt: skip
    hour = queries.live_point(
        {
            **dict.fromkeys(queries.COUNTS, 1),
            "hour_start": 1_764_230_400_000,
            "temperature_readings": 2,
            "temperature_min": 22.0,
            "temperature_mean": 23.0,
            "temperature_max": 24.0,
            "last_seen_at": 1_764_230_460_000,
        }
    )
    merged = queries.fold_into_day(day, hour, day_start)
    assert merged["messages"] == 3
    assert merged["temperature_readings"] == 4
    assert (merged["temperature_min"], merged["temperature_mean"], merged["temperature_max"]) == (
        19.0,
        21.5,
        24.0,
    )
    assert merged["live"] is True
    assert merged["last_seen_at"] == datetime(2025, 11, 27, 8, 1, tzinfo=UTC)
    alone = queries.fold_into_day(None, hour, day_start)
    assert alone["start"] == day_start and alone["messages"] == 1


def test_a_message_hit_becomes_the_api_shape() -> None:
    hit = {
        "_id": "L-1:4:1764230400123",
        "_source": {
            "lamp_id": "L-1", "site_id": "s-1", "type": "motion", "seq": 4,
            "ts": 1_764_230_400_123, "received_at": 1_764_230_400_200,
            "event_time": 1_764_230_400_123, "payload": {"zone": "bed"}, "raw": "{...}",
        },
    }  # fmt: skip
    message = queries.message_of(hit)
    assert message["ts"] == datetime(2025, 11, 27, 8, 0, 0, 123000, tzinfo=UTC)
    assert message["payload"] == {"zone": "bed"}
