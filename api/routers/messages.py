"""Messages: every message the lamps sent, searched in Elasticsearch."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from api import queries
from api.deps import (
    LAMP_ID,
    SITE_ID,
    TYPE,
    Caller,
    Ctx,
    Cursor,
    End,
    Limit,
    Start,
    check_range,
    check_site,
    is_elasticsearch_down,
    resource_router,
    utc,
)
from api.models import Message, Page
from api.services import ServiceUnavailableError

router = resource_router()


@router.get("/messages/search", tags=["messages"], response_model=Page[Message])
async def search(  # noqa: PLR0917 - FastAPI passes every query parameter
    ctx: Ctx,
    caller: Caller,
    q: Annotated[str | None, Query(max_length=512, description="Words in the payload.")] = None,
    lamp: Annotated[str | None, Query(pattern=LAMP_ID)] = None,
    site: Annotated[str | None, Query(pattern=SITE_ID)] = None,
    type: Annotated[str | None, Query(pattern=TYPE)] = None,  # noqa: A002 - the API's name
    start: Start = None,
    end: End = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[Message]:
    """Every message the lamps sent, newest first, as received (payload and raw text)."""
    check_site(caller, site)
    check_range(start, end)
    size = limit
    after = queries.decode_cursor("messages", cursor, 3) if cursor else None
    if after is not None and not all(isinstance(v, int) for v in after):
        raise queries.BadCursorError("cursor: malformed")
    filters = queries.SearchFilter(
        q, lamp, site, type, utc(start) if start else None, utc(end) if end else None
    )
    body = queries.search_body(caller, filters, size, after)
    alias = ctx.settings.sink.elasticsearch_index_prefix
    try:
        result = await ctx.services.elasticsearch.search(
            index=alias, ignore_unavailable=True, allow_no_indices=True, **body
        )
    except Exception as exc:
        if is_elasticsearch_down(exc):
            raise ServiceUnavailableError(f"Elasticsearch unavailable: {exc}") from exc
        raise
    hits = result["hits"]["hits"]
    items = [Message(**queries.message_of(hit)) for hit in hits]
    next_cursor = queries.encode_cursor("messages", hits[-1]["sort"]) if len(hits) == size else None
    return Page[Message](items=items, next_cursor=next_cursor)
