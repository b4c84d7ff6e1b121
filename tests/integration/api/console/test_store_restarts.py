"""A store restarted under an open console: Redis (the sessions) or PostgreSQL (tokens, alerts,
the alert's life), stopped for 16.5 s (past one heartbeat of the event stream) while a staff
user's board is open with its live event stream, then started again.

Each test runs its **own** instance of the store it restarts (tests/integration/private_services:
the stack's service class on its own folder and port; the shared stack is never stopped) and
its own ``veilleuse api`` on it. Checked: while the store is down the API keeps running, its
``/healthz`` answers, ``/readyz`` says 503 with the store's check failed, and every page asked
for is the console's "a service is not answering" page (503), never a 500 nor a hang; the open
event stream is not ended, and after a PostgreSQL restart it tells the board that its live
updates stopped (``status``, shown as "not connected") and came back. Once the store is back,
with no restart of anything and the same session cookie: the board answers again, the API's
check of the store passes again, and the open stream carries the news again (an alert from
``alerts.v1``; after a PostgreSQL restart, a step of the alert's life that the poller reads
from ``alert_events``).

Not here: a Kafka crash under an open board (test_kafka_restart.py beside this one); and,
covered elsewhere on the shared stack under its restart lock: the sinks losing
nothing through 60 s PostgreSQL and Elasticsearch outages, and the JSON API's 503s meanwhile
(tests/integration/sinks), the notifier through Redis and PostgreSQL restarts
(tests/integration/notifier/test_notifier_outages.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.async_api import Page, async_playwright

from api.console.i18n import translate
from api.console.pages import HEARTBEAT_S
from api.console.sessions import SESSION_COOKIE
from api.tokens import create_token
from devtools.processes import PipelineProcess
from devtools.stack.chromium import CHROMIUM
from devtools.stack.postgres import Postgres
from devtools.stack.redis import Redis
from devtools.stack.service import Service
from pipeline import clients
from pipeline.ports import free_port
from pipeline.settings import Settings
from pipeline.topics import ALERTS, ensure_topics, topic_name
from schemas import encode, schema
from tests.integration.api.conftest import SITE_A, ApiRun, seed, wait_until_ready
from tests.integration.api.console.test_console import help_requested, read_events, signed_in
from tests.integration.api.console.test_live_board import insert_step
from tests.integration.databases import scratch_database
from tests.integration.private_services import listening_port, private_service, start

pytestmark = pytest.mark.slow

# Past one heartbeat of the event stream (which re-checks the session in Redis and the token in
# PostgreSQL): a store away must not end the stream.
OUTAGE_S = HEARTBEAT_S + 1.5
# A page asked for while a store is down answers within this (the API's request timeout is 3 s
# here, the Redis client's 1 s): the console degrades, it does not hang.
ANSWER_WITHIN_S = 8.0
RECOVERED_WITHIN_S = 20.0
LOG_LIMIT = 1_000_000
LIVE_STATUS = '[data-testid="live-status"]'

UNAVAILABLE = translate("fr", "error.unavailable")
BOARD = f"/console/sites/{SITE_A}"


def own_redis(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"redis": settings.redis.model_copy(update={"port": listening_port()})}
    )


def own_postgres(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"port": listening_port()})}
    )


@contextlib.asynccontextmanager
async def console_api(settings: Settings, log_file: Path, **extra: str) -> AsyncIterator[ApiRun]:
    """``veilleuse api`` on ``settings``' Redis, Kafka and PostgreSQL server (a scratch
    database, seeded as the API tests' one), its own topics, and a staff token of site A;
    ``extra``: more of its environment."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    with scratch_database(settings, "console_outage") as database:
        scoped = database.model_copy(
            update={"kafka": database.kafka.model_copy(update={"topic_prefix": prefix})}
        )
        await ensure_topics(scoped)  # the API's readiness asks for its topics
        conninfo = scoped.postgres.conninfo()
        seed(conninfo)
        tokens = {"staff_a": create_token(conninfo, "staff_a", "staff", (SITE_A,))}
        port = free_port()
        env = {
            "VEILLEUSE_POSTGRES__PORT": str(scoped.postgres.port),
            "VEILLEUSE_POSTGRES__DATABASE": scoped.postgres.database,
            "VEILLEUSE_REDIS__PORT": str(scoped.redis.port),
            "VEILLEUSE_KAFKA__BOOTSTRAP_SERVERS": scoped.kafka.bootstrap_servers,
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": prefix,
            "VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX": f"{prefix[:-1]}-messages",
            "VEILLEUSE_DETECTION__APP_ID": f"{prefix}detection",
            "VEILLEUSE_API__PORT": str(port),
            "VEILLEUSE_API__TOKEN_CACHE_S": "0",
            "VEILLEUSE_API__REQUEST_TIMEOUT_S": "3",
            "VEILLEUSE_LOG_FORMAT": "json",
            **extra,
        }
        process = PipelineProcess(["api"], env, log_file).start()
        run = ApiRun(scoped, env, f"http://127.0.0.1:{port}", tokens, process)
        try:
            await asyncio.to_thread(wait_until_ready, run, 60)
            yield run
        finally:
            process.stop()


