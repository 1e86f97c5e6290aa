"""The partners pages: an agency's funnel and referrals, one referral's history. The services
decide who sees which agency (a partner token: its own only); the console asks them with the
reader's own token and shows their refusal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from console.clients import Refused
from console.pages import PageError, page_session, read_services, render, school_names, year_of
from console.partners import (
    DATE,
    MAX_AGENCY_ID,
    REFERRAL_ID,
    STAGE_LABELS,
    agencies_of,
    is_agency_id,
    partners_page,
    referral_page,
)
from shared.http import bounded_int

router = APIRouter()
PAGE_SIZE = 25
MAX_PAGE = 10_000_000  # the referrals service's own limit
OTHER_AGENCY = "Cette page est celle d'une autre structure : votre jeton n'ouvre que la vôtre."


@dataclass(frozen=True)
class Filters:
    status: str  # a stage, or "" for every one
    since: str  # YYYY-MM-DD, or ""
    page: int

    def query(self, year: int, page: int | None = None) -> str:
        """The page's address query with these filters (and another page number)."""
        fields: dict[str, Any] = {"year": year}
        if self.status:
            fields["status"] = self.status
        if self.since:
            fields["since"] = self.since
        fields["page"] = page if page is not None else self.page
        return urlencode(fields)

    def service_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"page": self.page, "page_size": PAGE_SIZE}
        if self.status:
            params["status"] = self.status
        if self.since:
            params["since"] = self.since
        return params


def agency_of(text: str) -> str:
    if not is_agency_id(text):
        raise PageError(400, "L'identifiant de structure s'écrit sans espace ni barre oblique "
                             f"({MAX_AGENCY_ID} caractères au plus).")
    return text


def agency_href(agency_id: str, year: int) -> str:
    return f"/partners/{quote(agency_id, safe='')}?{urlencode({'year': year})}"


def filters_of(request: Request) -> Filters:
    params = request.query_params
    status = params.get("status", "")
    if status and status not in STAGE_LABELS:
        raise PageError(400, "L'étape (statut) demandée n'est pas l'une de celles de la liste.")
    since = params.get("since", "")
    if since and not _is_date(since):
        raise PageError(400, "La date « depuis » s'écrit AAAA-MM-JJ.")
    page = bounded_int(params.get("page", "1"), 1, MAX_PAGE)
    if page is None:
        raise PageError(400, f"La page est un nombre de 1 à {MAX_PAGE}.")
    return Filters(status, since, page)


def _is_date(text: str) -> bool:
    if not DATE.fullmatch(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


@router.get("/partners")
async def partners(request: Request) -> Response:
    """A partner goes to its own agency; other roles pick one (or type its id)."""
    session = page_session(request, "partners")
    year = year_of(request)
    asked = request.query_params.get("agency_id")
    if asked:
        return RedirectResponse(agency_href(agency_of(asked.strip()), year), 303)
    if session.agency_id is not None:
        return RedirectResponse(agency_href(session.agency_id, year), 303)
    funnel = await read_services(request).funnel(session.token, year, None)
    return render(request, "partners_pick.html", year=year, agencies=agencies_of(funnel))


@router.get("/partners/{agency_id}")
async def agency(request: Request, agency_id: str) -> Response:
    session = page_session(request, "partners")
    agency_id, year, filters = agency_of(agency_id), year_of(request), filters_of(request)
    clients = read_services(request)
    try:  # the outcomes service decides first whether this token sees this agency
        funnel = await clients.funnel(session.token, year, agency_id)
    except Refused as refused:
        if refused.status == 403:
            raise PageError(403, OTHER_AGENCY) from None
        raise
    try:
        referrals: dict[str, Any] | None = await clients.referrals(
            session.token, agency_id, filters.service_params())
    except Refused as refused:
        if refused.status != 403:
            raise
        referrals = None  # a role that reads funnels but not referrals (outcomes)
    return render(request, "partners.html", year=year, filters=filters, stages=STAGE_LABELS,
                  page=partners_page(agency_id, funnel, referrals),
                  schools=school_names(request))


@router.get("/partners/{agency_id}/referrals/{referral_id}")
async def referral(request: Request, agency_id: str, referral_id: str) -> Response:
    session = page_session(request, "partners")
    agency_id, year = agency_of(agency_id), year_of(request)
    if not REFERRAL_ID.fullmatch(referral_id):
        raise PageError(404, "Cette orientation n'existe pas.")
    try:
        detail = await read_services(request).referral(session.token, referral_id)
    except Refused as refused:
        if refused.status == 403:
            raise PageError(403, OTHER_AGENCY) from None
        raise
    if detail.get("agency_id") != agency_id:
        raise PageError(404, "Cette orientation n'est pas de cette structure.")
    return render(request, "partners_referral.html", year=year, agency_id=agency_id,
                  page=referral_page(detail), schools=school_names(request))
