"""API tokens (admin only): list, create, revoke."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import psycopg
from fastapi import HTTPException, Path, Response

from api import tokens
from api.deps import Caller, Ctx, resource_router
from api.models import NewToken, Problem, TokenListing, TokenRequest
from api.tokens import Principal

router = resource_router()


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
