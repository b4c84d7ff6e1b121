"""The query API for support and care staff (``veilleuse api``). See docs/api.md.

Reads PostgreSQL (lamps, activity, alerts and their life), Elasticsearch (every message) and,
for the hours still open, the detection workers' live state; writes acknowledgements to
``alerts.acks.v1`` (which closes the incident in the workers and stops the notifier's
reminders) and to the alert's life. Every route but the probes needs a bearer token.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout
from pydantic import BeforeValidator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api import queries, tokens
from api.models import (
    Ack,
    AckRequest,
    Activity,
    ActivityPoint,
    Alert,
    AlertLife,
    AlertState,
    AlertStep,
    AlertSummary,
    Granularity,
    Lamp,
    LiveStatus,
    Message,
    NewToken,
    Page,
    Problem,
    Readiness,
    TokenListing,
    TokenRequest,
    ValidationProblem,
)
from api.services import Services, ServiceUnavailableError
from api.tokens import LOOKUP, Principal, digest, looks_like_token
from pipeline.settings import Settings
from schemas import encode, schema

log = logging.getLogger(__name__)

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


router = APIRouter(responses=ERRORS, dependencies=[Depends(known_parameters)])
probes = APIRouter(tags=["probes"])
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
    key = digest(token)
    now = time.monotonic()
    cached = ctx.token_cache.get(key)
    if cached is not None and now - cached[0] < ctx.settings.api.token_cache_s:
        return cached[1]
    async with ctx.services.pool.connection() as conn:
        row = await (await conn.execute(LOOKUP, (key,))).fetchone()
    if row is None:
        ctx.token_cache.pop(key, None)
        raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
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


# -- probes ---------------------------------------------------------------------------------


@probes.get("/healthz", responses={200: {"description": "The process runs."}})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency does not answer."}},
)
async def readyz(ctx: Ctx) -> JSONResponse:
    checks = await ctx.services.checks()
    ready = all(check.ok for check in checks.values())
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@probes.get("/metrics", response_class=Response)
async def prometheus(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# -- lamps ----------------------------------------------------------------------------------


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
    rows = await fetch_all(ctx, query, params)
    more = len(rows) > size
    items = await with_incidents(ctx, rows[:size])
    next_cursor = queries.encode_cursor("lamps", [items[-1].lamp_id]) if more else None
    return Page[Lamp](items=items, next_cursor=next_cursor)


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


# -- alerts ---------------------------------------------------------------------------------


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
    if not caller.may_acknowledge:
        raise HTTPException(403, f"token {caller.name!r} ({caller.role}) cannot acknowledge")
    row = await visible_alert(ctx, caller, alert_id)
    existing = await fetch_all(ctx, queries.ACK_OF, {"alert_id": alert_id})
    if existing:
        ctx.metrics.acks.labels("false").inc()
        return Ack(alert_id=alert_id, **existing[0], first=False)
    by = (body.by if body and body.by else None) or caller.name
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
    details = Jsonb({"acknowledged_by": by, "token": caller.name, "via": "api"})
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


# -- messages -------------------------------------------------------------------------------


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


# -- tokens (admin) ------------------------------------------------------------------------------


def require_admin(caller: Principal) -> None:
    if caller.role != "admin":
        raise HTTPException(403, f"token {caller.name!r} ({caller.role}) cannot manage tokens")


@router.get("/tokens", tags=["tokens"], response_model=list[TokenListing])
async def list_api_tokens(ctx: Ctx, caller: Caller) -> list[TokenListing]:
    """Every token, revoked ones included (never the tokens themselves). Admin only."""
    require_admin(caller)
    async with ctx.services.pool.connection() as conn:
        rows = await (await conn.execute(tokens.LIST)).fetchall()
    return [TokenListing(**asdict(tokens.token_info(row))) for row in rows]


@router.post(
    "/tokens",
    tags=["tokens"],
    status_code=201,
    response_model=NewToken,
    responses={409: {"model": Problem}, 400: {"model": Problem}},
)
async def create_api_token(ctx: Ctx, caller: Caller, body: TokenRequest) -> NewToken:
    """Create a token (admin only); the answer is the only time it is shown."""
    require_admin(caller)
    try:
        token, params = tokens.new_token(body.name, body.role, body.sites)
    except tokens.TokenError as exc:
        raise HTTPException(400, str(exc)) from exc
    try:
        async with ctx.services.pool.connection() as conn:
            await conn.execute(tokens.INSERT, params)
            row = await (await conn.execute(tokens.LIST_ONE, (body.name,))).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        raise HTTPException(409, str(tokens.exists_error(body.name))) from exc
    assert row is not None  # noqa: S101 - inserted in the same transaction
    return NewToken(**asdict(tokens.token_info(row)), token=token)


@router.delete(
    "/tokens/{name}", tags=["tokens"], status_code=204, responses={404: {"model": Problem}}
)
async def revoke_api_token(
    ctx: Ctx, caller: Caller, name: Annotated[str, Path(pattern=tokens.NAME_PATTERN.pattern)]
) -> Response:
    """Revoke a token (admin only). Every API process refuses it within `api.token_cache_s`."""
    require_admin(caller)
    async with ctx.services.pool.connection() as conn:
        revoked = (await conn.execute(tokens.REVOKE, (name,))).rowcount == 1
    if not revoked:
        raise HTTPException(404, f"no live token {name!r}")
    ctx.token_cache.clear()
    return Response(status_code=204)


# -- the application ----------------------------------------------------------------------------


async def unavailable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def postgres_down(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"PostgreSQL unavailable: {exc}"}, status_code=503)


async def bad_cursor(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer, except that a 405 lists every method of the path in ``Allow``
    (Starlette names only the first route that matched the path)."""
    from fastapi.exception_handlers import http_exception_handler

    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for this type only
    response = await http_exception_handler(request, exc)
    if exc.status_code == 405:
        methods: set[str] = set()
        for route in request.app.router.routes:
            match, _ = route.matches(request.scope)
            if match != Match.NONE:
                methods |= getattr(route, "methods", None) or set()
        response.headers["allow"] = ", ".join(sorted(methods))
    return response


