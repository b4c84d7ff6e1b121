"""Every endpoint with every role, against the real API process and its real services."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from api.problems import INVALID_CURSOR, INVALID_INPUT
from tests.integration.api.conftest import SITE_A, SITE_B, YESTERDAY, ApiRun

READERS = ("support", "staff_a", "staff_b", "admin")
REFUSED = (None, "revoked", "forged")


@pytest.fixture(autouse=True)
def services(require) -> None:  # type: ignore[no-untyped-def]
    require("postgres", "kafka", "elasticsearch", "redis")


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The body of an RFC 9457 problem answer with that status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == status and body["detail"], body
    return body


@pytest.mark.parametrize(
    "path",
    [
        "/lamps",
        "/lamps/L-A1",
        "/lamps/L-A1/activity",
        "/alerts",
        "/alerts/a-open",
        "/messages/search",
        "/tokens",
    ],
)
@pytest.mark.parametrize("role", REFUSED)
def test_no_valid_token_no_answer(api_run: ApiRun, path: str, role: str | None) -> None:
    response = api_run.get(role, path)
    body = problem(response, 401)
    assert (body["type"], body["title"]) == ("about:blank", "Unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("role", REFUSED)
def test_no_valid_token_no_acknowledgement(api_run: ApiRun, role: str | None) -> None:
    assert api_run.post(role, "/alerts/a-open/ack").status_code == 401


@pytest.mark.parametrize(
    ("role", "lamps"),
    [
        ("support", ["L-A1", "L-A2", "L-B1"]),
        ("admin", ["L-A1", "L-A2", "L-B1"]),
        ("staff_a", ["L-A1", "L-A2"]),
        ("staff_b", ["L-B1"]),
    ],
)
def test_lamps_lists_what_the_role_may_see(api_run: ApiRun, role: str, lamps: list[str]) -> None:
    response = api_run.get(role, "/lamps")
    assert response.status_code == 200
    assert [lamp["lamp_id"] for lamp in response.json()["items"]] == lamps


def test_a_lamp_carries_site_firmware_online_and_open_incidents(api_run: ApiRun) -> None:
    lamp = api_run.get("support", "/lamps/L-A1").json()
    assert (lamp["site_id"], lamp["firmware"], lamp["online"]) == (SITE_A, "1.4.2", True)
    assert [i["alert_id"] for i in lamp["open_incidents"]] == ["a-open"]
    assert api_run.get("support", "/lamps/L-A2").json()["open_incidents"] == []


def test_lamps_pages_with_a_cursor(api_run: ApiRun) -> None:
    first = api_run.get("support", "/lamps", limit=2).json()
    assert [lamp["lamp_id"] for lamp in first["items"]] == ["L-A1", "L-A2"]
    second = api_run.get("support", "/lamps", limit=2, cursor=first["next_cursor"]).json()
    assert [lamp["lamp_id"] for lamp in second["items"]] == ["L-B1"]
    assert second["next_cursor"] is None


@pytest.mark.parametrize("path", ["/lamps/L-B1", "/lamps/L-B1/activity", "/alerts/b-open"])
def test_a_staff_token_finds_nothing_of_another_site(api_run: ApiRun, path: str) -> None:
    assert api_run.get("staff_a", path).status_code == 404
    assert api_run.get("staff_b", path).status_code == 200
    assert api_run.get("support", path).status_code == 200


@pytest.mark.parametrize("path", ["/lamps", "/alerts", "/messages/search"])
def test_a_staff_token_cannot_ask_for_another_site(api_run: ApiRun, path: str) -> None:
    response = api_run.get("staff_a", path, site=SITE_B)
    body = problem(response, 403)
    assert SITE_B in body["detail"]
    assert (body["type"], body["title"]) == ("about:blank", "Forbidden")
    assert api_run.get("staff_a", path, site=SITE_A).status_code == 200


@pytest.mark.parametrize("role", READERS)
def test_alerts_list_scoped_newest_first(api_run: ApiRun, role: str) -> None:
    items = api_run.get(role, "/alerts").json()["items"]
    expected = {
        "support": ["a-open", "a-done", "b-open"],
        "admin": ["a-open", "a-done", "b-open"],
        "staff_a": ["a-open", "a-done"],
        "staff_b": ["b-open"],
    }[role]
    assert [a["alert_id"] for a in items] == expected


def test_alerts_filters_and_pages(api_run: ApiRun) -> None:
    def ids(**params: object) -> list[str]:
        response = api_run.get("support", "/alerts", **params)
        assert response.status_code == 200, response.text
        return [a["alert_id"] for a in response.json()["items"]]

    assert ids(state="resolved") == ["a-done"]
    assert ids(kind="help_requested") == ["a-done", "b-open"]
    assert ids(lamp="L-B1") == ["b-open"]
    assert ids(site=SITE_A, kind="fall_confirmed") == ["a-open"]
    page = api_run.get("support", "/alerts", limit=2).json()
    rest = api_run.get("support", "/alerts", limit=2, cursor=page["next_cursor"]).json()
    assert [a["alert_id"] for a in page["items"] + rest["items"]] == ["a-open", "a-done", "b-open"]


def test_an_alert_with_its_whole_life(api_run: ApiRun) -> None:
    alert = api_run.get("staff_a", "/alerts/a-done").json()
    assert alert["state"] == "resolved"
    assert [step["step"] for step in alert["steps"]] == ["raised", "resolved"]
    assert alert["details"] == {"zone": "floor"}


def test_activity_from_postgres_by_hour_and_day(api_run: ApiRun) -> None:
    start = YESTERDAY.isoformat()
    hours = api_run.get("staff_a", "/lamps/L-A1/activity", granularity="hour", **{"from": start})
    assert hours.status_code == 200, hours.text
    stored = [p for p in hours.json()["points"] if not p["live"]]
    assert [p["messages"] for p in stored] == [100, 101, 102]
    assert hours.json()["site_id"] == SITE_A
    days = api_run.get("staff_a", "/lamps/L-A1/activity", granularity="day", **{"from": start})
    (day,) = [p for p in days.json()["points"] if not p["live"]]
    assert day["messages"] == 303
    assert day["start"].startswith(YESTERDAY.date().isoformat())


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        (
            {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            400,
            "from must be before to",
        ),
        (
            {"from": "2025-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            400,
            "at most 744 hours",
        ),
        ({"granularity": "week"}, 422, "granularity"),
        ({"from": "yesterday"}, 422, "from"),
    ],
)
def test_bad_activity_queries_are_clear_4xx(
    api_run: ApiRun, params: dict[str, str], status: int, words: str
) -> None:
    response = api_run.get("support", "/lamps/L-A1/activity", **params)
    assert words in problem(response, status)["detail"]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/lamps/not a lamp!", {}, 422),
        ("/alerts", {"state": "sleeping"}, 422),
        ("/alerts", {"limit": 0}, 422),
        ("/alerts", {"limit": 5000}, 422),
        ("/alerts", {"cursor": "garbage"}, 400),
        ("/alerts", {"site": "x'; DROP TABLE alerts; --"}, 422),
        ("/messages/search", {"type": "DROP"}, 422),
        ("/lamps", {"cursor": "eyJrIjoiYWxlcnRzIiwidiI6WzEsMl19"}, 400),
        ("/alerts", {"lamp_id": "L-A1"}, 422),  # a misspelt filter must not list everything
        ("/alerts", {"from": "1764230400"}, 422),  # ISO 8601 only
    ],
)
def test_invalid_inputs_are_refused_with_a_reason(
    api_run: ApiRun, path: str, params: dict[str, object], status: int
) -> None:
    body = problem(api_run.get("support", path, **params), status)
    if status == 400:
        assert (body["type"], body["title"]) == (INVALID_CURSOR, "Invalid cursor")
    else:
        assert (body["type"], body["title"]) == (INVALID_INPUT, "Invalid input")
        assert body["errors"] and all(e["detail"] and e["location"] for e in body["errors"])


def test_an_invalid_body_points_at_the_field(api_run: ApiRun) -> None:
    body = problem(api_run.post("admin", "/tokens", {"name": "x", "role": "root"}), 422)
    (error,) = body["errors"]
    assert (error["location"], error["pointer"]) == ("body", "#/role")


def test_a_wrong_method_is_a_problem_with_every_allowed_method(api_run: ApiRun) -> None:
    with api_run.client("admin") as client:
        response = client.put("/tokens")
    problem(response, 405)
    assert response.headers["allow"] == "GET, POST"


@pytest.mark.parametrize("role", ["support", "staff_a", "staff_b"])
def test_only_an_admin_manages_tokens(api_run: ApiRun, role: str) -> None:
    assert api_run.get(role, "/tokens").status_code == 403
    body = {"name": f"by-{role}", "role": "support"}
    assert api_run.post(role, "/tokens", body).status_code == 403
    with api_run.client(role) as client:
        assert client.delete("/tokens/support").status_code == 403


def test_an_admin_creates_lists_and_revokes_a_token(api_run: ApiRun) -> None:
    created = api_run.post(
        "admin", "/tokens", {"name": "nurse-c", "role": "staff", "sites": [SITE_B]}
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    with api_run.client(None) as client:
        lamps = client.get("/lamps", headers=headers).json()["items"]
        assert [lamp["lamp_id"] for lamp in lamps] == ["L-B1"]
    listed = {t["name"]: t for t in api_run.get("admin", "/tokens").json()}
    assert listed["nurse-c"]["sites"] == [SITE_B]
    assert "token" not in listed["nurse-c"]
    assert listed["revoked"]["revoked_at"] is not None
    duplicate = api_run.post("admin", "/tokens", {"name": "nurse-c", "role": "support"})
    assert "nurse-c" in problem(duplicate, 409)["detail"]
    invalid = api_run.post("admin", "/tokens", {"name": "nobody", "role": "staff"})
    assert "site" in problem(invalid, 400)["detail"]
    with api_run.client("admin") as client:
        assert client.delete("/tokens/nurse-c").status_code == 204
        assert "nurse-c" in problem(client.delete("/tokens/nurse-c"), 404)["detail"]
        assert client.get("/lamps", headers=headers).status_code == 401


def test_probes_need_no_token(api_run: ApiRun) -> None:
    assert api_run.get(None, "/healthz").json() == {"status": "ok"}
    ready = api_run.get(None, "/readyz").json()
    assert ready["ready"] is True
    assert set(ready["checks"]) == {"postgres", "elasticsearch", "redis", "kafka"}
    metrics = api_run.get(None, "/metrics")
    assert 'veilleuse_api_requests_total{method="GET",route="/lamps",status="200"}' in metrics.text


def test_acknowledging_by_role(api_run: ApiRun) -> None:
    assert api_run.post("support", "/alerts/b-open/ack").status_code == 403
    assert api_run.post("staff_a", "/alerts/b-open/ack").status_code == 404  # another site
    assert api_run.post("admin", "/alerts/no-such-alert/ack").status_code == 404
    by_admin = api_run.post("admin", "/alerts/b-open/ack")
    assert by_admin.status_code == 200, by_admin.text
    assert (by_admin.json()["first"], by_admin.json()["acknowledged_by"]) == (True, "admin")
    again = api_run.post("staff_b", "/alerts/b-open/ack", {"by": "Nurse Bo"})
    assert (again.json()["first"], again.json()["acknowledged_by"]) == (False, "admin")
    alert = api_run.get("staff_b", "/alerts/b-open").json()
    assert alert["state"] == "acknowledged"
    assert [s["step"] for s in alert["steps"]] == ["raised", "acknowledged"]
    assert api_run.post("staff_b", "/alerts/b-open/ack", {"by": ""}).status_code == 422
