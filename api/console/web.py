"""The console's sub-application: templates, security headers, language, sessions, errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import psycopg
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agents.rules import rule_settings
from agents.rules.inactivity import site_zone
from agents.rules.lamp_offline import LampOfflineSettings
from api import queries
from api.console import i18n, sessions
from api.console.live import AlertHub
from api.deps import Context, fetch_all, principal_of
from api.queries import BadCursorError
from api.services import ServiceUnavailableError

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
MAX_FORM_BYTES = 16 * 1024


class Translated(str):
    """A message already in the reader's language, shown as it is."""

    __slots__ = ()


class SignInRequiredError(Exception):
    """No valid session: pages send the browser to the sign-in form, the event stream 401s."""


class CsrfError(Exception):
    """A POST without this session's CSRF token, or from another origin."""


class SecurityHeaders:
    """Every answer of the console carries the CSP and its companions; pages, streams and
    exports are never cached (the static files may be). Also chooses the request's language
    and remembers an explicit ``?lang=`` in a cookie."""

    def __init__(self, app: ASGIApp, secure_setting: bool) -> None:
        self.app = app
        self.secure_setting = secure_setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        asked = request.query_params.get("lang")
        lang = i18n.choose(
            asked,
            request.cookies.get(i18n.LANG_COOKIE),
            request.headers.get("accept-language"),
        )
        scope.setdefault("state", {})["lang"] = lang
        static = "/static/" in scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
                if not static:
                    headers["Cache-Control"] = "no-store"
                if asked in i18n.LANGUAGES:
                    cookie = Response()
                    sessions.set_cookie(
                        cookie,
                        request,
                        i18n.LANG_COOKIE,
                        lang,
                        max_age=365 * 24 * 3600,
                        secure_setting=self.secure_setting,
                    )
                    headers.append("set-cookie", cookie.headers["set-cookie"])
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Console:
    """What the console's handlers share: the API's context, the templates, the live hub."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.hub = AlertHub(
            ctx.settings,
            fetch=lambda query, params: fetch_all(ctx, query, params),
            steps_query=queries.NEW_STEPS,
        )
        self.offline_after = timedelta(
            seconds=rule_settings(ctx.settings.rules, LampOfflineSettings).offline_after_s
        )
        self.templates = Environment(
            loader=PackageLoader("api.console", "templates"),
            autoescape=True,  # every page is HTML; data is never marked safe
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["json"] = pretty_json

    # -- rendering -----------------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        lang: str = request.state.lang
        session: sessions.Session | None = getattr(request.state, "session", None)

        def when(moment: datetime | None, site_id: str | None = None) -> str:
            return self.local_time(moment, site_id)

        page = self.templates.get_template(name).render(
            t=lambda key: i18n.translate(lang, key),
            kind=lambda value: labelled(lang, "kind", value),
            label=lambda prefix, value: labelled(lang, prefix, value),
            lang=lang,
            base=request.scope.get("root_path", ""),
            session=session,
            when=when,
            age=lambda moment: age(moment, lang),
            presence=lambda lamp: presence(lamp, datetime.now(UTC), self.offline_after),
            **({"request_path": request.url.path} | values),
        )
        return HTMLResponse(page, status_code=status)

    def zone(self, site_id: str | None) -> ZoneInfo:
        if site_id is None:
            return ZoneInfo("UTC")
        return site_zone(self.ctx.settings.detection, site_id)

    def local_time(self, moment: datetime | None, site_id: str | None) -> str:
        if moment is None:
            return "—"
        local = moment.astimezone(self.zone(site_id))
        return local.strftime("%Y-%m-%d %H:%M:%S %Z")

    # -- sessions ------------------------------------------------------------------------------

    async def session(self, request: Request) -> sessions.Session:
        """This request's live session, or :class:`SignInRequiredError`."""
        session_id = request.cookies.get(sessions.SESSION_COOKIE)
        if not sessions.plausible_id(session_id):
            raise SignInRequiredError
        assert session_id is not None  # noqa: S101 - plausible_id says so
        redis = self.ctx.services.redis
        try:
            raw = await redis.get(sessions.redis_key(session_id))
        except Exception as exc:
            raise ServiceUnavailableError(f"Redis unavailable: {exc}") from exc
        if raw is None:
            raise SignInRequiredError
        stored = sessions.Session.decode(session_id, raw)
        principal = await principal_of(self.ctx, stored.token_sha256)
        if principal is None:  # revoked since sign-in: the session ends with it
            await redis.delete(sessions.redis_key(session_id))
            raise SignInRequiredError
        session = sessions.Session(session_id, stored.token_sha256, principal, stored.csrf)
        request.state.session = session
        return session

    async def save(self, session: sessions.Session) -> None:
        ttl = max(1, round(self.ctx.settings.api.console_session_ttl_s))
        await self.ctx.services.redis.set(sessions.redis_key(session.id), session.encode(), ex=ttl)

    async def end(self, session: sessions.Session) -> None:
        await self.ctx.services.redis.delete(sessions.redis_key(session.id))


