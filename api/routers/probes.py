"""The probes: liveness, readiness, and the Prometheus metrics. No token needed."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api.deps import Ctx
from api.models import Readiness

router = APIRouter(tags=["probes"])


@router.get("/healthz", responses={200: {"description": "The process runs."}})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency does not answer."}},
)
async def readyz(ctx: Ctx) -> JSONResponse:
    checks = await ctx.services.checks()
    ready = all(check.ok for check in checks.values())
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
async def prometheus(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
