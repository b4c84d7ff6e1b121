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

# What each side's CPU per message adds up (every process tree measured from /proc, see
# ``probes.CpuMeter``). The shared services serve whichever side runs the step; Kafka and Redis
# serve the pipeline only (during a baseline step they serve other work on the machine).
SERVICES = ("mosquitto", "kafka", "elasticsearch", "postgres", "redis")
PIPELINE_PARTS = (
    "connector",
    "worker",
    "sink-elasticsearch",
    "sink-postgres",
    *SERVICES,
)
BASELINE_PARTS = ("baseline", "mosquitto", "elasticsearch", "postgres")
# The load generator: measured, shown, in neither side's total (lamps publish from their own
# hardware).
LOAD_PARTS = ("publishers",)


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
    # CPU seconds of each process tree over the load window (``window_s`` long), during which
    # ``window_processed`` messages were processed; and each tree's CPU seconds per second
    # without load, read just before the step with the side's processes running idle (their
    # polling, the JVMs' housekeeping, and on a shared stack other work on the machine).
    cpu_s: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0
    window_processed: int = 0
    idle_cpu_per_s: dict[str, float] = field(default_factory=dict)

    @property
    def parts(self) -> tuple[str, ...]:
        return PIPELINE_PARTS if self.system == "pipeline" else BASELINE_PARTS

    def cpu_us(self, name: str, *, net: bool = False) -> float:
        """µs of CPU per processed message of one process tree; ``net``: less the tree's idle
        rate over the window (what the messages added above the idle floor)."""
        if self.window_processed <= 0 or name not in self.cpu_s:
            return math.nan
        used = self.cpu_s[name]
        if net:
            used = max(used - self.idle_cpu_per_s.get(name, 0.0) * self.window_s, 0.0)
        return used / self.window_processed * 1e6

    def cpu_total_us(self, *, net: bool = False) -> float:
        """µs of CPU per message of the whole side: its processes and the services it uses."""
        values = [self.cpu_us(name, net=net) for name in self.parts if name in self.cpu_s]
        return sum(values) if values and not any(math.isnan(v) for v in values) else math.nan

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
        # Every alert within the goal: with 10 falls a step, a "p99" is the worst of 10, so the
        # verdict says what it is (the max). A fall that never raised its alert is a failure.
        return (
            self.falls > 0
            and self.missing == 0
            and len(self.latencies_s) == self.falls
            and max(self.latencies_s) <= LATENCY_GOAL_S
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


def bracket(results: Sequence[StepResult]) -> tuple[float | None, float | None]:
    """Where a search stopped: (highest passing rate, lowest failing rate above it); None for a
    bound the search did not find."""
    best = highest_passed(results)
    low = best.rate if best is not None else None
    above = [r.rate for r in results if not r.passed and (low is None or r.rate > low)]
    return low, min(above, default=None)


def ratio_bracket(
    pipeline: tuple[float | None, float | None], baseline: tuple[float | None, float | None]
) -> tuple[float | None, float | None]:
    """Bounds of the ratio of two searches' true maxima, each between its highest pass and
    lowest failure: (pipeline's pass / baseline's failure, pipeline's failure / baseline's
    pass); None where a bound is unknown."""
    (p_low, p_high), (b_low, b_high) = pipeline, baseline
    lower = p_low / b_high if p_low is not None and b_high else None
    upper = p_high / b_low if p_high is not None and b_low else None
    return lower, upper


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.0f}"


