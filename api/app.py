"""The query API for support and care staff (``veilleuse api``): the app factory. See docs/api.md.

Reads PostgreSQL (lamps, activity, alerts and their life), Elasticsearch (every message) and,
for the hours still open, the detection workers' live state; writes acknowledgements to
``alerts.acks.v1`` (which closes the incident in the workers and stops the notifier's
reminders) and to the alert's life. Every route but the probes needs a bearer token.

Laid out as FastAPI's own template: the routes in api/routers/ (one router per resource), what
they depend on in api/deps.py (context, authentication, shared parameters), the factory here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_client import ProcessCollector

from api import problems
from api.console import create_console
from api.deps import Context, Metrics
from api.routers import alerts, lamps, messages, nights, probes, tokens
from api.services import Services
from pipeline.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["Metrics", "create_app", "run_api"]


def create_app(settings: Settings) -> FastAPI:
    ctx = Context(settings, Services(settings), Metrics())
    # The process's memory, CPU and file descriptors, as the other components serve them.
    ProcessCollector(registry=ctx.metrics.registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await ctx.services.open()
        try:
            yield
        finally:
            await ctx.services.close()

    app = FastAPI(
        title="Veilleuse query API",
        version="1",
        description="Lamps, activity, alerts and messages of the Veilleuse fall-detection "
        "pipeline, for support and care staff. Authenticate with `Authorization: Bearer <token>` "
        "(created by `veilleuse token create`).",
        lifespan=lifespan,
    )
    app.state.context = ctx
    problems.install(app)  # every error as RFC 9457 application/problem+json

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.monotonic()
        response = await call_next(request)
        path = getattr(request.scope.get("route"), "path", "unmatched")
        ctx.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        ctx.metrics.latency.labels(path).observe(time.monotonic() - started)
        return response

    app.include_router(probes.router)
    app.mount("/console", create_console(ctx))  # the support console, docs/console.md
    # In the order of the spec's paths, as before the split.
    for resource in (lamps, nights, alerts, messages, tokens):
        app.include_router(resource.router)
    return app


def run_api(settings: Settings) -> None:
    import uvicorn

    from pipeline.observability import configure_logging

    configure_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,  # our JSON logs, configured above
        access_log=False,  # requests are counted in /metrics; errors are logged
        proxy_headers=True,
        # The console's event streams never end by themselves: a stop waits this long for them.
        timeout_graceful_shutdown=5,
    )
