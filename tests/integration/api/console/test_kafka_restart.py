"""Kafka crashes under an open console (SIGKILL, as a machine failure), stays down, and is
started again.

The test runs its **own** single-node Kafka (tests/integration/private_services.py: the stack's
jars, its own folder and ports; the shared broker is never touched) and its own ``veilleuse
api`` on it. A staff user's board is open in Chromium and its live event stream is read. The
console's pages read PostgreSQL and Redis only, so while Kafka is away the board keeps
answering (200, its alerts as they were); the open stream is not ended, and it tells the board
that its live updates stopped ("not connected") rather than leaving a stale page looking live.
Once Kafka is back, with no restart of anything: the indicator says live again and an alert
written to ``alerts.v1`` after the restart reaches the same open stream.

``veilleuse alerts tail`` (the person on call's terminal) runs through the same outage and
says the same: Kafka not answering, then answering again, and prints the alert raised after.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from api.console.sessions import SESSION_COOKIE
from devtools.processes import PipelineProcess
from pipeline.settings import Settings
from tests.integration.api.conftest import SITE_A
from tests.integration.api.console.test_console import read_events, signed_in
from tests.integration.api.console.test_store_restarts import (
    BOARD,
    LOG_LIMIT,
    board_in_a_browser,
    console_api,
    live_shown,
    probe,
    raise_alert,
)
from tests.integration.private_services import PrivateKafka, crash, start

pytestmark = pytest.mark.slow

DOWN_S = 15.0  # Kafka left dead this long: past the alerts tail's notice of the loss
NOTICED_WITHIN_S = 30.0  # the board told its updates stopped, from the crash
BACK_WITHIN_S = 45.0  # from Kafka answering again: the tail reconnected, the news arrives


@pytest.mark.timeout(240)
async def test_a_kafka_crash_under_an_open_board_is_shown_and_the_news_comes_back(
    private_kafka: PrivateKafka, settings: Settings, tmp_path: Path, require: Any
) -> None:
    require("postgres", "redis")
    kafka = private_kafka
    own = settings.model_copy(update={"kafka": kafka.ctx.settings.kafka})
    async with console_api(own, tmp_path / "api.log") as run:
        tail = PipelineProcess(
            ["alerts", "tail", "--site", SITE_A], run.env, tmp_path / "alerts-tail.log"
        ).start()
        staff = await asyncio.to_thread(signed_in, run, "staff_a")
        session_id = staff.http.cookies[SESSION_COOKIE]
        tag = uuid.uuid4().hex[:6]
        before, after = f"before-{tag}", f"after-{tag}"
        events: list[tuple[str, dict[str, Any]]] = []
        ready = asyncio.Event()

        def arrived(alert_id: str) -> bool:
            return any(n == "alert" and d["alert_id"] == alert_id for n, d in events)

        def statuses() -> list[bool]:
            return [d["live"] for n, d in events if n == "status"]

        listener = asyncio.create_task(
            read_events(run, session_id, SITE_A, events, ready, lambda: arrived(after))
        )
        shots = tmp_path / "screenshots"
        shots.mkdir()
        browsing = contextlib.AsyncExitStack()
        pages: list[tuple[int, bool]] = []  # status, the board's open alert shown
        try:
            await asyncio.wait_for(ready.wait(), 30)
            screen = await browsing.enter_async_context(board_in_a_browser(run, session_id))
            await live_shown(screen, "on", shots / "1-live.png", 20)
            deadline = time.monotonic() + 30
            while "following" not in tail.log_file.read_text():  # it starts at "now"
                assert tail.alive() and time.monotonic() < deadline, tail.tail(20)
                await asyncio.sleep(0.2)
            await raise_alert(run, before)  # the tails are live before the crash
            deadline = time.monotonic() + 20
            while not arrived(before):
                assert time.monotonic() < deadline, "no alert on the stream before the crash"
                await asyncio.sleep(0.2)

            await asyncio.to_thread(crash, kafka)
            down_at = time.monotonic()
            noticed_s = None
            while time.monotonic() - down_at < DOWN_S or noticed_s is None:
                assert time.monotonic() - down_at < NOTICED_WITHIN_S, (
                    f"the open board was not told that its updates stopped: {events[-5:]}"
                )
                assert run.process.alive(), run.process.tail(40)
                assert not listener.done(), "the open event stream ended while Kafka was down"
                page = await asyncio.to_thread(staff.get, BOARD)
                pages.append((page.status_code, 'data-alert-id="a-open"' in page.text))
                assert (await asyncio.to_thread(probe, run, "/healthz"))[0] == 200
                if noticed_s is None and False in statuses():
                    noticed_s = time.monotonic() - down_at
                await asyncio.sleep(0.5)
            await live_shown(screen, "off", shots / "2-kafka-down.png", 5)

            await asyncio.to_thread(start, kafka)
            up_at = time.monotonic()
            while statuses()[-1] is not True:
                assert time.monotonic() - up_at < BACK_WITHIN_S, (
                    f"the board's updates did not come back: {events[-5:]}"
                )
                await asyncio.sleep(0.5)
            back_s = time.monotonic() - up_at
            await raise_alert(run, after)
            await asyncio.wait_for(listener, BACK_WITHIN_S)
            await live_shown(screen, "on", shots / "3-back.png", 10)
            while after not in tail.log_file.read_text():  # the terminal's tail too
                assert time.monotonic() - up_at < BACK_WITHIN_S, tail.tail(20)
                await asyncio.sleep(0.2)
        finally:
            tail.stop()
            await browsing.aclose()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
            staff.close()

        # The pages never needed Kafka: the board answered all along, with its alerts.
        assert pages and all(page == (200, True) for page in pages), pages
        assert statuses() == [False, True], events
        assert arrived(before) and arrived(after)
        said = tail.log_file.read_text()
        lost, back = said.find("is not answering"), said.find("Kafka answers again")
        assert 0 <= lost < back, said[-2000:]
        assert before in said[:lost] and after in said[back:], said[-2000:]
        assert run.process.alive(), run.process.tail(40)
        assert run.process.log_file.stat().st_size < LOG_LIMIT
    print(  # noqa: T201 - shown with -s
        f"kafka: board told {noticed_s:.1f} s after the crash; {len(pages)} pages while down, "
        f"all 200; updates back {back_s:.1f} s after Kafka answered"
    )