async def invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this type only
    problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return JSONResponse(
        {"detail": "; ".join(problems), "errors": jsonable(exc.errors())}, status_code=422
    )


def create_app(settings: Settings) -> FastAPI:
    ctx = Context(settings, Services(settings), Metrics())
    # The process's memory, CPU and file descriptors, as the other components serve them.
    ProcessCollector(registry=ctx.metrics.registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await ctx.services.open()
        try:
            yield
        finally:
            await ctx.services.close()

    app = FastAPI(
        title="Veilleuse query API",
        version="1",
        description="Lamps, activity, alerts and messages of the Veilleuse fall-detection "
        "pipeline, for support and care staff. Authenticate with `Authorization: Bearer <token>` "
        "(created by `veilleuse token create`).",
        lifespan=lifespan,
    )
    app.state.context = ctx
    app.add_exception_handler(ServiceUnavailableError, unavailable)
    app.add_exception_handler(psycopg.OperationalError, postgres_down)
    app.add_exception_handler(PoolTimeout, postgres_down)
    app.add_exception_handler(queries.BadCursorError, bad_cursor)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.monotonic()
        response = await call_next(request)
        path = getattr(request.scope.get("route"), "path", "unmatched")
        ctx.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        ctx.metrics.latency.labels(path).observe(time.monotonic() - started)
        return response

    app.include_router(probes)
    app.include_router(router)
    return app


def is_elasticsearch_down(exc: Exception) -> bool:
    from connectors.sinks.elasticsearch import unavailable

    return unavailable(exc)


def utc(moment: datetime) -> datetime:
    """Query times without a zone are UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def jsonable(errors: Any) -> Any:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str})


def run_api(settings: Settings) -> None:
    import uvicorn

    from pipeline.observability import configure_logging

    configure_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,  # our JSON logs, configured above
        access_log=False,  # requests are counted in /metrics; errors are logged
        proxy_headers=True,
    )
