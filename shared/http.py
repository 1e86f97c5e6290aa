"""HTTP pieces every service serves: bearer-token roles (checked by FastAPI dependencies and
declared in the OpenAPI document as the `bearer` HTTP security scheme), the FastAPI app
with its JSON errors, and the documented error answers.

A route of a service is a FastAPI function on its `APIRouter` (`services/<name>/api.py`):

    @router.get("/reports/finance", response_model=FinanceReport,
                dependencies=[allow(Role.FINANCE)], responses=problems(401, 403, 422))
    async def finance_report(ctx: Context, year: Year) -> Any: ...

`allow(...)` answers 401 without a known token and 403 to a role not listed (admin is
always allowed); `problems(...)` documents those answers; bad parameters are answered by
`shared.params` (a 4xx naming them, never their value).
"""

from __future__ import annotations

import json
import logging
import secrets
import stat
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute, APIRouter
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from shared.params import refusal
from shared.private_files import private_dir, write_private

log = logging.getLogger(__name__)


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
    """The bearer tokens a service accepts. Given the tokens file's `path`, it reads the file
    again when it changes (`e2c partners add` and `remove` take effect without a restart);
    a changed file that fails the checks is refused (logged) and the tokens stay as they
    were."""

    def __init__(self, tokens: dict[str, str], path: Path | None = None) -> None:
        self.tokens = tokens
        self.path = path
        self._stamp = _stamp(path) if path is not None else None

    def current(self) -> dict[str, str]:
        if self.path is not None:
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self.tokens = load_tokens(self.path)
                    log.info("tokens file read again: %d tokens", len(self.tokens))
                except TokensFileError as error:
                    log.error("tokens file changed but refused, tokens kept: %s", error)
        return self.tokens

    def role(self, request: Request) -> str:
        """The caller's role; 401 without a known bearer token."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        role = self.current().get(token.strip()) if scheme.lower() == "bearer" else None
        if role is None:
            raise HTTPException(401, UNAUTHORIZED)
        return role


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size, found.st_ino)


def partner_tokens_changed(path: Path, agency_id: str, add: bool) -> str | None:
    """Adds a new token of `partner:<agency_id>` to the tokens file (returned, to be shown
    once), or removes every token of that role (None). The file is written whole to a new
    0600 file renamed over the old one, so that a service never reads half of it."""
    tokens = load_tokens(path)
    role = partner_role(agency_id)
    if not _known_role(role):
        raise TokensFileError("an agency id is printable, without spaces")
    kept = {token: held for token, held in tokens.items() if held != role}
    new = secrets.token_urlsafe(32) if add else None
    if new is not None:
        kept[new] = role
    if not kept:
        raise TokensFileError(f"tokens file {path} would hold no token")
    staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    write_private(staged, json.dumps(kept, indent=2) + "\n", exclusive=True)
    staged.replace(path)
    return new


UNAUTHORIZED = "a valid bearer token is required"
FORBIDDEN = "this token's role may not see this resource"


def check_role(role: str, *allowed: Role) -> str:
    """`role` if it is admin or one of `allowed`, else 403."""
    if role != Role.ADMIN and role not in allowed:
        raise HTTPException(403, FORBIDDEN)
    return role


# --- Who is asking: FastAPI dependencies --------------------------------------------------


def app_context(request: Request) -> Any:
    """What the app serves from: its `state.context`, a `shared.service.ServiceContext`
    (`shared.service.Context` is this, typed)."""
    return request.app.state.context


class BearerRole(HTTPBearer):
    """The caller's role from `Authorization: Bearer <token>` (401 without a known token),
    declared in the OpenAPI document as the HTTP bearer scheme `bearer`."""

    def __init__(self) -> None:
        super().__init__(
            scheme_name="bearer",
            description="A token of the services' tokens file (`E2C_TOKENS_FILE`); its "
            "role (admin, finance, outcomes, ops, partner:<agency_id>) says what it may see.",
            auto_error=False,
        )

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        authorizer: Authorizer = app_context(request).auth
        return authorizer.role(request)


bearer_role = BearerRole()


def allow(*roles: Role) -> DependsParam:
    """A route's dependency: 401 without a known token, 403 unless the role is admin or one
    of `roles` (none: any known token)."""

    async def allowed(role: str = Depends(bearer_role)) -> str:
        return check_role(role, *roles) if roles else role

    return Depends(allowed)


async def within_rate(request: Request, _role: str = Depends(bearer_role)) -> None:
    """A route's dependency: 429 with `Retry-After` over the token's rate (after the token
    is known: an unknown one is a 401 and takes nothing). Redis away: every request passes."""
    limiter = getattr(app_context(request), "limiter", None)
    if limiter is None:
        return
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    verdict = await limiter.take(token)
    if not verdict.allowed:
        raise HTTPException(429, "too many requests for this token: try again later",
                            headers={"Retry-After": str(verdict.retry_after_seconds)})


RATE_LIMITED = Depends(within_rate)


# --- Errors: one JSON shape, documented -----------------------------------------------------


class Problem(BaseModel):
    """Every error answer. `detail` says what went wrong and names the parameter or field
    at fault, never the value sent."""

    model_config = ConfigDict(extra="forbid")

    detail: str


PROBLEMS: dict[int, str] = {
    400: "A parameter is invalid: `detail` names it and what it takes (never the value sent).",
    401: "No bearer token, or one the tokens file does not hold (`WWW-Authenticate: Bearer`).",
    403: "This token's role may not do this.",
    404: "Not found.",
    409: "Conflict with what is already there.",
    413: "The request body is over 1 MiB.",
    422: "A parameter is missing or invalid: `detail` names it and what it takes (never "
    "the value sent).",
    429: "Over this token's rate: try again after `Retry-After` seconds.",
}


def problems(*answers: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route for its error answers: a status (described as in
    PROBLEMS) or (status, description)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for answer in answers:
        status, description = answer if isinstance(answer, tuple) else (answer, PROBLEMS[answer])
        documented[status] = {"model": Problem, "description": description}
    return documented


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


async def _invalid_request(request: Request, error: Exception) -> Response:
    """A request FastAPI refused: a 4xx naming the parameters at fault, never the values
    (FastAPI's own answer would echo them)."""
    if not isinstance(error, RequestValidationError):  # pragma: no cover
        raise error
    status, detail = refusal(request, error.errors())
    return JSONResponse({"detail": detail}, status)


async def _server_error(_request: Request, _error: Exception) -> Response:
    """An unexpected failure: a JSON 500 without internals (the traceback goes to the log)."""
    return JSONResponse({"detail": "internal server error"}, 500)


def json_error_handlers() -> dict[Any, ExceptionHandler]:
    """`exception_handlers` answering every error as JSON `{"detail": ...}`."""
    return {
        HTTPException: _http_error,
        RequestValidationError: _invalid_request,
        Exception: _server_error,
    }


# --- The app ------------------------------------------------------------------------------

API_VERSION = "1"
# FastAPI's own OpenTelemetry hooks stay off: validation failures would be recorded with
# the values sent, and the services export Prometheus metrics of their own.
NO_TELEMETRY: Any = {"tracing": False, "metrics": False, "logs": False,
                     "operation_spans": False, "auto_configure": False}


def operation_id(route: APIRoute) -> str:
    """An operation's id in the OpenAPI document: its function's name."""
    return route.name


MAX_BODY_BYTES = 1024 * 1024  # (1.1) a request body over 1 MiB is answered 413


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 (JSON) before any
    route reads it, whether it declares its length or comes in chunks."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = JSONResponse({"detail": f"the request body is over {self.limit} bytes"}, 413)
        await answer(scope, receive, send)


def _replay(messages: list[Message], then: Receive) -> Receive:
    """The messages already read, then the client's own `receive` (a streamed answer waits
    on it for the client to go away)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        return await then()

    return receive


def json_app(
    routers: Sequence[APIRouter], title: str = "e2c", description: str = ""
) -> FastAPI:
    """The HTTP app of a service: every error as JSON, a path served as written, and no
    documentation pages of FastAPI's own (the OpenAPI document is served behind a token by
    `shared.docs`; FastAPI's pages would fetch their scripts from a CDN).

    Starlette would redirect `/referrals/` to `/referrals`, building `Location` from the
    request's Host header (an open redirect); here it is a JSON 404 like any unknown path.
    """
    app = FastAPI(
        title=title,
        description=description,
        version=API_VERSION,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        exception_handlers=json_error_handlers(),
        generate_unique_id_function=operation_id,
        telemetry=NO_TELEMETRY,
    )
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimit)
    return app

