"""The support console in a real browser: Debian's headless Chromium (installed by
`veilleuse stack up`), driven by Playwright for Python, against a real API process serving
``/console`` over a real pipeline (a detection worker, the PostgreSQL and Elasticsearch sinks)
on a scratch database, its own topics and its own search alias.

Every page a test opens is watched: a console error (a Content-Security-Policy violation is
one), an uncaught exception or a dialog fails the test, and a screenshot of it is saved under
the run's output (its path is printed at the end of the run).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Error,
    Page,
    Request,
    Response,
    async_playwright,
)
from psycopg.types.json import Jsonb

from api.console.sessions import SESSION_COOKIE
from api.tokens import create_token
from devtools.processes import PipelineProcess
from devtools.stack import manager
from devtools.stack.chromium import CHROMIUM, Chromium
from devtools.stack.context import StackContext
from pipeline import clients
from pipeline.ports import free_port
from pipeline.settings import Settings
from pipeline.topics import ensure_topics_sync
from tests.integration.api.conftest import SITE_A, SITE_B, ApiRun, seed, wait_until_ready
from tests.integration.conftest import need
from tests.integration.databases import scratch_database
from tests.integration.processes import pipeline_processes

# Playwright must never fetch a browser of its own: the one under test is Debian's.
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

HOUR = timedelta(hours=1)
NOW_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
CHART_LAMP = "L-A1"
# Hours of the chart lamp within the last 24 hours, with figures that differ hour to hour
# (and a temperature with decimals), so that a bar drawn at the wrong hour shows.
CHART_HOURS = [(NOW_HOUR - (5 - i) * HOUR, i) for i in range(4)]

XSS_LAMP = "L-XSS"
# Markup without quotes: the payloads' JSON shows them exactly as they were sent.
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(2)>"
XSS_REMOTE = "<img src=http://xss.invalid/beacon.png onerror=alert(3)>"
XSS_VALUES = (XSS_SCRIPT, XSS_IMG, XSS_REMOTE)

_SCREENSHOTS: list[Path] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/console" in str(item.path):
            item.add_marker(pytest.mark.browser)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SCREENSHOTS:
        terminalreporter.write_line(
            f"console screenshots ({len(_SCREENSHOTS)}): {_SCREENSHOTS[0].parent}"
        )


# -- the console's server: the API process over a running pipeline ---------------------------


@dataclass
class ConsoleRun:
    api: ApiRun
    conninfo: str
    pipeline: list[PipelineProcess]

    @property
    def settings(self) -> Settings:
        return self.api.settings

    def url(self, path: str) -> str:
        return self.api.url + path

    def token(self, name: str, role: str, sites: tuple[str, ...] = ()) -> str:
        """A new token (its name made unique), for a site a test creates."""
        return create_token(self.conninfo, f"{name}-{uuid.uuid4().hex[:6]}", role, sites)

    def tails(self) -> str:
        return "\n".join(
            f"--- {' '.join(p.argv)}\n{p.tail(15)}" for p in [self.api.process, *self.pipeline]
        )


def seed_console(conninfo: str) -> None:
    """Beyond the API tests' history: hours of the chart lamp inside the last 24 hours, and a
    lamp whose firmware and alert carry markup (the messages' markup goes through the sink)."""
    with psycopg.connect(conninfo) as conn:
        for start, i in CHART_HOURS:
            conn.execute(
                "INSERT INTO activity_hourly (lamp_id, hour_start, site_id, messages, "
                "motion_events, active_minutes, minutes_in_bed, minutes_absent, "
                "bathroom_visits, falls, help_requests, temperature_readings, temperature_min, "
                "temperature_mean, temperature_max, last_seen_at, firmware, emitted_at, "
                "source_partition, source_offset) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "0, 0, 4, %s, %s, %s, %s, '1.4.2', now(), 1, %s)",
                (
                    CHART_LAMP,
                    start,
                    SITE_A,
                    40 + 7 * i,
                    3 + i,
                    10 * i + 1,
                    55 - 9 * i,
                    2 * i,
                    i % 2,
                    19.5 + i,
                    20.25 + i,
                    21.0 + i,
                    start + timedelta(minutes=58),
                    100 + i,
                ),
            )
        conn.execute(
            "INSERT INTO lamps (lamp_id, site_id, last_seen_at, firmware) VALUES (%s, %s, %s, %s)",
            (XSS_LAMP, SITE_A, NOW_HOUR, XSS_SCRIPT),
        )
        conn.execute(
            "INSERT INTO alerts (alert_id, kind, severity, site_id, lamp_id, incident_started_at, "
            "state, raised_at, details) VALUES ('a-xss', 'fall_confirmed', 'critical', %s, %s, "
            "%s, 'raised', %s, %s)",
            (
                SITE_A,
                XSS_LAMP,
                NOW_HOUR - HOUR,
                NOW_HOUR - HOUR,
                Jsonb({"zone": XSS_SCRIPT, "note": XSS_IMG, "source": XSS_REMOTE}),
            ),
        )
        conn.execute(
            "INSERT INTO alert_events (alert_id, step, emitted_at, details) "
            "VALUES ('a-xss', 'raised', %s, %s)",
            (NOW_HOUR - HOUR, Jsonb({"by": XSS_IMG})),
        )


