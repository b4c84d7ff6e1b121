"""The API over a running pipeline: a real worker, the real sinks, real Kafka, PostgreSQL,
Elasticsearch and Redis. The current hour comes from the worker's live state; an acknowledgement
travels through alerts.acks.v1 and closes the incident in the worker; search finds a message
seconds after it was written."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from aiokafka import TopicPartition

from devtools.processes import PipelineProcess
from pipeline import clients
from pipeline.ports import free_port
from pipeline.topics import ALERT_ACKS, topic_name
from schemas import decode
from tests.integration.agents.conftest import LampSender
from tests.integration.api.conftest import SITE_A, ApiRun
from tests.integration.processes import pipeline_processes

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def pipeline(
    api_run: ApiRun, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[PipelineProcess]]:
    logs = tmp_path_factory.mktemp("pipeline")
    live_port = free_port()
    processes = pipeline_processes(api_run.env, logs, "api-w1", live_port=live_port)
    for process in processes:
        process.start()
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


async def send(
    api_run: ApiRun, lamp: str, *messages: tuple[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    async with LampSender(api_run.settings) as sender:
        return [await sender.send(SITE_A, lamp, kind, **fields) for kind, fields in messages]


async def test_the_current_hour_is_live_within_seconds(
    api_run: ApiRun, pipeline: list[PipelineProcess]
) -> None:
    motions = [("motion", {"zone": "room", "level": 40})] * 4
    await send(
        api_run, "L-LIVE", *motions, ("heartbeat", {"fw": "2.0.1", "uptime_s": 9, "rssi": -60})
    )

    def live_hour() -> dict[str, Any] | None:
        response = api_run.get("staff_a", "/lamps/L-LIVE/activity")
        if response.status_code != 200:
            return None
        body = response.json()
        live = [p for p in body["points"] if p["live"]]
        return body if live and live[-1]["messages"] == 5 else None

    body = eventually(live_hour, 60, f"the live hour of L-LIVE (worker: {pipeline[0].tail(5)})")
    assert body["live"] == {"available": True, "reason": None}
    (hour,) = [p for p in body["points"] if p["live"]]
    assert (hour["motion_events"], hour["active_minutes"]) == (4, 1)
    # Not yet in PostgreSQL (its first hour is still open), yet known with its live state.
    lamp = api_run.get("staff_a", "/lamps/L-LIVE").json()
    assert (lamp["site_id"], lamp["firmware"]) == (SITE_A, "2.0.1")
    assert lamp["last_seen_at"] is not None
    assert api_run.get("staff_b", "/lamps/L-LIVE").status_code == 404
    days = api_run.get("support", "/lamps/L-LIVE/activity", granularity="day").json()
    assert days["points"][-1]["messages"] == 5 and days["points"][-1]["live"] is True


async def test_an_acknowledgement_closes_the_incident_and_is_in_its_life(
    api_run: ApiRun, pipeline: list[PipelineProcess]
) -> None:
    await send(api_run, "L-ACK", ("button", {"accessory_id": "pendant", "action": "press"}))

    def raised() -> dict[str, Any] | None:
        items = api_run.get("staff_a", "/alerts", lamp="L-ACK").json()["items"]
        return items[0] if items else None

    alert = eventually(raised, 60, "the help request in /alerts (worker → alerts.v1 → PostgreSQL)")
    assert (alert["kind"], alert["state"]) == ("help_requested", "raised")
    alert_id = alert["alert_id"]
    assert api_run.post("support", f"/alerts/{alert_id}/ack").status_code == 403
    assert api_run.post("staff_b", f"/alerts/{alert_id}/ack").status_code == 404
    first = api_run.post("staff_a", f"/alerts/{alert_id}/ack", {"by": "Nurse Ana"})
    assert first.status_code == 200, first.text
    assert (first.json()["first"], first.json()["acknowledged_by"]) == (True, "Nurse Ana")
    again = api_run.post("staff_a", f"/alerts/{alert_id}/ack")
    assert again.json() == {**first.json(), "first": False}

    acks = await read_acks(api_run)
    assert [(a["alert_id"], a["lamp_id"], a["acknowledged_by"]) for a in acks] == [
        (alert_id, "L-ACK", "Nurse Ana")
    ]

    def closed() -> dict[str, Any] | None:
        life = api_run.get("staff_a", f"/alerts/{alert_id}").json()
        return life if life["state"] == "resolved" else None

    life = eventually(closed, 60, "the worker resolving the acknowledged incident")
    steps = [step["step"] for step in life["steps"]]
    assert steps[0] == "raised" and "acknowledged" in steps and steps[-1] == "resolved"
    assert life["acknowledged_by"] == "Nurse Ana"


async def read_acks(api_run: ApiRun) -> list[dict[str, Any]]:
    topic = topic_name(api_run.settings, ALERT_ACKS)
    consumer = clients.consumer(api_run.settings, group_id=None, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(api_run.settings.kafka.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        batch = await consumer.getmany(timeout_ms=3000)
        return [decode(r.value)[1] for records in batch.values() for r in records]
    finally:
        await consumer.stop()


async def test_search_finds_a_message_seconds_after_it_was_sent(
    api_run: ApiRun, pipeline: list[PipelineProcess]
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    sent = await send(
        api_run,
        "L-SRCH",
        *[("motion", {"zone": "bathroom", "level": level}) for level in (10, 20, 30, 40, 50)],
        ("posture", {"posture": "on_floor", "zone": "floor", "confidence": 0.9, "persons": 1}),
    )

    def found() -> list[dict[str, Any]] | None:
        items = api_run.get("support", "/messages/search", lamp="L-SRCH", type="posture").json()[
            "items"
        ]
        return items or None

    (posture,) = eventually(found, 30, "the posture message in /messages/search")
    assert posture["payload"]["posture"] == "on_floor"
    assert posture["seq"] == sent[-1]["seq"]
    words = api_run.get("support", "/messages/search", q="on_floor", lamp="L-SRCH").json()["items"]
    assert [m["id"] for m in words] == [posture["id"]]

    def all_motions() -> bool | None:
        page = api_run.get("support", "/messages/search", lamp="L-SRCH", type="motion").json()
        return True if len(page["items"]) == 5 else None

    eventually(all_motions, 30, "the five motion messages")
    pages: list[list[int]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"lamp": "L-SRCH", "type": "motion", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = api_run.get("support", "/messages/search", **params).json()
        pages.append([m["payload"]["level"] for m in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    levels = [level for page in pages for level in page]
    assert sorted(levels) == [10, 20, 30, 40, 50]  # each once across the pages
    assert [len(page) for page in pages] == [2, 2, 1]

    window = {"lamp": "L-SRCH", "from": before.isoformat(), "to": datetime.now(UTC).isoformat()}
    assert len(api_run.get("support", "/messages/search", **window).json()["items"]) == 6
    future = {"lamp": "L-SRCH", "from": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    assert api_run.get("support", "/messages/search", **future).json()["items"] == []
    assert api_run.get("staff_b", "/messages/search", lamp="L-SRCH").json()["items"] == []
    assert len(api_run.get("staff_a", "/messages/search", lamp="L-SRCH").json()["items"]) == 6
