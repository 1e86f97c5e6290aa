"""Referrals HTTP: partner access to referrals (status, history, personal data, erasure).

`partner:<agency_id>` reads and erases its own agency's referrals and is the only role that
sees the candidate's personal data in them; `admin` reads and erases any referral but never
sees personal data there; every other role gets 403. The right of access
(`GET /referrals/{id}/personal-data`) answers the sending agency and admin.

Every read of personal data and every erasure appends a row to the access trail
(`store.AuditEntry`) in the transaction of the read: one row per referral shown (a partner's
listing: one row per referral of the page). `GET /audit` shows it to admin. The store is
used from a worker thread.

A route is a FastAPI function on `router`: its parameters (validated by FastAPI, a bad one
answered by `shared.params`), `CallerDep` for who is asking, `Context` for the store, a
`response_model` and its documented `responses=problems(...)` (see `shared.http`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID, uuid4

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from shared.contract import (
    ReferralStatus,
    ReferralSubmitted,
    SchemaVersion,
    Timestamp,
    Topic,
)
from shared.http import RATE_LIMITED, Role, allow, bearer_role, partner_agency, problems
from shared.messaging import describe_validation_error, unit_of_work
from shared.params import ASCII_DIGITS, Expected, PrintableText
from shared.service import Context

from . import domain, webhooks
from .handlers import ReferralHandlers, Work
from .store import (
    Actor,
    AuditAction,
    AuditEntry,
    Referral,
    ReferralHistory,
    ReferralStore,
    Stage,
    WebhookStore,
)

ERASURE_REASON = "erasure_request"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
MAX_PAGE = 10_000_000  # keeps the row offset within a 64-bit integer
MAX_WAIT_SECONDS = 10  # (1.1) POST /referrals?wait=N
MAX_BATCH = 500  # (1.1) POST /referrals/batch
WAIT_POLL_SECONDS = 0.1

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

    @property
    def actor(self) -> Actor:
        return actor_of(self.role)


def actor_of(role: str) -> Actor:
    """The audit trail's actor of a token's role: a partner with its agency, else the role."""
    agency_id = partner_agency(role)
    return Actor("partner", agency_id) if agency_id is not None else Actor(role)


# --- What they see ------------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(_Answer):
    """The personal data; every field is null once erased."""

    first_name: str | None
    last_name: str | None
    birth_date: date | None
    email: str | None
    phone: str | None


class ReferralSummary(_Answer):
    referral_id: str
    status: ReferralStatus
    stage: Stage
    reasons: list[str] = Field(description="the decision's reason codes")
    trainee_id: str | None
    duplicate_of: str | None = Field(description="the live referral of the same person")
    agency_id: str
    school_id: str
    referred_on: date
    enrolled_on: date | None
    exited_on: date | None
    erased: bool = Field(description="the personal data was erased")
    candidate: Candidate | None = Field(
        default=None,
        description="only for the sending agency's tokens; left out for admin",
    )


class HistoryEntry(_Answer):
    kind: str = Field(description="referral, resend, derogation, enrollment, exit or erasure")
    status: str
    reasons: list[str]
    at: datetime
    request_event_id: str | None = Field(description="the event that asked; null for an "
                                         "erasure")


class ReferralDetail(ReferralSummary):
    history: list[HistoryEntry] = Field(description="oldest first")


class ReferralPage(_Answer):
    agency_id: str = Field(description="the agency listed (a partner token's own)")
    items: list[ReferralSummary] = Field(description="by last change, oldest first")
    page: int
    page_size: int
    total: int
    next_page: int | None = Field(description="null on the last page")


class Erasure(_Answer):
    referral_id: str
    erased: bool = Field(description="always true: the personal data is gone")
    already_erased: bool = Field(description="it was gone before this request")


class ReferralIn(ReferralSubmitted):
    """The body of `POST /referrals`: an `e2c.referrals.submitted.v1` event, whose
    `event_id`, `occurred_at` and `schema_version` the service sets when they are left out.
    `agency.id` must be the token's agency."""

    event_id: UUID | None = None  # type: ignore[assignment]
    occurred_at: Timestamp | None = None  # type: ignore[assignment]
    schema_version: SchemaVersion | None = None  # type: ignore[assignment]

    def event(self) -> ReferralSubmitted:
        fields = self.model_dump()
        fields["event_id"] = self.event_id or uuid4()
        fields["occurred_at"] = self.occurred_at or datetime.now(UTC)
        fields["schema_version"] = 1
        return ReferralSubmitted.model_validate(fields)


