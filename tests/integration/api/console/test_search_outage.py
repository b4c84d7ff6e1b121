"""Elasticsearch hung (SIGSTOP: a long GC pause, a node out of memory) under an open console,
then back (SIGCONT): the pages that show messages (the search page, an alert's page, a lamp's
page) answer with everything else they hold and the console's "a service is not answering"
notice in place of the messages, the search page within the API's request timeout, the alert's
and the lamp's page within the shorter ``api.secondary_timeout_s`` (the page a nurse opens from
a notification); the board answers as usual within that shorter wait (its lamps that only the
messages index knows are left out meanwhile); ``/readyz`` says 503 with the Elasticsearch
check failed and ``/healthz`` 200. Once Elasticsearch answers again, with no restart of
anything and the same session, the messages are shown again.

The shared stack's Elasticsearch is frozen under the restart lock (``restarts_services``), for a
few seconds only: a private Elasticsearch would take a minute and a gigabyte to start. Its own
restarts under the sinks (60 s outages, nothing lost) and the JSON API's 503 meanwhile are
tested in tests/integration/sinks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from api.console.i18n import translate
from api.console.sessions import SESSION_COOKIE
from devtools.stack.chromium import CHROMIUM
from devtools.stack.context import StackContext
from devtools.stack.elasticsearch import Elasticsearch
from pipeline import clients
from pipeline.settings import Settings
from tests.integration.api.conftest import SITE_A, ApiRun
from tests.integration.api.console.test_console import signed_in
from tests.integration.api.console.test_store_restarts import console_api, probe

pytestmark = pytest.mark.slow

UNAVAILABLE = translate("fr", "error.unavailable")
FROZEN_S = 10.0
# The API's request timeout is 3 s here (console_api): the search page, whose subject is the
# messages, waits that long at most; the pages where they are an addition (an alert's, a
# lamp's, the board's lamps only the index knows) wait `api.secondary_timeout_s`, 1 s here.
ANSWER_WITHIN_S = 6.0
SECONDARY_S = 1.0
SECONDARY_WITHIN_S = 2.5
PAGES = {
    "search": f"/console/messages?lamp=L-A1&site={SITE_A}",
    "alert": "/console/alerts/a-open",
    "lamp": "/console/lamps/L-A1",
}
BOARD = f"/console/sites/{SITE_A}"


def own_index(run: ApiRun) -> str:
    """The run's own index (console_api's prefix), never the shared stack's."""
    index = run.env["VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX"]
    assert index != run.settings.sink.elasticsearch_index_prefix
    return index


async def index_message(settings: Settings, index: str, marker: str) -> None:
    """One message of lamp L-A1 in ``index``, with the fields the search reads."""
    client = clients.async_elasticsearch(settings)
    now_ms = int(time.time() * 1000)
    try:
        await client.indices.create(
            index=index,
            mappings={
                "properties": {
                    "lamp_id": {"type": "keyword"},
                    "site_id": {"type": "keyword"},
                    "type": {"type": "keyword"},
                    "event_time": {"type": "date", "format": "epoch_millis"},
                    "payload": {"type": "object", "enabled": False},
                    "raw": {"type": "text"},
                }
            },
        )
        body = {"lamp_id": "L-A1", "site_id": SITE_A, "type": "motion", "seq": 1}
        payload = {**body, "ts": now_ms, "zone": marker}
        await client.index(
            index=index,
            document={
                **body,
                "ts": now_ms,
                "received_at": now_ms,
                "event_time": now_ms,
                "payload": payload,
                "raw": json.dumps(payload),
            },
            refresh=True,
        )
    finally:
        await client.close()


async def delete_index(settings: Settings, index: str) -> None:
    client = clients.async_elasticsearch(settings)
    try:
        await client.indices.delete(index=index, ignore_unavailable=True)
    finally:
        await client.close()