@contextlib.asynccontextmanager
async def board_in_a_browser(run: ApiRun, session_id: str) -> AsyncIterator[Page]:
    """The staff user's board in Debian's headless Chromium, signed in with the session."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `veilleuse stack up`"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = await chromium.new_context()
            await context.add_cookies(
                [{"name": SESSION_COOKIE, "value": session_id, "url": run.url}]
            )
            page = await context.new_page()
            await page.goto(run.url + BOARD)
            yield page
        finally:
            await chromium.close()


async def live_shown(page: Page, live: str, screenshot: Path, timeout_s: float) -> None:
    """Wait until the board's indicator says ``live`` ("on"/"off"); photograph it."""
    await page.wait_for_selector(
        f'{LIVE_STATUS}[data-live="{live}"]', state="attached", timeout=timeout_s * 1000
    )
    await page.screenshot(path=str(screenshot))


def probe(run: ApiRun, path: str) -> tuple[int, str]:
    try:
        response = run.get(None, path)
    except httpx.TransportError as exc:
        return 0, repr(exc)
    return response.status_code, response.text


def store_ok(run: ApiRun, store: str) -> bool:
    status, body = probe(run, "/readyz")
    if status not in (200, 503):
        return False
    ok: bool = json.loads(body)["checks"][store]["ok"]
    return ok


async def raise_alert(run: ApiRun, alert_id: str) -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    record = help_requested(alert_id, SITE_A, "L-A2", now_ms)
    producer = clients.producer(run.settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic_name(run.settings, ALERTS), encode(schema("alert.v1"), record), key=b"L-A2"
        )
    finally:
        await producer.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("store", ["redis", "postgres"])
