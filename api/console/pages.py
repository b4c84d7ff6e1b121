"""The console's pages. Every figure comes through the JSON API's own handlers and queries
(``api.routers``, ``api.queries``), called with the session's principal: the same roles, the
same site scoping, the same answers."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import psycopg
from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from api import queries
from api.console import charts, i18n, sessions
from api.console.web import Console, SignInRequiredError, checked_form
from api.deps import ALERT_ID, KIND, LAMP_ID, SITE_ID, TYPE, fetch_all, principal_of
from api.models import Activity, Alert, Message
from api.routers import alerts as alerts_api
from api.routers import lamps as lamps_api
from api.routers import messages as messages_api
from api.services import ServiceUnavailableError
from api.tokens import Principal, digest, looks_like_token

HEARTBEAT_S = 15.0
READY_WAIT_S = 15.0
PAGE = 50
# The lamp page's charts: the activity API's fields, each the figure a chart draws.
FIGURES = ("active_minutes", "minutes_in_bed", "minutes_absent", "temperature_mean", "messages")
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
STATES = ("raised", "acknowledged", "resolved")

router = APIRouter()


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(console_of)]


async def current(request: Request) -> sessions.Session:
    return await console_of(request).session(request)


SessionDep = Annotated[sessions.Session, Depends(current)]
SiteId = Annotated[str, Path(pattern=SITE_ID)]
LampId = Annotated[str, Path(pattern=LAMP_ID)]
AlertId = Annotated[str, Path(pattern=ALERT_ID)]


def redirect(request: Request, path: str) -> RedirectResponse:
    return RedirectResponse(f"{request.scope.get('root_path', '')}{path}", status_code=303)


# -- sign-in and out ---------------------------------------------------------------------------


@router.get("/")
async def home(request: Request, console: ConsoleDep) -> Response:
    try:
        session = await console.session(request)
    except SignInRequiredError:
        return redirect(request, "/sign-in")
    principal = session.principal
    if principal.all_sites or not principal.sites:
        return redirect(request, "/sites")
    return redirect(request, f"/sites/{principal.sites[0]}")


def sign_in_form(
    request: Request, console: Console, status: int = 200, error: str | None = None
) -> Response:
    token = request.cookies.get(sessions.CSRF_COOKIE)
    if not token or not 20 <= len(token) <= 100:
        token = secrets.token_urlsafe(32)
    response = console.render(request, "sign_in.html", status=status, csrf_token=token, error=error)
    sessions.set_cookie(
        response,
        request,
        sessions.CSRF_COOKIE,
        token,
        max_age=3600,
        secure_setting=console.ctx.settings.api.console_secure_cookies,
    )
    return response


@router.get("/sign-in")
async def sign_in_page(request: Request, console: ConsoleDep) -> Response:
    return sign_in_form(request, console)


@router.post("/sign-in")
async def sign_in(request: Request, console: ConsoleDep) -> Response:
    # Double submit: the form's token must equal the cookie this console set with the form.
    form = await checked_form(request, request.cookies.get(sessions.CSRF_COOKIE))
    token = form.get("token", "").strip()
    key = digest(token)
    principal = await principal_of(console.ctx, key) if looks_like_token(token) else None
    if principal is None:
        lang = request.state.lang
        return sign_in_form(request, console, 401, i18n.translate(lang, "sign_in.refused"))
    response = await start_session(request, console, key, principal, "/")
    response.delete_cookie(sessions.CSRF_COOKIE, path=sessions.PATH)
    return response


async def start_session(
    request: Request, console: Console, key: bytes, principal: Principal, to: str
) -> Response:
    """A new session for ``principal`` (its token's digest ``key``), its cookie set on the
    redirect to ``to``: what a signed-in form and a one-time link both end with."""
    session = sessions.new_session(key, principal)
    try:
        await console.save(session)
    except Exception as exc:
        raise ServiceUnavailableError(f"Redis unavailable: {exc}") from exc
    response = redirect(request, to)
    settings = console.ctx.settings.api
    sessions.set_cookie(
        response,
        request,
        sessions.SESSION_COOKIE,
        session.id,
        max_age=round(settings.console_session_ttl_s),
        secure_setting=settings.console_secure_cookies,
    )
    return response


@router.post("/sign-out")
async def sign_out(request: Request, console: ConsoleDep, session: SessionDep) -> Response:
    await checked_form(request, session.csrf)
    await console.end(session)
    response = redirect(request, "/sign-in")
    response.delete_cookie(sessions.SESSION_COOKIE, path=sessions.PATH)
    return response


# -- sites and their boards --------------------------------------------------------------------


@router.get("/sites")
async def sites(request: Request, console: ConsoleDep, session: SessionDep) -> Response:
    query, params = queries.sites_query(session.principal)
    rows = await fetch_all(console.ctx, query, params)
    return console.render(request, "sites.html", sites=rows)


async def visible_site(console: Console, principal: Principal, site_id: str) -> None:
    """Another home's site is "not found", as the API's lamps and alerts are."""
    if not principal.may_see(site_id):
        raise HTTPException(404, f"no site {site_id}")
    if principal.all_sites:
        rows = await fetch_all(console.ctx, queries.SITE_KNOWN, {"site": site_id})
        if not rows or not rows[0]["known"]:
            raise HTTPException(404, f"no site {site_id}")


async def open_alerts(console: Console, principal: Principal, site_id: str) -> list[Alert]:
    found: list[Alert] = []
    for state in ("raised", "acknowledged"):
        page = await alerts_api.alerts(
            console.ctx, principal, site_id, None, None, state, None, None, 500, None
        )
        found.extend(page.items)
    found.sort(key=lambda a: (SEVERITY_RANK.get(a.severity, 9), a.incident_started_at))
    return found


@router.get("/sites/{site_id}")
async def board(
    request: Request, console: ConsoleDep, session: SessionDep, site_id: SiteId
) -> Response:
    await visible_site(console, session.principal, site_id)
    lamps: list[Any] = []
    cursor = None
    while True:
        page = await lamps_api.lamps(console.ctx, session.principal, site_id, 500, cursor)
        lamps.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    alerts = await open_alerts(console, session.principal, site_id)
    rows = await fetch_all(
        console.ctx, queries.LAST_STEPS, {"alert_ids": [alert.alert_id for alert in alerts]}
    )
    last_steps = {row["alert_id"]: timeline([row | {"details": {}}])[0] for row in rows}
    return console.render(
        request, "board.html", site_id=site_id, lamps=lamps, alerts=alerts, last_steps=last_steps
    )


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.get("/sites/{site_id}/events")
async def events(
    request: Request, console: ConsoleDep, session: SessionDep, site_id: SiteId
) -> Response:
    """The board's live alerts (server-sent events): ``ready`` once nothing appended to
    alerts.v1 from then on can be missed, ``alert`` per alert of the site, a comment every
    15 s; the stream ends when the session does."""
    if not session.principal.may_see(site_id):
        raise HTTPException(404, f"no site {site_id}")
    lang: str = request.state.lang
    base = request.scope.get("root_path", "")

    def labelled(event: dict[str, Any]) -> dict[str, Any]:
        state = event["state"]
        shown = {
            **{name: value for name, value in event.items() if name != "event"},
            "url": f"{base}/alerts/{event['alert_id']}",
            "lamp_url": f"{base}/lamps/{event['lamp_id']}",
            "kind_label": i18n.label(lang, "kind", event["kind"]),
            # An unknown kind is shown by its own name, marked (the page's <code class="raw">).
            "kind_known": i18n.known(lang, "kind", event["kind"]),
            "untranslated": i18n.translate(lang, "label.untranslated"),
            "severity_label": i18n.label(lang, "severity", event["severity"]),
            "state_label": None if state is None else i18n.label(lang, "state", state),
            "started_local": console.local_time(
                datetime.fromisoformat(event["incident_started_at"]), event["site_id"]
            ),
        }
        if "step" in event:
            shown["step_label"] = i18n.label(lang, "step", event["label"])
            shown["by_label"] = i18n.translate(lang, "alert.by")
        return shown

    async def stream() -> AsyncIterator[bytes]:
        async with console.hub.subscribe(frozenset({site_id})) as subscriber:
            yield b"retry: 2000\n\n"
            announced = await wait_ready(console)
            if announced:
                yield sse("ready", {"site_id": site_id})
            if console.hub.down:  # joined while PostgreSQL or Kafka is away: not live yet
                yield sse("status", {"live": False})
            while True:
                try:
                    event = await asyncio.wait_for(subscriber.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    if not await still_signed_in(console, session):
                        return
                    yield b": heartbeat\n\n"
                    if not announced and console.hub.ready.is_set():
                        announced = True  # Kafka was slow at first: the tail is up now
                        yield sse("ready", {"site_id": site_id})
                    continue
                if event.get("event") == "status":  # the live updates stopped or came back
                    yield sse("status", {"live": event["live"]})
                    continue
                yield sse(event.get("event", "alert"), labelled(event))

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},  # a proxy must not hold the stream back
    )


async def wait_ready(console: Console) -> bool:
    """Until the tail's start positions are fixed (True), or False after a while: a slow
    Kafka keeps the stream open, ``ready`` comes with a later heartbeat."""
    deadline = asyncio.get_running_loop().time() + READY_WAIT_S
    while not console.hub.ready.is_set():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def still_signed_in(console: Console, session: sessions.Session) -> bool:
    try:
        raw = await console.ctx.services.redis.get(sessions.redis_key(session.id))
        return raw is not None and await principal_of(console.ctx, session.token_sha256) is not None
    except Exception:  # noqa: BLE001 - a store away ends nothing; the next check decides
        return True


# -- alerts ------------------------------------------------------------------------------------


async def messages_or_none(
    console: Console,
    principal: Principal,
    *,
    q: str | None = None,
    lamp: str | None = None,
    site: str | None = None,
    kind: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = PAGE,
    cursor: str | None = None,
    secondary: bool = False,
) -> tuple[list[Message], str | None, str | None]:
    """The messages search as the API runs it: (messages, next cursor, None), or (nothing,
    None, why) when Elasticsearch is away, so that the rest of the page still shows. Where the
    messages are not the page's subject (``secondary``), the wait is the shorter
    ``api.secondary_timeout_s``."""
    search = messages_api.search(
        console.ctx, principal, q, lamp, site, kind, start, end, limit, cursor
    )
    wait_s = console.ctx.settings.api.secondary_timeout_s if secondary else None
    try:
        page = await asyncio.wait_for(search, wait_s)
    except ServiceUnavailableError as exc:
        return [], None, str(exc)
    except TimeoutError:
        return [], None, f"Elasticsearch unavailable: no answer within {wait_s} s"
    return page.items, page.next_cursor, None


def timeline(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alert's life as steps to show: a second notification is a re-notification."""
    shown = []
    for step in steps:
        name = step["step"]
        label = "renotified" if name == "notified" and step["occurrence"] > 1 else name
        shown.append({**step, "label": label})
    return shown


@router.get("/alerts/{alert_id}")
async def alert_page(
    request: Request, console: ConsoleDep, session: SessionDep, alert_id: AlertId
) -> Response:
    principal = session.principal
    row = await alerts_api.visible_alert(console.ctx, principal, alert_id)
    steps = await fetch_all(console.ctx, queries.STEPS, {"alert_id": alert_id})
    started: datetime = row["incident_started_at"]
    until = row["resolved_at"] or started + timedelta(minutes=15)
    found, _, why = await messages_or_none(
        console,
        principal,
        lamp=row["lamp_id"],
        start=started - timedelta(minutes=15),
        end=min(until, started + timedelta(hours=6)) + timedelta(minutes=5),
        secondary=True,
    )
    may_ack = principal.may_acknowledge and row["state"] == "raised"
    return console.render(
        request,
        "alert.html",
        alert=row,
        steps=timeline(steps),
        messages=found,
        messages_error=why,
        may_ack=may_ack,
    )


@router.post("/alerts/{alert_id}/ack")
async def acknowledge(
    request: Request, console: ConsoleDep, session: SessionDep, alert_id: AlertId
) -> Response:
    await checked_form(request, session.csrf)
    await alerts_api.record_acknowledgement(
        console.ctx, session.principal, alert_id, session.principal.name, via="console"
    )
    return redirect(request, f"/alerts/{alert_id}")


# -- lamps -------------------------------------------------------------------------------------


def hour_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def chart_bars(
    console: Console,
    activity: Activity,
    slots: list[datetime],
    figure: str,
    daily: bool,
) -> list[charts.Bar]:
    by_start = {hour_start(point.start): point for point in activity.points}
    zone = console.zone(activity.site_id)
    bars = []
    for start in slots:
        point = by_start.get(start)
        value = getattr(point, figure) if point is not None else None
        local = start.astimezone(zone)
        label = local.strftime("%d/%m") if daily else local.strftime("%H:%M")
        bars.append(charts.Bar(start, value, label))
    return bars


@router.get("/lamps/{lamp_id}")
async def lamp_page(
    request: Request, console: ConsoleDep, session: SessionDep, lamp_id: LampId
) -> Response:
    principal = session.principal
    lamp = await lamps_api.lamp(console.ctx, principal, lamp_id)
    now = datetime.now(UTC)
    end_hour = hour_start(now) + timedelta(hours=1)
    hours = [end_hour - timedelta(hours=24 - i) for i in range(24)]
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    days = [today - timedelta(days=6 - i) for i in range(7)]
    hourly = await lamps_api.activity(console.ctx, principal, lamp_id, hours[0], end_hour, "hour")
    daily = await lamps_api.activity(
        console.ctx, principal, lamp_id, days[0], today + timedelta(days=1), "day"
    )
    lang: str = request.state.lang
    figures = []
    for figure in FIGURES:
        title = i18n.translate(lang, f"figure.{figure}")
        empty = i18n.translate(lang, "chart.no_data")
        figures.append(
            {
                "name": figure,
                "title": title,
                "day": charts.bar_chart(
                    f"chart-{figure}-24h",
                    title,
                    chart_bars(console, hourly, hours, figure, daily=False),
                    empty=empty,
                ),
                "week": charts.bar_chart(
                    f"chart-{figure}-7d",
                    title,
                    chart_bars(console, daily, days, figure, daily=True),
                    empty=empty,
                ),
            }
        )
    recent = await alerts_api.alerts(
        console.ctx, principal, None, lamp_id, None, None, None, None, 20, None
    )
    found, _, why = await messages_or_none(
        console, principal, lamp=lamp_id, limit=20, secondary=True
    )
    night = await last_night(console, principal, lamp_id, now)
    return console.render(
        request,
        "lamp.html",
        lamp=lamp,
        figures=figures,
        live=hourly.live,
        alerts=recent.items,
        messages=found,
        messages_error=why,
        night=night,
    )


NIGHT_FIGURES = (
    "night_of",
    "covered_minutes",
    "minutes_in_bed",
    "minutes_out_of_bed",
    "bed_exits",
    "bathroom_visits",
    "room_exits",
    "restlessness_per_hour",
    "longest_still_minutes",
    "latest_return_to_bed_local",
)


async def last_night(
    console: Console, principal: Principal, lamp_id: str, now: datetime
) -> dict[str, Any] | None:
    """The lamp's latest night summary, through the nights API's own query; None when there
    is none (or this checkout's database has no night summaries yet)."""
    nights_query = getattr(queries, "lamp_nights_query", None)
    if nights_query is None:
        return None
    today = now.date()
    query, params = nights_query(principal, lamp_id, today - timedelta(days=3), today)
    try:
        rows = await fetch_all(console.ctx, query, params)
    except psycopg.errors.UndefinedTable:
        return None
    if not rows:
        return None
    return {name: rows[-1][name] for name in NIGHT_FIGURES if name in rows[-1]}


# -- search and history ------------------------------------------------------------------------


def text_param(request: Request, name: str, pattern: str | None = None) -> str | None:
    """A filter of a GET form: empty is "any"; a value must match the API's own pattern."""
    value = request.query_params.get(name, "").strip()
    if not value:
        return None
    if len(value) > 512 or (pattern is not None and not re.match(pattern, value)):
        raise HTTPException(422, f"{name}: not a valid value")
    return value


def time_param(request: Request, name: str) -> datetime | None:
    value = text_param(request, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise HTTPException(422, f"{name}: an ISO 8601 date-time is expected") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def next_link(request: Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    params = dict(request.query_params)
    params["cursor"] = cursor
    from urllib.parse import urlencode

    return f"{request.url.path}?{urlencode(params)}"


@router.get("/messages")
async def messages_page(request: Request, console: ConsoleDep, session: SessionDep) -> Response:
    site = text_param(request, "site", SITE_ID)
    if site is not None and not session.principal.may_see(site):
        raise HTTPException(404, f"no site {site}")
    found, next_cursor, why = await messages_or_none(
        console,
        session.principal,
        q=text_param(request, "q"),
        lamp=text_param(request, "lamp", LAMP_ID),
        site=site,
        kind=text_param(request, "type", TYPE),
        start=time_param(request, "from"),
        end=time_param(request, "to"),
        cursor=text_param(request, "cursor"),
    )
    names = ("q", "lamp", "site", "type", "from", "to")
    return console.render(
        request,
        "messages.html",
        values={name: request.query_params.get(name, "") for name in names},
        messages=found,
        next_url=next_link(request, next_cursor),
        messages_error=why,
    )


def alert_filters(request: Request, principal: Principal) -> dict[str, Any]:
    state = text_param(request, "state")
    if state is not None and state not in STATES:
        raise HTTPException(422, "state: one of raised, acknowledged, resolved")
    site = text_param(request, "site", SITE_ID)
    if site is not None and not principal.may_see(site):
        raise HTTPException(404, f"no site {site}")
    filters: dict[str, Any] = {
        "site": site,
        "lamp": text_param(request, "lamp", LAMP_ID),
        "kind": text_param(request, "kind", KIND),
        "state": state,
        "start": time_param(request, "from"),
        "end": time_param(request, "to"),
    }
    return filters


async def alerts_page_of(
    console: Console, principal: Principal, filters: dict[str, Any], limit: int, cursor: str | None
) -> Any:
    return await alerts_api.alerts(
        console.ctx,
        principal,
        filters["site"],
        filters["lamp"],
        filters["kind"],
        filters["state"],
        filters["start"],
        filters["end"],
        limit,
        cursor,
    )


@router.get("/alerts")
async def alerts_history(request: Request, console: ConsoleDep, session: SessionDep) -> Response:
    filters = alert_filters(request, session.principal)
    page = await alerts_page_of(
        console, session.principal, filters, PAGE, text_param(request, "cursor")
    )
    query = {
        k: v for k, v in request.query_params.items() if k in ("site", "lamp", "kind", "state")
    }
    query |= {k: request.query_params.get(k, "") for k in ("from", "to")}
    from urllib.parse import urlencode

    return console.render(
        request,
        "alerts.html",
        values=query,
        states=STATES,
        alerts=page.items,
        next_url=next_link(request, page.next_cursor),
        csv_url=f"{request.scope.get('root_path', '')}/alerts.csv?{urlencode(query)}",
    )


CSV_COLUMNS = (
    "alert_id",
    "kind",
    "severity",
    "state",
    "site_id",
    "lamp_id",
    "incident_started_at",
    "raised_at",
    "acknowledged_at",
    "acknowledged_by",
    "resolved_at",
    "details",
)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet will not run: a leading = + - @ (or tab, CR) is quoted away."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        text = value.astimezone(UTC).isoformat()
    elif isinstance(value, dict):
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    else:
        text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_line(values: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue().encode()


@router.get("/alerts.csv")
async def alerts_csv(request: Request, console: ConsoleDep, session: SessionDep) -> Response:
    filters = alert_filters(request, session.principal)
    principal = session.principal
    first = await alerts_page_of(console, principal, filters, 500, None)

    async def rows() -> AsyncIterator[bytes]:
        yield csv_line(list(CSV_COLUMNS))
        page = first
        while True:
            for alert in page.items:
                data = alert.model_dump()
                yield csv_line([csv_cell(data[column]) for column in CSV_COLUMNS])
            if page.next_cursor is None:
                return
            page = await alerts_page_of(console, principal, filters, 500, page.next_cursor)

    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="alerts.csv"'},
    )
