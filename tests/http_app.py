"""A service's HTTP routes on a real store, without the broker: for the route tests; and
the check that an answer is what the service's committed OpenAPI document says."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI
from httpx import Response
from jsonschema import Draft202012Validator, FormatChecker
from sqlalchemy import Engine
from starlette.routing import BaseRoute

from shared.http import Authorizer, json_app
from shared.settings import PROJECT_ROOT, Settings


@dataclass
class RouteContext:
    """What the routes use of a ServiceContext (`app.state.context`)."""

    engine: Engine
    auth: Authorizer
    settings: Settings = field(default_factory=Settings)
    handlers: Any = None  # the service's handlers, for the routes that write (intake)
    relay: Any = field(default_factory=lambda: NoRelay())
    limiter: Any = None  # no rate limit unless a test sets one


class NoRelay:
    """Routes wake the outbox relay after a write; the route tests have none."""

    def wake(self) -> None:
        pass


def app_for(
    router: APIRouter,
    engine: Engine,
    tokens: dict[str, str],
    *extra: BaseRoute,
) -> FastAPI:
    """The service's routes as it serves them (JSON errors, no slash redirects), on a store
    and tokens of the test's; `extra` routes are added as they are."""
    app = json_app([router])
    app.router.routes.extend(extra)
    app.state.context = RouteContext(engine, Authorizer(tokens))
    return app


def year_error(year: str | None) -> str:
    """The detail of the 422 answered to a report asked without a year or with `year`."""
    expected = "an integer from 2000 to 2100"
    return f"year is required: {expected}" if not year else f"invalid year: expected {expected}"


def assert_bad_year(answer: Response, year: str | None) -> None:
    """`answer` refuses the missing or bad `year` with a 422 that never echoes it."""
    assert answer.status_code == 422
    assert "2000 to 2100" in answer.json()["detail"]
    assert answer.json() == {"detail": year_error(year)}
    assert not year or year not in answer.text  # never the value given


def openapi(service: str) -> dict[str, Any]:
    """The service's committed OpenAPI document (`docs/openapi/<service>.json`)."""
    path = PROJECT_ROOT / "docs" / "openapi" / f"{service}.json"
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def assert_documented(answer: Response, service: str, path: str, method: str = "get") -> None:
    """`answer` (to `method` on the route `path`, as the document writes it) has a status
    the document gives that operation, and a JSON body its schema accepts (the models
    forbid unknown fields: the body has exactly the documented keys)."""
    operation = openapi(service)["paths"][path][method]
    assert str(answer.status_code) in operation["responses"], answer.status_code
    content = operation["responses"][str(answer.status_code)]["content"]
    assert answer.headers["content-type"].split(";")[0] == "application/json"
    schema = content["application/json"]["schema"]
    components = openapi(service)["components"]
    validator = Draft202012Validator({**schema, "components": components},
                                     format_checker=FormatChecker())
    errors = [f"{'/'.join(map(str, error.path))}: {error.message}"
              for error in validator.iter_errors(answer.json())]
    assert not errors, "\n".join(errors)
