"""A worker's live state: the open hours of the lamps it holds, served over HTTP."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from agents.detect_incidents import DetectIncidents
from agents.runtime.live import advertised_url, build_web_app, live_key
from agents.testing import T0_MS
from pipeline.settings import load_settings
from tests.unit.agents.test_detect_incidents import SETTINGS, message, record


def busy_agent() -> DetectIncidents:
    detect = DetectIncidents(SETTINGS, wall_clock=lambda: T0_MS + 60_000)
    detect.assign([2], [])
    detect.process(
        2,
        [
            record(0, message(0, "motion", T0_MS + 1_000, zone="room", level=40)),
            record(1, message(1, "motion", T0_MS + 61_000, zone="bathroom", level=40)),
            record(2, message(2, "heartbeat", T0_MS + 62_000, fw="1.4.2", uptime_s=5, rssi=-50)),
        ],
    )
    detect.take_result()
    return detect


def test_the_open_hour_of_a_held_lamp_is_its_figures_so_far() -> None:
    (hour,) = busy_agent().live_activity("L-1") or []
    assert hour["hour_start"] == T0_MS
    assert (hour["lamp_id"], hour["site_id"]) == ("L-1", "s-1")
    assert (hour["messages"], hour["motion_events"], hour["active_minutes"]) == (3, 2, 2)
    assert hour["bathroom_visits"] == 1
    assert hour["firmware"] == "1.4.2"
    assert hour["last_seen_at"] == T0_MS + 62_000


def test_a_lamp_not_held_here_is_none_and_a_lamp_with_state_restored_is_found() -> None:
    detect = busy_agent()
    assert detect.live_activity("L-2") is None
    # After a rebalance the lamp's state comes back from the changelog, untouched until asked.
    state = detect.engines[2].encode_state("L-1")
    moved = DetectIncidents(SETTINGS, wall_clock=lambda: T0_MS + 60_000)
    moved.assign([2], [state])
    assert moved.live_activity("L-1") == detect.live_activity("L-1")


async def test_the_endpoint_answers_404_for_lamps_held_elsewhere() -> None:
    detect = busy_agent()
    app = build_web_app(detect.live_activity, lambda: sorted(detect.engines))
    async with TestClient(TestServer(app)) as client:
        found = await client.get("/live/lamps/L-1/activity")
        assert found.status == 200
        body = await found.json()
        assert body["hours"][0]["messages"] == 3
        missing = await client.get("/live/lamps/L-2/activity")
        assert missing.status == 404
        held = await client.get("/live/partitions")
        assert (await held.json()) == {"partitions": [2]}


def test_registration_keys_name_the_app_topic_and_partition() -> None:
    settings = load_settings(kafka={"topic_prefix": "t1."}, detection={"app_id": "det"})
    assert live_key(settings, 4) == "veilleuse:live:det:t1.lamp.messages.v1:4"
    assert advertised_url(settings) == "http://127.0.0.1:19106"
    pod = load_settings(detection={"live_url": "http://10.1.2.3:19106"})
    assert advertised_url(pod) == "http://10.1.2.3:19106"