def _us(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def _x(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}x"


def _rate(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}"


def latency_text(r: StepResult) -> str:
    """p50, p90 and the worst fall-alert latency, with their sample count (10 falls make no
    p99)."""
    n = len(r.latencies_s)
    if not n:
        return "no alert measured"
    return f"p50 {_ms(r.p(50))} ms, p90 {_ms(r.p(90))} ms, max {_ms(max(r.latencies_s))} ms (n={n})"


def step_rows(results: Sequence[StepResult]) -> list[str]:
    """A Markdown table, one row per step, in the order played."""
    lines = [
        "| system | asked msg/s | offered msg/s | processed msg/s | backlog end (slope/s) "
        "| falls (missing) | p50 ms | p90 ms | max ms | sustained | max ≤ 1 s "
        "| CPU µs/msg (net of idle) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        worst = max(r.latencies_s) if r.latencies_s else math.nan
        lines.append(
            f"| {r.system} | {r.rate:,.0f} | {r.offered:,.0f} | {r.throughput:,.0f} "
            f"| {r.final_backlog:,} ({r.backlog_slope:+,.0f}) | {r.falls} ({r.missing}) "
            f"| {_ms(r.p(50))} | {_ms(r.p(90))} | {_ms(worst)} "
            f"| {'yes' if r.sustained else 'no'} | {'yes' if r.latency_ok else 'no'} "
            f"| {_us(r.cpu_total_us())} ({_us(r.cpu_total_us(net=True))}) |"
        )
    return lines


def cpu_rows(results: Sequence[StepResult], system: str) -> list[str]:
    """µs of CPU per processed message of each process tree of one side, a row per step; the
    load generator's is shown and counted in neither side."""
    steps = [r for r in results if r.system == system and r.cpu_s]
    if not steps:
        return []
    parts = PIPELINE_PARTS if system == "pipeline" else BASELINE_PARTS
    head = [*parts, *LOAD_PARTS]
    lines = [
        f"| {system} asked msg/s | messages in window | "
        + " | ".join(head)
        + " | total | total net of idle |",
        "|---|---|" + "---|" * (len(head) + 2),
    ]
    for r in steps:
        cells = [_us(r.cpu_us(name)) for name in head]
        lines.append(
            f"| {r.rate:,.0f} | {r.window_processed:,} | "
            + " | ".join(cells)
            + f" | {_us(r.cpu_total_us())} | {_us(r.cpu_total_us(net=True))} |"
        )
    return lines


def cpu_pairs(
    pipeline: Sequence[StepResult], baseline: Sequence[StepResult]
) -> list[tuple[StepResult, StepResult]]:
    """Steps of both sides at the same asked rate (equal work), both sustained."""
    by_rate = {r.rate: r for r in baseline if r.sustained and r.cpu_s}
    return [(p, by_rate[p.rate]) for p in pipeline if p.sustained and p.cpu_s and p.rate in by_rate]


def cpu_summary(pipeline: Sequence[StepResult], baseline: Sequence[StepResult]) -> list[str]:
    """The CPU ratio at equal work: the baseline's µs per message over the pipeline's, at each
    rate both sides sustained, and the range over those rates."""
    pairs = cpu_pairs(pipeline, baseline)
    lines = []
    top_p, top_b = highest_passed(pipeline), highest_passed(baseline)
    if top_p is not None and top_b is not None and top_p.cpu_s and top_b.cpu_s:
        # Not equal work (the pipeline's batches grow with its rate): context for the ratio.
        lines.append(
            f"CPU per message at each side's highest passing rate: pipeline "
            f"{_us(top_p.cpu_total_us())} µs at {top_p.rate:,.0f} msg/s, baseline "
            f"{_us(top_b.cpu_total_us())} µs at {top_b.rate:,.0f} msg/s "
            f"({top_b.cpu_total_us() / top_p.cpu_total_us():.1f}x)"
        )
    if not pairs:
        return [*lines, "CPU per message at equal work: no rate sustained by both sides"]
    gross, net = [], []
    for p, b in pairs:
        g = b.cpu_total_us() / p.cpu_total_us()
        n = b.cpu_total_us(net=True) / p.cpu_total_us(net=True)
        gross.append(g)
        net.append(n)
        lines.append(
            f"CPU per message at {p.rate:,.0f} msg/s: pipeline {_us(p.cpu_total_us())} µs "
            f"({_us(p.cpu_total_us(net=True))} net of idle), baseline {_us(b.cpu_total_us())} "
            f"µs ({_us(b.cpu_total_us(net=True))} net): the pipeline {g:.1f}x cheaper "
            f"({n:.1f}x net)"
        )
    lines.append(
        f"CPU ratio baseline / pipeline at equal work, over {len(pairs)} rate(s) both "
        f"sustained: {min(gross):.1f}-{max(gross):.1f}x ({min(net):.1f}-{max(net):.1f}x net of "
        "idle); goal ≥ 10x"
    )
    return lines


def summary(pipeline: Sequence[StepResult], baseline: Sequence[StepResult]) -> list[str]:
    """The verdict lines: each system's highest rate meeting both goals with the search's
    bracket, the ratio with its bracket, and the CPU ratio at equal work."""
    lines = []
    best: dict[str, StepResult | None] = {}
    brackets = {}
    for name, results in (("pipeline", pipeline), ("baseline", baseline)):
        top = highest_passed(results)
        best[name] = top
        brackets[name] = bracket(results)
        if top is None:
            tried = ", ".join(f"{r.rate:,.0f}" for r in results) or "none"
            lines.append(f"{name}: no rate sustained with every alert ≤ 1 s (rates tried: {tried})")
        else:
            high = brackets[name][1]
            where = (
                f"the ceiling is between {top.rate:,.0f} and {high:,.0f}"
                if high is not None
                else f"the ceiling is above {top.rate:,.0f} (no failure found)"
            )
            lines.append(
                f"{name}: {top.rate:,.0f} msg/s sustained (processed {top.throughput:,.0f}/s), "
                f"fall-alert latency {latency_text(top)}; {where}"
            )
    top_p, top_b = best["pipeline"], best["baseline"]
    if top_p is not None and top_b is not None:
        lower, upper = ratio_bracket(brackets["pipeline"], brackets["baseline"])
        (p_low, p_high), (b_low, b_high) = brackets["pipeline"], brackets["baseline"]
        lines.append(
            f"ratio pipeline / baseline: {top_p.rate / top_b.rate:.1f}x of the highest passing "
            f"rates; bracket {_x(lower)}-{_x(upper)} (pipeline {_rate(p_low)}-{_rate(p_high)}, "
            f"baseline {_rate(b_low)}-{_rate(b_high)} msg/s)"
        )
    else:
        lines.append("ratio pipeline / baseline: not measured (a side met no rate)")
    if any(r.cpu_s for r in [*pipeline, *baseline]):
        lines += cpu_summary(pipeline, baseline)
    return lines


def stage_lines(results: Sequence[StepResult]) -> list[str]:
    """Where each step's messages went, stage by stage (the slowest one is the bottleneck)."""
    lines = []
    for r in results:
        if r.stages:
            parts = ", ".join(f"{name} {rate:,.0f}/s" for name, rate in r.stages.items())
            lines.append(f"- {r.system} at {r.rate:,.0f} msg/s, through each stage: {parts}")
    return [*lines, ""] if lines else []


def in_order(pipeline: Sequence[StepResult], baseline: Sequence[StepResult]) -> list[StepResult]:
    """The steps as they were played: alternating, pipeline first."""
    out: list[StepResult] = []
    for i in range(max(len(pipeline), len(baseline))):
        out += [*pipeline[i : i + 1], *baseline[i : i + 1]]
    return out


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
        *step_rows(in_order(pipeline, baseline)),
        "",
    ]
    for system, results in (("pipeline", pipeline), ("baseline", baseline)):
        rows = cpu_rows(results, system)
        if rows:
            lines += [f"µs of CPU per processed message, {system}:", "", *rows, ""]
    lines += stage_lines(pipeline)
    if notes:
        lines += [*[f"- {note}" for note in notes], ""]
    return "\n".join(lines)
