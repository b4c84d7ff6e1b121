"""What a rule is: a small state machine per lamp over typed events, timers and acks. Pure.

A rule keeps its per-lamp state in a :class:`RuleState` dataclass (JSON-friendly fields, stored
in the lamp's changelog record) and acts through its :class:`RuleContext`: raise or resolve an
alert, set or cancel a timer (a deadline in the lamp's event time), flag a record as late.
The engine calls ``on_event`` for the event types the rule ``handles``, ``on_timer`` when one
of its deadlines is reached (also while the lamp is silent), and ``on_ack`` when staff
acknowledge one of its alerts. Rules never see Kafka or faust.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from agents.api import Output
from agents.events import LampEvent
from pipeline.settings import DetectionSettings

ALERT_NAMESPACE = uuid.UUID("6f1c2a5e-2d0b-4c7e-9a43-7a11e0c0ffee")


def alert_id_for(lamp_id: str, rule: str, incident_started_at: int) -> str:
    """Deterministic: the same incident always gets the same id, whoever raises it."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{lamp_id}/{rule}/{incident_started_at}"))


@dataclass(frozen=True)
class Alert:
    """One record of ``alerts.v1`` (schema ``schemas/alert.v1.avsc``)."""

    alert_id: str
    kind: str
    severity: str
    state: str
    site_id: str
    lamp_id: str
    incident_started_at: int
    emitted_at: int
    details: dict[str, str]

    def as_record(self, known_kinds: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The Avro record; a kind not in ``known_kinds`` (the schema's ``AlertKind``) is
        written ``unknown``, its name in ``kind_name``, which every record carries."""
        return {
            "alert_id": self.alert_id,
            "kind": self.kind if self.kind in known_kinds else "unknown",
            "kind_name": self.kind,
            "severity": self.severity,
            "state": self.state,
            "site_id": self.site_id,
            "lamp_id": self.lamp_id,
            "incident_started_at": self.incident_started_at,
            "emitted_at": self.emitted_at,
            "details": self.details,
        }


@dataclass
class Incident:
    """An alert raised and not yet resolved."""

    alert_id: str
    kind: str
    severity: str
    started_at: int

    def dump(self) -> list[Any]:
        return [self.alert_id, self.kind, self.severity, self.started_at]


@dataclass
class RuleState:
    """Base of every rule's per-lamp state: the open incident and when the last one closed.

    ``closed_at`` (event time) lets a rule ignore duplicates and stragglers older than the
    incident it already closed, even after the deduplicator forgot them.
    """

    # The fields holding times of the lamp's clock (-1: unset), moved when it is reset.
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("closed_at",)

    incident: Incident | None = None
    closed_at: int = -1

    def rebase(self, shift_ms: int) -> None:
        """The lamp rebooted and its clock moved by ``shift_ms``: keep comparing like times."""
        for name in self.TIME_FIELDS:
            value = getattr(self, name)
            if value >= 0:
                setattr(self, name, value + shift_ms)

    def dump(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        if self.incident is not None:
            data["incident"] = self.incident.dump()
        return data

    @classmethod
    def load(cls, data: dict[str, Any]) -> Any:
        data = dict(data)
        incident = data.pop("incident", None)
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        state.incident = Incident(*incident) if incident else None
        return state


class RuleContext(Protocol):
    """What a rule may do. Implemented by the engine (and by test doubles of it)."""

    lamp_id: str
    site_id: str
    config: DetectionSettings

    @property
    def now(self) -> int:
        """The lamp's event time now (its clock, advancing while it is silent)."""
        ...

    def raise_alert(
        self, rule: str, kind: str, severity: str, started_at: int, details: dict[str, str]
    ) -> Incident: ...

    def resolve(self, incident: Incident, details: dict[str, str]) -> None: ...

    def set_timer(self, name: str, at: int) -> None: ...

    def cancel_timer(self, name: str) -> None: ...

    def late(self, reason: str) -> None:
        """The record being handled is too late for this rule's window (side output)."""
        ...

    def emit(self, kind: str, record: dict[str, Any]) -> None:
        """A record other than an alert (e.g. ``activity_hourly``), written in the batch."""
        ...


class RuleSettings(BaseModel):
    """Base of a rule's thresholds, declared in the rule's own module.

    Read from ``VEILLEUSE_RULES__<RULE NAME>__<FIELD>`` (e.g.
    ``VEILLEUSE_RULES__HELP_BUTTON__CANCEL_S``): the settings model keeps that section raw, and
    the rule registry validates it with the rule's model when it builds the rule, so the ground
    floor (``pipeline/``) never imports a rule. Give every field a default and a description:
    the README table and the Kubernetes ConfigMap are checked against them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")


S = TypeVar("S", bound=RuleState)


@dataclass
class Rule(Generic[S]):
    """Base of the rules. Subclasses set ``name``, ``handles``, ``state_type`` and the hooks,
    and ``settings_type`` with ``settings`` when they have thresholds of their own."""

    name: ClassVar[str]
    handles: ClassVar[frozenset[str]]
    state_type: ClassVar[type[RuleState]]
    settings_type: ClassVar[type[RuleSettings]] = RuleSettings
    # What the rule emits besides alerts, by the kind it gives ``ctx.emit`` (the agent encodes
    # each record with the output's schema and produces it to its topic).
    emits: ClassVar[dict[str, Output]] = {}
    config: DetectionSettings = field(repr=False)
    settings: RuleSettings = field(default_factory=RuleSettings, repr=False)

    def new_state(self) -> S:
        return self.state_type()  # type: ignore[return-value]

    def on_event(self, state: S, event: LampEvent, ctx: RuleContext) -> None:
        raise NotImplementedError

    def on_timer(self, state: S, timer: str, ctx: RuleContext) -> None:
        """A deadline set with ``ctx.set_timer`` was reached."""

    def live(self, state: S, lamp_id: str, site_id: str) -> list[dict[str, Any]] | None:
        """What the rule has not emitted yet, shown live by the query API (None: nothing)."""
        return None

    def on_ack(self, state: S, alert_id: str, by: str, ctx: RuleContext) -> None:
        """Staff acknowledged an alert: by default that closes its incident."""
        incident = state.incident
        if incident is not None and incident.alert_id == alert_id:
            ctx.resolve(incident, {"reason": "acknowledged", "acknowledged_by": by})
            state.incident = None
            state.closed_at = ctx.now
