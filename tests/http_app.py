"""A service's HTTP routes on a real store, without the broker: for the route tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI
from httpx import Response
from sqlalchemy import Engine
from starlette.routing import BaseRoute

from shared.http import Authorizer, json_app
from shared.settings import Settings


@dataclass
class RouteContext:
    """What the routes use of a ServiceContext (`app.state.context`)."""

    engine: Engine
    auth: Authorizer
    settings: Settings = field(default_factory=Settings)


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