class Frozen:
    """The shared Elasticsearch's process group stopped (SIGSTOP) until ``thaw``; always thawed
    on the way out, whatever the test did."""

    def __init__(self, settings: Settings) -> None:
        pid = Elasticsearch(StackContext(settings)).pid()
        assert pid is not None, "the stack's Elasticsearch is not running"
        self.pid = pid
        self.frozen = False

    def freeze(self) -> None:
        os.killpg(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            os.killpg(self.pid, signal.SIGCONT)
            self.frozen = False


@pytest.fixture
def frozen_elasticsearch(settings: Settings, restarts_services: None) -> Iterator[Frozen]:
    frozen = Frozen(settings)
    try:
        yield frozen
    finally:
        frozen.thaw()


def timed(run: ApiRun, staff: Any, path: str) -> tuple[int, float, str]:
    asked = time.monotonic()
    page = staff.get(path)
    return page.status_code, time.monotonic() - asked, page.text


@pytest.mark.timeout(150)
async def test_a_hung_elasticsearch_leaves_the_console_answering_then_the_messages_come_back(
    settings: Settings,
    tmp_path: Path,
    require: Any,
    frozen_elasticsearch: Frozen,
) -> None:
    require("postgres", "kafka", "redis", "elasticsearch")
    marker = f"zone-{uuid.uuid4().hex[:8]}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with console_api(
        settings, tmp_path / "api.log", VEILLEUSE_API__SECONDARY_TIMEOUT_S=str(SECONDARY_S)
    ) as run:
        index = own_index(run)
        await index_message(run.settings, index, marker)
        staff = await asyncio.to_thread(signed_in, run, "staff_a")
        try:
            before = await asyncio.to_thread(timed, run, staff, PAGES["search"])
            assert before[0] == 200 and marker in before[2], before[:2]
            assert UNAVAILABLE not in before[2]
            async with async_playwright() as playwright:
                chromium = await playwright.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True
                )
                try:
                    context = await chromium.new_context(locale="fr-FR")
                    await context.add_cookies(
                        [
                            {
                                "name": SESSION_COOKIE,
                                "value": staff.http.cookies[SESSION_COOKIE],
                                "url": run.url,
                            }
                        ]
                    )
                    screen = await context.new_page()

                    frozen_elasticsearch.freeze()
                    frozen_at = time.monotonic()
                    during: dict[str, tuple[int, float, str]] = {}
                    for name, path in PAGES.items():
                        during[name] = await asyncio.to_thread(timed, run, staff, path)
                    board = await asyncio.to_thread(timed, run, staff, BOARD)
                    ready = await asyncio.to_thread(probe, run, "/readyz")
                    live = await asyncio.to_thread(probe, run, "/healthz")
                    await screen.goto(run.url + PAGES["search"], timeout=ANSWER_WITHIN_S * 1000)
                    await screen.get_by_text(UNAVAILABLE).wait_for(timeout=1000)
                    await screen.screenshot(path=str(shots / "1-search-while-hung.png"))
                    await asyncio.sleep(max(0.0, frozen_at + FROZEN_S - time.monotonic()))
                    frozen_elasticsearch.thaw()
                    thawed_at = time.monotonic()

                    back: tuple[int, float, str] = (0, 0.0, "")
                    while time.monotonic() - thawed_at < 30:
                        back = await asyncio.to_thread(timed, run, staff, PAGES["search"])
                        if back[0] == 200 and marker in back[2]:
                            break
                        await asyncio.sleep(0.5)
                    await screen.goto(run.url + PAGES["search"])
                    await screen.get_by_text(marker).first.wait_for(timeout=5000)
                    await screen.screenshot(path=str(shots / "2-search-back.png"))
                finally:
                    await chromium.close()
        finally:
            staff.close()
            frozen_elasticsearch.thaw()
            await delete_index(run.settings, index)

        for name, (status, seconds, text) in during.items():
            assert status == 200, (name, status, text[:500])
            assert UNAVAILABLE in text, f"the {name} page does not say that a service is away"
            assert seconds < (ANSWER_WITHIN_S if name == "search" else SECONDARY_WITHIN_S), (
                name,
                seconds,
            )
            assert marker not in text
        assert "a-open" in during["alert"][2]
        assert "L-A1" in during["lamp"][2]
        assert board[0] == 200 and UNAVAILABLE not in board[2], board[:2]
        assert board[1] < SECONDARY_WITHIN_S, board[:2]
        assert ready[0] == 503 and not json.loads(ready[1])["checks"]["elasticsearch"]["ok"], ready
        assert live[0] == 200, live
        assert back[0] == 200 and marker in back[2] and UNAVAILABLE not in back[2], back[:2]
        assert run.process.alive(), run.process.tail(40)
    print(  # noqa: T201 - shown with -s
        "pages while Elasticsearch was hung: "
        + ", ".join(f"{n} {s:.2f} s" for n, (_, s, _) in during.items())
        + f"; board {board[1]:.2f} s; messages back {back[1]:.2f} s after the thaw's page asked"
    )
