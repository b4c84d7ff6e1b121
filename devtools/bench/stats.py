"""The pure parts of the bench: percentiles, the sustained-rate verdict, the rate search and
the report. Nothing here touches a service or the clock."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# A step's load is sustained when the pipeline's backlog does not grow: over the measured
# window its least-squares slope stays under this share of the asked rate (a deficit of 5 %
# adds 2 s of backlog in a 40 s step), and it ends
# under ``MAX_BACKLOG_S`` seconds of that rate.
MAX_BACKLOG_SLOPE = 0.05
MAX_BACKLOG_S = 2.0
# Progress is seen in steps (the sinks commit a batch at most every 500 ms): a backlog may
# swing by this many seconds of the rate without growing, which matters in a short window.
JITTER_S = 0.5
# The publisher must reach this share of the asked rate, or the step measured the publisher.
MIN_OFFERED_SHARE = 0.95
LATENCY_GOAL_S = 1.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks (numpy's default);
    NaN for no values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points; 0 for fewer than two distinct x."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


@dataclass(frozen=True)
class Sample:
    """One look at a running step: seconds since its load started, messages the broker
    acknowledged to the publisher so far, and messages fully processed so far (by the slowest
    stage)."""

    t: float
    published: int
    processed: int

    @property
    def backlog(self) -> int:
        return max(self.published - self.processed, 0)


@dataclass
class StepResult:
    """What one rate step measured, for one system (the pipeline or the baseline)."""

    system: str
    rate: float  # asked, msg/s
    seconds: float
    published: int
    processed: int
    samples: list[Sample] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    falls: int = 0  # fall alerts due during the step
    missing: int = 0  # of those, never alerted while measured
    note: str = ""
    stages: dict[str, float] = field(default_factory=dict)  # msg/s through each stage

    @property
    def offered(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    @property
    def throughput(self) -> float:
        """Processed messages per second over the measured window."""
        window = measured_window(self.samples)
        if len(window) < 2:
            return 0.0
        first, last = window[0], window[-1]
        return (last.processed - first.processed) / max(last.t - first.t, 1e-9)

    @property
    def backlog_slope(self) -> float:
        return slope([(s.t, float(s.backlog)) for s in measured_window(self.samples)])

    @property
    def final_backlog(self) -> int:
        return self.samples[-1].backlog if self.samples else 0

    @property
    def sustained(self) -> bool:
        return sustained(self.rate, self.offered, self.samples)

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q)

    @property
    def latency_ok(self) -> bool:
        # A fall that never raised its alert is a failure whatever the percentiles say.
        return (
            self.falls > 0
            and self.missing == 0
            and len(self.latencies_s) == self.falls
            and self.p(99) <= LATENCY_GOAL_S
        )

    @property
    def passed(self) -> bool:
        return self.sustained and self.latency_ok


def stage_rates(trace: Sequence[tuple[float, dict[str, int]]], seconds: float) -> dict[str, float]:
    """Messages/s through each stage (counters read together at wall times), over the same
    window as the verdict: from a quarter of the step to its end."""
    if len(trace) < 2:
        return {}
    start = trace[0][0] + seconds / 4
    end = trace[0][0] + seconds
    window = [(t, c) for t, c in trace if start <= t <= end + 1] or list(trace)
    (t0, first), (t1, last) = window[0], window[-1]
    if t1 <= t0:
        return {}
    return {name: (last[name] - first[name]) / (t1 - t0) for name in first}


def measured_window(samples: Sequence[Sample]) -> list[Sample]:
    """The samples after the first quarter of the step (start-up and the first batches)."""
    if not samples:
        return []
    start = samples[0].t + (samples[-1].t - samples[0].t) / 4
    return [s for s in samples if s.t >= start]


def sustained(rate: float, offered: float, samples: Sequence[Sample]) -> bool:
    """Whether a step's load was kept up with: the publisher reached the rate, the backlog did
    not grow over the measured window and ended small."""
    window = measured_window(samples)
    if len(window) < 3 or rate <= 0:
        return False
    if offered < MIN_OFFERED_SHARE * rate:
        return False
    span = window[-1].t - window[0].t
    if span <= 0:
        return False
    allowed = rate * (MAX_BACKLOG_SLOPE + JITTER_S / span)
    grows = slope([(s.t, float(s.backlog)) for s in window]) > allowed
    return not grows and window[-1].backlog <= MAX_BACKLOG_S * rate


def next_rate(
    results: Sequence[tuple[float, bool]],
    *,
    start: float,
    factor: float = 2.0,
    resolution: float = 0.15,
    ceiling: float = 1e9,
) -> float | None:
    """The next rate of a step search, from the ``(rate, passed)`` steps so far; None when
    done. Grows by ``factor`` from ``start`` until a step fails, then bisects between the
    highest pass and the lowest failure until they are within ``resolution`` (relative)."""
    if not results:
        return start
    passes = [r for r, ok in results if ok]
    failures = [r for r, ok in results if not ok]
    best = max(passes, default=None)
    worst = min(failures, default=None)
    if worst is None:
        assert best is not None  # noqa: S101 - results is not empty
        grown = best * factor
        return None if grown > ceiling else grown
    if best is None:
        lower = worst / factor
        # Below a tenth of the start nothing sensible is left to find.
        return None if lower < start / 10 else lower
    if worst <= best or (worst - best) / best <= resolution:
        return None
    return round((best + worst) / 2)


def highest_passed(results: Sequence[StepResult]) -> StepResult | None:
    passed = [r for r in results if r.passed]
    return max(passed, key=lambda r: r.rate, default=None)


def highest_sustained(results: Sequence[StepResult]) -> StepResult | None:
    passed = [r for r in results if r.sustained]
    return max(passed, key=lambda r: r.throughput, default=None)


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.0f}"


def step_rows(results: Sequence[StepResult]) -> list[str]:
    """A Markdown table, one row per step."""
    lines = [
        "| system | asked msg/s | offered msg/s | processed msg/s | backlog end (slope/s) "
        "| falls (missing) | p50 ms | p95 ms | p99 ms | sustained | p99 ≤ 1 s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.system} | {r.rate:,.0f} | {r.offered:,.0f} | {r.throughput:,.0f} "
            f"| {r.final_backlog:,} ({r.backlog_slope:+,.0f}) | {r.falls} ({r.missing}) "
            f"| {_ms(r.p(50))} | {_ms(r.p(95))} | {_ms(r.p(99))} "
            f"| {'yes' if r.sustained else 'no'} | {'yes' if r.latency_ok else 'no'} |"
        )
    return lines


def stage_lines(results: Sequence[StepResult]) -> list[str]:
    """Where each step's messages went, stage by stage (the slowest one is the bottleneck)."""
    lines = []
    for r in results:
        if r.stages:
            parts = ", ".join(f"{name} {rate:,.0f}/s" for name, rate in r.stages.items())
            lines.append(f"- {r.system} at {r.rate:,.0f} msg/s, through each stage: {parts}")
    return [*lines, ""] if lines else []


