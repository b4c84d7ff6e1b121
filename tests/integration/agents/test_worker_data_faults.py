"""A worker meets junk, late records and acknowledgements on the real Kafka, and keeps going."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from pipeline.ports import free_port
from pipeline.topics import ALERT_ACKS, ALERTS, LAMP_DLQ, LAMP_LATE, LAMP_MESSAGES, topic_name
from schemas import encode, schema
from tests.integration.agents.conftest import (
    AlertTail,
    DetectionRun,
    LampSender,
    read_records,
)

SITE = "it-home-2"


async def test_junk_to_the_dlq_late_to_the_side_output_acks_close(
    detection_run: DetectionRun,
) -> None:
    run = detection_run
    metrics_port = free_port()
    worker = run.worker("w1", VEILLEUSE_DETECTION__METRICS_PORT=str(metrics_port))
    await asyncio.to_thread(run.wait_for_assignment, [worker])
    now_ms = int(time.time() * 1000)
    good_header = [("mqtt.topic", f"lamps/{SITE}/L-junk/events".encode())]
    junk = {
        "not_json": (b"L-junk", b"{not json", good_header),
        "not_object": (b"L-junk", b"[1, 2]", good_header),
        "lamp_id_mismatch": (
            b"L-other",
            orjson.dumps(
                {
                    "v": 1,
                    "lamp_id": "L-junk",
                    "seq": 1,
                    "ts": now_ms,
                    "type": "motion",
                    "zone": "room",
                    "level": 3,
                }
            ),
            good_header,
        ),
        "unknown_type": (
            b"L-junk",
            orjson.dumps({"v": 1, "lamp_id": "L-junk", "seq": 2, "ts": now_ms, "type": "sneeze"}),
            good_header,
        ),
        "bad_topic": (
            b"L-junk",
            orjson.dumps(
                {
                    "v": 1,
                    "lamp_id": "L-junk",
                    "seq": 3,
                    "ts": now_ms,
                    "type": "motion",
                    "zone": "room",
                    "level": 3,
                }
            ),
            [],
        ),
        "ts_in_future": (
            b"L-junk",
            orjson.dumps(
                {
                    "v": 1,
                    "lamp_id": "L-junk",
                    "seq": 4,
                    "ts": now_ms + 3_600_000,
                    "type": "motion",
                    "zone": "room",
                    "level": 3,
                }
            ),
            good_header,
        ),
    }
    async with AlertTail(run.settings) as tail, LampSender(run.settings) as lamps:
        for key, value, headers in junk.values():
            await lamps.producer.send_and_wait(lamps.topic, value, key=key, headers=headers)
        # After the junk, the worker still raises alerts.
        await lamps.send(SITE, "L-help", "button", accessory_id="cord", action="press")
        (raised,) = await tail.wait_for(1, lambda a: a["kind"] == "help_requested", 30)
        # A late reading: the lamp's clock is known, the reading's windows closed long ago.
        await lamps.send(SITE, "L-late", "heartbeat", fw="1.0", uptime_s=10, rssi=-50)
        await lamps.send(SITE, "L-late", "temperature", celsius=21.0, skew_s=-900)
        # Staff acknowledge the help request: the incident closes.
        ack = encode(
            schema("alert_ack.v1"),
            {
                "alert_id": raised["alert_id"],
                "lamp_id": "L-help",
                "acknowledged_by": "nurse-7",
                "acknowledged_at": int(time.time() * 1000),
            },
        )
        await lamps.producer.send_and_wait(topic_name(run.settings, ALERT_ACKS), ack, key=b"L-help")
        resolved = await tail.wait_for(
            1, lambda a: a["kind"] == "help_requested" and a["state"] == "resolved", 30
        )
        assert resolved and resolved[0]["details"]["reason"] == "acknowledged"
        assert resolved[0]["details"]["acknowledged_by"] == "nurse-7"
        # A new press after the acknowledgement is a new incident.
        await asyncio.sleep(0.01)
        await lamps.send(SITE, "L-help", "button", accessory_id="cord", action="press")
        again = await tail.wait_for(
            2, lambda a: a["kind"] == "help_requested" and a["state"] == "raised", 30
        )
        assert len({a["alert_id"] for a in again}) == 2

    dlq = topic_name(run.settings, LAMP_DLQ)
    dead = await read_records(run.settings, dlq, len(junk))
    reasons = sorted(dict(r.headers)["reject.reason"].decode() for r in dead)
    assert reasons == sorted(junk)
    for record in dead:
        headers = dict(record.headers)
        assert headers["reject.stage"] == b"detect_incidents"
        assert headers["source.topic"] == topic_name(run.settings, LAMP_MESSAGES).encode()
        assert b"source.offset" in headers or "source.offset" in headers
    late = await read_records(run.settings, topic_name(run.settings, LAMP_LATE), 1)
    # Late for the 10-minute average (and, depending on the hour, for the hourly figures too):
    # one side-output record naming every window it missed.
    (reasons,) = [dict(r.headers)["late.reason"].decode().split(",") for r in late]
    assert "environment:window_closed" in reasons
    assert orjson.loads(late[0].value)["type"] == "temperature"
    assert worker.alive(), worker.log_tail()
    metrics = scrape(metrics_port)
    for reason in junk:
        assert metrics[f'veilleuse_worker_engine_events{{name="dead.{reason}"}}'] == 1
    assert metrics['veilleuse_worker_engine_events{name="late"}'] == 1
    assert metrics['veilleuse_worker_outputs_total{topic="' + dlq + '"}'] >= len(junk)
    for reason in junk:
        assert metrics[f'veilleuse_worker_dead_letters_total{{reason="{reason}"}}'] == 1
    (late_count,) = [
        v for k, v in metrics.items() if k.startswith("veilleuse_worker_late_records_total")
    ]
    assert late_count == 1
    help_labels = 'kind="help_requested",severity="critical"'
    assert metrics[f'veilleuse_worker_alerts_total{{{help_labels},state="raised"}}'] == 2
    assert metrics[f'veilleuse_worker_alerts_total{{{help_labels},state="resolved"}}'] == 1
    # Lag on every input partition (read from Kafka every few seconds).
    messages = topic_name(run.settings, LAMP_MESSAGES)
    expected = {
        f'veilleuse_worker_consumer_lag{{partition="{p}",topic="{t}"}}'
        for t in (messages, topic_name(run.settings, ALERT_ACKS))
        for p in range(run.settings.kafka.topic_partitions)
    }
    deadline = time.monotonic() + 20

    def lags() -> dict[str, float]:
        return {k: v for k, v in metrics.items() if k.startswith("veilleuse_worker_consumer_lag")}

    while (set(lags()) != expected or any(lags().values())) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        metrics = scrape(metrics_port)
    # Every record was processed: nothing left on any partition.
    assert lags() == dict.fromkeys(expected, 0.0)
    # The alerts' log lines, written once committed, say where they are on alerts.v1.
    lines = [orjson.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    logged = [line for line in lines if line["msg"].startswith("alert help_requested raised")]
    assert len(logged) == 2, worker.log_tail()
    for line in logged:
        assert line["lamp_id"] == "L-help" and line["topic"] == topic_name(run.settings, ALERTS)
        assert isinstance(line["partition"], int) and isinstance(line["offset"], int)
        assert line["severity"] == "critical" and line["component"] == "detect_incidents"


def scrape(port: int) -> dict[str, float]:
    """The worker's Prometheus metrics, by sample name and labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values