@pytest.fixture(scope="package")
def console(
    settings: Settings,
    stack_status: dict[str, manager.Report],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ConsoleRun]:
    need(stack_status, "postgres", "kafka", "elasticsearch", "redis", "mosquitto", "chromium")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    with scratch_database(settings, "console") as database:
        scoped = database.model_copy(
            update={"kafka": database.kafka.model_copy(update={"topic_prefix": prefix})}
        )
        ensure_topics_sync(scoped)
        conninfo = scoped.postgres.conninfo()
        seed(conninfo)
        seed_console(conninfo)
        roles = {
            "support": ("support", ()),
            "staff_a": ("staff", (SITE_A,)),
            "staff_b": ("staff", (SITE_B,)),
            "admin": ("admin", ()),
        }
        tokens = {
            name: create_token(conninfo, f"console-{name}", role, sites)
            for name, (role, sites) in roles.items()
        }
        port = free_port()
        env = {
            "VEILLEUSE_POSTGRES__DATABASE": scoped.postgres.database,
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": prefix,
            "VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX": f"{prefix[:-1]}-messages",
            "VEILLEUSE_DETECTION__APP_ID": f"{prefix}detection",
            "VEILLEUSE_API__PORT": str(port),
            "VEILLEUSE_API__TOKEN_CACHE_S": "0",
            "VEILLEUSE_LOG_FORMAT": "json",
        }
        logs = tmp_path_factory.mktemp("console")
        pipeline = pipeline_processes(
            env,
            logs,
            "console-w1",
            live_port=free_port(),
            # Rule 1's 30 s, shortened: the fall is confirmed by the worker's timer.
            VEILLEUSE_RULES__FALL__CONFIRM_S="2",
        )
        api = PipelineProcess(["api"], env, logs / "api.log")
        run = ConsoleRun(
            ApiRun(scoped, env, f"http://127.0.0.1:{port}", tokens, api), conninfo, pipeline
        )
        try:
            api.start()
            for process in pipeline:
                process.start()
            wait_until_ready(run.api, 60)
            for process in pipeline:
                assert process.alive(), f"{' '.join(process.argv)} exited:\n{process.tail(20)}"
            yield run
        finally:
            for process in [api, *pipeline]:
                process.stop()
            drop_indices(scoped, f"{prefix[:-1]}-messages")


def drop_indices(settings: Settings, index_prefix: str) -> None:
    """The run's messages indices and index templates (the sink creates both), so that runs
    leave nothing behind in the shared Elasticsearch."""
    from elasticsearch import NotFoundError

    es = clients.elasticsearch(settings)
    try:
        rows = es.cat.indices(
            index=f"{index_prefix}*", h="index", format="json", expand_wildcards="all"
        )
        names = [row["index"] for row in rows.body]
        for start in range(0, len(names), 40):
            es.indices.delete(index=",".join(names[start : start + 40]))
        with contextlib.suppress(NotFoundError):
            found = es.indices.get_index_template(name=f"{index_prefix}*")
            for template in found["index_templates"]:
                es.indices.delete_index_template(name=template["name"])
    finally:
        es.close()


# -- the browser -------------------------------------------------------------------------------


