"""A service's HTTP routes on a real store, without the broker: for the route tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from shared.http import Authorizer, json_app
from shared.service import ServiceContext
from shared.settings import Settings


@dataclass
class RouteContext:
    """What the routes use of a ServiceContext."""

    engine: Engine
    auth: Authorizer
    settings: Settings = field(default_factory=Settings)


def app_for(
    routes: Callable[[ServiceContext], list[BaseRoute]],
    engine: Engine,
    tokens: dict[str, str],
    *extra: BaseRoute,
) -> Starlette:
    """The routes as the service serves them (JSON errors, no slash redirects)."""
    ctx = cast(ServiceContext, RouteContext(engine, Authorizer(tokens)))
    return json_app([*routes(ctx), *extra])
