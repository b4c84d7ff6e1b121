"""One-time sign-in links: ``/console/sign-in/link/{code}`` signs a browser in once.

``veilleuse token link NAME`` and ``veilleuse demo`` hand one out so that nobody pastes a token
into a form. The code is random (256 bits); Redis holds, under its SHA-256 and for
``api.console_link_ttl_s``, the token it stands for (its SHA-256 and principal, as a session
does, never the token). The first use takes it with GETDEL, atomically: two browsers racing on
one link get one session between them. The token is re-checked at that moment through the API's
own lookup, so a link of a revoked token signs nobody in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Annotated, Any

import orjson
import psycopg
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from api.console import i18n
from api.console.pages import ConsoleDep, sign_in_form, start_session
from api.deps import principal_of
from api.services import ServiceUnavailableError
from api.tokens import Principal, TokenError
from pipeline.settings import ApiSettings

KEY_PREFIX = "veilleuse:console:link:"
PATH = "/sign-in/link/"
# What new_code hands out: 43 URL-safe characters; anything else is not looked up.
CODE = r"^[A-Za-z0-9_-]{20,100}$"
LIVE_BY_NAME = (
    "SELECT token_sha256, role, sites FROM api_tokens WHERE name = %s AND revoked_at IS NULL"
)

router = APIRouter()


def new_code() -> str:
    return secrets.token_urlsafe(32)


def redis_key(code: str) -> str:
    return KEY_PREFIX + hashlib.sha256(code.encode()).hexdigest()


def encode(token_sha256: bytes, principal: Principal) -> bytes:
    return orjson.dumps(
        {
            "token_sha256": token_sha256.hex(),
            "name": principal.name,
            "role": principal.role,
            "sites": list(principal.sites),
        }
    )


def decode(raw: bytes) -> tuple[bytes, Principal]:
    data: dict[str, Any] = orjson.loads(raw)
    principal = Principal(data["name"], data["role"], tuple(data["sites"]))
    return bytes.fromhex(data["token_sha256"]), principal


def ttl_of(ttl_s: float) -> int:
    return max(1, round(ttl_s))


def public_url(settings: ApiSettings) -> str:
    """Where users reach the API: ``api.public_url``, else http://host:port."""
    return settings.public_url or f"http://{settings.host}:{settings.port}"


def url_of(base_url: str, code: str) -> str:
    return f"{base_url.rstrip('/')}/console{PATH}{code}"


def store(redis: Any, token_sha256: bytes, principal: Principal, ttl_s: float) -> str:
    """A new code for this token, kept ``ttl_s`` by a synchronous Redis client (the CLI's and
    the demo's: they run outside the API process)."""
    code = new_code()
    redis.set(redis_key(code), encode(token_sha256, principal), ex=ttl_of(ttl_s))
    return code


def store_for_token_name(conninfo: str, redis: Any, name: str, ttl_s: float) -> str:
    """A code for the live token ``name``, found by name: the operator needs no plaintext."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(LIVE_BY_NAME, (name,)).fetchone()
    if row is None:
        raise TokenError(f"no live token {name!r}")
    return store(redis, bytes(row[0]), Principal(name, row[1], tuple(row[2])), ttl_s)


async def take(redis: Any, code: str) -> tuple[bytes, Principal] | None:
    """The code's token, removed in the same step (None: used, expired or never issued)."""
    raw = await redis.getdel(redis_key(code))
    return None if raw is None else decode(raw)


@router.get(PATH + "{code}")
async def sign_in_with_link(
    request: Request, console: ConsoleDep, code: Annotated[str, Path()]
) -> Response:
    found = None
    if re.fullmatch(CODE, code):
        try:
            found = await take(console.ctx.services.redis, code)
        except Exception as exc:
            raise ServiceUnavailableError(f"Redis unavailable: {exc}") from exc
    principal = None if found is None else await principal_of(console.ctx, found[0])
    if found is None or principal is None:
        refused = i18n.translate(request.state.lang, "sign_in.link_refused")
        return sign_in_form(request, console, 401, refused)
    board = principal.sites[0] if principal.sites and not principal.all_sites else None
    to = f"/sites/{board}" if board else "/sites"
    return await start_session(request, console, found[0], principal, to)
