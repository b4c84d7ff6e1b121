"""The support console against the real API process and its real services (the API tests'
``api_run``: a scratch database with two sites, a token of every role): sign-in and out,
sessions that end (signed out, revoked, forged), a staff user held to their own site on every
page and on the event stream, a support user who cannot acknowledge, an acknowledgement through
a staff session reaching alerts.acks.v1, and the CSV export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from api.console.sessions import CSRF_COOKIE, SESSION_COOKIE, redis_key
from api.tokens import create_token, revoke_token
from pipeline import clients
from pipeline.topics import ALERTS, topic_name
from schemas import encode, schema
from tests.integration.api.conftest import SITE_A, SITE_B, YESTERDAY, ApiRun
from tests.integration.api.test_pipeline import read_acks


@pytest.fixture(autouse=True)
def services(require) -> None:  # type: ignore[no-untyped-def]
    require("postgres", "kafka", "elasticsearch", "redis")


HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """What a browser does with the console's forms and cookies, over plain HTTP."""

    def __init__(self, run: ApiRun) -> None:
        self.run = run
        self.http = httpx.Client(base_url=run.url, timeout=15, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def post(self, path: str, data: dict[str, str], origin: bool = True) -> httpx.Response:
        headers = {"Origin": self.run.url} if origin else {}
        return self.http.post(path, data=data, headers=headers)

    def sign_in(self, token: str) -> httpx.Response:
        form = self.get("/console/sign-in")
        assert form.status_code == 200
        csrf = CSRF_FIELD.search(form.text)
        assert csrf is not None and self.http.cookies.get(CSRF_COOKIE) == csrf.group(1)
        return self.post("/console/sign-in", {"token": token, "csrf_token": csrf.group(1)})

    def csrf(self, path: str = "/console/sites") -> str:
        page = self.get(path)
        found = CSRF_FIELD.search(page.text)
        assert found is not None, page.text
        return found.group(1)


@pytest.fixture
def browser(api_run: ApiRun) -> Iterator[Browser]:
    browser = Browser(api_run)
    try:
        yield browser
    finally:
        browser.close()


def signed_in(api_run: ApiRun, role: str) -> Browser:
    browser = Browser(api_run)
    response = browser.sign_in(api_run.tokens[role])
    assert response.status_code == 303, response.text
    return browser


def session_cookie_header(response: httpx.Response) -> str:
    (header,) = [
        h for h in response.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "=")
    ]
    return header


def test_sign_in_opens_a_session_and_sign_out_ends_it(api_run: ApiRun, browser: Browser) -> None:
    response = browser.sign_in(api_run.tokens["staff_a"])
    assert (response.status_code, response.headers["location"]) == (303, "/console/")
    cookie = session_cookie_header(response)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Max-Age=28800" in cookie  # api.console_session_ttl_s, 8 h by default
    session_id = browser.http.cookies[SESSION_COOKIE]
    redis = clients.redis(api_run.settings)
    try:
        stored = redis.get(redis_key(session_id))
        assert stored is not None and 28000 < redis.ttl(redis_key(session_id)) <= 28800
        # The session holds the token's hash, never the token nor the cookie.
        assert (
            api_run.tokens["staff_a"].encode() not in stored and session_id.encode() not in stored
        )
    finally:
        redis.close()

    home = browser.get("/console/")
    assert (home.status_code, home.headers["location"]) == (303, f"/console/sites/{SITE_A}")
    board = browser.get(f"/console/sites/{SITE_A}")
    assert board.status_code == 200
    assert 'data-testid="open-alerts"' in board.text and 'data-alert-id="a-open"' in board.text
    assert 'data-alert-id="a-done"' not in board.text  # resolved: not open
    assert 'data-lamp-id="L-A1"' in board.text and 'data-lamp-id="L-A2"' in board.text
    assert "1.4.2" in board.text

    out = browser.post("/console/sign-out", {"csrf_token": browser.csrf()})
    assert (out.status_code, out.headers["location"]) == (303, "/console/sign-in")
    assert SESSION_COOKIE not in browser.http.cookies
    # The old cookie, replayed, opens nothing.
    replay = Browser(api_run)
    replay.http.cookies.set(SESSION_COOKIE, session_id, path="/console")
    assert replay.get(f"/console/sites/{SITE_A}").headers["location"] == "/console/sign-in"
    replay.close()


