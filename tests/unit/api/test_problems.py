"""Every error of the API is an RFC 9457 problem detail (``application/problem+json``), and the
OpenAPI document says so: the handlers on a small app whose routes fail in every way the API's
can, and the real app's answers that need no service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI, HTTPException, Query
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field

from api import problems
from api.app import create_app
from api.models import Problem, ValidationProblem
from api.queries import BadCursorError
from api.services import ServiceUnavailableError
from pipeline.settings import Settings

PROBLEM_KEYS = {"type", "title", "status", "detail"}


class Item(BaseModel):
    name: str = Field(min_length=1)
    sites: list[Annotated[str, Field(pattern=r"^[a-z-]+$")]] = []


def failing_app() -> FastAPI:
    app = FastAPI()
    problems.install(app)

    @app.get("/kafka")
    async def kafka() -> None:
        raise ServiceUnavailableError("Kafka unavailable: not reachable within 5 s")

    @app.get("/postgres")
    async def postgres() -> None:
        raise psycopg.OperationalError("connection refused")

    @app.get("/pool")
    async def pool() -> None:
        raise PoolTimeout("couldn't get a connection after 5.00 sec")

    @app.get("/cursor")
    async def cursor() -> None:
        raise BadCursorError("cursor: not one this API handed out")

    @app.get("/range")
    async def bad_range() -> None:
        raise HTTPException(400, "from must be before to")

    @app.get("/token")
    async def token() -> None:
        raise HTTPException(
            401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("the internals of a bug")

    @app.post("/items")
    async def items(item: Item, limit: Annotated[int, Query(ge=1)] = 10) -> dict[str, Any]:
        return {"name": item.name, "limit": limit}

    return app


@pytest.fixture
async def failing() -> AsyncIterator[httpx.AsyncClient]:
    # The app's exception after a 500 is re-raised by Starlette (for the logs): the answer is
    # what a client gets.
    transport = httpx.ASGITransport(app=failing_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


@pytest.fixture
async def real() -> AsyncIterator[httpx.AsyncClient]:
    """The real app without its lifespan: nothing connects, so only answers that need no
    service (no token, no route, a wrong method, an unknown parameter)."""
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


def a_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    model = ValidationProblem if status == 422 else Problem
    model.model_validate(body)
    assert body["status"] == status
    return body


@pytest.mark.parametrize(
    ("path", "status", "type_", "title", "detail"),
    [
        ("/kafka", 503, problems.SERVICE_UNAVAILABLE, "Service unavailable", "Kafka unavailable"),
        ("/postgres", 503, problems.SERVICE_UNAVAILABLE, "Service unavailable", "PostgreSQL"),
        ("/pool", 503, problems.SERVICE_UNAVAILABLE, "Service unavailable", "PostgreSQL"),
        ("/cursor", 400, problems.INVALID_CURSOR, "Invalid cursor", "cursor: not one"),
        ("/range", 400, "about:blank", "Bad Request", "from must be before to"),
        ("/token", 401, "about:blank", "Unauthorized", "a bearer token is required"),
        ("/bug", 500, "about:blank", "Internal Server Error", "unexpected error"),
        ("/nowhere", 404, "about:blank", "Not Found", "no route /nowhere"),
    ],
)
async def test_each_failure_is_a_problem_of_its_type(
    failing: httpx.AsyncClient, path: str, status: int, type_: str, title: str, detail: str
) -> None:
    body = a_problem(await failing.get(path), status)
    assert set(body) == PROBLEM_KEYS
    assert (body["type"], body["title"]) == (type_, title)
    assert detail in body["detail"]


async def test_a_server_error_shows_no_internals(failing: httpx.AsyncClient) -> None:
    body = a_problem(await failing.get("/bug"), 500)
    assert "internals" not in body["detail"]


async def test_headers_of_the_error_are_kept(failing: httpx.AsyncClient) -> None:
    response = await failing.get("/token")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_invalid_inputs_are_listed_with_where_they_are(failing: httpx.AsyncClient) -> None:
    response = await failing.post(
        "/items", params={"limit": 0}, json={"name": "", "sites": ["ok", "NOT/OK"]}
    )
    body = a_problem(response, 422)
    assert (body["type"], body["title"]) == (problems.INVALID_INPUT, "Invalid input")
    where = {(e["location"], e.get("parameter"), e.get("pointer")): e for e in body["errors"]}
    assert set(where) == {
        ("query", "limit", None),
        ("body", None, "#/name"),
        ("body", None, "#/sites/1"),
    }
    assert where["query", "limit", None]["type"] == "greater_than_equal"
    assert "at least 1 character" in where["body", None, "#/name"]["detail"]
    assert "query.limit: " in body["detail"] and "body.sites.1: " in body["detail"]


async def test_a_body_that_is_not_json_points_at_the_whole_body(
    failing: httpx.AsyncClient,
) -> None:
    response = await failing.post(
        "/items", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    (error,) = a_problem(response, 422)["errors"]
    assert (error["location"], error["pointer"], error["type"]) == ("body", "#", "json_invalid")
    assert error["detail"].startswith("JSON decode error")


def test_a_body_pointer_escapes_per_rfc_6901() -> None:
    error = {"loc": ("body", "a/b", "~c", 0), "msg": "bad", "type": "value_error"}
    assert problems.invalid_input(error).pointer == "#/a~1b/~0c/0"


async def test_the_real_app_answers_problems(real: httpx.AsyncClient) -> None:
    unauthorized = a_problem(await real.get("/lamps"), 401)
    assert unauthorized["type"] == "about:blank"
    assert a_problem(await real.get("/nowhere"), 404)["detail"] == "no route /nowhere"
    wrong_method = await real.put("/tokens")
    a_problem(wrong_method, 405)
    assert wrong_method.headers["allow"] == "GET, POST"  # both routes of the path
    unknown = a_problem(await real.get("/alerts", params={"lamp_id": "L-1"}), 422)
    (error,) = unknown["errors"]
    assert (error["location"], error["parameter"], error["type"]) == (
        "query",
        "lamp_id",
        "extra_forbidden",
    )


def test_the_openapi_document_declares_every_error_as_a_problem() -> None:
    spec = create_app(Settings()).openapi()
    declared = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status[0] not in "45" or (path, status) == ("/readyz", "503"):
                    continue  # /readyz's 503 is its readiness report, not an error
                assert list(response["content"]) == ["application/problem+json"], (path, method)
                schema = response["content"]["application/problem+json"]["schema"]
                model = "ValidationProblem" if status == "422" else "Problem"
                assert schema == {"$ref": f"#/components/schemas/{model}"}, (path, method, status)
                declared += 1
            if path not in ("/healthz", "/readyz", "/metrics"):
                assert {"401", "422", "503"} <= set(operation["responses"]), (path, method)
    assert declared >= 50
    schemas = spec["components"]["schemas"]
    assert set(schemas["Problem"]["required"]) == PROBLEM_KEYS
    assert set(schemas["ValidationProblem"]["required"]) == PROBLEM_KEYS | {"errors"}
    assert "HTTPValidationError" not in schemas  # FastAPI's own 422 shape is never answered
