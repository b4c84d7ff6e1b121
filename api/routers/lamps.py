"""Lamps: the list, one lamp, its hourly or daily activity (live for the hours still open)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import HTTPException, Query

from api import queries
from api.deps import (
    MAX_DAYS,
    MAX_HOURS,
    NOT_FOUND,
    SITE_ID,
    Caller,
    Context,
    Ctx,
    Cursor,
    End,
    LampId,
    Limit,
    Start,
    check_range,
    check_site,
    fetch_all,
    is_elasticsearch_down,
    resource_router,
    utc,
)
from api.models import Activity, ActivityPoint, AlertSummary, Granularity, Lamp, LiveStatus, Page
from api.tokens import Principal

log = logging.getLogger(__name__)
router = resource_router()


async def with_incidents(ctx: Context, rows: list[dict[str, Any]]) -> list[Lamp]:
    incidents: dict[str, list[AlertSummary]] = {row["lamp_id"]: [] for row in rows}
    if rows:
        for alert in await fetch_all(ctx, queries.OPEN_INCIDENTS, {"lamps": list(incidents)}):
            incidents[alert.pop("lamp_id")].append(AlertSummary(**alert))
    return [Lamp(**row, open_incidents=incidents[row["lamp_id"]]) for row in rows]


@router.get("/lamps", tags=["lamps"], response_model=Page[Lamp])
async def lamps(
    ctx: Ctx,
    caller: Caller,
    site: Annotated[str | None, Query(pattern=SITE_ID)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[Lamp]:
    """Lamps by id, with their open incidents. A staff token lists its own sites only."""
    check_site(caller, site)
    size = limit
    after = queries.decode_cursor("lamps", cursor, 1)[0] if cursor else None
    if after is not None and not isinstance(after, str):
        raise queries.BadCursorError("cursor: malformed")
    query, params = queries.lamps_query(caller, site, size + 1, after)
    rows = queries.merge_recent_lamps(
        await fetch_all(ctx, query, params), await recent_lamps(ctx, caller, site), after
    )
    more = len(rows) > size
    items = await with_incidents(ctx, rows[:size])
    next_cursor = queries.encode_cursor("lamps", [items[-1].lamp_id]) if more else None
    return Page[Lamp](items=items, next_cursor=next_cursor)


async def recent_lamps(
    ctx: Context, caller: Principal, site: str | None
) -> dict[str, dict[str, Any]]:
    """The lamps of the messages index's last 24 hours (``queries.recent_lamps_body``): a lamp
    is listed from its first message, not an hour later. Elasticsearch away costs only them."""
    since = datetime.now(UTC) - timedelta(milliseconds=queries.RECENT_LAMPS_WINDOW_MS)
    body = queries.recent_lamps_body(caller, site, round(since.timestamp() * 1000))
    search = ctx.services.elasticsearch.search(
        index=ctx.settings.sink.elasticsearch_index_prefix,
        ignore_unavailable=True,
        allow_no_indices=True,
        **body,
    )
    try:
        result = await asyncio.wait_for(search, ctx.settings.api.secondary_timeout_s)
    except Exception as exc:
        if is_elasticsearch_down(exc):
            log.warning("lamps: recent lamps not listed (%s)", exc)
            return {}
        raise
    return queries.recent_lamps(dict(result))


async def visible_lamp(
    ctx: Context, caller: Principal, lamp_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]] | None, str | None]:
    """The lamp's row, and its open hours from the worker holding it (or why not).

    A lamp reaches the ``lamps`` table with its first hourly figures, an hour or so after its
    first message: until then the worker's state is what knows it."""
    rows = await fetch_all(ctx, queries.LAMP, {"lamp_id": lamp_id})
    hours, why = await ctx.services.live_hours(lamp_id)
    if rows:
        row = rows[0]
    elif hours:
        row = {
            "lamp_id": lamp_id,
            "site_id": hours[0]["site_id"],
            "last_seen_at": None,
            "firmware": None,
            "online": True,
        }
    else:
        row = None
    # Another site's lamp is "not found": a staff token learns nothing of other homes.
    if row is None or not caller.may_see(row["site_id"]):
        raise HTTPException(404, f"no lamp {lamp_id}")
    return row, hours, why


@router.get("/lamps/{lamp_id}", tags=["lamps"], response_model=Lamp, responses=NOT_FOUND)
async def lamp(ctx: Ctx, caller: Caller, lamp_id: LampId) -> Lamp:
    """One lamp; its last-seen time and firmware are live when the worker holding it answers."""
    row, hours, _ = await visible_lamp(ctx, caller, lamp_id)
    for hour in hours or ():
        if hour["last_seen_at"] < 0:
            continue
        live_seen = queries.ms_datetime(hour["last_seen_at"])
        if row["last_seen_at"] is None or live_seen > row["last_seen_at"]:
            row["last_seen_at"] = live_seen
            row["firmware"] = hour["firmware"] or row["firmware"]
    return (await with_incidents(ctx, [row]))[0]


@router.get(
    "/lamps/{lamp_id}/activity", tags=["lamps"], response_model=Activity, responses=NOT_FOUND
)
async def activity(  # noqa: PLR0917 - FastAPI passes every query parameter
    ctx: Ctx,
    caller: Caller,
    lamp_id: LampId,
    start: Start = None,
    end: End = None,
    granularity: Granularity = "hour",
) -> Activity:
    """Hourly or daily figures. Hours not yet closed come from the detection worker that
    holds the lamp, so the current hour shows within seconds (`live: true`)."""
    row, hours, why = await visible_lamp(ctx, caller, lamp_id)
    now = datetime.now(UTC)
    end_at = utc(end) if end is not None else now + timedelta(hours=1)
    default_span = timedelta(hours=24) if granularity == "hour" else timedelta(days=30)
    start_at = utc(start) if start is not None else end_at - default_span
    check_range(start_at, end_at)
    span = end_at - start_at
    if granularity == "hour" and span > timedelta(hours=MAX_HOURS):
        raise HTTPException(400, f"hourly figures: at most {MAX_HOURS} hours per request")
    if granularity == "day" and span > timedelta(days=MAX_DAYS):
        raise HTTPException(400, f"daily figures: at most {MAX_DAYS} days per request")
    params = {"lamp_id": lamp_id, "start": start_at, "end": end_at}
    stored = await fetch_all(ctx, queries.HOURS if granularity == "hour" else queries.DAYS, params)
    points = {point["start"]: {**point, "live": False} for point in stored}
    if hours is not None:
        emitted = {
            p["start"]
            for p in await fetch_all(
                ctx,
                queries.HOURS,
                {"lamp_id": lamp_id, "start": start_at - timedelta(days=1), "end": end_at},
            )
        }
        for hour in hours:
            point = queries.live_point(hour)
            if point["start"] in emitted or not start_at <= point["start"] < end_at:
                continue
            if granularity == "hour":
                points[point["start"]] = point
            else:
                day = queries.day_start(point["start"])
                points[day] = queries.fold_into_day(points.get(day), point, day)
    return Activity(
        lamp_id=lamp_id,
        site_id=row["site_id"],
        granularity=granularity,
        points=[ActivityPoint(**points[key]) for key in sorted(points)],
        live=LiveStatus(available=hours is not None, reason=why),
    )