def test_support_lands_on_the_site_list(api_run: ApiRun) -> None:
    support = signed_in(api_run, "support")
    assert support.get("/console/").headers["location"] == "/console/sites"
    sites = support.get("/console/sites").text
    assert f'data-site-id="{SITE_A}"' in sites and f'data-site-id="{SITE_B}"' in sites
    assert support.get("/console/sites/no-such-site").status_code == 404
    support.close()


@pytest.mark.parametrize("role", ["revoked", "forged"])
def test_a_bad_token_shows_the_form_again(api_run: ApiRun, browser: Browser, role: str) -> None:
    response = browser.sign_in(api_run.tokens[role])
    assert response.status_code == 401
    assert 'data-testid="sign-in-error"' in response.text
    assert SESSION_COOKIE not in browser.http.cookies


def test_a_token_revoked_since_sign_in_stops_at_the_next_request(api_run: ApiRun) -> None:
    conninfo = api_run.settings.postgres.conninfo()
    name = f"console-{uuid.uuid4().hex[:6]}"
    token = create_token(conninfo, name, "staff", [SITE_A])
    browser = Browser(api_run)
    assert browser.sign_in(token).status_code == 303
    assert browser.get(f"/console/sites/{SITE_A}").status_code == 200
    revoke_token(conninfo, name)  # the API runs with api.token_cache_s = 0
    assert browser.get(f"/console/sites/{SITE_A}").headers["location"] == "/console/sign-in"
    assert browser.get(f"/console/sites/{SITE_A}/events").status_code == 401
    browser.close()


def test_a_forged_or_expired_session_is_refused(api_run: ApiRun, browser: Browser) -> None:
    browser.http.cookies.set(SESSION_COOKIE, uuid.uuid4().hex + uuid.uuid4().hex, path="/console")
    assert browser.get(f"/console/sites/{SITE_A}").headers["location"] == "/console/sign-in"
    assert browser.get("/console/alerts/a-open").headers["location"] == "/console/sign-in"
    assert browser.get(f"/console/sites/{SITE_A}/events").status_code == 401

    staff = signed_in(api_run, "staff_a")
    redis = clients.redis(api_run.settings)
    try:
        redis.delete(redis_key(staff.http.cookies[SESSION_COOKIE]))  # as its TTL would
    finally:
        redis.close()
    assert staff.get(f"/console/sites/{SITE_A}").headers["location"] == "/console/sign-in"
    staff.close()


@pytest.mark.parametrize(
    "path",
    [
        f"/console/sites/{SITE_B}",
        f"/console/sites/{SITE_B}/events",
        "/console/alerts/b-open",
        "/console/lamps/L-B1",
        f"/console/messages?site={SITE_B}",
        f"/console/alerts?site={SITE_B}",
        f"/console/alerts.csv?site={SITE_B}",
    ],
)
def test_a_staff_user_of_site_a_gets_nothing_of_site_b(api_run: ApiRun, path: str) -> None:
    staff = signed_in(api_run, "staff_a")
    response = staff.get(path)
    assert response.status_code == 404, response.text
    assert "b-open" not in response.text and "L-B1" not in response.text
    staff.close()


