"""Play a simulation through the real detection engine (pure), as the workers would see it."""

from __future__ import annotations

from agents.detection import PartitionEngine
from agents.rules import build_rules
from connectors.validation import Accepted, validate
from devtools.simulator import Simulation
from devtools.simulator.scoring import SeenAlert
from pipeline.records import KafkaRecord

DELAY_MS = 30  # lamp → broker → connector → Kafka


def replay(sim: Simulation, tick_ms: int = 200) -> tuple[list[SeenAlert], int]:
    """Every valid message through one engine (ticks between them); (raised alerts, junk)."""
    config = sim.config
    start = config.start_ms
    wall = [start]
    rules = build_rules(config.detection, config.rules)
    engine = PartitionEngine(0, rules, config.detection, lambda _k: None, lambda: wall[0])
    seen: list[SeenAlert] = []
    rejected = 0

    def collect() -> None:
        for alert in engine.take_outputs().alerts:
            if alert.state == "raised":
                seen.append(
                    SeenAlert(
                        alert.alert_id,
                        alert.lamp_id,
                        alert.kind,
                        alert.severity,
                        alert.emitted_at - start,
                    )
                )

    def run_until(target: int) -> None:
        while wall[0] + tick_ms <= target:
            wall[0] += tick_ms
            engine.advance(wall[0])
            collect()
        if target > wall[0]:
            wall[0] = target
            engine.advance(target)
            collect()

    for offset, m in enumerate(sim.messages()):
        checked = validate(m.topic, m.payload)
        if not isinstance(checked, Accepted):
            rejected += 1
            continue
        ingest = start + m.at_ms + DELAY_MS
        run_until(ingest)
        record = KafkaRecord(
            "lamp.messages.v1", 0, offset, ingest, m.lamp_id.encode(), m.payload,
            (("mqtt.topic", m.topic.encode()),),
        )  # fmt: skip
        engine.process(record)
        collect()
    run_until(start + sim.observed_until_ms)
    return seen, rejected
