"""Alerts raised against the ground truth: precision, recall, latency. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from devtools.simulator.model import CRITICAL_KINDS, SCORED_KINDS, Expectation, GroundTruth

# A required alert raised this long after its latest time still counts as found (late).
LATE_GRACE_MS = 30_000


@dataclass(frozen=True, slots=True)
class SeenAlert:
    """One ``raised`` record of ``alerts.v1``; ``at_ms`` is its wall time after the start."""

    alert_id: str
    lamp_id: str
    kind: str
    severity: str
    at_ms: int


@dataclass
class KindScore:
    kind: str
    expected: int = 0
    found: int = 0
    on_time: int = 0
    false: int = 0
    tolerated: int = 0
    latencies_ms: list[int] = field(default_factory=list)

    @property
    def recall(self) -> float | None:
        return self.found / self.expected if self.expected else None

    @property
    def precision(self) -> float | None:
        raised = self.found + self.false
        return self.found / raised if raised else None


@dataclass
class Score:
    kinds: dict[str, KindScore]
    missed: list[Expectation]
    late: list[tuple[Expectation, SeenAlert]]
    false: list[tuple[SeenAlert, str]]  # (alert, why it is false: the non-incident, if any)
    unscored: list[SeenAlert]  # kinds the ground truth does not account for

    @property
    def missed_critical(self) -> list[Expectation]:
        return [e for e in self.missed if e.kind in CRITICAL_KINDS]

    @property
    def false_critical(self) -> list[tuple[SeenAlert, str]]:
        return [(a, why) for a, why in self.false if a.kind in CRITICAL_KINDS]

    @property
    def ok(self) -> bool:
        return not self.missed_critical and not self.false_critical

    def latencies(self, kinds: frozenset[str] | tuple[str, ...] = CRITICAL_KINDS) -> list[int]:
        return sorted(ms for k in kinds if k in self.kinds for ms in self.kinds[k].latencies_ms)


def percentile(sorted_values: list[int], q: float) -> int | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def score(truth: GroundTruth, alerts: list[SeenAlert], lamps: set[str]) -> Score:
    """Match each raised alert of ``lamps`` to an expectation of its lamp and kind."""
    kinds = {k: KindScore(k) for k in SCORED_KINDS}
    for e in truth.expected:
        if e.required:
            kinds[e.kind].expected += 1
    open_: dict[tuple[str, str], list[Expectation]] = {}
    for e in sorted(truth.expected, key=lambda e: e.due_ms):
        open_.setdefault((e.lamp_id, e.kind), []).append(e)
    seen_ids: set[str] = set()
    late: list[tuple[Expectation, SeenAlert]] = []
    false: list[tuple[SeenAlert, str]] = []
    unscored: list[SeenAlert] = []
    for alert in sorted(alerts, key=lambda a: a.at_ms):
        if alert.lamp_id not in lamps or alert.alert_id in seen_ids:
            continue
        seen_ids.add(alert.alert_id)
        if alert.kind not in kinds:
            unscored.append(alert)
            continue
        candidates = open_.get((alert.lamp_id, alert.kind), [])
        match = next(
            (
                e
                for e in candidates
                if e.earliest_ms
                <= alert.at_ms
                <= e.latest_ms + (LATE_GRACE_MS if e.required else 0)
            ),
            None,
        )
        ks = kinds[alert.kind]
        if match is None:
            forbidden = next(
                (
                    n.scenario
                    for n in truth.non_incidents
                    if n.lamp_id == alert.lamp_id
                    and n.kind == alert.kind
                    and n.from_ms <= alert.at_ms <= n.to_ms
                ),
                "",
            )
            false.append((alert, forbidden))
            ks.false += 1
            continue
        candidates.remove(match)
        if not match.required:
            ks.tolerated += 1
            continue
        ks.found += 1
        ks.latencies_ms.append(alert.at_ms - match.due_ms)
        if alert.at_ms <= match.latest_ms:
            ks.on_time += 1
        else:
            late.append((match, alert))
    missed = [e for group in open_.values() for e in group if e.required]
    return Score(kinds, sorted(missed, key=lambda e: e.due_ms), late, false, unscored)
