"""The whole path of an alarm: a lamp over MQTT, the connector, Kafka, a worker, alerts.v1."""

from __future__ import annotations

from typing import Any

from devtools.smoke import detection_round_trip
from pipeline.settings import Settings


async def test_a_silent_lamps_fall_and_a_help_request_arrive_on_alerts(
    settings: Settings, require: Any
) -> None:
    """Over real Mosquitto and Kafka with a provisioned lamp's credentials; the fall within
    2 s of its deadline (a 10 s confirmation keeps the test short)."""
    require("kafka", "mosquitto")
    detail = await detection_round_trip(settings, confirm_s=10)
    late_s = float(detail.split(" on alerts.v1 ")[1].split(" s ")[0])
    assert late_s <= 2.0, detail