class Accepted(_Answer):
    """Stored: it will be published on `e2c.referrals.submitted.v1` and decided there."""

    referral_id: str
    event_id: str
    status_url: str = Field(description="GET it: `received` until decided, then the decision")


class ReceivedReferral(_Answer):
    """A referral received over HTTP and not decided yet."""

    referral_id: str
    status: Literal["received"] = "received"
    agency_id: str
    event_id: str
    received_at: datetime


class BatchIn(BaseModel):
    referrals: list[Any] = Field(
        max_length=MAX_BATCH, description="each the body of `POST /referrals` (an item that "
        "is not one is answered 422 in its place)")


class BatchItem(_Answer):
    referral_id: str | None
    status: int = Field(description="202, or 403 (another agency), 409 or 422 (`detail`)")
    event_id: str | None = None
    status_url: str | None = None
    detail: str | None = None


class BatchAnswer(_Answer):
    results: list[BatchItem] = Field(description="one per referral, in the order sent")


def candidate(referral: Referral) -> Candidate:
    return Candidate(
        first_name=referral.first_name,
        last_name=referral.last_name,
        birth_date=referral.birth_date,
        email=referral.email,
        phone=referral.phone,
    )


def _summary_fields(referral: Referral, with_candidate: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "referral_id": referral.referral_id,
        "status": referral.status,
        "stage": referral.stage,
        "reasons": referral.reason_codes,
        "trainee_id": referral.trainee_id,
        "duplicate_of": referral.duplicate_of,
        "agency_id": referral.agency_id,
        "school_id": referral.school_id,
        "referred_on": referral.referred_on,
        "enrolled_on": referral.enrolled_on,
        "exited_on": referral.exited_on,
        "erased": referral.erased_at is not None,
    }
    if with_candidate:  # left unset otherwise: the routes leave unset fields out
        fields["candidate"] = candidate(referral)
    return fields


def summary(referral: Referral, with_candidate: bool) -> ReferralSummary:
    return ReferralSummary(**_summary_fields(referral, with_candidate))


def history_entry(event: ReferralHistory) -> HistoryEntry:
    return HistoryEntry(
        kind=event.kind,
        status=event.status,
        reasons=_json_list(event.reasons),
        at=event.at,
        request_event_id=event.request_event_id,
    )


def _json_list(raw: str) -> list[str]:
    return [str(item) for item in json.loads(raw)]


# --- Store work (runs in a worker thread) -------------------------------------------------


async def in_unit(engine: Engine, work: Callable[[Work], T]) -> T:
    """Runs `work` in its own transaction (committed if it returns), in a worker thread."""

    def run() -> T:
        with unit_of_work(engine, ReferralStore, "referrals") as uow:
            return work(uow)

    return await anyio.to_thread.run_sync(run)


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


def read_referral(
    store: ReferralStore, referral_id: str, caller: Caller
) -> ReferralDetail | ReceivedReferral:
    received = received_only(store, referral_id, caller)
    if received is not None:
        return received
    referral = accessible(store, referral_id, caller)
    with_candidate = caller.sees_personal_data(referral.agency_id)
    if with_candidate:
        store.audit(caller.actor, AuditAction.READ_REFERRAL, [referral_id])
    fields = _summary_fields(referral, with_candidate)
    history = [history_entry(event) for event in store.history(referral_id)]
    return ReferralDetail(**fields, history=history)


def received_only(
    store: ReferralStore, referral_id: str, caller: Caller
) -> ReceivedReferral | None:
    """A referral received over HTTP and not decided yet (None: decided, or never sent
    over HTTP), if the caller may see it."""
    if _REFERRAL_ID.fullmatch(referral_id) is None or store.get(referral_id) is not None:
        return None
    submission = store.submission(referral_id)
    if submission is None:
        return None
    if not caller.may_access(submission.agency_id):
        raise HTTPException(403, "this referral belongs to another agency")
    return ReceivedReferral(referral_id=referral_id, status="received",
                            agency_id=submission.agency_id,
                            event_id=submission.event_id, received_at=submission.received_at)


