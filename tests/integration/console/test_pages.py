"""What the pages show: the lamp page's charts carry the API's own figures, hour by hour and
day by day (read from the page, compared with the API's JSON), and markup in a lamp's message
(indexed by the real Elasticsearch sink) is shown as text, never run, on the search and lamp
pages."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from api.models import ActivityPoint
from tests.integration.agents.conftest import LampSender
from tests.integration.api.conftest import SITE_A, YESTERDAY
from tests.integration.console.conftest import (
    CHART_HOURS,
    CHART_LAMP,
    XSS_LAMP,
    XSS_VALUES,
    Browsing,
    ConsoleRun,
)

FIGURES = set(ActivityPoint.model_fields) - {"start", "live", "last_seen_at"}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_figures(console: ConsoleRun, granularity: str, start: datetime, end: datetime) -> Any:
    answer = console.api.get(
        "support",
        f"/lamps/{CHART_LAMP}/activity",
        **{"from": start.isoformat(), "to": end.isoformat()},
        granularity=granularity,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["points"]


async def test_the_lamp_charts_show_the_apis_figures(
    console: ConsoleRun, browsing: Browsing
) -> None:
    page = await browsing.sign_in(console.api.tokens["support"])
    while True:  # the page's hours and ours are the same ones: no hour began in between
        now = datetime.now(UTC)
        assert await browsing.visit(page, f"/console/lamps/{CHART_LAMP}", "lamp") == 200
        if datetime.now(UTC).hour == now.hour:
            break
    end_hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    spans = {
        "24h": ("hour", end_hour - timedelta(hours=24), end_hour),
        "7d": ("day", today - timedelta(days=6), today + timedelta(days=1)),
    }
    charts: dict[tuple[str, str], dict[str, float]] = {}
    for chart in await page.locator('svg[data-testid^="chart-"]').all():
        testid = await chart.get_attribute("data-testid")
        assert testid is not None
        match = re.fullmatch(r"chart-(\w+)-(24h|7d)", testid)
        assert match, f"{testid}: not chart-<figure>-24h or -7d"
        figure, span = match.groups()
        assert figure in FIGURES, f"{testid}: not a figure of the activity API"
        bars: dict[str, float] = {}
        for bar in await chart.locator("[data-hour]").all():
            hour, value = (
                await bar.get_attribute("data-hour"),
                await bar.get_attribute("data-value"),
            )
            assert hour is not None and value is not None, testid
            assert hour not in bars, f"{testid}: two bars at {hour}"
            bars[hour] = float(value)
        charts[figure, span] = bars
    figures = {figure for figure, _ in charts}
    assert len(figures) >= 4, f"the lamp page draws {sorted(figures)}"
    assert {(f, s) for f in figures for s in spans} == set(charts), sorted(charts)

    for span, (granularity, start, end) in spans.items():
        points = api_figures(console, granularity, start, end)
        for figure in figures:
            expected = {
                iso(datetime.fromisoformat(p["start"])): float(p[figure])
                for p in points
                if p[figure] is not None
            }
            assert charts[figure, span] == expected, f"chart-{figure}-{span}"

    # Not two empty charts agreeing: the seeded hours and day are drawn.
    seeded = {iso(start): float(40 + 7 * i) for start, i in CHART_HOURS}
    assert seeded.items() <= charts["messages", "24h"].items()
    yesterday = YESTERDAY.replace(hour=0)
    assert charts["messages", "7d"].get(iso(yesterday)) == 303.0


async def index_markup(console: ConsoleRun) -> list[dict[str, Any]]:
    """Two messages of the lamp with markup in every string field but the lamp's own id (the
    identity the sink files it under), through lamp.messages.v1 and the real ES sink."""
    script, img, remote = XSS_VALUES
    async with LampSender(console.settings) as lamps:
        return [
            await lamps.send(
                SITE_A, XSS_LAMP, script, zone=img, posture=remote, note=script, fw=img
            ),
            await lamps.send(
                SITE_A,
                XSS_LAMP,
                "posture",
                posture=script,
                zone=remote,
                confidence=0.9,
                persons=1,
                tags=[img, script],
                nested={"label": remote},
            ),
        ]


async def test_markup_in_a_message_is_shown_as_text_never_run(
    console: ConsoleRun, browsing: Browsing
) -> None:
    sent = await index_markup(console)
    deadline = time.monotonic() + 60
    while True:
        found = await asyncio.to_thread(
            console.api.get, "support", "/messages/search", lamp=XSS_LAMP
        )
        if found.status_code == 200 and len(found.json()["items"]) >= len(sent):
            break
        assert time.monotonic() < deadline, f"not indexed:\n{found.text}\n{console.tails()}"
        await asyncio.sleep(0.5)

    page = await browsing.sign_in(console.api.tokens["support"])
    for path, name in (
        (f"/console/messages?lamp={XSS_LAMP}", "search"),
        (f"/console/lamps/{XSS_LAMP}", "lamp"),
        ("/console/alerts/a-xss", "alert"),
    ):
        assert await browsing.visit(page, path, f"xss-{name}") == 200, path
        text = await page.locator("body").inner_text()
        shown = [value for value in XSS_VALUES if value in text]
        assert shown == list(XSS_VALUES), f"{path}: shown as text: {shown}"
        # Nothing the markup would have created is in the page.
        assert await page.locator("img[onerror], img[src='x'], [src*='xss.invalid']").count() == 0
        assert await page.locator("script:not([src])").count() == 0, path
    await asyncio.sleep(0.5)  # room for a late image request or dialog
    assert not [
        url for url in browsing.watch.requests if "xss.invalid" in url or url.endswith("/x")
    ], browsing.watch.requests
    assert not browsing.watch.dialogs, browsing.watch.dialogs
