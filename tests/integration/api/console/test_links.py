"""One-time sign-in links against the real API process and Redis (the API tests' ``api_run``):
a link signs a browser in once, into a session scoped to its token's sites; a used, expired,
unknown or revoked one signs nobody in; ``veilleuse token link`` prints one that works."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.console import links
from api.console.sessions import SESSION_COOKIE
from devtools.processes import veilleuse
from pipeline import clients
from tests.integration.api.conftest import SITE_A, SITE_B, ApiRun


@pytest.fixture(autouse=True)
def services(require) -> None:  # type: ignore[no-untyped-def]
    require("postgres", "kafka", "elasticsearch", "redis")


@pytest.fixture
def redis(api_run: ApiRun) -> Iterator[Any]:
    client = clients.redis(api_run.settings)
    try:
        yield client
    finally:
        client.close()


def link_of(api_run: ApiRun, redis: Any, name: str, ttl_s: float = 60) -> str:
    conninfo = api_run.settings.postgres.conninfo()
    return links.store_for_token_name(conninfo, redis, name, ttl_s)


def browser(api_run: ApiRun) -> httpx.Client:
    return httpx.Client(base_url=api_run.url, timeout=15, follow_redirects=False)


def assert_refused(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert 'data-testid="sign-in-error"' in answer.text
    assert 'data-testid="sign-in-form"' in answer.text
    assert not any(
        h.startswith(SESSION_COOKIE + "=") for h in answer.headers.get_list("set-cookie")
    )


def test_a_link_signs_in_once_into_its_tokens_sites(api_run: ApiRun, redis: Any) -> None:
    code = link_of(api_run, redis, "staff_a")
    stored_ttl = redis.ttl(links.redis_key(code))
    assert 55 <= stored_ttl <= 60, stored_ttl
    with browser(api_run) as first:
        answer = first.get(f"/console/sign-in/link/{code}")
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == f"/console/sites/{SITE_A}"
        (cookie,) = [
            h for h in answer.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "=")
        ]
        flags = cookie.lower()
        assert "httponly" in flags and "samesite=strict" in flags and "path=/console" in flags
        # The code is gone from Redis the moment it was used.
        assert redis.exists(links.redis_key(code)) == 0
        board = first.get(f"/console/sites/{SITE_A}")
        assert board.status_code == 200
        assert 'data-testid="open-alerts"' in board.text
        assert 'name="csrf_token"' in board.text  # a normal session: its forms carry CSRF
        # Scoped to the token's sites: site B is not found, on pages and on the stream.
        assert first.get(f"/console/sites/{SITE_B}").status_code == 404
        assert first.get(f"/console/sites/{SITE_B}/events").status_code in (403, 404)
    with browser(api_run) as second:
        assert_refused(second.get(f"/console/sign-in/link/{code}"))
        assert second.get(f"/console/sites/{SITE_A}").status_code == 303  # to the sign-in form


def test_a_support_link_lands_on_the_site_list(api_run: ApiRun, redis: Any) -> None:
    code = link_of(api_run, redis, "support")
    with browser(api_run) as client:
        answer = client.get(f"/console/sign-in/link/{code}")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/sites"
        assert client.get("/console/sites").status_code == 200


def test_an_expired_link_signs_nobody_in(api_run: ApiRun, redis: Any) -> None:
    code = link_of(api_run, redis, "staff_a", ttl_s=1)
    time.sleep(2.2)
    with browser(api_run) as client:
        assert_refused(client.get(f"/console/sign-in/link/{code}"))


def test_an_unknown_or_malformed_link_signs_nobody_in(api_run: ApiRun) -> None:
    with browser(api_run) as client:
        assert_refused(client.get(f"/console/sign-in/link/{links.new_code()}"))
        assert_refused(client.get("/console/sign-in/link/short"))


def test_a_link_of_a_token_revoked_since_signs_nobody_in(api_run: ApiRun, redis: Any) -> None:
    from api.tokens import Principal, TokenError, create_token, digest, revoke_token

    conninfo = api_run.settings.postgres.conninfo()
    token = create_token(conninfo, "link-revoked", "staff", (SITE_A,))
    code = links.store(redis, digest(token), Principal("link-revoked", "staff", (SITE_A,)), 60)
    assert revoke_token(conninfo, "link-revoked")
    with browser(api_run) as client:
        assert_refused(client.get(f"/console/sign-in/link/{code}"))
    with pytest.raises(TokenError):
        link_of(api_run, redis, "link-revoked")


def test_the_token_link_command_prints_a_working_link(api_run: ApiRun) -> None:
    done = subprocess.run(
        veilleuse("token", "link", "staff_b"),
        env={**os.environ, **api_run.env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith(f"{api_run.url}/console/sign-in/link/"), url
    with browser(api_run) as client:
        answer = client.get(url.removeprefix(api_run.url))
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/console/sites/{SITE_B}"
    unknown = subprocess.run(
        veilleuse("token", "link", "nobody"),
        env={**os.environ, **api_run.env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert unknown.returncode == 1
    assert "no live token 'nobody'" in unknown.stderr
