"""Bearer tokens of the query API (table ``api_tokens``, migration 0003).

A token is ``vl_`` + 43 URL-safe characters (256 random bits). Only its SHA-256 is stored; the
plaintext is shown once, by :func:`create_token`. Roles: ``support`` reads everything,
``staff`` reads and acknowledges the alerts of its own sites, ``admin`` manages tokens (and
reads everything).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import psycopg

from pipeline.errors import VeilleuseError

Role = Literal["support", "staff", "admin"]
ROLES: tuple[Role, ...] = ("support", "staff", "admin")
PREFIX = "vl_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
SITE_PATTERN = re.compile(r"^[a-z0-9-]{1,32}$")  # the lamp protocol's site_id


class TokenError(VeilleuseError):
    """A token could not be created or revoked."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name, role and (staff only) sites."""

    name: str
    role: Role
    sites: tuple[str, ...] = ()

    @property
    def all_sites(self) -> bool:
        return self.role != "staff"

    def may_see(self, site_id: str) -> bool:
        return self.all_sites or site_id in self.sites

    @property
    def may_acknowledge(self) -> bool:
        return self.role in ("staff", "admin")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: str
    sites: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def looks_like_token(token: str) -> bool:
    return token.startswith(PREFIX) and 20 <= len(token) <= 100


def validate(name: str, role: str, sites: Sequence[str]) -> None:
    if not NAME_PATTERN.match(name):
        raise TokenError(f"token name {name!r}: 1-64 of letters, digits and _.@-")
    if role not in ROLES:
        raise TokenError(f"role {role!r}: one of {', '.join(ROLES)}")
    for site in sites:
        if not SITE_PATTERN.match(site):
            raise TokenError(f"site {site!r}: [a-z0-9-]{{1,32}}")
    if role == "staff" and not sites:
        raise TokenError("a staff token needs at least one --site")
    if role != "staff" and sites:
        raise TokenError(f"a {role} token sees every site: --site is for staff tokens")


INSERT = "INSERT INTO api_tokens (name, role, sites, token_sha256) VALUES (%s, %s, %s, %s)"
REVOKE = "UPDATE api_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL"
LIST = "SELECT name, role, sites, created_at, revoked_at FROM api_tokens ORDER BY name"
LIST_ONE = "SELECT name, role, sites, created_at, revoked_at FROM api_tokens WHERE name = %s"
LOOKUP = "SELECT name, role, sites FROM api_tokens WHERE token_sha256 = %s AND revoked_at IS NULL"


def new_token(name: str, role: str, sites: Sequence[str]) -> tuple[str, tuple[object, ...]]:
    """A fresh token and the parameters of :data:`INSERT` that record its hash."""
    validate(name, role, sites)
    token = PREFIX + secrets.token_urlsafe(32)
    return token, (name, role, list(sites), digest(token))


def exists_error(name: str) -> TokenError:
    return TokenError(f"a token named {name!r} exists (revoked or not)")


def create_token(conninfo: str, name: str, role: str, sites: Sequence[str] = ()) -> str:
    """Create the token ``name`` and return its plaintext (shown once, never stored)."""
    token, params = new_token(name, role, sites)
    with psycopg.connect(conninfo) as conn:
        try:
            conn.execute(INSERT, params)
        except psycopg.errors.UniqueViolation as exc:
            raise exists_error(name) from exc
    return token


def revoke_token(conninfo: str, name: str) -> bool:
    """Revoke ``name``; False when there is no such live token."""
    with psycopg.connect(conninfo) as conn:
        return conn.execute(REVOKE, (name,)).rowcount == 1


def token_info(row: Sequence[object]) -> TokenInfo:
    return TokenInfo(row[0], row[1], tuple(row[2]), row[3], row[4])  # type: ignore[arg-type]


def list_tokens(conninfo: str) -> list[TokenInfo]:
    with psycopg.connect(conninfo) as conn:
        return [token_info(row) for row in conn.execute(LIST).fetchall()]
