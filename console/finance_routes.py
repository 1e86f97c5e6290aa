"""The finance page and its downloads (CSV, XLSX) proxied from the aids service."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from console.finance import finance_page
from console.pages import now, page_session, read_services, render, school_names, year_of

router = APIRouter()


@router.get("/finance")
async def finance(request: Request) -> Response:
    session = page_session(request, "finance")
    year = year_of(request)
    report = await read_services(request).finance_report(session.token, year)
    page = finance_page(report, now(), school_names(request))
    return render(request, "finance.html", page=page, year=year,
                  kinds=("laptop", "meals", "childcare"))


@router.get("/finance.csv")
async def finance_csv(request: Request) -> Response:
    return await _download(request, "/reports/finance.csv")


@router.get("/finance.xlsx")
async def finance_xlsx(request: Request) -> Response:
    return await _download(request, "/reports/finance.xlsx")


async def _download(request: Request, path: str) -> Response:
    session = page_session(request, "finance")
    year = year_of(request)
    answer, body = await read_services(request).download("aids", path, session.token,
                                                          {"year": year})
    headers = {name: answer.headers[name] for name in ("content-disposition",)
               if name in answer.headers}
    return StreamingResponse(body, media_type=answer.headers.get("content-type"),
                             headers=headers)