def erase_personal_data(store: ReferralStore, referral_id: str, caller: Caller) -> Erasure:
    referral = accessible(store, referral_id, caller, for_update=True)
    erased_now = store.erase(referral, ERASURE_REASON, caller.actor)  # committed at the end
    return Erasure(referral_id=referral_id, erased=True, already_erased=not erased_now)


@dataclass(frozen=True)
class ListQuery:
    agency_id: str
    stage: str | None
    since: datetime | None
    page: int
    page_size: int


def read_page(store: ReferralStore, query: ListQuery, caller: Caller) -> ReferralPage:
    found = store.page_for_agency(
        query.agency_id, query.stage, query.since, query.page, query.page_size
    )
    with_candidate = caller.sees_personal_data(query.agency_id)
    if with_candidate:
        store.audit(caller.actor, AuditAction.LIST_REFERRALS,
                    [referral.referral_id for referral in found.items])
    more = query.page * query.page_size < found.total
    return ReferralPage(
        agency_id=query.agency_id,
        items=[summary(referral, with_candidate) for referral in found.items],
        page=query.page,
        page_size=query.page_size,
        total=found.total,
        next_page=query.page + 1 if more else None,
    )


# --- Query parameters ---------------------------------------------------------------------


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


def _since(value: object) -> object:
    return parse_since(value) if isinstance(value, str) else value


Since = Annotated[
    datetime,
    BeforeValidator(_since),
    WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"},
                              {"type": "string", "format": "date"}]}),
    Expected("an RFC 3339 date-time with an offset or a date YYYY-MM-DD"),
]


def caller_of(role: Annotated[str, Depends(bearer_role)]) -> Caller:
    """The caller if it is admin or a partner; 401 without a known token, 403 otherwise."""
    caller = Caller(role)
    if not caller.is_admin and caller.agency_id is None:
        raise HTTPException(403, "this token's role may not see referrals")
    return caller


CallerDep = Annotated[Caller, Depends(caller_of)]


def listed_agency(
    caller: CallerDep,
    agency_id: Annotated[
        PrintableText | None,
        Query(description="required for admin; a partner's own agency by default"),
    ] = None,
) -> str:
    """The agency asked for: a partner's own by default, another one is 403."""
    asked = agency_id or None  # an empty value counts as not given
    if caller.is_admin:
        if asked is None:
            raise HTTPException(422, "agency_id is required for an admin token")
        return asked
    if asked is not None and asked != caller.agency_id:
        raise HTTPException(403, "a partner token may only list its own agency's referrals")
    assert caller.agency_id is not None
    return caller.agency_id


# --- Routes -------------------------------------------------------------------------------

router = APIRouter(tags=["referrals"])
NOT_PARTNER = "Not a partner or admin token"
NOT_FOUND = (404, "No such referral (an id the contract does not allow names none).")
LIST_ERRORS = problems(
    401,
    (403, f"{NOT_PARTNER}, or another agency's referrals."),
    (422, "`agency_id` missing for an admin token, or a parameter is invalid (`detail` "
     "names it and what it takes, never the value sent)."),
)
READ_ERRORS = problems(401, (403, f"{NOT_PARTNER}, or another agency's referral."), NOT_FOUND)
ERASE_ERRORS = problems(401, (403, "Not the sending agency's nor an admin token."), NOT_FOUND)


@router.get("/referrals", response_model=ReferralPage, response_model_exclude_unset=True,
            responses=LIST_ERRORS)
async def list_referrals(
    ctx: Context,
    caller: CallerDep,
    agency_id: Annotated[str, Depends(listed_agency)],
    status: Annotated[Stage | None, Query(description="only the referrals at this stage")]
    = None,
    since: Annotated[Since | None, Query(description="only those changed since then")]
    = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE), ASCII_DIGITS] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE), ASCII_DIGITS] = DEFAULT_PAGE_SIZE,
) -> ReferralPage:
    """An agency's referrals, page by page (a partner: its own, with the personal data;
    admin: the `agency_id` asked for, without)."""
    stage = status.value if status is not None else None
    query = ListQuery(agency_id, stage, since, page, page_size)
    return await in_store(ctx.engine, lambda s: read_page(s, query, caller))


@router.get("/referrals/{referral_id}", response_model=ReferralDetail | ReceivedReferral,
            response_model_exclude_unset=True, responses=READ_ERRORS)
