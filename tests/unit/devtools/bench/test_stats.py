"""The bench's pure parts: percentiles, the sustained verdict, the rate search, the report."""

from __future__ import annotations

import math

import pytest

from devtools.bench import stats
from devtools.bench.stats import Sample, StepResult, next_rate, percentile, sustained


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 100
    assert percentile([0.3, 0.1, 0.2], 50) == pytest.approx(0.2)  # unsorted input
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 99))
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_p99_of_few_samples_is_near_the_worst() -> None:
    latencies = [0.1] * 9 + [2.0]
    assert percentile(latencies, 99) > 1.8


def test_slope_is_least_squares() -> None:
    assert stats.slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2.0)
    assert stats.slope([(0, 5)]) == 0.0
    assert stats.slope([(1, 5), (1, 7)]) == 0.0


def steady(rate: float, seconds: int, backlog: int) -> list[Sample]:
    return [Sample(t, int(rate * t), int(rate * t) - backlog) for t in range(seconds + 1)]


def test_a_steady_backlog_is_sustained() -> None:
    assert sustained(1000, 1000, steady(1000, 40, backlog=500))


def test_a_growing_backlog_is_not_sustained() -> None:
    # Processing at 90 % of the offered rate: the backlog grows by 100 msg/s.
    samples = [Sample(t, 1000 * t, 900 * t) for t in range(41)]
    assert not sustained(1000, 1000, samples)


def test_a_large_backlog_that_stopped_growing_is_not_sustained() -> None:
    assert not sustained(1000, 1000, steady(1000, 40, backlog=5000))


def test_a_publisher_short_of_the_rate_is_not_a_sustained_step() -> None:
    assert not sustained(1000, 800, steady(800, 40, backlog=0))


def test_the_first_quarter_is_start_up_and_not_judged() -> None:
    # A backlog of 1,500 built in the first 10 s (start-up), then processed away.
    samples = [Sample(t, 1000 * t, 1000 * t - max(1500 - 150 * (t - 10), 0)) for t in range(41)]
    samples[:10] = [Sample(t, 1000 * t, 850 * t) for t in range(10)]
    assert sustained(1000, 1000, samples)
    assert not sustained(1000, 1000, [Sample(t, 1000 * t, 850 * t) for t in range(41)])


