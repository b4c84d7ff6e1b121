"""What the query API answers: the response models, which are also its OpenAPI spec."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")

AlertState = Literal["raised", "acknowledged", "resolved"]
Granularity = Literal["hour", "day"]


class Problem(BaseModel):
    """Every 4xx/5xx answer: an RFC 9457 problem detail, as ``application/problem+json``."""

    type: str = Field(
        description="A URI naming the kind of problem (docs/api.md lists them); `about:blank` "
        "when the status code says it all.",
        examples=["about:blank", "tag:veilleuse,2026:problems/invalid-input"],
        json_schema_extra={"format": "uri-reference"},
    )
    title: str = Field(description="Short summary of the type, the same for every occurrence.")
    status: int = Field(ge=400, le=599, description="The HTTP status code of the answer.")
    detail: str = Field(description="This occurrence, in words.")


InputLocation = Literal["path", "query", "header", "cookie", "body"]


class InvalidInput(BaseModel):
    """One invalid input of a 422."""

    detail: str = Field(description="What is wrong with it, in words.")
    location: InputLocation = Field(description="Where the input was.")
    parameter: str | None = Field(
        None, description="The parameter's name (path, query, header or cookie)."
    )
    pointer: str | None = Field(
        None, description="In the body: a JSON Pointer (RFC 6901) fragment, e.g. `#/sites/0`."
    )
    type: str = Field(description="The check that failed (pydantic's error type).")


class ValidationProblem(Problem):
    """A 422: ``detail`` says it in words, ``errors`` lists each invalid input."""

    errors: list[InvalidInput]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last page."
    )


class AlertSummary(BaseModel):
    alert_id: str
    kind: str
    severity: str
    state: AlertState
    incident_started_at: datetime


class Lamp(BaseModel):
    lamp_id: str
    site_id: str
    last_seen_at: datetime | None = Field(
        None, description="Latest message time known (live when the worker answered)."
    )
    firmware: str | None
    online: bool
    open_incidents: list[AlertSummary]


class Alert(BaseModel):
    alert_id: str
    kind: str
    severity: str
    site_id: str
    lamp_id: str
    state: AlertState
    incident_started_at: datetime = Field(description="Event time (the lamp's clock).")
    raised_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    details: dict[str, Any]


class AlertStep(BaseModel):
    step: str = Field(description="raised, notified, escalated, acknowledged, resolved, closed…")
    occurrence: int
    emitted_at: datetime
    details: dict[str, Any]
    recorded_at: datetime


class AlertLife(Alert):
    steps: list[AlertStep]


class AckRequest(BaseModel):
    by: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Who acknowledged, when a shared integration token acts for a person; "
        "default: the token's name.",
    )


class Ack(BaseModel):
    alert_id: str
    acknowledged_by: str
    acknowledged_at: datetime
    first: bool = Field(description="False when the alert had already been acknowledged.")


class ActivityPoint(BaseModel):
    start: datetime = Field(description="Start of the hour or UTC day.")
    live: bool = Field(description="True: an hour still open, read from the worker's state.")
    messages: int
    motion_events: int
    active_minutes: int
    minutes_in_bed: int
    minutes_absent: int
    bathroom_visits: int
    falls: int
    help_requests: int
    temperature_readings: int
    temperature_min: float | None
    temperature_mean: float | None
    temperature_max: float | None
    last_seen_at: datetime | None


class LiveStatus(BaseModel):
    available: bool
    reason: str | None = None


class Activity(BaseModel):
    lamp_id: str
    site_id: str
    granularity: Granularity
    points: list[ActivityPoint]
    live: LiveStatus


class Message(BaseModel):
    id: str
    lamp_id: str | None
    site_id: str | None
    type: str | None
    seq: int | None
    ts: datetime | None
    received_at: datetime | None
    event_time: datetime
    payload: dict[str, Any] | None
    raw: str


class Check(BaseModel):
    ok: bool
    detail: str
    seconds: float


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, Check]


class TokenRequest(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Literal["support", "staff", "admin"]
    sites: list[str] = Field(default_factory=list, max_length=100)


class TokenListing(BaseModel):
    name: str
    role: str
    sites: list[str]
    created_at: datetime
    revoked_at: datetime | None


class NewToken(TokenListing):
    token: str = Field(description="The bearer token: shown this once, only its hash is kept.")


class Night(BaseModel):
    """One lamp's night (activity.nightly.v1, schema night_summary.v1): 22:00 to 07:00 in the
    site's time zone, on the lamp's clock. A night the lamp did not cover in full has
    `covered_minutes` < `night_minutes`; every other figure counts the covered time only."""

    lamp_id: str
    site_id: str
    night_of: date = Field(description="Local date of the evening the night starts.")
    time_zone: str = Field(description="IANA time zone the night was cut in.")
    night_start: datetime = Field(description="22:00 local (the lamp's clock).")
    night_end: datetime = Field(description="07:00 local, exclusive.")
    night_minutes: int = Field(description="540, or 600 / 480 when the clocks change.")
    covered_minutes: int = Field(description="Minutes the lamp was online.")
    messages: int
    minutes_in_bed: int
    minutes_out_of_bed: int = Field(description="Out of bed, in the bathroom or out of the room.")
    bed_exits: int
    bathroom_visits: int
    room_exits: int
    restless_motion_events: int = Field(description="Motion in the bed zone while in bed.")
    restlessness_per_hour: float | None = Field(
        description="Restless motion events per hour in bed; null below one minute in bed."
    )
    longest_still_minutes: int = Field(description="Longest stretch in bed without motion.")
    latest_return_to_bed: datetime | None = Field(
        description="Last time the resident got (back) into bed in the night; null if never."
    )
    latest_return_to_bed_local: str | None = Field(description="The same as HH:MM, local.")
    emitted_at: datetime = Field(description="When the detection worker emitted the summary.")


class LampNights(BaseModel):
    lamp_id: str
    site_id: str
    nights: list[Night] = Field(description="By night, oldest first; a night not stored is absent.")