async def get_referral(
    ctx: Context, caller: CallerDep, referral_id: str
) -> ReferralDetail | ReceivedReferral:
    """A referral's status, stage, reasons, trainee id and history; the sending agency
    also sees the personal data. Sent over HTTP and not decided yet: `received`."""
    return await in_store(ctx.engine, lambda s: read_referral(s, referral_id, caller))


@router.delete("/referrals/{referral_id}/personal-data", response_model=Erasure,
              responses=ERASE_ERRORS)
async def erase(ctx: Context, caller: CallerDep, referral_id: str) -> Erasure:
    """Erases the person's names, birth date and contacts (the sending agency or admin);
    decisions, statuses and trainee ids stay."""
    return await in_store(ctx.engine, lambda s: erase_personal_data(s, referral_id, caller))


# --- Intake: referrals received over HTTP (contract 1.1) -----------------------------------

def submit_one(
    handlers: ReferralHandlers, uow: Work, caller: Caller, event: ReferralSubmitted
) -> Accepted:
    """Stores one submission in a savepoint (403: another agency's; 409: its `referral_id`
    is taken). Two requests storing one `referral_id` at once: the second is retried, and
    answered as a retry or a conflict."""
    if not caller.may_access(event.agency.id):
        raise HTTPException(403, "agency.id is not this token's agency")
    try:
        with uow.session.begin_nested():
            received = handlers.submit(uow, event)
    except IntegrityError:
        with uow.session.begin_nested():
            received = handlers.submit(uow, event)
    if received is None:
        raise HTTPException(409, "this referral_id is already used for another candidate "
                                 "or agency")
    return Accepted(referral_id=received.referral_id, event_id=received.event_id,
                    status_url=f"/referrals/{received.referral_id}")


def decided_summary(
    store: ReferralStore, referral_id: str, caller: Caller
) -> ReferralSummary | None:
    referral = store.get(referral_id)
    if referral is None:
        return None
    with_candidate = caller.sees_personal_data(referral.agency_id)
    if with_candidate:
        store.audit(caller.actor, AuditAction.READ_REFERRAL, [referral_id], ["submit_wait"])
    return summary(referral, with_candidate)


async def decided_within(
    engine: Engine, referral_id: str, caller: Caller, seconds: int
) -> ReferralSummary | None:
    """The decision if it comes within `seconds` (the store is read every 100 ms)."""
    deadline = anyio.current_time() + seconds
    while True:
        found = await in_store(engine, lambda s: decided_summary(s, referral_id, caller))
        if found is not None:
            return found
        if anyio.current_time() >= deadline:
            return None
        await anyio.sleep(WAIT_POLL_SECONDS)


INTAKE_ERRORS = problems(
    401,
    (403, "Not a partner or admin token, or `agency.id` is another agency's."),
    (409, "This `referral_id` was sent before with another candidate or agency."),
    413,
    (422, "The body is not a referral: `detail` names each field at fault, never its value."),
    429,
)


@router.post("/referrals", status_code=202, response_model=Accepted,
             dependencies=[RATE_LIMITED],
             responses={200: {"model": ReferralSummary,
                              "description": "decided within `wait` seconds"},
                        **INTAKE_ERRORS})
async def submit_referral(
    ctx: Context,
    caller: CallerDep,
    body: ReferralIn,
    wait: Annotated[int, Query(ge=0, le=MAX_WAIT_SECONDS,
                               description="seconds to wait for the decision"),
                    ASCII_DIGITS] = 0,
) -> Any:
    """Refers a young person (contract 1.1, "Partners over HTTP"): stored, then published
    on `e2c.referrals.submitted.v1`, where the same pipeline as for Kafka decides it. A
    retry with the same `referral_id` and candidate gets the same answer."""
    event = body.event()
    accepted = await in_unit(ctx.engine, lambda uow: submit_one(ctx.handlers, uow, caller,
                                                                event))
    ctx.relay.wake()
    if wait:
        decided = await decided_within(ctx.engine, accepted.referral_id, caller, wait)
        if decided is not None:
            return JSONResponse(decided.model_dump(mode="json", exclude_unset=True), 200)
    return accepted


@router.post("/referrals/batch", response_model=BatchAnswer, dependencies=[RATE_LIMITED],
             responses=problems(401, (403, NOT_PARTNER), 413, 422, 429))