def summary(pipeline: Sequence[StepResult], baseline: Sequence[StepResult]) -> list[str]:
    """The verdict lines: each system's highest rate meeting both goals, and the ratio."""
    lines = []
    best: dict[str, StepResult | None] = {}
    for name, results in (("pipeline", pipeline), ("baseline", baseline)):
        top = highest_passed(results)
        best[name] = top
        if top is None:
            tried = ", ".join(f"{r.rate:,.0f}" for r in results) or "none"
            lines.append(f"{name}: no rate sustained with p99 ≤ 1 s (rates tried: {tried})")
        else:
            lines.append(
                f"{name}: {top.rate:,.0f} msg/s sustained (processed {top.throughput:,.0f}/s), "
                f"p99 fall-alert latency {_ms(top.p(99))} ms"
            )
    top_p, top_b = best["pipeline"], best["baseline"]
    if top_p is not None and top_b is not None:
        lines.append(f"ratio pipeline / baseline: {top_p.rate / top_b.rate:.1f}x")
    else:
        lines.append("ratio pipeline / baseline: not measured (a side met no rate)")
    return lines


def markdown_section(
    *,
    date: str,
    command: str,
    machine: Sequence[str],
    pipeline: Sequence[StepResult],
    baseline: Sequence[StepResult],
    notes: Sequence[str] = (),
) -> str:
    """The dated section ``--output`` appends to BENCHMARKS.md."""
    lines = [
        f"## `veilleuse bench`, {date}",
        "",
        "Machine: " + "; ".join(machine) + ".",
        "",
        "```sh",
        command,
        "```",
        "",
        *[f"- {line}" for line in summary(pipeline, baseline)],
        "",
        *step_rows([*pipeline, *baseline]),
        "",
        *stage_lines(pipeline),
    ]
    if notes:
        lines += [*[f"- {note}" for note in notes], ""]
    return "\n".join(lines)