async def form_of(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value each), without python-multipart."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


async def checked_form(request: Request, expected: str | None) -> dict[str, str]:
    """The POST's form once its CSRF token and origin are this console's."""
    form = await form_of(request)
    if not sessions.same_origin(request) or not sessions.same_token(
        expected, form.get("csrf_token")
    ):
        raise CsrfError
    return form


def pretty_json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def labelled(lang: str, prefix: str, value: str) -> Markup:
    """A kind, severity, state or step in the reader's language; one the catalogue does not
    name (a kind from a newer rule) shows its own name as code, marked untranslated, rather
    than pass for a translation. Built with ``Markup.format``, which escapes its values."""
    if i18n.known(lang, prefix, value):
        return Markup("{}").format(i18n.label(lang, prefix, value))
    return Markup('<code class="raw" title="{}">{}</code>').format(
        i18n.translate(lang, "label.untranslated"), value
    )


@dataclass(frozen=True)
class Presence:
    """A lamp's state as the protocol defines it (rule 8): offline after ``offline_after_s``
    of silence, or while its offline alert is open (an offline status, its last will)."""

    online: bool
    silent: bool  # offline because nothing came for longer than the rule allows


def presence(lamp: Any, now: datetime, offline_after: timedelta) -> Presence:
    """``lamp`` as the lamps API gives it (``online``: no open ``lamp_offline`` alert;
    ``last_seen_at``: its last message). The stored ``online`` alone would call a lamp silent
    for a day online when no worker raised the alert (a lamp gone before the rule saw it)."""
    last = lamp.last_seen_at
    if last is None or now - last > offline_after:
        return Presence(online=False, silent=True)
    return Presence(online=bool(lamp.online), silent=False)


def age(moment: datetime | None, lang: str) -> str:
    if moment is None:
        return "—"
    minutes = max(0, int((datetime.now(UTC) - moment).total_seconds() // 60))
    if minutes < 120:
        return f"{minutes} {i18n.translate(lang, 'ago.minutes')}"
    if minutes < 48 * 60:
        return f"{minutes // 60} {i18n.translate(lang, 'ago.hours')}"
    return f"{minutes // 1440} {i18n.translate(lang, 'ago.days')}"


def install_errors(app: FastAPI, console: Console) -> None:
    def problem(request: Request, status: int, detail: str) -> HTMLResponse:
        lang = request.state.lang
        # A refusal names nothing asked for: "no alert b-open" would confirm what it hides.
        if status == 404:
            detail = i18n.translate(lang, "error.not_found")
        elif status == 403 and not isinstance(detail, Translated):
            detail = i18n.translate(lang, "error.forbidden")
        base = request.scope.get("root_path", "")
        return console.render(
            request,
            "problem.html",
            status=status,
            status_code=status,
            title=HTTPStatus(status).phrase,
            detail=str(detail),
            request_path=f"{base}/",
        )

    async def sign_in(request: Request, _: Exception) -> Response:
        if request.url.path.endswith("/events"):
            return PlainTextResponse("sign in first", status_code=401)
        base = request.scope.get("root_path", "")
        return RedirectResponse(f"{base}/sign-in", status_code=303)

    async def csrf(request: Request, _: Exception) -> Response:
        lang = request.state.lang
        return problem(request, 403, Translated(i18n.translate(lang, "error.csrf")))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for it only
        return problem(request, exc.status_code, str(exc.detail))

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it only
        if any(error.get("loc", ("",))[0] == "path" for error in exc.errors()):
            # An id that cannot exist is as unknown as one that does not.
            return problem(request, 404, i18n.translate(request.state.lang, "error.not_found"))
        details = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'][1:])}: {error['msg']}"
            for error in exc.errors()
        )
        return problem(request, 422, details)

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.warning("console: %s", exc)
        return problem(request, 503, i18n.translate(request.state.lang, "error.unavailable"))

    async def bad_cursor(request: Request, exc: Exception) -> Response:
        return problem(request, 400, str(exc))

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        SignInRequiredError: sign_in,
        CsrfError: csrf,
        StarletteHTTPException: http_error,
        RequestValidationError: invalid,
        ServiceUnavailableError: unavailable,
        psycopg.OperationalError: unavailable,
        BadCursorError: bad_cursor,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)


def static_files() -> StaticFiles:
    return StaticFiles(packages=[("api.console", "static")])