async def submit_referrals(ctx: Context, caller: CallerDep, body: BatchIn) -> BatchAnswer:
    """Up to 500 referrals at once, each answered as `POST /referrals` would (without
    `wait`), in the order sent: one bad item never fails the others."""
    results = await in_unit(ctx.engine, lambda uow: [submit_item(ctx.handlers, uow, caller, item)
                                                     for item in body.referrals])
    ctx.relay.wake()
    return BatchAnswer(results=results)


def submit_item(handlers: ReferralHandlers, uow: Work, caller: Caller, item: Any) -> BatchItem:
    if not isinstance(item, dict):
        return BatchItem(referral_id=None, status=422, detail="a referral is a JSON object")
    referral_id = item.get("referral_id")
    shown_id = referral_id if isinstance(referral_id, str) and _REFERRAL_ID.fullmatch(
        referral_id) else None
    try:
        event = ReferralIn.model_validate(item).event()
    except ValidationError as error:
        return BatchItem(referral_id=shown_id, status=422,
                         detail=describe_validation_error(error))
    try:  # in its own savepoint: one item's failure never undoes the others
        accepted = submit_one(handlers, uow, caller, event)
    except HTTPException as refused:
        return BatchItem(referral_id=shown_id, status=refused.status_code,
                         detail=str(refused.detail))
    return BatchItem(referral_id=accepted.referral_id, status=202,
                     event_id=accepted.event_id, status_url=accepted.status_url)


# --- Admin: the agencies' webhooks ----------------------------------------------------------


class WebhookRequest(BaseModel):
    """An agency's callback URL (http or https); `rotate_secret` makes a new signing secret."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=domain.MAX_WEBHOOK_URL_LENGTH)
    rotate_secret: bool = False


class WebhookAnswer(_Answer):
    agency_id: str
    url: str = Field(description="scheme, host, port and path: never the query string")
    created: bool
    secret: str | None = Field(
        default=None, description="the signing secret: on creation or rotation only, shown "
        "this once")


class WebhookListing(_Answer):
    agency_id: str
    url: str
    created_at: datetime
    updated_at: datetime
    pending: int
    parked: int


class WebhookList(_Answer):
    webhooks: list[WebhookListing]


class WebhookRemoval(_Answer):
    agency_id: str
    removed: bool
    deliveries_dropped: int


async def in_webhooks(engine: Engine, work: Callable[[WebhookStore], T]) -> T:
    def run() -> T:
        with unit_of_work(engine, WebhookStore, "referrals") as uow:
            return work(uow.store)

    return await anyio.to_thread.run_sync(run)


ADMIN_ONLY = [allow(Role.ADMIN)]


@router.put("/admin/webhooks/{agency_id}", response_model=WebhookAnswer,
            response_model_exclude_none=True, dependencies=ADMIN_ONLY,
            status_code=200, responses={201: {"model": WebhookAnswer,
                                              "description": "created, with its secret"},
                                        **problems(401, 403, 422)})
async def set_webhook(ctx: Context, agency_id: str, body: WebhookRequest) -> JSONResponse:
    """Sets an agency's callback URL (role admin). The decisions about its referrals are
    POSTed there, signed with the secret returned on creation (and on rotation) only."""
    try:
        done = await in_webhooks(ctx.engine, lambda store: webhooks.register(
            store, agency_id, body.url, body.rotate_secret))
    except webhooks.WebhookError as error:
        raise HTTPException(422, str(error)) from None
    answer = WebhookAnswer(agency_id=agency_id, url=domain.shown_url(done.url),
                           created=done.created, secret=done.secret)
    return JSONResponse(answer.model_dump(exclude_none=True), 201 if done.created else 200,
                        headers={"Cache-Control": "no-store"})


@router.get("/admin/webhooks", response_model=WebhookList, dependencies=ADMIN_ONLY,
            responses=problems(401, 403))
async def list_webhooks(ctx: Context) -> WebhookList:
    """The agencies' callback URLs with their queues (role admin); never a secret."""
    listed = await in_webhooks(ctx.engine, webhooks.listing)
    return WebhookList(webhooks=[WebhookListing.model_validate(row) for row in listed])