async def test_a_store_restarted_under_an_open_board_degrades_it_then_it_recovers_by_itself(
    store: str,
    settings: Settings,
    tmp_path: Path,
    require: Any,
    restarts_services: None,  # held so that no other test restarts the shared stack meanwhile
) -> None:
    require("postgres", "kafka", "redis", "elasticsearch")
    kind: type[Service] = Redis if store == "redis" else Postgres
    point = own_redis if store == "redis" else own_postgres
    with private_service(settings, kind, point, tmp_path / f"{store}.log") as service:
        async with console_api(service.ctx.settings, tmp_path / "api.log") as run:
            staff = await asyncio.to_thread(signed_in, run, "staff_a")
            session_id = staff.http.cookies[SESSION_COOKIE]
            tag = uuid.uuid4().hex[:6]
            after = f"after-{tag}"  # raised once the store is back
            events: list[tuple[str, dict[str, Any]]] = []
            ready = asyncio.Event()

            def news_arrived() -> bool:
                alerts = {d["alert_id"] for n, d in events if n == "alert"}
                steps = {(d["alert_id"], d["step"]) for n, d in events if n == "step"}
                return after in alerts and (store != "postgres" or ("a-open", "escalated") in steps)

            listener = asyncio.create_task(
                read_events(run, session_id, SITE_A, events, ready, news_arrived)
            )
            shots = tmp_path / "screenshots"
            shots.mkdir()
            browsing = contextlib.AsyncExitStack()
            try:
                await asyncio.wait_for(ready.wait(), 30)
                board = await asyncio.to_thread(staff.get, BOARD)
                assert board.status_code == 200, board.text
                screen = await browsing.enter_async_context(board_in_a_browser(run, session_id))
                await live_shown(screen, "on", shots / "1-live.png", 20)

                await asyncio.to_thread(service.stop)
                down_at = time.monotonic()
                pages: list[tuple[int, float, bool]] = []  # status, seconds, the message shown
                ready_probe: list[tuple[int, str]] = []
                while time.monotonic() - down_at < OUTAGE_S:
                    assert run.process.alive(), run.process.tail(40)
                    asked = time.monotonic()
                    page = await asyncio.to_thread(staff.get, BOARD)
                    pages.append(
                        (page.status_code, time.monotonic() - asked, UNAVAILABLE in page.text)
                    )
                    ready_probe.append(await asyncio.to_thread(probe, run, "/readyz"))
                    live = await asyncio.to_thread(probe, run, "/healthz")
                    assert live[0] == 200, live
                    assert not listener.done(), "the open event stream ended during the outage"
                    await asyncio.sleep(0.5)
                # What the open board shows: not live while its updates are stopped (PostgreSQL,
                # whose steps it polls); live all along through a Redis restart.
                shown = "off" if store == "postgres" else "on"
                await live_shown(screen, shown, shots / "2-during-the-outage.png", 5)
                await asyncio.to_thread(start, service)
                up_at = time.monotonic()

                recovered_s = None
                while time.monotonic() - up_at < RECOVERED_WITHIN_S:
                    page = await asyncio.to_thread(staff.get, BOARD)
                    if page.status_code == 200:
                        recovered_s = time.monotonic() - up_at
                        break
                    await asyncio.sleep(0.5)
                assert recovered_s is not None, f"the board is still {page.status_code}"
                assert 'data-alert-id="a-open"' in page.text  # the same session, the same board
                # Its check of this store passes again (the whole readiness also depends on the
                # shared services, which other test runs may be restarting meanwhile).
                while not await asyncio.to_thread(store_ok, run, store):
                    assert time.monotonic() - up_at < RECOVERED_WITHIN_S, (
                        f"the API's {store} check still fails"
                    )
                    await asyncio.sleep(0.5)

                # The stream opened before the outage carries the news again.
                await raise_alert(run, after)
                if store == "postgres":
                    with psycopg.connect(run.settings.postgres.conninfo(), autocommit=True) as conn:
                        insert_step(conn, "a-open", "escalated", {"to": "night nurse"})
                await asyncio.wait_for(listener, 20)
                await live_shown(screen, "on", shots / "3-back.png", RECOVERED_WITHIN_S)
            finally:
                await browsing.aclose()
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await listener
                staff.close()

            # Degraded, and said so: the console's own page, never a 500, never a hang.
            statuses = {status for status, _, _ in pages}
            assert statuses == {503}, pages
            assert all(shown for _, _, shown in pages), "a 503 without the console's message"
            assert max(seconds for _, seconds, _ in pages) < ANSWER_WITHIN_S, pages
            down = [json.loads(body) for status, body in ready_probe if status == 503]
            assert down, ready_probe
            assert all(not body["checks"][store]["ok"] for body in down), down
            # The open board is told when its live updates stop (the steps are polled from
            # PostgreSQL) and when they are back; Redis is not on that path: nothing to tell.
            live = [d["live"] for n, d in events if n == "status"]
            assert live == ([False, True] if store == "postgres" else []), live
            assert run.process.alive(), run.process.tail(40)
            assert run.process.log_file.stat().st_size < LOG_LIMIT
    print(  # noqa: T201 - shown with -s
        f"{store}: {len(pages)} pages while down, each within "
        f"{max(s for _, s, _ in pages):.2f} s; board back {recovered_s:.1f} s after the restart"
    )
