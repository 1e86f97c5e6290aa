"""Referrals HTTP: partner access to referrals (status, history, personal data, erasure).

`partner:<agency_id>` reads and erases its own agency's referrals and is the only role that
sees the candidate's personal data; `admin` reads and erases any referral but never sees
personal data; every other role gets 403. The store is used from a worker thread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import anyio
from sqlalchemy import Engine
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from shared.http import Authorizer, Role, bounded_int, partner_agency
from shared.messaging import unit_of_work
from shared.service import ServiceContext

from . import domain, webhooks
from .store import STAGES, Referral, ReferralHistory, ReferralStore, WebhookStore

ERASURE_REASON = "erasure_request"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
MAX_PAGE = 10_000_000  # keeps the row offset within a 64-bit integer

Json = dict[str, Any]
T = TypeVar("T")

_REFERRAL_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # the contract's referral_id
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
# An unencoded `+` in a query string arrives as a space: `...T10:00:00 01:00`.
_SPACED_OFFSET = re.compile(r"(:[0-9]{2}(\.[0-9]+)?) ([0-9]{2}:[0-9]{2})$")


# --- Who is asking ------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def agency_id(self) -> str | None:
        """The partner's agency, None for any other role."""
        return partner_agency(self.role)

    def may_access(self, agency_id: str) -> bool:
        return self.is_admin or self.agency_id == agency_id

    def sees_personal_data(self, agency_id: str) -> bool:
        """Only the sending agency, never admin."""
        return self.agency_id == agency_id


def caller_of(auth: Authorizer, request: Request) -> Caller:
    """The caller if it is admin or a partner; 401 without a known token, 403 otherwise."""
    caller = Caller(auth.role(request))
    if not caller.is_admin and caller.agency_id is None:
        raise HTTPException(403, "this token's role may not see referrals")
    return caller


# --- What they see ------------------------------------------------------------------------


