"""A fall through the whole pipeline, seen in the browser: a lamp falls over real MQTT, the
real connector writes it to Kafka, the console's worker confirms it; the open board shows it
without a reload within 2 s of its append to alerts.v1; a click acknowledges it (through
alerts.acks.v1), the worker resolves it, and the alert page's timeline shows both steps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import TopicPartition

from devtools.smoke import connector_with_lamps, lamp_message
from pipeline import clients
from pipeline.topics import ALERT_ACKS, ALERTS, TopicSpec, topic_name
from schemas import decode
from tests.integration.console.conftest import Browsing, ConsoleRun

BOARD_WITHIN_MS = 2000
# Up, a fall suspected, on the floor, then silence: the worker confirms the fall 2 s on.
FALL_AND_SILENCE: list[dict[str, Any]] = [
    {"type": "posture", "posture": "standing", "zone": "room", "confidence": 0.9, "persons": 1},
    {"type": "fall_suspected", "confidence": 0.8, "zone": "floor"},
    {"type": "posture", "posture": "on_floor", "zone": "floor", "confidence": 0.8, "persons": 1},
]


async def committed(console: ConsoleRun, topic: TopicSpec, timeout_s: float = 5) -> list[Any]:
    """Every committed record of one of the console's topics so far."""
    consumer = clients.consumer(console.settings, group_id=None, isolation_level="read_committed")
    await consumer.start()
    try:
        name = topic_name(console.settings, topic)
        tps = [TopicPartition(name, p) for p in range(console.settings.kafka.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(at >= ends[tp] for at, tp in zip(positions, tps, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def eventually(probe: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.25)


async def test_a_fall_appears_live_and_is_acknowledged_from_its_page(
    console: ConsoleRun, browsing: Browsing
) -> None:
    async with connector_with_lamps(console.settings, 1, "console") as (_, fleet, creds):
        site, lamp = creds[0].site_id, creds[0].lamp_id
        token = await asyncio.to_thread(console.token, "nurse", "staff", (site,))
        # The lamp says hello first: its site is one the API knows (live state) before the fall.
        fleet.publish(
            lamp,
            "telemetry",
            lamp_message(lamp, 0, type="heartbeat", fw="2.0.1", uptime_s=5, rssi=-50),
        )
        await fleet.wait_acked(30)

        async def known() -> bool:
            answer = await asyncio.to_thread(console.api.get, "admin", f"/lamps/{lamp}")
            return answer.status_code == 200

        await eventually(known, 60, f"{lamp} known to the API\n{console.tails()}")

        async def listed() -> bool:
            # The lamps list too, from its first message (the messages index), not an hour on.
            answer = await asyncio.to_thread(console.api.get, "admin", "/lamps", site=site)
            return [item["lamp_id"] for item in answer.json()["items"]] == [lamp]

        await eventually(listed, 30, f"{lamp} listed by the API\n{console.tails()}")

        page = await browsing.sign_in(token, "nurse-home")
        assert page.url.endswith(f"/console/sites/{site}"), page.url
        await page.locator('[data-testid="live-status"][data-live="on"]').wait_for(timeout=20000)
        await browsing.screens.shot(page, "board-before")
        lamp_row = page.locator(f'[data-testid="lamp-row"][data-lamp-id="{lamp}"]')
        assert await lamp_row.get_attribute("data-online") == "true"
        assert await page.get_by_test_id("alert-row").count() == 0
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))

        for seq, fields in enumerate(FALL_AND_SILENCE, start=1):
            fleet.publish(lamp, "events", lamp_message(lamp, seq, **fields))
        await fleet.wait_acked(30)
        row = page.locator('[data-testid="open-alerts"] [data-testid="alert-row"]')
        await row.first.wait_for(timeout=60000)
        seen_ms = int(time.time() * 1000)
    await browsing.screens.shot(page, "board-live")
    assert navigations == [], f"the board reloaded: {navigations}"
    assert await row.count() == 1
    alert_id = await row.first.get_attribute("data-alert-id")
    assert alert_id

    records = [
        r for r in await committed(console, ALERTS) if decode(r.value)[1]["alert_id"] == alert_id
    ]
    assert records, f"{alert_id} is on the board but not on alerts.v1"
    raised = records[0]
    assert (decode(raised.value)[1]["lamp_id"], decode(raised.value)[1]["state"]) == (
        lamp,
        "raised",
    )
    late_ms = seen_ms - raised.timestamp
    print(f"fall on the open board {late_ms} ms after its append to alerts.v1")  # noqa: T201
    assert late_ms < BOARD_WITHIN_MS, f"on the board {late_ms} ms after its append"

    # Its page, once the sink has stored it; the nurse acknowledges it there.
    async def stored() -> bool:
        answer = await asyncio.to_thread(console.api.get, "admin", f"/alerts/{alert_id}")
        return answer.status_code == 200

    await eventually(stored, 30, f"{alert_id} stored by the PostgreSQL sink\n{console.tails()}")
    async with page.expect_navigation():
        await row.first.locator(f'a[href$="/alerts/{alert_id}"]').click()
    await browsing.screens.shot(page, "alert-raised")
    ack = page.get_by_test_id("ack-button")
    await ack.wait_for()
    async with page.expect_navigation():
        await ack.click()
    await browsing.screens.shot(page, "alert-acknowledged")

    acks = [decode(r.value)[1] for r in await committed(console, ALERT_ACKS)]
    mine = [a for a in acks if a["alert_id"] == alert_id]
    assert len(mine) == 1, acks
    assert mine[0]["lamp_id"] == lamp
    assert mine[0]["acknowledged_by"].startswith("nurse-"), mine  # the signed-in token's name

    async def both_steps() -> list[str] | None:
        await page.reload()
        steps = [
            str(await step.get_attribute("data-step"))
            for step in await page.get_by_test_id("timeline-step").all()
        ]
        return steps if "acknowledged" in steps and "resolved" in steps else None

    steps = await eventually(
        both_steps, 60, f"acknowledged and resolved in the timeline\n{console.tails()}"
    )
    await browsing.screens.shot(page, "alert-resolved")
    assert steps[0] == "raised" and steps[-1] == "resolved", steps
    assert steps.index("acknowledged") < steps.index("resolved"), steps
    assert await page.get_by_test_id("ack-button").count() == 0

    # The worker's resolution is on alerts.v1 too, after the raise.
    states = [
        decode(r.value)[1]["state"]
        for r in await committed(console, ALERTS)
        if decode(r.value)[1]["alert_id"] == alert_id
    ]
    assert states[0] == "raised" and "resolved" in states, states


async def test_an_escalation_and_an_acknowledgement_update_the_open_board(
    console: ConsoleRun, browsing: Browsing
) -> None:
    """The steps alerts.v1 does not carry, written to alert_events as the notifier and the API
    write them, change the open board's row without a reload."""
    import uuid
    from datetime import UTC, datetime, timedelta

    import psycopg
    from psycopg.types.json import Jsonb

    run = uuid.uuid4().hex[:6]
    site, alert_id = f"steps-{run}", f"steps-{run}-1"
    started = datetime.now(UTC) - timedelta(minutes=3)
    with psycopg.connect(console.conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO alerts (alert_id, kind, severity, site_id, lamp_id, "
            "incident_started_at, state, raised_at, details) "
            "VALUES (%s, 'help_requested', 'critical', %s, %s, %s, 'raised', %s, '{}')",
            (alert_id, site, f"L-{run}", started, started),
        )
    token = await asyncio.to_thread(console.token, "night", "staff", (site,))
    page = await browsing.sign_in(token, "steps-board")
    assert page.url.endswith(f"/console/sites/{site}"), page.url
    await page.locator('[data-testid="live-status"][data-live="on"]').wait_for(timeout=20000)
    row = page.locator(f'[data-testid="alert-row"][data-alert-id="{alert_id}"]')
    assert await row.get_attribute("data-step") == ""
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    def step(name: str, details: dict[str, Any]) -> None:
        with psycopg.connect(console.conninfo, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO alert_events (alert_id, step, occurrence, emitted_at, details) "
                "VALUES (%s, %s, 1, now(), %s)",
                (alert_id, name, Jsonb(details)),
            )

    await asyncio.to_thread(step, "escalated", {"to": "head nurse"})
    escalated = page.locator(
        f'[data-testid="alert-row"][data-alert-id="{alert_id}"][data-step="escalated"]'
    )
    await escalated.wait_for(timeout=3000)
    assert await row.locator('[data-field="step"]').text_content() == "Escalated"
    await asyncio.to_thread(step, "acknowledged", {"acknowledged_by": "Nadia", "via": "api"})
    await page.locator(
        f'[data-testid="alert-row"][data-alert-id="{alert_id}"][data-state="acknowledged"]'
    ).wait_for(timeout=3000)
    await browsing.screens.shot(page, "steps-live")
    assert await row.locator('[data-field="state"]').text_content() == "acknowledged"
    assert await row.locator('[data-field="by"]').text_content() == "(by Nadia)"
    assert await row.get_attribute("data-step") == "escalated"  # not erased by the ack
    assert await row.locator('[data-field="step"]').text_content() == "Escalated"
    assert navigations == [], f"the board reloaded: {navigations}"