@dataclass
class Watch:
    """What a page did that a console page must never do."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # answers >= 400, to name what failed
    icon: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # see expect_error

    def attach(self, page: Page) -> None:
        def on_console(message: ConsoleMessage) -> None:
            if message.type != "error":
                return
            source = message.location.get("url") or page.url
            line = f"console error on {page.url} ({source}): {message.text}"
            # The browser's own request for /favicon.ico (no page asked for it): kept apart,
            # and failed by test_the_console_serves_its_own_icon alone.
            (self.icon if source.endswith("/favicon.ico") else self.errors).append(line)

        def on_error(error: Error) -> None:
            self.errors.append(f"uncaught exception on {page.url}: {error}")

        async def on_dialog(dialog: Dialog) -> None:
            self.dialogs.append(f"{dialog.type} on {page.url}: {dialog.message}")
            await dialog.dismiss()

        def on_request(request: Request) -> None:
            self.requests.append(request.url)

        def on_response(response: Response) -> None:
            if response.status >= 400:
                self.failed.append(f"{response.status} {response.request.method} {response.url}")

        page.on("console", on_console)
        page.on("pageerror", on_error)
        page.on("dialog", on_dialog)
        page.on("request", on_request)
        page.on("response", on_response)

    def expect_error(self, text: str) -> None:
        """A console error the test provokes on purpose (one containing ``text``): Chromium
        reports it asynchronously, possibly after the test's last step, so it is left out
        when the page is checked, not removed at once."""
        self.expected.append(text)

    def assert_clean(self) -> None:
        assert not self.dialogs, f"a page opened a dialog: {self.dialogs}"
        errors = [e for e in self.errors if not any(text in e for text in self.expected)]
        assert not errors, "a page logged errors:\n" + "\n".join(
            [*errors, "answers >= 400:", *self.failed]
        )


@dataclass
class Screens:
    folder: Path
    test: str
    count: int = 0

    async def shot(self, page: Page, name: str) -> Path:
        self.count += 1
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.test}-{self.count:02d}-{name}")
        path = self.folder / f"{slug}.png"
        await page.screenshot(path=str(path), full_page=True)
        _SCREENSHOTS.append(path)
        return path


@pytest.fixture(scope="session")
def screenshots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's output folder (pytest's base temp, or --basetemp): ``screenshots/``."""
    folder = tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def screens(screenshots_dir: Path, request: pytest.FixtureRequest) -> Screens:
    return Screens(screenshots_dir, request.node.name)


@pytest.fixture
async def browser(console: ConsoleRun) -> AsyncIterator[Browser]:
    """Debian's Chromium, headless; never a browser Playwright would download."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `veilleuse stack up`"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        # The browser driven is the one the stack installed, not one of Playwright's builds.
        installed = Chromium(StackContext(console.settings)).version()
        assert installed == f"Chromium {chromium.version}", (installed, chromium.version)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Browsing:
    """The test's browser contexts (one per user); every page watched and photographed."""

    console: ConsoleRun
    browser: Browser
    screens: Screens
    watch: Watch = field(default_factory=Watch)
    contexts: list[BrowserContext] = field(default_factory=list)

    async def new_page(self, locale: str = "en-GB") -> Page:
        context = await self.browser.new_context(
            base_url=self.console.api.url, locale=locale, viewport={"width": 1280, "height": 900}
        )
        self.contexts.append(context)
        page = await context.new_page()
        self.watch.attach(page)
        return page

    async def visit(self, page: Page, path: str, name: str) -> int:
        """Open ``path``; its screenshot; the status of the page finally shown."""
        response = await page.goto(path)
        assert response is not None, f"no response for {path}"
        await page.wait_for_load_state("load")
        await self.screens.shot(page, name)
        return response.status

    async def sign_in(self, token: str, name: str = "signed-in") -> Page:
        """A new user's page, signed in through the form, as a person does it."""
        page = await self.new_page()
        await self.visit(page, "/console/sign-in", "sign-in")
        await page.fill('input[name="token"]', token)
        async with page.expect_navigation():
            await page.locator('form:has(input[name="token"]) [type="submit"]').click()
        await page.wait_for_load_state("load")
        assert "/console/sign-in" not in page.url, f"still on the sign-in page: {page.url}"
        await self.screens.shot(page, name)
        return page

    async def session_cookie(self, page: Page) -> dict[str, Any]:
        cookies = [c for c in await page.context.cookies() if c["name"] == SESSION_COOKIE]
        assert len(cookies) == 1, f"expected one {SESSION_COOKIE} cookie: {cookies}"
        return dict(cookies[0])

    async def csrf_token(self, page: Page) -> str:
        """The session's CSRF token, as the page's own forms carry it (sign-out has one)."""
        value = await page.locator('input[name="csrf_token"]').first.get_attribute("value")
        assert value, f"no csrf_token field on {page.url}"
        return value


@pytest.fixture
async def browsing(
    console: ConsoleRun, browser: Browser, screens: Screens
) -> AsyncIterator[Browsing]:
    session = Browsing(console, browser, screens)
    try:
        yield session
    finally:
        for context in session.contexts:
            await context.close()
    session.watch.assert_clean()