def _iso(value: date | datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def candidate(referral: Referral) -> Json:
    """The personal data; every field is null once erased."""
    return {
        "first_name": referral.first_name,
        "last_name": referral.last_name,
        "birth_date": _iso(referral.birth_date),
        "email": referral.email,
        "phone": referral.phone,
    }


def summary(referral: Referral, with_candidate: bool) -> Json:
    body: Json = {
        "referral_id": referral.referral_id,
        "status": referral.status,
        "stage": referral.stage,
        "reasons": referral.reason_codes,
        "trainee_id": referral.trainee_id,
        "duplicate_of": referral.duplicate_of,
        "agency_id": referral.agency_id,
        "school_id": referral.school_id,
        "referred_on": _iso(referral.referred_on),
        "enrolled_on": _iso(referral.enrolled_on),
        "exited_on": _iso(referral.exited_on),
        "erased": referral.erased_at is not None,
    }
    if with_candidate:
        body["candidate"] = candidate(referral)
    return body


def history_entry(event: ReferralHistory) -> Json:
    return {
        "kind": event.kind,
        "status": event.status,
        "reasons": _json_list(event.reasons),
        "at": _iso(event.at),
        "request_event_id": event.request_event_id,
    }


def _json_list(raw: str) -> list[str]:
    return [str(item) for item in json.loads(raw)]


# --- Store work (runs in a worker thread) -------------------------------------------------


async def in_store(engine: Engine, work: Callable[[ReferralStore], T]) -> T:
    """Runs `work` with a store in its own transaction (committed if it returns), in a
    worker thread."""

    def run() -> T:
        with unit_of_work(engine, ReferralStore, "referrals") as uow:
            return work(uow.store)

    return await anyio.to_thread.run_sync(run)


def accessible(
    store: ReferralStore, referral_id: str, caller: Caller, for_update: bool = False
) -> Referral:
    """The referral if the caller may see it; an id the contract does not allow names none
    and is never sent to the store (PostgreSQL refuses a NUL in text: that was a 500)."""
    known = _REFERRAL_ID.fullmatch(referral_id) is not None
    referral = store.get(referral_id, for_update=for_update) if known else None
    if referral is None:
        raise HTTPException(404, "no such referral")
    if not caller.may_access(referral.agency_id):
        raise HTTPException(403, "this referral belongs to another agency")
    return referral


def read_referral(store: ReferralStore, referral_id: str, caller: Caller) -> Json:
    referral = accessible(store, referral_id, caller)
    body = summary(referral, caller.sees_personal_data(referral.agency_id))
    body["history"] = [history_entry(event) for event in store.history(referral_id)]
    return body


def erase_personal_data(store: ReferralStore, referral_id: str, caller: Caller) -> Json:
    referral = accessible(store, referral_id, caller, for_update=True)
    erased_now = store.erase(referral, ERASURE_REASON)  # committed when the work ends
    return {"referral_id": referral_id, "erased": True, "already_erased": not erased_now}


@dataclass(frozen=True)
class ListQuery:
    agency_id: str
    stage: str | None
    since: datetime | None
    page: int
    page_size: int


def read_page(store: ReferralStore, query: ListQuery, with_candidate: bool) -> Json:
    found = store.page_for_agency(
        query.agency_id, query.stage, query.since, query.page, query.page_size
    )
    more = query.page * query.page_size < found.total
    return {
        "items": [summary(referral, with_candidate) for referral in found.items],
        "page": query.page,
        "page_size": query.page_size,
        "total": found.total,
        "next_page": query.page + 1 if more else None,
    }


# --- Query parameters ---------------------------------------------------------------------


def _param(params: QueryParams, name: str) -> str | None:
    """A parameter's value; an empty value counts as not given."""
    return params.get(name) or None


def _invalid(name: str, expected: str) -> HTTPException:
    """422 naming the parameter and what it takes, never the value given."""
    return HTTPException(422, f"invalid {name}: expected {expected}")


def agency_param(params: QueryParams, caller: Caller) -> str:
    """The agency asked for: a partner's own by default, another one is 403."""
    asked = _param(params, "agency_id")
    if caller.is_admin:
        if asked is None:
            raise HTTPException(422, "agency_id is required for an admin token")
        if not asked.isprintable():  # a NUL would reach PostgreSQL, which refuses it
            raise _invalid("agency_id", "printable characters")
        return asked
    if asked is not None and asked != caller.agency_id:
        raise HTTPException(403, "a partner token may only list its own agency's referrals")
    assert caller.agency_id is not None
    return caller.agency_id


def stage_param(params: QueryParams) -> str | None:
    value = _param(params, "status")
    if value is not None and value not in STAGES:
        raise _invalid("status", "one of " + ", ".join(STAGES))
    return value


def parse_since(value: str) -> datetime:
    """An RFC 3339 date-time with an offset, or a date meaning its midnight UTC (ValueError,
    also when the moment in UTC falls outside the years 1 to 9999)."""
    if _DATE.fullmatch(value):
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
    value = _SPACED_OFFSET.sub(r"\1+\3", value)
    if not _DATETIME.fullmatch(value):
        raise ValueError("not an RFC 3339 date-time")
    try:
        return datetime.fromisoformat(value.upper()).astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range in UTC") from None


def since_param(params: QueryParams) -> datetime | None:
    value = _param(params, "since")
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError:
        expected = "an RFC 3339 date-time with an offset or a date YYYY-MM-DD"
        raise _invalid("since", expected) from None


def int_param(params: QueryParams, name: str, default: int, highest: int) -> int:
    value = _param(params, name)
    if value is None:
        return default
    number = bounded_int(value, 1, highest)
    if number is None:
        raise _invalid(name, f"an integer from 1 to {highest}")
    return number


def list_query(params: QueryParams, caller: Caller) -> ListQuery:
    return ListQuery(
        agency_id=agency_param(params, caller),
        stage=stage_param(params),
        since=since_param(params),
        page=int_param(params, "page", 1, MAX_PAGE),
        page_size=int_param(params, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
    )


# --- Endpoints ----------------------------------------------------------------------------


class ReferralsApi:
    def __init__(self, engine: Engine, auth: Authorizer) -> None:
        self.engine = engine
        self.auth = auth

    async def get_referral(self, request: Request) -> Response:
        caller = caller_of(self.auth, request)
        referral_id = str(request.path_params["referral_id"])
        body = await in_store(self.engine, lambda s: read_referral(s, referral_id, caller))
        return JSONResponse(body)

    async def list_referrals(self, request: Request) -> Response:
        caller = caller_of(self.auth, request)
        query = list_query(request.query_params, caller)
        with_candidate = caller.sees_personal_data(query.agency_id)
        body = await in_store(self.engine, lambda s: read_page(s, query, with_candidate))
        return JSONResponse(body)

    async def erase(self, request: Request) -> Response:
        caller = caller_of(self.auth, request)
        referral_id = str(request.path_params["referral_id"])
        body = await in_store(self.engine, lambda s: erase_personal_data(s, referral_id, caller))
        return JSONResponse(body)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/referrals", self.list_referrals, methods=["GET"]),
            Route("/referrals/{referral_id}", self.get_referral, methods=["GET"]),
            Route(
                "/referrals/{referral_id}/personal-data", self.erase, methods=["DELETE"]
            ),
        ]


# --- Admin: the agencies' webhooks ----------------------------------------------------------


def webhook_admin_routes(engine: Engine, auth: Authorizer) -> list[BaseRoute]:
    """`PUT /admin/webhooks/{agency_id}` `{"url": ..., "rotate_secret": false}` (201 with the
    new `secret`, shown this once; 200 on a change, with `secret` only if rotated; 422 for
    a URL that is not http(s)), `GET /admin/webhooks` (no secrets), `DELETE
    /admin/webhooks/{agency_id}` (404 when it has none). Role admin. The work is in
    `webhooks.py`: this only maps HTTP onto it."""

    def run(work: Callable[[WebhookStore], T]) -> Any:
        def in_transaction() -> T:
            with unit_of_work(engine, WebhookStore, "referrals") as uow:
                return work(uow.store)

        return anyio.to_thread.run_sync(in_transaction)

    async def webhook(request: Request) -> Response:
        auth.require(request)  # admin only
        if request.method == "GET":
            return JSONResponse({"webhooks": await run(webhooks.listing)})
        agency_id = str(request.path_params["agency_id"])
        if request.method == "DELETE":
            dropped = await run(lambda store: webhooks.remove(store, agency_id))
            if dropped is None:
                raise HTTPException(404, "this agency has no webhook")
            return JSONResponse({"agency_id": agency_id, "removed": True,
                                 "deliveries_dropped": dropped})
        raw = await request.body()
        try:
            body = json.loads(raw) if len(raw) <= 16 * 1024 else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("url"), str) \
                or not isinstance(body.get("rotate_secret", False), bool):
            raise HTTPException(422, 'expected a JSON object {"url": "https://...", '
                                     '"rotate_secret": false} (at most 16 KiB)')
        try:
            done = await run(lambda store: webhooks.register(
                store, agency_id, body["url"], body.get("rotate_secret", False)))
        except webhooks.WebhookError as error:
            raise HTTPException(422, str(error)) from None
        answer: Json = {"agency_id": agency_id, "url": domain.shown_url(done.url),
                        "created": done.created}
        if done.secret is not None:
            answer["secret"] = done.secret
        return JSONResponse(answer, 201 if done.created else 200,
                            headers={"Cache-Control": "no-store"})

    return [
        Route("/admin/webhooks", webhook, methods=["GET"]),
        Route("/admin/webhooks/{agency_id}", webhook, methods=["PUT", "DELETE"]),
    ]


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    return ReferralsApi(ctx.engine, ctx.auth).routes() + webhook_admin_routes(ctx.engine,
                                                                              ctx.auth)
