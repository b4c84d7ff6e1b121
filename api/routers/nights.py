"""Nights: the night summaries the PostgreSQL sink stores from activity.nightly.v1, per lamp
over a range of nights, and per site for one night (what the care team reads in the morning)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import HTTPException, Path, Query
from pydantic import BeforeValidator

from api import queries
from api.deps import (
    MAX_DAYS,
    NOT_FOUND,
    SITE_ID,
    Caller,
    Ctx,
    Cursor,
    LampId,
    Limit,
    check_site,
    fetch_all,
    resource_router,
)
from api.models import LampNights, Night, Page

router = resource_router()

ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DEFAULT_NIGHTS = 14


def day_only(value: Any) -> Any:
    """A night is named by its evening's date, ``YYYY-MM-DD``: pydantic would also take a
    Unix time or a date-time, which no one means here."""
    if not isinstance(value, str) or not ISO_DAY.match(value):
        raise ValueError("a date YYYY-MM-DD is expected, e.g. 2026-11-27")
    return value


IsoDay = Annotated[date, BeforeValidator(day_only)]
FromNight = Annotated[
    IsoDay | None,
    Query(alias="from", description="First night (its evening's date), inclusive."),
]
ToNight = Annotated[
    IsoDay | None,
    Query(alias="to", description="Night (its evening's date) to stop before, exclusive."),
]


@router.get(
    "/lamps/{lamp_id}/nights", tags=["nights"], response_model=LampNights, responses=NOT_FOUND
)
async def lamp_nights(
    ctx: Ctx, caller: Caller, lamp_id: LampId, start: FromNight = None, end: ToNight = None
) -> LampNights:
    """The lamp's night summaries, oldest first: nights from `from` (inclusive) to `to`
    (exclusive), named by the date of their evening; by default the last 14 nights up to last
    night. At most 366 nights per request. A night appears once the lamp's clock passed its
    07:00 plus the grace and the sink stored it."""
    end_night = end if end is not None else datetime.now(UTC).date() + timedelta(days=1)
    if start is not None:
        start_night = start
    elif end_night - date.min > timedelta(days=DEFAULT_NIGHTS):
        start_night = end_night - timedelta(days=DEFAULT_NIGHTS)
    else:  # there is no date before year 1
        start_night = date.min
    if start_night >= end_night:
        raise HTTPException(400, "from must be before to")
    if end_night - start_night > timedelta(days=MAX_DAYS):
        raise HTTPException(400, f"nights: at most {MAX_DAYS} per request")
    found = await fetch_all(ctx, queries.LAMP_SITE, {"lamp_id": lamp_id})
    # Another site's lamp is "not found": a staff token learns nothing of other homes.
    if not found or not caller.may_see(found[0]["site_id"]):
        raise HTTPException(404, f"no lamp {lamp_id}")
    query, params = queries.lamp_nights_query(caller, lamp_id, start_night, end_night)
    rows = await fetch_all(ctx, query, params)
    return LampNights(
        lamp_id=lamp_id, site_id=found[0]["site_id"], nights=[Night(**row) for row in rows]
    )


@router.get("/sites/{site_id}/nights", tags=["nights"], response_model=Page[Night])
async def site_nights(  # noqa: PLR0917 - FastAPI passes every query parameter
    ctx: Ctx,
    caller: Caller,
    site_id: Annotated[str, Path(pattern=SITE_ID)],
    night: Annotated[
        IsoDay | None,
        Query(description="The night (its evening's date); default: the latest one stored."),
    ] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[Night]:
    """Every lamp's summary of one night at a site, by lamp: the care team's morning read. A
    staff token of another site gets 403, as for `?site=`."""
    check_site(caller, site_id)
    after = queries.decode_cursor("site-nights", cursor, 1)[0] if cursor else None
    if after is not None and not isinstance(after, str):
        raise queries.BadCursorError("cursor: malformed")
    params = {"site": site_id, "night": night, "after": after, "limit": limit + 1}
    rows = await fetch_all(ctx, queries.SITE_NIGHTS, params)
    items = [Night(**row) for row in rows[:limit]]
    more = len(rows) > limit
    next_cursor = queries.encode_cursor("site-nights", [items[-1].lamp_id]) if more else None
    return Page[Night](items=items, next_cursor=next_cursor)
