"""What every route of the API depends on (FastAPI's dependencies module): the process's
context, the bearer-token authentication, the shared parameter types and checks, the metrics."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram
from psycopg.rows import dict_row
from pydantic import BeforeValidator

from api.models import Problem, ValidationProblem
from api.services import Services
from api.tokens import LOOKUP, Principal, digest, looks_like_token
from pipeline.settings import Settings

LAMP_ID = r"^[A-Za-z0-9_-]{1,40}$"
SITE_ID = r"^[a-z0-9-]{1,32}$"
ALERT_ID = r"^[A-Za-z0-9_.:-]{1,128}$"
KIND = r"^[a-z_]{1,40}$"
TYPE = r"^[a-z_]{1,40}$"
MAX_HOURS = 31 * 24
MAX_PAGE = 500
MAX_DAYS = 366

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")]
Cursor = Annotated[str | None, Query(max_length=512, description="From `next_cursor`.")]


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def iso_only(value: Any) -> Any:
    """Times are ISO 8601: pydantic would also take ``0.5`` for a Unix time, which the spec
    does not promise and a support engineer never means."""
    if not isinstance(value, str) or not ISO_DATE.match(value):
        raise ValueError("an ISO 8601 date-time is expected, e.g. 2026-11-27T08:00:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(iso_only)]
Start = Annotated[IsoTime | None, Query(alias="from", description="Inclusive, ISO 8601.")]
End = Annotated[IsoTime | None, Query(alias="to", description="Exclusive, ISO 8601.")]
LampId = Annotated[str, Path(pattern=LAMP_ID)]
AlertId = Annotated[str, Path(pattern=ALERT_ID)]

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such thing, or not of the token's sites."}
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "A parameter is inconsistent (a range, a cursor)."},
    401: {"model": Problem, "description": "No valid bearer token."},
    403: {"model": Problem, "description": "The token's role or sites do not allow it."},
    422: {"model": ValidationProblem, "description": "A parameter or the body is invalid."},
    503: {"model": Problem, "description": "A service the request needs does not answer."},
}


class Metrics:
    """The API's Prometheus metrics, served by its own ``/metrics`` route."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "veilleuse_api_requests",
            "API requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "veilleuse_api_request_seconds",
            "API request duration by route.",
            ["route"],
            registry=self.registry,
        )
        self.acks = Counter(
            "veilleuse_api_acknowledgements",
            "Acknowledgements received, by whether they were the first for their alert.",
            ["first"],
            registry=self.registry,
        )


@dataclass
class Context:
    """What every request handler shares: one per API process."""

    settings: Settings
    services: Services
    metrics: Metrics
    token_cache: dict[bytes, tuple[float, Principal]] = field(default_factory=dict)


def context(request: Request) -> Context:
    ctx: Context = request.app.state.context
    return ctx


def query_names(dependant: Any) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= query_names(sub)
    return names


async def known_parameters(request: Request) -> None:
    """A misspelt filter (``lamp_id=`` for ``lamp=``) must not silently list everything."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": f"unknown query parameter (known: {listed})",
                    "input": request.query_params[name],
                }
                for name in unknown
            ]
        )


def resource_router() -> APIRouter:
    """A router of authenticated resources: the documented errors, unknown query parameters
    refused."""
    return APIRouter(responses=ERRORS, dependencies=[Depends(known_parameters)])


Ctx = Annotated[Context, Depends(context)]


# -- authentication -----------------------------------------------------------------------------


# Declares the scheme in the OpenAPI spec; the checks below are ours (a clear 401 each time).
bearer = HTTPBearer(auto_error=False, description="A token from `veilleuse token create`.")


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    ctx: Context = request.app.state.context
    token = credentials.credentials.strip() if credentials is not None else ""
    if not looks_like_token(token):
        raise HTTPException(
            401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    found = await principal_of(ctx, digest(token))
    if found is None:
        raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return found


async def principal_of(ctx: Context, key: bytes) -> Principal | None:
    """The live token whose SHA-256 is ``key`` (None: unknown or revoked), trusted for
    ``api.token_cache_s``; the console's sessions re-check their token through it too."""
    now = time.monotonic()
    cached = ctx.token_cache.get(key)
    if cached is not None and now - cached[0] < ctx.settings.api.token_cache_s:
        return cached[1]
    async with ctx.services.pool.connection() as conn:
        row = await (await conn.execute(LOOKUP, (key,))).fetchone()
    if row is None:
        ctx.token_cache.pop(key, None)
        return None
    found = Principal(row[0], row[1], tuple(row[2]))
    ctx.token_cache[key] = (now, found)
    return found


Caller = Annotated[Principal, Depends(authenticate)]


def check_site(caller: Principal, site: str | None) -> None:
    if site is not None and not caller.may_see(site):
        raise HTTPException(403, f"token {caller.name!r} may not read site {site!r}")


async def fetch_all(ctx: Context, query: Any, params: Any) -> list[dict[str, Any]]:
    async with ctx.services.pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(query, params)
        return await cursor.fetchall()


def check_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and utc(start) >= utc(end):
        raise HTTPException(400, "from must be before to")


def is_elasticsearch_down(exc: Exception) -> bool:
    from pipeline.elasticsearch import unavailable

    return unavailable(exc)


def utc(moment: datetime) -> datetime:
    """Query times without a zone are UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
