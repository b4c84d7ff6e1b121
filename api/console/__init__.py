"""The support console: server-rendered pages for support and care staff, served by the API
process under ``/console`` (docs/console.md)."""

from __future__ import annotations

from fastapi import FastAPI

from api.deps import Context


def create_console(ctx: Context) -> FastAPI:
    """The console as a sub-application sharing the API's context (its pools and clients)."""
    from api.console import links
    from api.console.pages import router
    from api.console.web import Console, SecurityHeaders, install_errors, static_files

    console = Console(ctx)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console
    install_errors(app, console)
    app.add_middleware(SecurityHeaders, secure_setting=ctx.settings.api.console_secure_cookies)
    app.mount("/static", static_files(), name="static")
    app.include_router(router)
    app.include_router(links.router)  # one-time sign-in links
    return app
