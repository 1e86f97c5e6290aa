"""HTTP pieces every service serves: bearer-token roles, JSON errors, health and metrics."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ExceptionHandler

PARTNER_PREFIX = "partner:"

Check = Callable[[], Awaitable[None]]


def bounded_int(text: str, lowest: int, highest: int) -> int | None:
    """`text` as a decimal integer from `lowest` to `highest` (0 <= lowest), else None.

    Only ASCII digits; the length is checked before converting, so that thousands of
    digits are refused like any other bad number (int() raises beyond 4300 digits).
    """
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(highest)):
        return None
    value = int(digits)
    return value if lowest <= value <= highest else None


def load_tokens(path: Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    tokens = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(tokens, dict):
        raise ValueError(f"{path}: expected an object of token -> role")
    return {str(token): str(role) for token, role in tokens.items()}


def create_tokens_file(path: Path) -> str:
    """Writes a tokens file with one random admin token (used when none is configured)."""
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({token: "admin"}, indent=2) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return token


class Authorizer:
    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens

    def role(self, request: Request) -> str:
        """The caller's role; 401 without a known bearer token."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        role = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if role is None:
            raise HTTPException(401, "a valid bearer token is required")
        return role

    def require(self, request: Request, *allowed: str) -> str:
        """The caller's role if it is admin or one of `allowed`, else 401/403."""
        role = self.role(request)
        if role != "admin" and role not in allowed:
            raise HTTPException(403, "this token's role may not see this resource")
        return role


async def _http_error(_request: Request, error: Exception) -> Response:
    """An HTTPException as `{"detail": ...}`, keeping its headers (Allow on 405...)."""
    if not isinstance(error, HTTPException):  # pragma: no cover - registered for it only
        raise error
    headers = dict(error.headers or {})
    if error.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    if error.status_code in (204, 304):
        return Response(status_code=error.status_code, headers=headers)
    return JSONResponse({"detail": error.detail}, error.status_code, headers=headers)


async def _server_error(_request: Request, _error: Exception) -> Response:
    """An unexpected failure: a JSON 500 without internals (the traceback goes to the log)."""
    return JSONResponse({"detail": "internal server error"}, 500)


def json_error_handlers() -> dict[Any, ExceptionHandler]:
    """Starlette `exception_handlers` answering every error as JSON `{"detail": ...}`."""
    return {HTTPException: _http_error, Exception: _server_error}


def json_app(routes: Sequence[BaseRoute]) -> Starlette:
    """The HTTP app of a service: every error as JSON, and a path is served as written.

    Starlette would redirect `/referrals/` to `/referrals`, building `Location` from the
    request's Host header (an open redirect); here it is a JSON 404 like any unknown path.
    """
    app = Starlette(routes=list(routes), exception_handlers=json_error_handlers())
    app.router.redirect_slashes = False
    return app


def health_routes(checks: dict[str, Check], registry: CollectorRegistry) -> list[Route]:
    async def live(_request: Request) -> Response:
        return JSONResponse({"status": "live"})

    async def ready(_request: Request) -> Response:
        results = {}
        for name, check in checks.items():
            try:
                await check()
                results[name] = "ok"
            except Exception as error:
                results[name] = f"down: {type(error).__name__}"
        healthy = all(value == "ok" for value in results.values())
        body = {"status": "ready" if healthy else "degraded", "checks": results}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/health/live", live),
        Route("/health/ready", ready),
        Route("/metrics", metrics),
    ]
