"""The indicators page: the outcomes service's report of the year and of the year before."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from console.clients import ServiceClients
from console.indicators import indicators_page
from console.pages import FIRST_YEAR, page_session, read_services, render, school_registry, year_of

router = APIRouter()


@router.get("/indicators")
async def indicators(request: Request) -> Response:
    session = page_session(request, "indicators")
    year = year_of(request)
    services = read_services(request)
    current, previous = await asyncio.gather(services.outcomes_report(session.token, year),
                                             _previous(services, session.token, year))
    page = indicators_page(current, previous, school_registry(request))
    return render(request, "indicators.html", page=page, year=year)


async def _previous(services: ServiceClients, token: str, year: int) -> dict[str, Any] | None:
    """The year before's report; none before the first year a report may be asked for."""
    if year - 1 < FIRST_YEAR:
        return None
    return await services.outcomes_report(token, year - 1)
