"""Outcomes HTTP: the yearly indicators, the referral funnel, aid beside outcome.

- `GET /reports/outcomes?year=Y`: the contract's counts (`outcomes` or `admin`), in one
  canonical byte form, so that a rebuild of the store gives the same body.
- `GET /reports/funnel?year=Y[&agency_id=A]`: `outcomes` and `admin` see every agency (or
  the one asked for); a `partner:<agency_id>` token sees its own agency's referrals only,
  and asking for another agency is 403.
- `GET /reports/aids-outcomes?year=Y`: for the year's exits, solutions with and without
  each aid kind (`outcomes`, `finance` or `admin`).

Store reads run in worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from sqlalchemy import Engine
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shared.http import Authorizer, Role, partner_agency
from shared.reports import year_param
from shared.schools import load_schools
from shared.service import ServiceContext

from . import reports

JSON_MEDIA_TYPE = "application/json"


def json_response(body: bytes) -> Response:
    return Response(body, media_type=JSON_MEDIA_TYPE)


class OutcomesApi:
    def __init__(self, engine: Engine, auth: Authorizer, school_ids: Sequence[str]) -> None:
        self.engine = engine
        self.auth = auth
        self.school_ids = tuple(school_ids)

    async def outcomes(self, request: Request) -> Response:
        self.auth.require(request, Role.OUTCOMES)
        year = year_param(request)
        body = await anyio.to_thread.run_sync(
            lambda: reports.outcomes_report_body(self.engine, year, self.school_ids)
        )
        return json_response(body)

    def funnel_agency(self, request: Request) -> str | None:
        """The agency whose funnel the caller sees (None: all); 401/403 otherwise."""
        role = self.auth.role(request)
        asked = request.query_params.get("agency_id") or None
        if role in (Role.OUTCOMES, Role.ADMIN):
            return asked
        own = partner_agency(role)
        if own is not None:
            if asked is not None and asked != own:
                raise HTTPException(403, "a partner token sees its own agency's funnel only")
            return own
        raise HTTPException(403, "this token's role may not see this resource")

    async def funnel(self, request: Request) -> Response:
        agency_id = self.funnel_agency(request)
        year = year_param(request)
        body = await anyio.to_thread.run_sync(
            lambda: reports.funnel_body(self.engine, year, agency_id)
        )
        return json_response(body)

    async def aids_outcomes(self, request: Request) -> Response:
        self.auth.require(request, Role.OUTCOMES, Role.FINANCE)
        year = year_param(request)
        body = await anyio.to_thread.run_sync(
            lambda: reports.aids_outcomes_body(self.engine, year)
        )
        return json_response(body)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/reports/outcomes", self.outcomes, methods=["GET"]),
            Route("/reports/funnel", self.funnel, methods=["GET"]),
            Route("/reports/aids-outcomes", self.aids_outcomes, methods=["GET"]),
        ]


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    schools = load_schools(ctx.settings.schools_file)
    return OutcomesApi(ctx.engine, ctx.auth, list(schools)).routes()
