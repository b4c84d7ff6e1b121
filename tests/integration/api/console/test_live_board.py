"""The board's live steps and its lamps, against the real API process and services: the steps
``alerts.v1`` does not carry (an escalation, an acknowledgement) written to PostgreSQL's
``alert_events`` reach the site's open event stream within seconds, and another site's do not;
a lamp the messages index knows but the ``lamps`` table does not yet is listed by the lamps API
and on the board alike, and a lamp silent for a day is shown offline."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from api.console.sessions import SESSION_COOKIE
from connectors.sinks.elasticsearch import MAPPINGS
from pipeline import clients
from tests.integration.api.conftest import SITE_A, SITE_B, ApiRun
from tests.integration.api.console.test_console import read_events, signed_in


@pytest.fixture(autouse=True)
def services(require) -> None:  # type: ignore[no-untyped-def]
    require("postgres", "kafka", "elasticsearch", "redis")


async def read_until(
    api_run: ApiRun, session_id: str, site: str, wanted: set[tuple[str, str]],
    events: list[tuple[str, dict[str, Any]]], ready: asyncio.Event,
) -> None:  # fmt: skip
    """The site's event stream until every (alert_id, step) of ``wanted`` came as a step."""

    def done() -> bool:
        return wanted <= {(d["alert_id"], d["step"]) for n, d in events if n == "step"}

    await read_events(api_run, session_id, site, events, ready, done)


def insert_alert(conn: psycopg.Connection[Any], alert_id: str, site: str, lamp: str) -> None:
    started = datetime.now(UTC) - timedelta(minutes=2)
    conn.execute(
        "INSERT INTO alerts (alert_id, kind, severity, site_id, lamp_id, incident_started_at, "
        "state, raised_at, details) VALUES (%s, 'fall', 'critical', %s, %s, %s, 'raised', %s, "
        "'{}')",
        (alert_id, site, lamp, started, started),
    )
    conn.execute(
        "INSERT INTO alert_events (alert_id, step, emitted_at, details) "
        "VALUES (%s, 'raised', %s, '{}')",
        (alert_id, started),
    )


def insert_step(
    conn: psycopg.Connection[Any], alert_id: str, step: str, details: dict[str, Any]
) -> None:
    conn.execute(
        "INSERT INTO alert_events (alert_id, step, occurrence, emitted_at, details) "
        "VALUES (%s, %s, 1, now(), %s)",
        (alert_id, step, Jsonb(details)),
    )


async def test_an_escalation_and_an_acknowledgement_reach_the_open_board(
    api_run: ApiRun,
) -> None:
    staff = signed_in(api_run, "staff_a")
    session_id = staff.http.cookies[SESSION_COOKIE]
    staff.close()
    run = uuid.uuid4().hex[:6]
    mine, other = f"live-a-{run}", f"live-b-{run}"
    conninfo = api_run.settings.postgres.conninfo()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        insert_alert(conn, mine, SITE_A, "L-A1")
        insert_alert(conn, other, SITE_B, "L-B1")
    events: list[tuple[str, dict[str, Any]]] = []
    ready = asyncio.Event()
    wanted = {(mine, "escalated"), (mine, "acknowledged")}
    listener = asyncio.create_task(read_until(api_run, session_id, SITE_A, wanted, events, ready))
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(1.5)  # the poller's first look is done: what follows is news to it
    started = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        insert_step(conn, other, "escalated", {"to": "night nurse"})
        insert_step(conn, mine, "escalated", {"to": "night nurse"})
        insert_step(conn, mine, "acknowledged", {"acknowledged_by": "Nadia", "via": "api"})
    await asyncio.wait_for(listener, 20)
    assert time.monotonic() - started < 3  # one poll a second
    steps = [data for name, data in events if name == "step"]
    assert {s["alert_id"] for s in steps} == {mine}  # site B's escalation stays in site B
    by_step = {s["step"]: s for s in steps}
    assert by_step["escalated"]["state"] is None
    assert by_step["escalated"]["step_label"] == "Escaladée"  # French by default
    ack = by_step["acknowledged"]
    assert (ack["state"], ack["acknowledged_by"], ack["state_label"]) == (
        "acknowledged",
        "Nadia",
        "prise en charge",
    )
    assert ack["url"] == f"/console/alerts/{mine}" and ack["lamp_id"] == "L-A1"
    # A reload tells the same: acknowledged by Nadia, latest step shown.
    staff = signed_in(api_run, "staff_a")
    board = staff.get(f"/console/sites/{SITE_A}").text
    staff.close()
    row = board[board.index(f'data-alert-id="{mine}"') :].split("</tr>", 1)[0]
    assert 'data-state="acknowledged"' in row and 'data-step="escalated"' in row
    assert "Nadia" in row and "Escaladée" in row


@pytest.fixture
def index_lamp(api_run: ApiRun) -> Iterator[tuple[str, datetime]]:
    """A lamp with one message in the API's messages alias and no row in ``lamps``."""
    alias = api_run.env["VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX"]
    index = f"{alias}-lamps-{uuid.uuid4().hex[:6]}"
    lamp_id = f"L-A-NEW-{uuid.uuid4().hex[:4]}"
    seen = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=20)
    es = clients.elasticsearch(api_run.settings)
    try:
        es.indices.create(index=index, mappings=MAPPINGS, aliases={alias: {}})
        ms = int(seen.timestamp() * 1000)
        es.index(
            index=index,
            id=f"{lamp_id}:1:{ms}",
            document={"lamp_id": lamp_id, "site_id": SITE_A, "type": "motion", "seq": 1,
                      "ts": ms, "received_at": ms, "event_time": ms},
            refresh=True,
        )  # fmt: skip
        yield lamp_id, seen
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)
        es.close()


def test_a_lamp_only_the_messages_index_knows_is_listed_by_the_api_and_the_board(
    api_run: ApiRun, index_lamp: tuple[str, datetime]
) -> None:
    lamp_id, seen = index_lamp
    items = api_run.get("staff_a", "/lamps", site=SITE_A).json()["items"]
    listed = {lamp["lamp_id"]: lamp for lamp in items}
    assert set(listed) == {"L-A1", "L-A2", lamp_id}
    assert datetime.fromisoformat(listed[lamp_id]["last_seen_at"]) == seen
    assert [lamp["lamp_id"] for lamp in api_run.get("staff_b", "/lamps").json()["items"]] == [
        "L-B1"
    ]
    staff = signed_in(api_run, "staff_a")
    board = staff.get(f"/console/sites/{SITE_A}").text
    staff.close()
    rows = {
        chunk.split('"', 1)[0]: chunk.split("</tr>", 1)[0]
        for chunk in board.split('data-testid="lamp-row" data-lamp-id="')[1:]
    }
    assert set(rows) == {"L-A1", "L-A2", lamp_id}
    # Heard 20 s ago: online; the seeded lamps were last heard yesterday: offline, silent.
    assert 'data-online="true"' in rows[lamp_id]
    assert 'data-online="false"' in rows["L-A1"] and 'data-testid="silent"' in rows["L-A1"]
