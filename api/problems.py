"""The API's errors as RFC 9457 problem details (``application/problem+json``).

Every error answer goes through the handlers here, installed by :func:`install`: ``type`` (a
URI; ``about:blank`` when the status says it all), ``title``, ``status``, ``detail``, and for a
422 the ``errors`` list, one entry per invalid input. :func:`install` also rewrites the OpenAPI
document so that every declared error answer is ``application/problem+json`` with the
:class:`~api.models.Problem` schema, which is what the schemathesis run checks the answers
against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import fastapi.routing
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.models import InvalidInput, Problem, ValidationProblem
from api.queries import BadCursorError
from api.services import ServiceUnavailableError

PROBLEM_MEDIA_TYPE = "application/problem+json"
# The problem types of this API. Tag URIs (RFC 4151), as RFC 9457 suggests for types that are
# not meant to be fetched: docs/api.md describes each.
BLANK = "about:blank"
TYPE_PREFIX = "tag:veilleuse,2026:problems/"
INVALID_INPUT = TYPE_PREFIX + "invalid-input"
INVALID_CURSOR = TYPE_PREFIX + "invalid-cursor"
SERVICE_UNAVAILABLE = TYPE_PREFIX + "service-unavailable"
LOCATIONS = frozenset({"path", "query", "header", "cookie", "body"})


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem(
    status: int,
    detail: str,
    *,
    type_: str = BLANK,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProblemResponse:
    """An error answer; ``title`` defaults to the status' reason phrase (RFC 9457 asks it of
    ``about:blank``)."""
    body = Problem(
        type=type_, title=title or HTTPStatus(status).phrase, status=status, detail=detail
    )
    return ProblemResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _pointer(path: Sequence[Any]) -> str:
    """A JSON Pointer fragment (RFC 6901) to a place in the body."""
    tokens = (str(token).replace("~", "~0").replace("/", "~1") for token in path)
    return "#" + "".join(f"/{token}" for token in tokens)


def invalid_input(error: Mapping[str, Any]) -> InvalidInput:
    """One of FastAPI's (pydantic's) validation errors as an entry of ``errors``."""
    loc = tuple(error.get("loc") or ("body",))
    location = str(loc[0]) if str(loc[0]) in LOCATIONS else "body"
    kind = str(error.get("type", "value_error"))
    detail = str(error.get("msg", "invalid"))
    reason = (error.get("ctx") or {}).get("error")
    if kind == "json_invalid" and reason:
        detail = f"{detail}: {reason}"
    if location == "body":
        # A JSON syntax error's loc holds the character position, not a place in the body.
        where = () if kind == "json_invalid" else loc[1:]
        return InvalidInput(detail=detail, location="body", pointer=_pointer(where), type=kind)
    name = str(loc[1]) if len(loc) > 1 else None
    return InvalidInput(
        detail=detail,
        location=location,  # one of LOCATIONS, checked above
        parameter=name,
        type=kind,
    )


def validation_problem(errors: Sequence[Mapping[str, Any]]) -> ProblemResponse:
    entries = [invalid_input(error) for error in errors]
    words = "; ".join(
        f"{'.'.join(str(p) for p in error.get('loc', ()))}: {entry.detail}"
        for error, entry in zip(errors, entries, strict=True)
    )
    body = ValidationProblem(
        type=INVALID_INPUT,
        title="Invalid input",
        status=422,
        detail=words or "invalid input",
        errors=entries,
    )
    return ProblemResponse(body.model_dump(mode="json", exclude_none=True), status_code=422)


# -- the handlers -----------------------------------------------------------------------------


async def invalid(_: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this type only
    return validation_problem(exc.errors())


async def unavailable(_: Request, exc: Exception) -> ProblemResponse:
    return problem(503, str(exc), type_=SERVICE_UNAVAILABLE, title="Service unavailable")


async def postgres_down(_: Request, exc: Exception) -> ProblemResponse:
    return problem(
        503,
        f"PostgreSQL unavailable: {exc}",
        type_=SERVICE_UNAVAILABLE,
        title="Service unavailable",
    )


async def bad_cursor(_: Request, exc: Exception) -> ProblemResponse:
    return problem(400, str(exc), type_=INVALID_CURSOR, title="Invalid cursor")


async def http_error(request: Request, exc: Exception) -> ProblemResponse:
    """HTTPException (ours, and Starlette's 404 and 405), as ``about:blank``; a 405 lists
    every method of the path in ``Allow`` (Starlette names only the first route that
    matched the path)."""
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for this type only
    headers = dict(exc.headers or {})
    detail = str(exc.detail)
    if exc.status_code == 405:
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        headers["Allow"] = ", ".join(sorted(allowed_methods(request)))
        detail = f"{request.method} {request.url.path}: allowed are {headers['Allow']}"
    elif exc.status_code == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
        detail = f"no route {request.url.path}"
    return problem(exc.status_code, detail, headers=headers)


def allowed_methods(request: Request) -> set[str]:
    """Every method some route of the app serves on the request's path."""
    # FastAPI >= 0.160 wraps an included router in one route: its routes are listed apart.
    flatten = getattr(fastapi.routing, "iter_route_contexts", lambda routes: routes)
    methods: set[str] = set()
    for route in flatten(request.app.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods


async def internal_error(_: Request, exc: Exception) -> ProblemResponse:
    # Starlette re-raises the exception after this answer, so the server logs it (and Sentry
    # sees it): the answer needs no internals, and shows none.
    return problem(500, "unexpected error; it is logged")


def install(app: FastAPI) -> None:
    """Every error of ``app`` as a problem detail, and its OpenAPI document saying so."""
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ServiceUnavailableError, unavailable)
    app.add_exception_handler(psycopg.OperationalError, postgres_down)
    app.add_exception_handler(PoolTimeout, postgres_down)
    app.add_exception_handler(BadCursorError, bad_cursor)
    app.add_exception_handler(Exception, internal_error)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = as_problem_content(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way


PROBLEM_SCHEMAS = frozenset(
    f"#/components/schemas/{model.__name__}" for model in (Problem, ValidationProblem)
)


def as_problem_content(spec: dict[str, Any]) -> dict[str, Any]:
    """FastAPI declares every answer of a route with the route's media type
    (``application/json``): the error answers are ``application/problem+json``."""
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                declared = content.get("application/json", {}).get("schema", {})
                if status[:1] in ("4", "5") and declared.get("$ref") in PROBLEM_SCHEMAS:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return spec
