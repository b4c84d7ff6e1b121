"""What the simulator produces: messages to publish and the ground truth they carry. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CRITICAL_KINDS = frozenset({"fall", "help_requested"})
SEVERITY = {
    "fall": "critical",
    "help_requested": "critical",
    "fall_recovered": "info",
    "environment": "warning",
    "lamp_offline": "warning",
    "inactivity": "warning",
}
# Kinds the ground truth accounts for: every kind the rules raise.
SCORED_KINDS = (
    "fall",
    "help_requested",
    "fall_recovered",
    "environment",
    "lamp_offline",
    "inactivity",
)


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publish. ``at_ms``: when to publish, in ms after the simulation's start."""

    at_ms: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    lamp_id: str
    valid: bool = True  # False: junk the connector must send to lamp.dlq.v1
    duplicate: bool = False  # a second delivery of an earlier message (same bytes)


@dataclass(frozen=True, slots=True)
class Expectation:
    """An alert that must be raised: ``kind`` on ``lamp_id``, between ``earliest_ms`` and
    ``latest_ms`` (ms after the start, wall time). ``due_ms`` is when the rule's condition is
    met (the fall's 30 s are over, the button was pressed): latency is measured from it.
    ``required=False`` marks an alert that may be raised but need not be (a borderline case)."""

    lamp_id: str
    site_id: str
    kind: str
    due_ms: int
    earliest_ms: int
    latest_ms: int
    scenario: str
    required: bool = True

    @property
    def severity(self) -> str:
        return SEVERITY[self.kind]


@dataclass(frozen=True, slots=True)
class NonIncident:
    """Something that looks like an incident and must NOT raise ``kind`` on ``lamp_id``
    between ``from_ms`` and ``to_ms`` (staff floor care, lying in bed, a recovery...)."""

    lamp_id: str
    site_id: str
    kind: str
    from_ms: int
    to_ms: int
    scenario: str


@dataclass
class GroundTruth:
    expected: list[Expectation] = field(default_factory=list)
    non_incidents: list[NonIncident] = field(default_factory=list)
    # Per-lamp scenario log: (lamp_id, at_ms, scenario) in order of start.
    scenarios: list[tuple[str, int, str]] = field(default_factory=list)

    def required(self, kind: str | None = None) -> list[Expectation]:
        return [e for e in self.expected if e.required and (kind is None or e.kind == kind)]


@dataclass
class Counts:
    """What was generated, by category: the rate accounting."""

    published: int = 0  # every Message, junk and duplicates included
    valid: int = 0
    junk: int = 0
    duplicates: int = 0
    delayed: int = 0  # reordered or replayed after an outage
    # Of those, the messages of incident scripts (their own, not the background's).
    scripted_delayed: int = 0
    scripted_duplicates: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    junk_by_reason: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "valid": self.valid,
            "junk": self.junk,
            "duplicates": self.duplicates,
            "delayed": self.delayed,
            "scripted_delayed": self.scripted_delayed,
            "scripted_duplicates": self.scripted_duplicates,
            "by_type": dict(sorted(self.by_type.items())),
            "junk_by_reason": dict(sorted(self.junk_by_reason.items())),
        }
