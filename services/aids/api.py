"""Aids HTTP: the finance report (JSON, from the aggregates) and the ledger as CSV.

Both need the `finance` or `admin` role. Store work runs in worker threads; the CSV is
streamed chunk by chunk, so a year of a million ledger lines is never held in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import anyio
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from shared.http import Authorizer, Role
from shared.reports import year_param
from shared.schools import load_schools
from shared.service import ServiceContext

from . import reports

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"


async def csv_body(export: reports.LedgerCsv) -> AsyncIterator[bytes]:
    """The export's chunks, each read in a worker thread; the session closes in any case
    (end of file, client gone, error)."""
    try:
        while (chunk := await anyio.to_thread.run_sync(export.next_chunk)) is not None:
            yield chunk
    finally:
        export.close()


class FinanceApi:
    def __init__(self, engine: Engine, auth: Authorizer, school_ids: Sequence[str]) -> None:
        self.engine = engine
        self.auth = auth
        self.school_ids = tuple(school_ids)

    async def report(self, request: Request) -> Response:
        self.auth.require(request, Role.FINANCE)
        year = year_param(request)
        body = await anyio.to_thread.run_sync(
            lambda: reports.load_report(self.engine, year, self.school_ids)
        )
        return JSONResponse(body)

    async def ledger_csv(self, request: Request) -> Response:
        self.auth.require(request, Role.FINANCE)
        year = year_param(request)
        return StreamingResponse(
            csv_body(reports.LedgerCsv(self.engine, year)),  # no I/O until the first chunk
            media_type=CSV_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="finance-{year}.csv"'},
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/reports/finance", self.report, methods=["GET"]),
            Route("/reports/finance.csv", self.ledger_csv, methods=["GET"]),
        ]


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    schools = load_schools(ctx.settings.schools_file)
    return FinanceApi(ctx.engine, ctx.auth, list(schools)).routes()