@router.delete("/admin/webhooks/{agency_id}", response_model=WebhookRemoval,
               dependencies=ADMIN_ONLY,
               responses=problems(401, 403, (404, "This agency has no webhook.")))
async def remove_webhook(ctx: Context, agency_id: str) -> WebhookRemoval:
    """Removes an agency's callback URL and its queued deliveries (role admin)."""
    dropped = await in_webhooks(ctx.engine, lambda store: webhooks.remove(store, agency_id))
    if dropped is None:
        raise HTTPException(404, "this agency has no webhook")
    return WebhookRemoval(agency_id=agency_id, removed=True, deliveries_dropped=dropped)


# --- Right of access and access trail --------------------------------------------------------


class Profile(_Answer):
    """The minimised profile kept after erasure (not personal data on its own)."""

    highest_qualification: str
    in_school: bool
    has_work_experience: bool
    rqth: bool
    qpv_resident: bool
    age_at_entry: int | None = Field(description="completed years on `enrolled_on`")


class SubmissionRecord(_Answer):
    """The referral was received over HTTP (contract 1.1): when, and as which event."""

    event_id: str
    agency_id: str
    received_at: datetime


class PersonalData(_Answer):
    """Everything the referrals service holds about the person of one referral. Once erased,
    the candidate's fields are null and `erased_at` says when."""

    referral_id: str
    agency_id: str
    agency_kind: str
    school_id: str
    referred_on: date
    candidate: Candidate
    profile: Profile
    status: ReferralStatus
    stage: Stage
    reasons: list[str] = Field(description="the decision's reason codes")
    trainee_id: str | None = Field(description="the pseudonym given to the other services")
    duplicate_of: str | None
    enrolled_on: date | None
    enrolled_school_id: str | None
    exited_on: date | None
    history: list[HistoryEntry] = Field(description="every decision, oldest first")
    submission: SubmissionRecord | None = Field(description="null unless sent over HTTP")
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None = Field(description="when the personal data was erased")


def personal_data(store: ReferralStore, referral_id: str, caller: Caller) -> PersonalData:
    """The right of access (the sending agency or admin), audited in the same transaction."""
    referral = accessible(store, referral_id, caller)
    erased = ["erased"] if referral.erased_at is not None else []
    store.audit(caller.actor, AuditAction.READ_PERSONAL_DATA, [referral_id], erased)
    submission = store.submission(referral_id)
    return PersonalData(
        referral_id=referral.referral_id, agency_id=referral.agency_id,
        agency_kind=referral.agency_kind, school_id=referral.school_id,
        referred_on=referral.referred_on, candidate=candidate(referral),
        profile=Profile(
            highest_qualification=referral.highest_qualification,
            in_school=referral.in_school, has_work_experience=referral.has_work_experience,
            rqth=referral.rqth, qpv_resident=referral.qpv_resident,
            age_at_entry=referral.age_at_entry),
        status=ReferralStatus(referral.status), stage=Stage(referral.stage),
        reasons=referral.reason_codes, trainee_id=referral.trainee_id,
        duplicate_of=referral.duplicate_of, enrolled_on=referral.enrolled_on,
        enrolled_school_id=referral.enrolled_school_id, exited_on=referral.exited_on,
        history=[history_entry(event) for event in store.history(referral_id)],
        submission=None if submission is None else SubmissionRecord(
            event_id=submission.event_id, agency_id=submission.agency_id,
            received_at=submission.received_at),
        created_at=referral.created_at, updated_at=referral.updated_at,
        erased_at=referral.erased_at,
    )


@router.get("/referrals/{referral_id}/personal-data", response_model=PersonalData,
            responses=problems(401, (403, "Not the sending agency's nor an admin token."),
                               (404, "No such referral, or one received over HTTP and not "
                                "decided yet.")))
async def get_personal_data(ctx: Context, caller: CallerDep, referral_id: str) -> PersonalData:
    """The right of access: everything held about the person of this referral, in one
    document (the sending agency or admin). Every call is recorded in the access trail."""
    return await in_store(ctx.engine, lambda s: personal_data(s, referral_id, caller))


class AuditRow(_Answer):
    id: int
    at: datetime
    action: AuditAction
    role: str = Field(description="partner, admin, ops, operator (a command on the host) or "
                      "system (retention)")
    agency_id: str | None = Field(description="a partner's agency; null for other roles")
    referral_id: str | None
    detail: list[str] = Field(description="codes, never personal data")


