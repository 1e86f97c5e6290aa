"""The console's app: pages, static files, security headers; no store, and no broker but for
its one write, replaying a dead letter (`console/operations_routes.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from console import (
    finance_routes,
    formats,
    indicators_routes,
    operations_routes,
    pages,
    partners_routes,
)
from console.clients import Refused, ServiceClients
from console.sessions import Sessions
from console.signin_limit import SigninLimit
from shared.http import NO_TELEMETRY, BodyLimit
from shared.settings import Settings

HERE = Path(__file__).parent
# Sign-in first, then one router per page.
ROUTERS = (pages.router, finance_routes.router, indicators_routes.router,
           partners_routes.router, operations_routes.router)
SECURITY_HEADERS = {
    # Inline SVG is markup, not script: no script at all, every style from our own files.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def templates() -> Jinja2Templates:
    found = Jinja2Templates(directory=HERE / "templates")
    found.env.filters.update(euros=formats.euros, integer=formats.integer)
    return found


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await app.state.clients.close()

    app = FastAPI(title="e2c console", openapi_url=None, docs_url=None, redoc_url=None,
                  redirect_slashes=False, lifespan=lifespan, telemetry=NO_TELEMETRY)
    app.state.settings = settings
    app.state.sessions = Sessions(settings.console_session_minutes * 60)
    app.state.clients = ServiceClients(settings)
    app.state.signin_limit = SigninLimit(settings.console_signin_refusals_per_minute)
    app.state.templates = templates()
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_exception_handler(pages.PageError, _page_error)
    app.add_exception_handler(Refused, _refused)
    app.middleware("http")(_security_headers)
    app.add_middleware(BodyLimit)
    return app


async def _page_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, pages.PageError)
    return pages.error_page(request, error)


async def _refused(request: Request, error: Exception) -> Response:
    assert isinstance(error, Refused)
    return pages.refusal_page(request, error)


async def _security_headers(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
