"""Who gets in, and what each one sees: sign-in and sign-out through the form, sessions that
end (signed out, expired, forged), a staff user held to their own site (pages, data and the
live stream), a support user who cannot acknowledge, and CSRF on every POST."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from playwright.async_api import Page

from api.console.sessions import SESSION_COOKIE, redis_key
from pipeline import clients
from pipeline.topics import ALERTS, topic_name
from schemas import encode, schema
from tests.integration.api.conftest import SITE_A, SITE_B
from tests.integration.console.conftest import Browsing, ConsoleRun

REFUSED = (403, 404)


async def shown_as_signed_out(browsing: Browsing, page: Page, path: str, name: str) -> None:
    """``path`` sends this browser to the sign-in form: its session is not (or no longer) one."""
    status = await browsing.visit(page, path, name)
    assert page.url.split("?")[0].endswith("/console/sign-in"), page.url
    assert status == 200
    assert await page.locator('input[name="token"]').count() == 1


async def test_sign_in_sets_a_strict_http_only_session_cookie(
    console: ConsoleRun, browsing: Browsing
) -> None:
    page = await browsing.sign_in(console.api.tokens["staff_a"], "staff-home")
    cookie = await browsing.session_cookie(page)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    ttl = console.settings.api.console_session_ttl_s
    assert abs(cookie["expires"] - (time.time() + ttl)) < 120, cookie  # expires with the session
    # Not readable from the page's own scripts.
    assert SESSION_COOKIE not in await page.evaluate("() => document.cookie")
    # The staff user of one site lands on its board.
    assert page.url.endswith(f"/console/sites/{SITE_A}"), page.url
    assert await page.get_by_test_id("open-alerts").count() == 1


async def test_the_console_serves_its_own_icon(console: ConsoleRun, browsing: Browsing) -> None:
    """A browser asks every site for an icon: without one, each page logs a 404 error."""
    page = await browsing.new_page()
    await browsing.visit(page, "/console/sign-in", "sign-in")
    await asyncio.sleep(1)  # the browser fetches the icon after the page
    assert not browsing.watch.icon, browsing.watch.icon


async def test_a_wrong_token_is_refused_at_sign_in(console: ConsoleRun, browsing: Browsing) -> None:
    page = await browsing.new_page()
    await browsing.visit(page, "/console/sign-in", "sign-in")
    await page.fill('input[name="token"]', "vl_" + "A" * 43)
    # The refusal page is what the browser shows; Chromium also logs its status as an error.
    browsing.watch.expect_error("the server responded with a status of 401")
    async with page.expect_response(lambda r: r.request.method == "POST") as answer:
        await page.locator('form:has(input[name="token"]) [type="submit"]').click()
    assert (await answer.value).status == 401
    await browsing.screens.shot(page, "refused")
    assert SESSION_COOKIE not in {c["name"] for c in await page.context.cookies()}


async def test_sign_out_ends_the_session_everywhere(
    console: ConsoleRun, browsing: Browsing
) -> None:
    page = await browsing.sign_in(console.api.tokens["support"], "support-home")
    cookie = await browsing.session_cookie(page)
    async with page.expect_navigation():
        await page.locator('form[action$="/sign-out"] [type="submit"]').click()
    await browsing.screens.shot(page, "signed-out")
    assert page.url.endswith("/console/sign-in"), page.url
    assert SESSION_COOKIE not in {c["name"] for c in await page.context.cookies()}

    # The old cookie, kept by someone (another tab, a copy), opens nothing any more.
    replay = await browsing.new_page()
    await replay.context.add_cookies([cookie])  # type: ignore[list-item]
    await shown_as_signed_out(browsing, replay, f"/console/sites/{SITE_A}", "old-cookie")


async def test_an_expired_session_is_refused(console: ConsoleRun, browsing: Browsing) -> None:
    page = await browsing.sign_in(console.api.tokens["staff_a"])
    cookie = await browsing.session_cookie(page)
    redis = clients.redis(console.settings)
    try:
        # The session's own TTL runs out (as after api.console_session_ttl_s).
        assert redis.ttl(redis_key(cookie["value"])) > 0
        assert redis.pexpire(redis_key(cookie["value"]), 1)
    finally:
        redis.close()
    await asyncio.sleep(0.05)
    await shown_as_signed_out(browsing, page, f"/console/sites/{SITE_A}", "expired")


async def test_a_forged_session_is_refused(console: ConsoleRun, browsing: Browsing) -> None:
    page = await browsing.new_page()
    await page.context.add_cookies(
        [
            {
                "name": SESSION_COOKIE,
                "value": uuid.uuid4().hex + uuid.uuid4().hex,
                "url": console.url("/console/"),
            }
        ]
    )
    await shown_as_signed_out(browsing, page, f"/console/sites/{SITE_A}", "forged")
    await shown_as_signed_out(browsing, page, "/console/alerts/a-open", "forged-alert")
    # And the event stream, which a page opens without a redirect to follow.
    stream = await page.request.get(console.url(f"/console/sites/{SITE_A}/events"))
    assert stream.status == 401


async def test_a_staff_user_of_site_a_gets_nothing_of_site_b(
    console: ConsoleRun, browsing: Browsing
) -> None:
    page = await browsing.sign_in(console.api.tokens["staff_a"])
    for path in (
        f"/console/sites/{SITE_B}",
        f"/console/sites/{SITE_B}/events",
        "/console/alerts/b-open",
        "/console/lamps/L-B1",
        f"/console/messages?site={SITE_B}",
        f"/console/alerts?site={SITE_B}",
        f"/console/alerts.csv?site={SITE_B}",
    ):
        answer = await page.request.get(console.url(path))
        assert answer.status in REFUSED, f"{path}: {answer.status}"
        # No fact of site B but what the request itself named (a page may echo its own URL).
        body = (await answer.text()).replace(path, "").replace(path.split("?")[0], "")
        leaked = [fact for fact in ("b-open", "L-B1", SITE_B) if fact in body]
        assert not leaked, f"{path}: {leaked} in {body}"

    # Unfiltered, the history and its export hold site A only.
    await browsing.visit(page, "/console/alerts", "history")
    history = await page.content()
    assert "a-open" in history and "b-open" not in history
    export = await page.request.get(console.url("/console/alerts.csv"))
    assert export.status == 200
    assert export.headers["content-type"].startswith("text/csv")
    sites = {line.split(",")[4] for line in (await export.text()).splitlines()[1:]}
    assert sites == {SITE_A}
    # The console's own links never lead to site B.
    await browsing.visit(page, f"/console/sites/{SITE_A}", "board-a")
    assert "L-B1" not in await page.content()


async def test_site_a_stream_carries_no_alert_of_site_b(
    console: ConsoleRun, browsing: Browsing
) -> None:
    """Read as the browser receives it (the raw event stream of the staff user's session):
    an alert of site B appended to alerts.v1 between two of site A is never sent."""
    page = await browsing.sign_in(console.api.tokens["staff_a"])
    cookie = await browsing.session_cookie(page)
    events: list[tuple[str, dict[str, Any]]] = []
    ready = asyncio.Event()

    async def listen() -> None:
        async with (
            httpx.AsyncClient(
                base_url=console.api.url, cookies={SESSION_COOKIE: cookie["value"]}, timeout=60
            ) as client,
            client.stream("GET", f"/console/sites/{SITE_A}/events") as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            name = "message"
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((name, json.loads(line.split(":", 1)[1])))
                    if name == "ready":
                        ready.set()
                elif not line:
                    name = "message"

    listener = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(ready.wait(), 20)
        run = uuid.uuid4().hex[:6]
        ids = [f"a1-{run}", f"b-{run}", f"a2-{run}"]
        await produce_alerts(
            console, [(ids[0], SITE_A, "L-A1"), (ids[1], SITE_B, "L-B1"), (ids[2], SITE_A, "L-A2")]
        )
        deadline = time.monotonic() + 20
        while ids[2] not in {data.get("alert_id") for _, data in events}:
            assert not listener.done(), listener
            assert time.monotonic() < deadline, f"site A's alerts not streamed: {events}"
            await asyncio.sleep(0.05)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    alerts = [data for name, data in events if name == "alert"]
    assert [a["alert_id"] for a in alerts if a["alert_id"] in ids] == [ids[0], ids[2]]
    assert {a["site_id"] for a in alerts} == {SITE_A}


async def produce_alerts(console: ConsoleRun, alerts: list[tuple[str, str, str]]) -> None:
    """Alerts appended to alerts.v1 in this order (one partition), as a worker writes them."""
    writer = schema("alert.v1")
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    producer = clients.producer(console.settings)
    await producer.start()
    try:
        for alert_id, site, lamp in alerts:
            record = {
                "alert_id": alert_id,
                "kind": "help_requested",
                "severity": "critical",
                "state": "raised",
                "site_id": site,
                "lamp_id": lamp,
                "incident_started_at": now_ms - 1000,
                "emitted_at": now_ms,
                "details": {"zone": "room"},
            }
            await producer.send_and_wait(
                topic_name(console.settings, ALERTS), encode(writer, record), key=b"L", partition=0
            )
    finally:
        await producer.stop()


async def test_a_support_user_cannot_acknowledge(console: ConsoleRun, browsing: Browsing) -> None:
    page = await browsing.sign_in(console.api.tokens["support"])
    assert await browsing.visit(page, "/console/alerts/a-open", "support-alert") == 200
    assert await page.get_by_test_id("timeline").count() == 1
    assert await page.get_by_test_id("ack-button").count() == 0
    # A forged POST with the session's own CSRF token: refused for the role, not the token.
    forged = await page.request.post(
        console.url("/console/alerts/a-open/ack"),
        form={"csrf_token": await browsing.csrf_token(page)},
        headers={"Origin": console.api.url},
        max_redirects=0,
    )
    assert forged.status == 403, await forged.text()
    assert still_raised(console, "a-open")


async def test_a_post_without_the_csrf_token_is_refused(
    console: ConsoleRun, browsing: Browsing
) -> None:
    page = await browsing.sign_in(console.api.tokens["staff_a"])
    assert await browsing.visit(page, "/console/alerts/a-open", "staff-alert") == 200
    assert await page.get_by_test_id("ack-button").count() == 1
    token = await browsing.csrf_token(page)
    url = console.url("/console/alerts/a-open/ack")
    forms: list[dict[str, str | float | bool]] = [
        {},
        {"csrf_token": ""},
        {"csrf_token": token[::-1]},
    ]
    for form in forms:
        refused = await page.request.post(
            url, form=form, headers={"Origin": console.api.url}, max_redirects=0
        )
        assert refused.status == 403, (form, refused.status)
    # The right token from another origin (a page elsewhere posting the form): refused too.
    elsewhere = await page.request.post(
        url,
        form={"csrf_token": token},
        headers={"Origin": "http://evil.example"},
        max_redirects=0,
    )
    assert elsewhere.status == 403
    signed_out = await page.request.post(console.url("/console/sign-out"), form={}, max_redirects=0)
    assert signed_out.status == 403
    assert still_raised(console, "a-open")
    # The session survived the refused sign-out.
    assert await browsing.visit(page, f"/console/sites/{SITE_A}", "still-signed-in") == 200


def still_raised(console: ConsoleRun, alert_id: str) -> bool:
    body = console.api.get("admin", f"/alerts/{alert_id}").json()
    return bool(body["state"] == "raised" and body.get("acknowledged_by") is None)
