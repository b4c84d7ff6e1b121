"""Alerts raised against the ground truth: precision, recall, latency, and the verdict. Pure.

An alert is on time between its expectation's ``earliest_ms`` and ``latest_ms``: for a fall
or a help request, not before its condition (the fall's 30 s, the press) less a second of
network, and not after it plus 2 s (rule 6). Anything else fails the verdict: a missed
required alert of any kind, a false one (no expectation of its lamp and kind at that time, a
non-incident, or a second alert for an incident already alerted), an early one, a late one.
Early and late alerts are told apart from false ones when they fall near an expectation
(``NEAR_BEFORE_MS`` before its earliest time, ``NEAR_AFTER_MS`` after its latest), so that the
report says "fall on L-7, 31 s early" rather than a false alarm and a miss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from devtools.simulator.model import CRITICAL_KINDS, SCORED_KINDS, Expectation, GroundTruth

# How far from its window an alert still counts as that expectation's (early or late).
NEAR_BEFORE_MS = 60_000  # a fall raised at the suspicion is 30 s early: still recognised
NEAR_AFTER_MS = 30_000


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
    early: int = 0
    late: int = 0
    false: int = 0
    tolerated: int = 0
    latencies_ms: list[int] = field(default_factory=list)  # from due_ms, found ones
    # Each found alert's lateness against the bound it had to meet (at - latest_ms: <= 0 is
    # on time) and that bound (latest_ms - due_ms), for the report.
    over_ms: list[int] = field(default_factory=list)
    bounds_ms: list[int] = field(default_factory=list)

    @property
    def recall(self) -> float | None:
        return self.found / self.expected if self.expected else None

    @property
    def precision(self) -> float | None:
        raised = self.found + self.false
        return self.found / raised if raised else None

    @property
    def worst_ms(self) -> int | None:
        """The largest latency from the condition (``due_ms``) among found alerts."""
        return max(self.latencies_ms) if self.latencies_ms else None


@dataclass
class Score:
    kinds: dict[str, KindScore]
    missed: list[Expectation]
    late: list[tuple[Expectation, SeenAlert]]
    false: list[tuple[SeenAlert, str]]  # (alert, why it is false: the non-incident, if any)
    unscored: list[SeenAlert]  # kinds the ground truth does not account for
    early: list[tuple[Expectation, SeenAlert]] = field(default_factory=list)

    @property
    def missed_critical(self) -> list[Expectation]:
        return [e for e in self.missed if e.kind in CRITICAL_KINDS]

    @property
    def false_critical(self) -> list[tuple[SeenAlert, str]]:
        return [(a, why) for a, why in self.false if a.kind in CRITICAL_KINDS]

    @property
    def ok(self) -> bool:
        """Every required alert on time, and nothing else raised, whatever its kind."""
        return not (self.missed or self.false or self.late or self.early)

    @property
    def failures(self) -> int:
        return len(self.missed) + len(self.false) + len(self.late) + len(self.early)

    def latencies(self, kinds: frozenset[str] | tuple[str, ...] = CRITICAL_KINDS) -> list[int]:
        return sorted(ms for k in kinds if k in self.kinds for ms in self.kinds[k].latencies_ms)


def percentile(sorted_values: list[int], q: float) -> int | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _near(e: Expectation, at_ms: int) -> bool:
    return e.earliest_ms - NEAR_BEFORE_MS <= at_ms <= e.latest_ms + NEAR_AFTER_MS


def score(truth: GroundTruth, alerts: list[SeenAlert], lamps: set[str]) -> Score:
    """Match each raised alert of ``lamps`` to an expectation of its lamp and kind.

    An alert in an expectation's window is on time; one near it (above) is early or late, and
    fails; an alert matching no open expectation is false, and fails. The same ``alert_id``
    read twice is one alert (a consumer drops such duplicates); a second ``alert_id`` for an
    incident already matched is false (rule 5: one alert per incident)."""
    kinds = {k: KindScore(k) for k in SCORED_KINDS}
    for e in truth.expected:
        if e.required:
            kinds[e.kind].expected += 1
    open_: dict[tuple[str, str], list[Expectation]] = {}
    for e in sorted(truth.expected, key=lambda e: e.due_ms):
        open_.setdefault((e.lamp_id, e.kind), []).append(e)
    matched: dict[tuple[str, str], list[tuple[Expectation, SeenAlert]]] = {}
    seen_ids: set[str] = set()
    late: list[tuple[Expectation, SeenAlert]] = []
    early: list[tuple[Expectation, SeenAlert]] = []
    false: list[tuple[SeenAlert, str]] = []
    unscored: list[SeenAlert] = []
    for alert in sorted(alerts, key=lambda a: a.at_ms):
        if alert.lamp_id not in lamps or alert.alert_id in seen_ids:
            continue
        seen_ids.add(alert.alert_id)
        if alert.kind not in kinds:
            unscored.append(alert)
            continue
        key = (alert.lamp_id, alert.kind)
        candidates = open_.get(key, [])
        ks = kinds[alert.kind]
        # In its window (a required one first, then the nearest), else a required one near it.
        match = min(
            (e for e in candidates if e.earliest_ms <= alert.at_ms <= e.latest_ms),
            key=lambda e: (not e.required, abs(alert.at_ms - e.due_ms)),
            default=None,
        ) or next((e for e in candidates if e.required and _near(e, alert.at_ms)), None)
        if match is None:
            again = next((a for e, a in matched.get(key, []) if _near(e, alert.at_ms)), None)
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
            why = forbidden or (
                f"a second alert for the incident of {again.alert_id}" if again else ""
            )
            false.append((alert, why))
            ks.false += 1
            continue
        candidates.remove(match)
        matched.setdefault(key, []).append((match, alert))
        if not match.required:
            ks.tolerated += 1
            continue
        ks.found += 1
        ks.latencies_ms.append(alert.at_ms - match.due_ms)
        ks.over_ms.append(alert.at_ms - match.latest_ms)
        ks.bounds_ms.append(match.latest_ms - match.due_ms)
        if alert.at_ms < match.earliest_ms:
            ks.early += 1
            early.append((match, alert))
        elif alert.at_ms > match.latest_ms:
            ks.late += 1
            late.append((match, alert))
        else:
            ks.on_time += 1
    missed = [e for group in open_.values() for e in group if e.required]
    return Score(kinds, sorted(missed, key=lambda e: e.due_ms), late, false, unscored, early)