def test_a_backlog_swinging_with_the_sinks_batches_is_not_growth() -> None:
    # A short step whose progress comes every second in one batch: the backlog swings between
    # 0 and one second of the rate.
    samples = [Sample(t / 2, 75 * t, 150 * (t // 2)) for t in range(25)]
    assert sustained(150, 150, samples)


def test_too_few_samples_are_not_a_verdict() -> None:
    assert not sustained(1000, 1000, steady(1000, 1, backlog=0))


def step(rate: float, *, ok: bool = True, p99: float = 0.2, falls: int = 10) -> StepResult:
    if ok:
        samples = steady(rate, 40, 0)
    else:
        samples = [Sample(t, int(rate * t), int(rate * t / 2)) for t in range(41)]
    return StepResult(
        system="pipeline",
        rate=rate,
        seconds=40,
        published=int(rate * 40),
        processed=samples[-1].processed,
        samples=samples,
        latencies_s=[p99] * falls,
        falls=falls,
    )


def test_a_step_passes_only_sustained_with_every_alert_within_a_second() -> None:
    assert step(1000).passed
    assert not step(1000, ok=False).passed
    assert not step(1000, p99=1.2).passed
    missing = step(1000)
    missing.missing, missing.latencies_s = 1, missing.latencies_s[:-1]
    assert not missing.passed
    assert not step(1000, falls=0).passed  # no fall, no latency measured


def test_throughput_is_measured_over_the_window() -> None:
    assert step(2000).throughput == pytest.approx(2000)
    assert step(2000, ok=False).throughput == pytest.approx(1000)


def test_search_doubles_until_a_failure() -> None:
    assert next_rate([], start=1000) == 1000
    assert next_rate([(1000, True)], start=1000) == 2000
    assert next_rate([(1000, True), (2000, True)], start=1000) == 4000


def test_search_bisects_between_the_best_pass_and_the_first_failure() -> None:
    done = [(1000.0, True), (2000.0, True), (4000.0, False)]
    assert next_rate(done, start=1000) == 3000
    assert next_rate([*done, (3000.0, True)], start=1000) == 3500
    # 3,000 passed, 3,400 failed: within 15 %, done.
    assert next_rate([*done, (3000.0, True), (3400.0, False)], start=1000) is None


def test_search_goes_down_when_the_start_fails() -> None:
    assert next_rate([(1000, False)], start=1000) == 500
    assert next_rate([(1000, False), (500, True)], start=1000) == 750
    # Never below a tenth of the start.
    fails = [(1000.0 / 2**i, False) for i in range(4)]
    assert next_rate(fails, start=1000) is None


def test_search_respects_its_ceiling() -> None:
    assert next_rate([(1000, True)], start=1000, ceiling=1500) is None


def test_summary_reports_each_systems_best_and_the_ratio() -> None:
    pipeline = [step(1000), step(2000), step(4000, ok=False)]
    baseline = [step(100), step(200, p99=3.0)]
    for r in baseline:
        r.system = "baseline"
    lines = stats.summary(pipeline, baseline)
    assert lines[0].startswith("pipeline: 2,000 msg/s sustained")
    assert "p50 200 ms, p90 200 ms, max 200 ms (n=10)" in lines[0]
    assert lines[0].endswith("the ceiling is between 2,000 and 4,000")
    assert lines[1].startswith("baseline: 100 msg/s sustained")
    # The true ceilings lie anywhere in their brackets: so does the ratio.
    assert lines[2] == (
        "ratio pipeline / baseline: 20.0x of the highest passing rates; bracket 10.0x-40.0x "
        "(pipeline 2,000-4,000, baseline 100-200 msg/s)"
    )


def test_summary_says_when_no_ratio_was_measured() -> None:
    lines = stats.summary([step(1000, ok=False)], [])
    assert "no rate sustained" in lines[0]
    assert "rates tried: 1,000" in lines[0]
    assert lines[-1].endswith("not measured (a side met no rate)")


def test_markdown_section_has_the_date_machine_command_and_a_row_per_step() -> None:
    text = stats.markdown_section(
        date="2026-11-27 12:00 UTC",
        command="veilleuse bench --lamps 10",
        machine=["2 CPUs (nproc), 24.0 GiB, Some CPU"],
        pipeline=[step(1000)],
        baseline=[],
        notes=["shared machine"],
    )
    assert text.startswith("## `veilleuse bench`, 2026-11-27 12:00 UTC")
    assert "Machine: 2 CPUs (nproc), 24.0 GiB, Some CPU." in text
    assert "```sh\nveilleuse bench --lamps 10\n```" in text
    rows = [line for line in text.splitlines() if line.startswith("| pipeline |")]
    assert rows == [
        "| pipeline | 1,000 | 1,000 | 1,000 | 0 (+0) | 10 (0) | 200 | 200 | 200 | yes | yes "
        "| - (-) |"
    ]
    assert "- shared machine" in text


def test_stage_rates_over_the_window() -> None:
    trace = [
        (100.0 + t, {"kafka": 1000 * t, "worker": 900 * t, "sink": 1000 * t - 50})
        for t in range(41)
    ]
    rates = stats.stage_rates(trace, 40)
    assert rates == {
        "kafka": pytest.approx(1000),
        "worker": pytest.approx(900),
        "sink": pytest.approx(1000),
    }
    assert stats.stage_rates(trace[:1], 40) == {}
    step_ = step(1000)
    step_.stages = rates
    assert stats.stage_lines([step_]) == [
        "- pipeline at 1,000 msg/s, through each stage: kafka 1,000/s, worker 900/s, sink 1,000/s",
        "",
    ]


def test_a_step_fails_on_its_worst_alert_not_on_an_interpolated_p99() -> None:
    slow_one = step(1000)
    slow_one.latencies_s = [0.1] * 9 + [1.05]
    assert stats.percentile(slow_one.latencies_s, 99) < 1.05
    assert not slow_one.latency_ok


def test_brackets_of_a_search_and_of_the_ratio() -> None:
    results = [step(1000), step(2000), step(4000, ok=False), step(3000), step(3500, ok=False)]
    assert stats.bracket(results) == (3000, 3500)
    assert stats.bracket([step(1000), step(2000)]) == (2000, None)
    assert stats.bracket([step(1000, ok=False)]) == (None, 1000)
    # Pipeline between 4,000 and 5,000, baseline between 250 and 300: 13.3x to 20x.
    lower, upper = stats.ratio_bracket((4000, 5000), (250, 300))
    assert lower == pytest.approx(13.33, abs=0.01)
    assert upper == pytest.approx(20.0)
    assert stats.ratio_bracket((4000, None), (250, 300)) == (pytest.approx(13.33, abs=0.01), None)


def with_cpu(
    r: StepResult, system: str, cpu: dict[str, float], idle: dict[str, float]
) -> StepResult:
    r.system = system
    r.cpu_s = cpu
    r.window_s = 40.0
    r.window_processed = 40_000
    r.idle_cpu_per_s = idle
    return r


def test_cpu_per_message_per_tree_in_total_and_net_of_the_services_idle() -> None:
    cpu = dict.fromkeys(stats.PIPELINE_PARTS, 0.4) | {"publishers": 8.0}
    r = with_cpu(step(1000), "pipeline", cpu, {"kafka": 0.005})
    assert r.cpu_us("worker") == pytest.approx(10.0)  # 0.4 s over 40,000 messages
    assert r.cpu_us("kafka", net=True) == pytest.approx((0.4 - 0.2) / 40_000 * 1e6)
    # The load generator is measured but in neither side's total.
    assert r.cpu_total_us() == pytest.approx(10.0 * len(stats.PIPELINE_PARTS))
    assert r.cpu_total_us(net=True) == pytest.approx(10.0 * len(stats.PIPELINE_PARTS) - 5.0)
    # A service busier when idle than under load counts zero, never negative.
    r.idle_cpu_per_s = {"kafka": 1.0}
    assert r.cpu_us("kafka", net=True) == 0.0
    assert math.isnan(step(1000).cpu_total_us())  # nothing measured


def test_the_cpu_ratio_is_taken_at_equal_rates_both_sides_sustained() -> None:
    pipe = dict.fromkeys(stats.PIPELINE_PARTS, 0.1)  # 2.5 µs each, 22.5 µs in all
    base = dict.fromkeys(stats.BASELINE_PARTS, 2.25)  # 56.25 µs each, 225 µs in all
    pipeline = [
        with_cpu(step(1000), "pipeline", pipe, {}),
        with_cpu(step(2000), "pipeline", pipe, {}),
    ]
    baseline = [
        with_cpu(step(1000), "baseline", base, {}),
        with_cpu(step(2000, ok=False), "baseline", base, {}),
    ]
    pairs = stats.cpu_pairs(pipeline, baseline)
    assert [(p.rate, b.rate) for p, b in pairs] == [(1000, 1000)]
    lines = stats.cpu_summary(pipeline, baseline)
    # Each side's best (2,000 and 1,000 msg/s) is context, not equal work.
    assert lines[0].startswith("CPU per message at each side's highest passing rate: pipeline 22")
    assert "the pipeline 10.0x cheaper" in lines[1]
    assert lines[-1].startswith(
        "CPU ratio baseline / pipeline at equal work, over 1 rate(s) both sustained: 10.0-10.0x"
    )
    assert stats.cpu_summary(pipeline, baseline[1:]) == [
        "CPU per message at equal work: no rate sustained by both sides"
    ]
    rows = stats.cpu_rows(baseline, "baseline")
    assert rows[0].startswith("| baseline asked msg/s | messages in window | baseline |")
    assert rows[2].startswith("| 1,000 | 40,000 | 56 | 56 | 56 | 56 | - | 225 | 225 |")


def test_steps_are_reported_in_the_order_they_alternated() -> None:
    pipeline = [step(1000), step(2000), step(4000)]
    baseline = [step(1000), step(500)]
    order = [r.rate for r in stats.in_order(pipeline, baseline)]
    assert order == [1000, 1000, 2000, 500, 4000]
