"""``veilleuse bench`` at a tiny scale against the real services: every figure it prints comes
from messages that really went through MQTT, Kafka, Elasticsearch and PostgreSQL."""

from __future__ import annotations

import pytest

from devtools.bench import harness
from pipeline.settings import Settings

CONFIRM_S = 3.0  # rule 1's 30 s, shortened so that a step of a few seconds has deadlines


async def test_bench_counts_and_latencies_are_real(
    settings: Settings, require, monkeypatch: pytest.MonkeyPatch
) -> None:
    require("kafka", "elasticsearch", "postgres", "mosquitto")
    # The pipeline's processes read their settings from the environment.
    monkeypatch.setenv("VEILLEUSE_RULES__FALL__CONFIRM_S", str(CONFIRM_S))
    rules = settings.rules | {"fall": {**settings.rules.get("fall", {}), "confirm_s": CONFIRM_S}}
    scoped = settings.model_copy(update={"rules": rules})
    options = harness.BenchOptions(
        lamps=200,
        sites=2,
        duration_s=12,
        rates=(150,),
        falls_per_step=3,
        max_steps=1,
        baseline_drain_s=60,  # the baseline may fall behind on a loaded machine: let it finish
    )
    lines: list[str] = []
    report = await harness.run_bench(scoped, options, lines.append)

    assert [r.rate for r in report.pipeline] == [150]
    assert [r.rate for r in report.baseline] == [150]
    counts = report.counts
    for step in (*report.pipeline, *report.baseline):
        # About 12 s at 150 msg/s, every one acknowledged by the broker, every fall alerted.
        assert 1650 <= step.published <= 1900, step
        assert step.falls == 3
        assert step.missing == 0
        assert len(step.latencies_s) == 3
        # Measured from each fall's deadline to its alert. Whether a rate is sustained, and how
        # fast, is the benchmark's to say (BENCHMARKS.md), not a test's on a shared machine.
        assert all(0 <= latency < 30 for latency in step.latencies_s), step.latencies_s
        assert step.samples, step
    # What the bench says it published is what reached the stores: Kafka (QoS 1 may add a
    # duplicate, never lose one), the search index (deduplicated by message id), and the
    # baseline's table and index (one row and one document per message).
    assert counts["pipeline_published"] == report.pipeline[0].published
    assert counts["pipeline_kafka"] >= counts["pipeline_published"]
    assert counts["pipeline_elasticsearch"] == counts["pipeline_published"]
    assert counts["baseline_published"] == report.baseline[0].published
    assert counts["baseline_postgres"] == counts["baseline_published"]
    assert counts["baseline_elasticsearch"] == counts["baseline_published"]
    assert any(line.startswith("pipeline 150 msg/s") for line in lines)
