"""HTTP pieces every service serves: bearer-token roles, JSON errors, health and metrics."""

from __future__ import annotations

import json
import secrets
import stat
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
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

from shared.private_files import private_dir, write_private


class Role(StrEnum):
    """The fixed roles of the tokens file, which holds their values ("admin", ...). An
    agency's role is `partner:<agency_id>` (`partner_role`, `partner_agency`)."""

    ADMIN = "admin"
    FINANCE = "finance"
    OUTCOMES = "outcomes"
    OPS = "ops"


PARTNER_PREFIX = "partner:"
_FIXED_ROLES = frozenset(Role)  # a plain str is found in it by value


def partner_role(agency_id: str) -> str:
    """The role of a partner agency's tokens: `partner:<agency_id>`."""
    return PARTNER_PREFIX + agency_id


def partner_agency(role: str) -> str | None:
    """The agency of a `partner:<agency_id>` role; None for any other role."""
    if not role.startswith(PARTNER_PREFIX):
        return None
    return role.removeprefix(PARTNER_PREFIX) or None


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


MIN_TOKEN_LENGTH = 32
# Values published as examples (deploy/tokens.example.json, old and new): never accepted.
EXAMPLE_TOKENS = frozenset({
    "change-me-admin", "change-me-finance", "change-me-ops", "change-me-outcomes",
    "change-me-ml-toulouse",
})
EXAMPLE_MARKER = "change-me"
GENERATE_HINT = "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message names the problem, never a token."""


def load_tokens(path: Path | None) -> dict[str, str]:
    """The tokens file's `token -> role` map, checked: it must exist, be its owner's only
    (no group or other bits) and hold only tokens of 32 characters or more that are not
    example values. Anything else raises TokensFileError."""
    if path is None:
        raise TokensFileError(
            "E2C_TOKENS_FILE is not set: give the path of a JSON file of token -> role "
            "(`e2c stack up` creates var/tokens.json)"
        )
    _check_file(path)
    tokens = _parse_tokens(path)
    for token, role in tokens.items():
        _check_token(path, token, role)
    return tokens


def _check_file(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise TokensFileError(f"tokens file {path} does not exist (E2C_TOKENS_FILE)") from None
    if not path.is_file():
        raise TokensFileError(f"tokens file {path} is not a regular file")
    if mode & 0o077:
        raise TokensFileError(
            f"tokens file {path} is readable or writable by group or others "
            f"(mode {mode:04o}): chmod 600 {path}"
        )


def _parse_tokens(path: Path) -> dict[str, str]:
    try:
        tokens = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        where = f" (line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
        raise TokensFileError(f"tokens file {path} is not valid JSON{where}") from None
    if not isinstance(tokens, dict) or not all(
        isinstance(token, str) and isinstance(role, str) for token, role in tokens.items()
    ):
        raise TokensFileError(f"tokens file {path}: expected an object of token -> role")
    if not tokens:
        raise TokensFileError(f"tokens file {path} holds no token")
    return tokens


def _check_token(path: Path, token: str, role: str) -> None:
    if not _known_role(role):  # checked first: a swapped entry would print its token
        raise TokensFileError(
            f"tokens file {path}: an entry's role is not one of {', '.join(Role)} or "
            f"{PARTNER_PREFIX}<agency_id> (token and role swapped?)"
        )
    if token in EXAMPLE_TOKENS or EXAMPLE_MARKER in token.lower():
        raise TokensFileError(
            f"tokens file {path}: the token of role {role!r} is an example value; "
            + GENERATE_HINT
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokensFileError(
            f"tokens file {path}: the token of role {role!r} is shorter than "
            f"{MIN_TOKEN_LENGTH} characters; " + GENERATE_HINT
        )


def _known_role(role: str) -> bool:
    agency = role.removeprefix(PARTNER_PREFIX)
    if agency != role:
        return bool(agency) and not any(char.isspace() for char in agency)
    return role in _FIXED_ROLES


def create_tokens_file(path: Path) -> str:
    """Writes a tokens file with one random admin token (used when none is configured):
    created at 0600 from its first byte, never over an existing file."""
    token = secrets.token_urlsafe(24)  # 32 characters
    private_dir(path.parent)
    write_private(path, json.dumps({token: Role.ADMIN}, indent=2) + "\n", exclusive=True)
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

    def require(self, request: Request, *allowed: Role) -> str:
        """The caller's role if it is admin or one of `allowed`, else 401/403."""
        role = self.role(request)
        if role != Role.ADMIN and role not in allowed:
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
