"""The console's answers that need no service, through the real API app: the security headers,
the sign-in form's CSRF double submit and origin check, the cookies' flags, the redirects of a
browser without a session, and the CSV export's formula guard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from starlette.requests import Request

from api.app import create_app
from api.console.pages import csv_cell, csv_line
from api.console.sessions import CSRF_COOKIE, SESSION_COOKIE, same_origin
from api.console.web import CSP
from pipeline.settings import ApiSettings, Settings

BASE = "http://console.test"


def client_of(settings: Settings) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(settings))
    return httpx.AsyncClient(transport=transport, base_url=BASE)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(Settings()) as client:
        yield client


def cookie_flags(response: httpx.Response, name: str) -> dict[str, str | bool]:
    for header in response.headers.get_list("set-cookie"):
        first, *attributes = [part.strip() for part in header.split(";")]
        if first.startswith(name + "="):
            flags: dict[str, str | bool] = {"value": first.split("=", 1)[1]}
            for attribute in attributes:
                key, _, value = attribute.partition("=")
                flags[key.lower()] = value or True
            return flags
    raise AssertionError(f"no {name} cookie in {response.headers.get_list('set-cookie')}")


async def signin_form(client: httpx.AsyncClient) -> str:
    page = await client.get("/console/sign-in")
    token = cookie_flags(page, CSRF_COOKIE)["value"]
    assert isinstance(token, str) and f'value="{token}"' in page.text
    return token


@pytest.mark.parametrize(
    "path", ["/console/sign-in", "/console/", "/console/sites", "/console/no-such-page"]
)
async def test_every_answer_carries_the_security_headers(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.headers["content-security-policy"] == CSP
    assert "frame-ancestors 'none'" in CSP and "script-src 'self'" in CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["cache-control"] == "no-store"


async def test_static_files_are_served_by_the_process_with_the_same_policy(
    client: httpx.AsyncClient,
) -> None:
    for name, kind in (("console.js", "javascript"), ("console.css", "text/css")):
        response = await client.get(f"/console/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert response.headers["content-security-policy"] == CSP


async def test_pages_have_no_inline_script_or_style(client: httpx.AsyncClient) -> None:
    page = (await client.get("/console/sign-in")).text
    assert "<script>" not in page and "<script " not in page.replace(
        '<script src="/console/static/console.js" defer>', ""
    )
    assert "style=" not in page and "<style" not in page
    assert '<html lang="' in page and 'href="#main"' in page


async def test_without_a_session_pages_send_to_sign_in_and_the_stream_401s(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/console/", "/console/sites/site-a", "/console/alerts/a-1", "/console/alerts"):
        response = await client.get(path)
        assert (response.status_code, response.headers["location"]) == (303, "/console/sign-in")
    # A cookie that this console never handed out is not even looked up.
    client.cookies.set(SESSION_COOKIE, "forged", path="/console")
    assert (await client.get("/console/sites/site-a")).status_code == 303
    assert (await client.get("/console/sites/site-a/events")).status_code == 401


async def test_the_sign_in_csrf_cookie_is_strict(client: httpx.AsyncClient) -> None:
    flags = cookie_flags(await client.get("/console/sign-in"), CSRF_COOKIE)
    assert flags["httponly"] is True and flags["samesite"] == "strict"
    assert flags["path"] == "/console" and "secure" not in flags


async def test_cookies_are_secure_behind_tls(client: httpx.AsyncClient) -> None:
    proxied = await client.get("/console/sign-in", headers={"X-Forwarded-Proto": "https"})
    assert cookie_flags(proxied, CSRF_COOKIE)["secure"] is True
    settings = Settings(api=ApiSettings(console_secure_cookies=True))
    async with client_of(settings) as forced:
        assert cookie_flags(await forced.get("/console/sign-in"), CSRF_COOKIE)["secure"] is True


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        ({"token": "vl_x"}, {}),  # no CSRF token
        ({"token": "vl_x", "csrf_token": "not-the-cookie"}, {}),
        ({"token": "vl_x", "csrf_token": "{cookie}"}, {"Origin": "https://evil.example"}),
        ({"token": "vl_x", "csrf_token": "{cookie}"}, {"Referer": "https://evil.example/x"}),
        ({"token": "vl_x", "csrf_token": "{cookie}"}, {"Origin": "null"}),
    ],
)
async def test_a_sign_in_without_its_csrf_token_or_from_elsewhere_is_refused(
    client: httpx.AsyncClient, form: dict[str, str], headers: dict[str, str]
) -> None:
    token = await signin_form(client)
    body = {k: v.replace("{cookie}", token) for k, v in form.items()}
    response = await client.post("/console/sign-in", data=body, headers=headers)
    assert response.status_code == 403
    assert 'data-testid="problem"' in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")


async def test_a_sign_in_with_junk_shows_the_form_again_401(client: httpx.AsyncClient) -> None:
    token = await signin_form(client)
    response = await client.post(
        "/console/sign-in",
        data={"token": "<script>alert(1)</script>", "csrf_token": token},
        headers={"Origin": BASE, "Accept-Language": "en"},
    )
    assert response.status_code == 401
    assert 'data-testid="sign-in-error"' in response.text and "<script>alert" not in response.text


async def test_a_post_without_a_session_goes_to_sign_in(client: httpx.AsyncClient) -> None:
    for path in ("/console/sign-out", "/console/alerts/a-1/ack"):
        response = await client.post(path, data={"csrf_token": "x"})
        assert response.status_code == 303


async def test_language_from_the_query_is_remembered(client: httpx.AsyncClient) -> None:
    response = await client.get("/console/sign-in?lang=en", headers={"Accept-Language": "fr"})
    assert '<html lang="en">' in response.text
    assert cookie_flags(response, "veilleuse_lang")["value"] == "en"
    again = await client.get("/console/sign-in", headers={"Accept-Language": "fr"})
    assert '<html lang="en">' in again.text
    assert "Sign in" in again.text


async def test_french_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/console/sign-in", headers={"Accept-Language": "de"})
    assert '<html lang="fr">' in response.text and "Connexion" in response.text


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("x")', '\'=HYPERLINK("x")'),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("fall", "fall"),
        (None, ""),
        (datetime(2026, 12, 2, 13, tzinfo=UTC), "2026-12-02T13:00:00+00:00"),
        ({"b": "=x", "a": 1}, '{"a":1,"b":"=x"}'),
    ],
)
def test_csv_cells_cannot_be_formulas(value: object, cell: str) -> None:
    assert csv_cell(value) == cell


def test_csv_lines_quote_what_needs_it() -> None:
    assert csv_line(["a,b", 'say "hi"', "x"]) == b'"a,b","say ""hi""",x\r\n'


@pytest.mark.parametrize(
    ("headers", "same"),
    [
        ({}, True),
        ({"origin": BASE}, True),
        ({"origin": "https://console.test"}, True),  # behind a TLS proxy
        ({"origin": "http://other.test"}, False),
        ({"origin": "null"}, False),
        ({"referer": f"{BASE}/console/sign-in"}, True),
        ({"referer": "http://console.test.evil/x"}, False),
    ],
)
def test_same_origin(headers: dict[str, str], same: bool) -> None:
    raw = [(b"host", b"console.test")] + [(k.encode(), v.encode()) for k, v in headers.items()]
    request = Request({"type": "http", "headers": raw, "scheme": "http", "path": "/"})
    assert same_origin(request) is same
