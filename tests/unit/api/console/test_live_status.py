"""The board's live updates say when they stop and when they come back: a board must not keep
showing "connected" while PostgreSQL (the steps) or Kafka (the alerts) is away. Against the
real services, a PostgreSQL restart under an open board:
tests/integration/api/console/test_store_restarts.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from api.console import live
from api.console.live import AlertHub, Subscriber
from pipeline.settings import load_settings

NOW = datetime(2026, 12, 2, 21, 0, tzinfo=UTC)


def statuses(subscriber: Subscriber) -> list[bool]:
    found = []
    while not subscriber.queue.empty():
        event = subscriber.queue.get_nowait()
        if event.get("event") == "status":
            found.append(event["live"])
    return found


async def test_a_failing_step_poll_marks_the_boards_not_live_once_then_live_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live, "STEP_POLL_S", 0.01)
    answers: list[Exception | None] = [None, OSError("down"), OSError("down"), None, None]
    polled = asyncio.Event()

    async def fetch(_query: str, _params: dict[str, Any]) -> list[dict[str, Any]]:
        answer = answers.pop(0) if answers else None
        if not answers:
            polled.set()
        if answer is not None:
            raise answer
        return [{"polled_at": NOW, "alert_id": None}]

    hub = AlertHub(load_settings(_env_file=None), fetch=fetch, steps_query="q")
    board = Subscriber(frozenset({"site-a"}))
    hub.subscribers.add(board)
    task = asyncio.create_task(hub._steps())
    await asyncio.wait_for(polled.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # Told once when the polls started failing and once when they answered again.
    assert statuses(board) == [False, True]
    assert hub.down == set()


def test_live_again_only_when_every_part_is_back() -> None:
    hub = AlertHub(load_settings(_env_file=None))
    board = Subscriber(None)
    hub.subscribers.add(board)
    hub._health("steps", ok=False)
    hub._health("alerts", ok=False)
    hub._health("steps", ok=True)  # the alerts still do not come: not live yet
    assert statuses(board) == [False]
    hub._health("alerts", ok=True)
    hub._health("alerts", ok=True)  # no news: nothing sent
    assert statuses(board) == [True]
