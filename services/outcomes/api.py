"""Outcomes HTTP: the yearly indicators, the referral funnel, aid beside outcome.

- `GET /reports/outcomes?year=Y`: the contract's counts (`outcomes` or `admin`), in one
  canonical byte form, so that a rebuild of the store gives the same body.
- `GET /reports/funnel?year=Y[&agency_id=A]`: `outcomes` and `admin` see every agency (or
  the one asked for); a `partner:<agency_id>` token sees its own agency's referrals only,
  and asking for another agency is 403.
- `GET /reports/aids-outcomes?year=Y`: for the year's exits, solutions with and without
  each aid kind (`outcomes`, `finance` or `admin`).

The bodies are the canonical bytes of `reports` (the same `e2c report ... --json` prints);
the models below document them (a test checks every body against its model). Store reads
run in worker threads. A route is a function on `router` (see `shared.http`).
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from shared.http import Role, allow, bearer_role, partner_agency, problems
from shared.params import PrintableText
from shared.reports import year_param
from shared.schools import school_ids
from shared.service import Context

from . import reports

JSON_MEDIA_TYPE = "application/json"
ERRORS = problems(401, 403, 422)
Year = Annotated[int, Depends(year_param)]

router = APIRouter(tags=["outcomes"])


def json_response(body: bytes) -> Response:
    return Response(body, media_type=JSON_MEDIA_TYPE)


def documented(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=`: its 200 body (canonical bytes) is `model`, and its errors."""
    return {200: {"model": model, "description": description}, **ERRORS}


# --- The bodies' shapes ---------------------------------------------------------------------


class _Counts(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExitsByOutcome(_Counts):
    qualifying_training: int
    durable_employment: int
    short_employment: int
    iae: int
    pre_qualifying_training: int
    civic_service: int
    no_solution: int
    dropout: int
    other: int


class ExitsByCategory(_Counts):
    training: int
    employment: int
    dynamic: int
    none: int


class Satisfaction(_Counts):
    answered: int
    satisfied: int


class Profile(_Counts):
    """Over the accompanied (age at entry; minors: under 18 at entry)."""

    age_at_entry_sum: int
    minors: int
    rqth: int
    qpv_resident: int
    no_work_experience: int


class EntriesByAgencyKind(_Counts):
    mission_locale: int
    france_travail: int
    mlds: int
    spontaneous: int
    other: int


class SchoolCounts(_Counts):
    accompanied: int
    entries: int
    exits: int
    solutions: int


class OutcomesReport(_Counts):
    """The contract's yearly counts, keys in this order, schools by id: counts only (every
    rate is the quotient of two of them)."""

    year: int
    accompanied: int
    entries: int
    exits: int
    exits_by_outcome: ExitsByOutcome
    exits_by_category: ExitsByCategory
    solutions: int
    satisfaction: Satisfaction
    profile: Profile
    entries_by_agency_kind: EntriesByAgencyKind
    by_school: dict[str, SchoolCounts]


class MedianDays(_Counts):
    """Median days between two steps, over the referrals that reached both; null if none."""

    received_to_accepted: float | None
    accepted_to_enrolled: float | None
    enrolled_to_exited: float | None


class FunnelCounts(_Counts):
    received: int
    accepted: int
    enrolled: int
    exited: int
    with_solution: int
    median_days: MedianDays


class Funnel(_Counts):
    """The year's referrals down the funnel, in total, per agency and per school."""

    year: int
    steps: list[str] = Field(description="received, accepted, enrolled, exited, with_solution")
    total: FunnelCounts
    by_agency: dict[str, FunnelCounts]
    by_school: dict[str, FunnelCounts]


class ExitsAndSolutions(_Counts):
    exits: int
    solutions: int


class WithAndWithout(_Counts):
    with_aid: ExitsAndSolutions
    without_aid: ExitsAndSolutions


class AidsByKind(_Counts):
    laptop: WithAndWithout
    meals: WithAndWithout
    childcare: WithAndWithout


class AidsOutcomes(_Counts):
    """For the year's exits, side by side: counts, not a claim about what the aid caused."""

    year: int
    by_kind: AidsByKind


# --- Routes -------------------------------------------------------------------------------


def funnel_agency(
    role: Annotated[str, Depends(bearer_role)],
    agency_id: Annotated[PrintableText | None, Query(description="one agency's referrals")]
    = None,
) -> str | None:
    """The agency whose funnel the caller sees (None: all); 401/403 otherwise."""
    asked = agency_id or None
    if role in (Role.OUTCOMES, Role.ADMIN):
        return asked
    own = partner_agency(role)
    if own is not None:
        if asked is not None and asked != own:
            raise HTTPException(403, "a partner token sees its own agency's funnel only")
        return own
    raise HTTPException(403, "this token's role may not see this resource")


@router.get("/reports/outcomes", dependencies=[allow(Role.OUTCOMES)],
            responses=documented(OutcomesReport, "The year's counts, in canonical form."))
async def outcomes_report(ctx: Context, year: Year) -> Response:
    """The contract's yearly indicators (`outcomes`, `admin`)."""
    schools = school_ids(ctx.settings.schools_file)
    body = await anyio.to_thread.run_sync(
        lambda: reports.outcomes_report_body(ctx.engine, year, schools)
    )
    return json_response(body)


@router.get("/reports/funnel",
            responses=documented(Funnel, "The year's funnel, in canonical form."))
async def funnel(
    ctx: Context, agency_id: Annotated[str | None, Depends(funnel_agency)], year: Year
) -> Response:
    """The year's referral funnel (`outcomes`, `admin`: every agency or the one asked for;
    `partner:<agency_id>`: its own agency only, another is 403)."""
    body = await anyio.to_thread.run_sync(
        lambda: reports.funnel_body(ctx.engine, year, agency_id)
    )
    return json_response(body)


@router.get("/reports/aids-outcomes", dependencies=[allow(Role.OUTCOMES, Role.FINANCE)],
            responses=documented(AidsOutcomes, "Exits and solutions with and without each "
                                 "aid, in canonical form."))
async def aids_outcomes(ctx: Context, year: Year) -> Response:
    """Aid beside outcome for the year's exits (`outcomes`, `finance`, `admin`)."""
    body = await anyio.to_thread.run_sync(lambda: reports.aids_outcomes_body(ctx.engine, year))
    return json_response(body)
