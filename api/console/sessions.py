"""The console's sessions and CSRF tokens.

A session is an opaque random id in the ``veilleuse_console`` cookie; what it stands for (the
token's SHA-256, name, role, sites and the session's CSRF token) is in Redis under the id's
SHA-256, with the session's lifetime as TTL, so that a stolen Redis dump holds no cookie and
sign-out or expiry ends it everywhere. The token itself is re-checked through the API's own
lookup (``api.deps.principal_of``) on every request: a revoked token stops working at once
(within ``api.token_cache_s``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response

from api.tokens import Principal

SESSION_COOKIE = "veilleuse_console"
CSRF_COOKIE = "veilleuse_csrf"  # the sign-in form's double-submit cookie (no session yet)
PATH = "/console"
KEY_PREFIX = "veilleuse:console:session:"


@dataclass(frozen=True)
class Session:
    id: str
    token_sha256: bytes
    principal: Principal
    csrf: str

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "token_sha256": self.token_sha256.hex(),
                "name": self.principal.name,
                "role": self.principal.role,
                "sites": list(self.principal.sites),
                "csrf": self.csrf,
            }
        )

    @classmethod
    def decode(cls, session_id: str, raw: bytes) -> Session:
        data: dict[str, Any] = orjson.loads(raw)
        principal = Principal(data["name"], data["role"], tuple(data["sites"]))
        return cls(session_id, bytes.fromhex(data["token_sha256"]), principal, data["csrf"])


def redis_key(session_id: str) -> str:
    return KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def new_session(token_sha256: bytes, principal: Principal) -> Session:
    return Session(secrets.token_urlsafe(32), token_sha256, principal, secrets.token_urlsafe(32))


def plausible_id(value: str | None) -> bool:
    """Only what :func:`new_session` hands out is looked up (no Redis call for junk)."""
    return value is not None and 20 <= len(value) <= 100 and value.isascii()


def is_https(request: Request) -> bool:
    """The request reached us over TLS: directly, or says so through the proxy's header
    (uvicorn runs with ``proxy_headers``, which already rewrites the scheme for trusted
    proxies; the header is read too for a proxy uvicorn was not told to trust)."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_cookie(
    response: Response,
    request: Request,
    name: str,
    value: str,
    *,
    max_age: int | None,
    secure_setting: bool,
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=secure_setting or is_https(request),
    )


def same_token(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def same_origin(request: Request) -> bool:
    """Origin (or, without it, Referer) names this server, when the browser sent one."""
    claimed = request.headers.get("origin")
    if claimed is None or claimed == "null":
        referer = request.headers.get("referer")
        if referer is None:
            return claimed is None  # "null" (a sandboxed or privacy-stripped origin): refused
        claimed = referer
    parts = urlsplit(claimed)
    host = request.headers.get("host", "")
    return parts.netloc == host and parts.scheme in ("http", "https")