def test_the_history_and_its_export_hold_only_the_staff_users_sites(api_run: ApiRun) -> None:
    staff = signed_in(api_run, "staff_a")
    history = staff.get("/console/alerts")
    assert history.status_code == 200
    assert 'data-alert-id="a-open"' in history.text and "b-open" not in history.text
    export = staff.get("/console/alerts.csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert {row["site_id"] for row in rows} == {SITE_A}
    assert {row["alert_id"] for row in rows} == {"a-open", "a-done"}
    staff.close()


def test_the_csv_export_filters_and_defuses_formulas(api_run: ApiRun) -> None:
    with psycopg.connect(api_run.settings.postgres.conninfo()) as conn:
        conn.execute(
            "INSERT INTO alerts (alert_id, kind, severity, site_id, lamp_id, incident_started_at, "
            "state, raised_at, details) VALUES ('csv-1', 'help_requested', 'critical', %s, "
            "'L-B1', %s, 'raised', %s, %s) ON CONFLICT DO NOTHING",
            (SITE_B, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC),
             Jsonb({"note": "x"})),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO alert_events (alert_id, step, occurrence, emitted_at, details) "
            "VALUES ('csv-1', 'acknowledged', 1, now(), %s) ON CONFLICT DO NOTHING",
            (Jsonb({"acknowledged_by": '=HYPERLINK("http://evil.example")'}),),
        )
    support = signed_in(api_run, "support")
    export = support.get(f"/console/alerts.csv?site={SITE_B}&state=acknowledged")
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    assert export.headers["cache-control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [row["alert_id"] for row in rows] == ["csv-1"]
    assert rows[0]["acknowledged_by"] == '\'=HYPERLINK("http://evil.example")'
    assert rows[0]["incident_started_at"] == "2026-01-01T00:00:00+00:00"
    support.close()


def test_a_post_without_the_sessions_csrf_token_is_refused(api_run: ApiRun) -> None:
    staff = signed_in(api_run, "staff_a")
    for data, origin in (({}, True), ({"csrf_token": "guess"}, True)):
        response = staff.post("/console/alerts/a-open/ack", data, origin)
        assert response.status_code == 403, response.text
    foreign = staff.http.post(
        "/console/alerts/a-open/ack",
        data={"csrf_token": staff.csrf()},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    assert 'data-state="raised"' in staff.get("/console/alerts/a-open").text
    staff.close()


def test_support_sees_the_alert_but_cannot_acknowledge(api_run: ApiRun) -> None:
    support = signed_in(api_run, "support")
    page = support.get("/console/alerts/a-open")
    assert page.status_code == 200
    assert 'data-testid="timeline"' in page.text and 'data-step="raised"' in page.text
    assert 'data-testid="ack-button"' not in page.text
    refused = support.post("/console/alerts/a-open/ack", {"csrf_token": support.csrf()})
    assert refused.status_code == 403
    assert 'data-state="raised"' in support.get("/console/alerts/a-open").text
    support.close()


async def test_an_acknowledgement_through_a_staff_session_reaches_alerts_acks(
    api_run: ApiRun,
) -> None:
    staff = signed_in(api_run, "staff_a")
    page = staff.get("/console/alerts/a-open")
    assert 'data-testid="ack-button"' in page.text
    csrf = CSRF_FIELD.findall(page.text)[-1]  # the acknowledge form's (the page's last)
    response = await asyncio.to_thread(
        staff.post, "/console/alerts/a-open/ack", {"csrf_token": csrf}
    )
    assert (response.status_code, response.headers["location"]) == (303, "/console/alerts/a-open")
    acks = await read_acks(api_run)
    assert [(a["alert_id"], a["lamp_id"], a["acknowledged_by"]) for a in acks] == [
        ("a-open", "L-A1", "staff_a")
    ]
    after = staff.get("/console/alerts/a-open").text
    assert 'data-state="acknowledged"' in after and 'data-testid="ack-button"' not in after
    steps = re.findall(r'data-testid="timeline-step" data-step="([a-z_]+)"', after)
    assert steps == ["raised", "acknowledged"]
    assert '<span data-testid="step-by">staff_a</span>' in after
    # The API tells the same story, with the console as its door.
    life = api_run.get("support", "/alerts/a-open").json()
    assert life["acknowledged_by"] == "staff_a"
    assert [s["details"].get("via") for s in life["steps"] if s["step"] == "acknowledged"] == [
        "console"
    ]
    staff.close()


def help_requested(alert_id: str, site: str, lamp: str, now_ms: int) -> dict[str, Any]:
    """An ``alerts.v1`` record: a help request raised now (its press 1 s ago)."""
    return {
        "alert_id": alert_id,
        "kind": "help_requested",
        "kind_name": "help_requested",
        "severity": "critical",
        "state": "raised",
        "site_id": site,
        "lamp_id": lamp,
        "incident_started_at": now_ms - 1000,
        "emitted_at": now_ms,
        "details": {"zone": "room"},
    }


async def read_events(
    api_run: ApiRun, session_id: str, site: str, events: list[Any], ready: asyncio.Event,
    done: Callable[[], bool],
) -> None:  # fmt: skip
    """The site's console event stream, each event appended to ``events`` as ``(name, data)``;
    ``ready`` set on the stream's ``ready`` event; until ``done()`` after an event."""
    async with (
        httpx.AsyncClient(
            base_url=api_run.url, cookies={SESSION_COOKIE: session_id}, timeout=60
        ) as client,
        client.stream("GET", f"/console/sites/{site}/events") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        name = "message"
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
                if name == "ready":
                    ready.set()
                if done():
                    return
            elif not line:
                name = "message"


async def read_stream(
    api_run: ApiRun, session_id: str, site: str, until: set[str], events: list[Any],
    ready: asyncio.Event,
) -> None:  # fmt: skip
    """The site's event stream until an event of an alert of ``until`` came."""
    await read_events(
        api_run, session_id, site, events, ready, lambda: events[-1][1].get("alert_id") in until
    )


async def test_the_event_stream_carries_the_sites_alerts_only(api_run: ApiRun) -> None:
    staff = signed_in(api_run, "staff_a")
    session_id = staff.http.cookies[SESSION_COOKIE]
    staff.close()
    run = uuid.uuid4().hex[:6]
    ids = [f"s1-{run}", f"sb-{run}", f"s2-{run}"]
    events: list[Any] = []
    ready = asyncio.Event()
    listener = asyncio.create_task(
        read_stream(api_run, session_id, SITE_A, {ids[2]}, events, ready)
    )
    await asyncio.wait_for(ready.wait(), 30)
    started = time.monotonic()
    writer = schema("alert.v1")
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    producer = clients.producer(api_run.settings)
    await producer.start()
    try:
        for alert_id, site, lamp in ((ids[0], SITE_A, "L-A1"), (ids[1], SITE_B, "L-B1"),
                                     (ids[2], SITE_A, "L-A2")):  # fmt: skip
            record = help_requested(alert_id, site, lamp, now_ms)
            topic = topic_name(api_run.settings, ALERTS)
            await producer.send_and_wait(topic, encode(writer, record), key=b"L", partition=0)
    finally:
        await producer.stop()
    await asyncio.wait_for(listener, 20)
    assert time.monotonic() - started < 5
    alerts = [data for name, data in events if name == "alert"]
    assert [a["alert_id"] for a in alerts] == [ids[0], ids[2]]
    first = alerts[0]
    shown = [first[k] for k in ("site_id", "lamp_id", "kind", "severity", "state")]
    assert shown == [SITE_A, "L-A1", "help_requested", "critical", "raised"]
    assert first["url"] == f"/console/alerts/{ids[0]}"


def chart_bars(page: str, testid: str) -> dict[str, float]:
    """The bars of one chart as the page draws them: hour → value."""
    svg = re.search(rf'<svg[^>]*data-testid="{re.escape(testid)}".*?</svg>', page, re.S)
    assert svg is not None, f"no chart {testid}"
    return {
        hour: float(value)
        for hour, value in re.findall(r'data-hour="([^"]+)" data-value="([^"]+)"', svg.group(0))
    }


def test_the_lamp_pages_charts_show_the_apis_figures(api_run: ApiRun) -> None:
    recent = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
    with psycopg.connect(api_run.settings.postgres.conninfo()) as conn:
        for index, start in enumerate((recent - HOUR, recent)):
            conn.execute(
                "INSERT INTO activity_hourly (lamp_id, hour_start, site_id, messages, "
                "motion_events, active_minutes, minutes_in_bed, minutes_absent, "
                "bathroom_visits, falls, help_requests, temperature_readings, temperature_min, "
                "temperature_mean, temperature_max, last_seen_at, firmware, emitted_at, "
                "source_partition, source_offset) VALUES ('L-A2', %s, %s, %s, 4, %s, %s, 3, 0, "
                "0, 0, 2, 19.5, %s, 21.0, %s, '1.4.2', now(), 0, %s) ON CONFLICT DO NOTHING",
                (start, SITE_A, 40 + index, 7 + index, 30 - index, 20.25 + index, start,
                 100 + index),
            )  # fmt: skip
    staff = signed_in(api_run, "staff_a")
    page = staff.get("/console/lamps/L-A2")
    assert page.status_code == 200, page.text
    hourly = api_run.get("staff_a", "/lamps/L-A2/activity").json()["points"]
    assert len(hourly) >= 2
    for figure in ("active_minutes", "minutes_in_bed", "minutes_absent", "temperature_mean",
                   "messages"):  # fmt: skip
        drawn = chart_bars(page.text, f"chart-{figure}-24h")
        expected = {
            p["start"].replace("+00:00", "Z"): p[figure] for p in hourly if p[figure] is not None
        }
        assert drawn == expected, figure
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    week = {"from": (today - 6 * DAY).isoformat(), "to": (today + DAY).isoformat()}
    daily = api_run.get("staff_a", "/lamps/L-A1/activity", granularity="day", **week)
    daily = daily.json()["points"]
    lamp_a1 = staff.get("/console/lamps/L-A1").text
    drawn = chart_bars(lamp_a1, "chart-messages-7d")
    assert drawn == {p["start"].replace("+00:00", "Z"): p["messages"] for p in daily}
    assert drawn[YESTERDAY.strftime("%Y-%m-%dT00:00:00Z")] == 303
    # Its alerts are listed, another site's lamp is not found.
    assert 'data-alert-id="a-open"' in lamp_a1
    assert staff.get("/console/lamps/L-B1").status_code == 404
    staff.close()


def test_the_search_page_answers_and_checks_its_filters(api_run: ApiRun) -> None:
    support = signed_in(api_run, "support")
    page = support.get(f"/console/messages?q=&lamp=L-A1&site={SITE_A}&type=&from=&to=")
    assert page.status_code == 200, page.text
    assert 'data-testid="message-filters"' in page.text and 'value="L-A1"' in page.text
    assert support.get("/console/messages?lamp=%3Cscript%3E").status_code == 422
    assert support.get("/console/messages?from=yesterday").status_code == 422
    support.close()


def test_the_lamp_page_shows_the_last_night(api_run: ApiRun) -> None:
    yesterday = (datetime.now(UTC) - DAY).date()
    start = datetime(yesterday.year, yesterday.month, yesterday.day, 21, tzinfo=UTC)
    with psycopg.connect(api_run.settings.postgres.conninfo()) as conn:
        for night_of, exits in ((yesterday - DAY, 1), (yesterday, 4)):
            conn.execute(
                "INSERT INTO night_summaries (lamp_id, night_of, site_id, time_zone, night_start, "
                "night_end, night_minutes, covered_minutes, messages, minutes_in_bed, "
                "minutes_out_of_bed, bed_exits, bathroom_visits, room_exits, "
                "restless_motion_events, restlessness_per_hour, longest_still_minutes, "
                "latest_return_to_bed, latest_return_to_bed_local, emitted_at, source_partition, "
                "source_offset) VALUES ('L-A2', %s, %s, 'Europe/Paris', %s, %s, 540, 540, 900, "
                "480, 60, %s, 2, 0, 12, 1.5, 190, NULL, '04:35', now(), 0, 0) "
                "ON CONFLICT DO NOTHING",
                (night_of, SITE_A, start, start + 9 * HOUR, exits),
            )
    staff = signed_in(api_run, "staff_a")
    page = staff.get("/console/lamps/L-A2?lang=en").text
    night = re.search(r'data-testid="night-summary".*?</section>', page, re.S)
    assert night is not None
    shown = dict(re.findall(r'<dd data-figure="([a-z_]+)">([^<]*)</dd>', night.group(0)))
    assert shown["night_of"] == yesterday.isoformat()
    assert (shown["bed_exits"], shown["latest_return_to_bed_local"]) == ("4", "04:35")
    assert "Bed exits" in night.group(0)
    staff.close()
