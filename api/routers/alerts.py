"""Alerts: the list, one alert with its whole life, and the acknowledgement."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import HTTPException, Query
from psycopg.types.json import Jsonb

from api import queries
from api.deps import (
    KIND,
    LAMP_ID,
    NOT_FOUND,
    SITE_ID,
    AlertId,
    Caller,
    Context,
    Ctx,
    Cursor,
    End,
    Limit,
    Start,
    check_range,
    check_site,
    fetch_all,
    resource_router,
    utc,
)
from api.models import Ack, AckRequest, Alert, AlertLife, AlertState, AlertStep, Page, Problem
from api.tokens import Principal
from schemas import encode, schema

log = logging.getLogger(__name__)

router = resource_router()


@router.get("/alerts", tags=["alerts"], response_model=Page[Alert])
async def alerts(  # noqa: PLR0917 - FastAPI passes every query parameter
    ctx: Ctx,
    caller: Caller,
    site: Annotated[str | None, Query(pattern=SITE_ID)] = None,
    lamp: Annotated[str | None, Query(pattern=LAMP_ID)] = None,
    kind: Annotated[str | None, Query(pattern=KIND)] = None,
    state: AlertState | None = None,
    start: Start = None,
    end: End = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[Alert]:
    """Incidents, newest first (by the lamp's time of the incident)."""
    check_site(caller, site)
    check_range(start, end)
    size = limit
    after = None
    if cursor:
        at, alert_id = queries.decode_cursor("alerts", cursor, 2)
        try:
            after = (datetime.fromisoformat(at), str(alert_id))
        except (TypeError, ValueError) as exc:
            raise queries.BadCursorError("cursor: malformed") from exc
    filters = queries.AlertFilter(
        site, lamp, kind, state, utc(start) if start else None, utc(end) if end else None
    )
    query, params = queries.alerts_query(caller, filters, size + 1, after)
    rows = await fetch_all(ctx, query, params)
    items = [Alert(**row) for row in rows[:size]]
    next_cursor = None
    if len(rows) > size:
        last = items[-1]
        next_cursor = queries.encode_cursor(
            "alerts", [last.incident_started_at.isoformat(), last.alert_id]
        )
    return Page[Alert](items=items, next_cursor=next_cursor)


async def visible_alert(ctx: Context, caller: Principal, alert_id: str) -> dict[str, Any]:
    rows = await fetch_all(ctx, queries.ALERT, {"alert_id": alert_id})
    if not rows or not caller.may_see(rows[0]["site_id"]):
        raise HTTPException(404, f"no alert {alert_id}")
    return rows[0]


@router.get("/alerts/{alert_id}", tags=["alerts"], response_model=AlertLife, responses=NOT_FOUND)
async def alert(ctx: Ctx, caller: Caller, alert_id: AlertId) -> AlertLife:
    """An alert with its whole life: raised, notified (whom, how), escalated,
    acknowledged (by whom), resolved, closed."""
    row = await visible_alert(ctx, caller, alert_id)
    steps = await fetch_all(ctx, queries.STEPS, {"alert_id": alert_id})
    return AlertLife(**row, steps=[AlertStep(**step) for step in steps])


@router.post(
    "/alerts/{alert_id}/ack",
    tags=["alerts"],
    response_model=Ack,
    responses={404: {"model": Problem}},
)
async def acknowledge(
    ctx: Ctx, caller: Caller, alert_id: AlertId, body: AckRequest | None = None
) -> Ack:
    """Acknowledge an alert (staff of its site, or admin). Idempotent: the first
    acknowledgement is kept and returned again."""
    return await record_acknowledgement(
        ctx, caller, alert_id, (body.by if body and body.by else None) or caller.name, via="api"
    )


async def record_acknowledgement(
    ctx: Context, caller: Principal, alert_id: str, by: str, via: str
) -> Ack:
    """The one acknowledgement path (the API's route and the console's form): alerts.acks.v1,
    then the alert's life; ``via`` says which door it came through."""
    if not caller.may_acknowledge:
        raise HTTPException(403, f"token {caller.name!r} ({caller.role}) cannot acknowledge")
    row = await visible_alert(ctx, caller, alert_id)
    existing = await fetch_all(ctx, queries.ACK_OF, {"alert_id": alert_id})
    if existing:
        ctx.metrics.acks.labels("false").inc()
        return Ack(alert_id=alert_id, **existing[0], first=False)
    at = datetime.now(UTC)
    # Kafka first: the workers close the incident and the notifier stops its reminders
    # only from alerts.acks.v1. Recorded in PostgreSQL after, so that a 503 leaves no
    # acknowledgement that the pipeline never heard of.
    value = encode(
        schema("alert_ack.v1"),
        {
            "alert_id": alert_id,
            "lamp_id": row["lamp_id"],
            "acknowledged_by": by,
            "acknowledged_at": at,
        },
    )
    await ctx.services.publish_ack(row["lamp_id"], value)
    details = Jsonb({"acknowledged_by": by, "token": caller.name, "via": via})
    async with ctx.services.pool.connection() as conn:
        params = {"alert_id": alert_id, "at": at, "details": details}
        first = await (await conn.execute(queries.RECORD_ACK, params)).fetchone() is not None
    # Two acknowledgements racing: both reach Kafka (harmless), the first recorded wins.
    winner = (await fetch_all(ctx, queries.ACK_OF, {"alert_id": alert_id}))[0]
    ctx.metrics.acks.labels(str(first).lower()).inc()
    log.info(
        "alert %s acknowledged by %s",
        alert_id,
        by,
        extra={"lamp_id": row["lamp_id"], "site_id": row["site_id"], "component": "api"},
    )
    return Ack(alert_id=alert_id, **winner, first=first)