class AuditListing(_Answer):
    items: list[AuditRow] = Field(description="oldest first")
    page: int
    page_size: int
    total: int
    next_page: int | None = Field(description="null on the last page")


def audit_row(entry: AuditEntry) -> AuditRow:
    assert entry.id is not None
    return AuditRow(id=entry.id, at=entry.at, action=AuditAction(entry.action),
                    role=entry.role, agency_id=entry.agency_id,
                    referral_id=entry.referral_id, detail=entry.detail_codes)


def read_audit(store: ReferralStore, referral_id: str | None, since: datetime | None,
               page: int, page_size: int) -> AuditListing:
    found = store.audit_page(referral_id, since, page, page_size)
    return AuditListing(
        items=[audit_row(entry) for entry in found.items], page=page, page_size=page_size,
        total=found.total, next_page=page + 1 if page * page_size < found.total else None,
    )


@router.get("/audit", response_model=AuditListing, tags=["audit"], dependencies=ADMIN_ONLY,
            responses=problems(401, 403, (422, "A parameter is invalid (`detail` names it "
                                          "and what it takes, never the value sent).")))
async def list_audit(
    ctx: Context,
    referral_id: Annotated[PrintableText | None, Query(description="only this referral's")]
    = None,
    since: Annotated[Since | None, Query(description="only the rows at or after then")] = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE), ASCII_DIGITS] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE), ASCII_DIGITS] = DEFAULT_PAGE_SIZE,
) -> AuditListing:
    """The access trail (role admin): every read of personal data and every erasure, oldest
    first, page by page."""
    asked = referral_id or None
    return await in_store(ctx.engine, lambda s: read_audit(s, asked, since, page, page_size))


MAX_ACCESSED = 10_000
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
KNOWN_TOPICS = frozenset(str(topic) for topic in Topic)


class ShownDeadLetter(BaseModel):
    """A dead letter whose original is about to be shown, as the dead-letter topic has it."""

    model_config = ConfigDict(extra="ignore")

    event_id: str | None = Field(default=None, max_length=100)
    source_topic: str | None = Field(default=None, max_length=300)
    key: str | None = Field(default=None, max_length=100_000,
                            description="the letter's key (the referral_id on "
                            "`e2c.referrals.submitted.v1`)")


class AccessIn(BaseModel):
    """An access made outside the service, recorded before the data is shown."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["show_dead_letter_original"]
    dead_letters: list[ShownDeadLetter] = Field(max_length=MAX_ACCESSED)


class AccessRecorded(_Answer):
    recorded: int = Field(description="audit rows appended, one per dead letter")


def dead_letter_detail(letter: ShownDeadLetter) -> tuple[str | None, list[str]]:
    """(referral_id, detail codes) of a shown dead letter: its key names the referral only on
    the submitted topic; a value that is not a known code (topic, UUID) is not kept."""
    topic = letter.source_topic if letter.source_topic in KNOWN_TOPICS else "other"
    event_id = letter.event_id if letter.event_id and _UUID.fullmatch(letter.event_id) else None
    referral_id = letter.key if (
        topic == Topic.REFERRALS_SUBMITTED and letter.key
        and _REFERRAL_ID.fullmatch(letter.key)) else None
    return referral_id, [f"dead_letter={event_id or 'unknown'}", f"source_topic={topic}"]


def record_access(store: ReferralStore, actor: Actor, body: AccessIn) -> int:
    for letter in body.dead_letters:
        referral_id, detail = dead_letter_detail(letter)
        store.audit(actor, AuditAction.SHOW_DEAD_LETTER_ORIGINAL, [referral_id], detail)
    return len(body.dead_letters)


@router.post("/audit/access", response_model=AccessRecorded, tags=["audit"],
             responses=problems(401, 403, 413, 422))
async def post_access(
    ctx: Context, role: Annotated[str, allow(Role.OPS)], body: AccessIn
) -> AccessRecorded:
    """Records an access to personal data made outside the service (roles ops and admin):
    `e2c deadletters list --show-original` calls it before it prints the originals, and
    shows none when it fails."""
    recorded = await in_store(ctx.engine, lambda s: record_access(s, actor_of(role), body))
    return AccessRecorded(recorded=recorded)
