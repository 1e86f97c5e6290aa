"""Aids HTTP: the finance report (JSON, from the aggregates), the ledger as CSV and the
whole report as an XLSX workbook.

Both need the `finance` or `admin` role. Store work runs in worker threads; the CSV is
streamed chunk by chunk, so a year of a million ledger lines is never held in memory.
A route is a function on `router` (see `shared.http`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from shared.http import Role, allow, problems
from shared.reports import year_param
from shared.schools import load_schools, school_ids
from shared.service import Context

from . import reports, workbook

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
FINANCE = [allow(Role.FINANCE)]
ERRORS = problems(401, 403, 422)
Year = Annotated[int, Depends(year_param)]

router = APIRouter(tags=["finance"])


# --- The report's shape: `reports.finance_report` builds it, FastAPI checks it --------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KindTotals(_Answer):
    granted: int
    rejected: int
    quantity: int
    amount_cents: int


class ChildcareTotals(KindTotals):
    trainees: int = Field(description="trainees who got some childcare")


class Budget(_Answer):
    envelope_cents: int | None = Field(description="null: no envelope")
    committed_cents: int
    remaining_cents: int | None = Field(description="null without an envelope")
    runs_out_month: str | None = Field(
        description="YYYY-MM: the month the envelope runs out at the year's monthly rate so "
        "far, or was reached; null when it lasts the year or there is none"
    )


class ByKind(_Answer):
    laptop: KindTotals
    meals: KindTotals
    childcare: ChildcareTotals


class KindAmounts(_Answer):
    """amount_cents granted per kind."""

    laptop: int
    meals: int
    childcare: int


class Budgets(_Answer):
    laptop: Budget
    meals: Budget
    childcare: Budget


class FinanceReport(_Answer):
    """The contract's finance report of one year (grants counted by `period_start`)."""

    year: int
    currency: str = Field(description="always EUR")
    by_kind: ByKind
    by_school: dict[str, KindAmounts] = Field(
        description="every school of the registry (zeros included), then any other"
    )
    by_month: dict[str, KindAmounts] = Field(description="the twelve months (YYYY-MM)")
    budgets: Budgets


# --- Routes -------------------------------------------------------------------------------


async def csv_body(export: reports.LedgerCsv) -> AsyncIterator[bytes]:
    """The export's chunks, each read in a worker thread; the session closes in any case
    (end of file, client gone, error)."""
    try:
        while (chunk := await anyio.to_thread.run_sync(export.next_chunk)) is not None:
            yield chunk
    finally:
        export.close()


@router.get("/reports/finance", response_model=FinanceReport, dependencies=FINANCE,
            responses=ERRORS)
async def finance_report(ctx: Context, year: Year) -> Any:
    """The year's finance report: by kind, by school, by month, budgets (`finance`, `admin`).
    Read from the totals kept beside the ledger, never the ledger itself."""
    schools = school_ids(ctx.settings.schools_file)
    return await anyio.to_thread.run_sync(
        lambda: reports.load_report(ctx.engine, year, schools)
    )


@router.get(
    "/reports/finance.csv",
    response_class=StreamingResponse,
    dependencies=FINANCE,
    responses={200: {"description": "The year's ledger, one row per line: UTF-8 with BOM, "
                     "`;`-separated, CRLF, euros with a decimal comma.",
                     "content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}}},
               **ERRORS},
)
async def finance_csv(ctx: Context, year: Year) -> Response:
    """The year's ledger as CSV for French spreadsheets, streamed (`finance`, `admin`)."""
    return StreamingResponse(
        csv_body(reports.LedgerCsv(ctx.engine, year)),  # no I/O until the first chunk
        media_type=CSV_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="finance-{year}.csv"'},
    )


@router.get(
    "/reports/finance.xlsx",
    response_class=Response,
    dependencies=FINANCE,
    responses={200: {"description": "The year's workbook: sheets Budgets, Par école, Par mois "
                     "and Grand livre; French headers, euro cells, dates as dates, times "
                     "in Europe/Paris.",
                     "content": {workbook.MEDIA_TYPE: {"schema": {"type": "string",
                                                                  "format": "binary"}}}},
               **ERRORS},
)
async def finance_xlsx(ctx: Context, year: Year) -> Response:
    """The year's finance report and ledger as an XLSX workbook (`finance`, `admin`)."""
    schools = {s.id: s.name for s in load_schools(ctx.settings.schools_file).values()}
    body = await anyio.to_thread.run_sync(lambda: workbook.build(ctx.engine, year, schools))
    return Response(
        body,
        media_type=workbook.MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="finance-{year}.xlsx"'},
    )
