"""The referrals store: referrals (the only copy of personal data), claims and history, and
the agencies' webhooks with their queue of deliveries."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import DDL, URL, Index, event, func, or_, update
from sqlmodel import Field, SQLModel, col, delete, select

from shared.contract import ReferralStatus, Topic
from shared.db import UtcDateTime, insert_ignore, is_postgresql
from shared.messaging import Store, write_outbox, write_tombstone

from . import domain

PERSONAL_FIELDS = ("first_name", "last_name", "birth_date", "email", "phone", "person_key")


class Referral(SQLModel, table=True):
    """One referral. Names, birth date, contacts and person key are erasable; the rest is not
    personal (the pseudonymous trainee id and the minimised profile)."""

    __tablename__ = "referral"

    referral_id: str = Field(primary_key=True, max_length=64)
    agency_id: str = Field(index=True, max_length=200)
    agency_kind: str = Field(max_length=32)
    school_id: str = Field(max_length=100)
    referred_on: date
    status: str = Field(max_length=32)
    reasons: str = "[]"
    status_changed_at: datetime = Field(sa_type=UtcDateTime)
    trainee_id: str | None = Field(default=None, index=True, max_length=64)
    duplicate_of: str | None = Field(default=None, max_length=64)
    highest_qualification: str = Field(max_length=16)
    in_school: bool
    has_work_experience: bool
    rqth: bool
    qpv_resident: bool
    enrolled_on: date | None = None
    enrolled_school_id: str | None = Field(default=None, max_length=100)
    age_at_entry: int | None = None
    exited_on: date | None = None
    erased_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    first_name: str | None = None
    last_name: str | None = None
    birth_date: date | None = None
    email: str | None = None
    phone: str | None = None
    person_key: str | None = Field(default=None, max_length=64)  # a keyed digest
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(index=True, sa_type=UtcDateTime)

    @property
    def reason_codes(self) -> list[str]:
        return list(json.loads(self.reasons))

    @property
    def stage(self) -> str:
        """Where the young person is: the decision, or enrolled / exited after it."""
        if self.exited_on is not None:
            return "exited"
        if self.enrolled_on is not None:
            return "enrolled"
        return self.status


@dataclass(frozen=True)
class NewReferral:
    """A referral created on the batch's fast path, as the rest of the batch reads it: its
    row is written with the batch (see `BatchScope`). Frozen, so that nothing changes it
    behind the store's back: `ReferralStore.changeable` gives the real row to change."""

    referral_id: str
    agency_id: str
    school_id: str
    status: str
    reasons: str
    trainee_id: str | None
    duplicate_of: str | None
    person_key: str | None
    enrolled_on: date | None = None
    exited_on: date | None = None
    erased_at: datetime | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> NewReferral:
        return cls(**{name: row[name] for name in (
            "referral_id", "agency_id", "school_id", "status", "reasons", "trainee_id",
            "duplicate_of", "person_key")}, erased_at=row.get("erased_at"))

    @property
    def reason_codes(self) -> list[str]:
        return list(json.loads(self.reasons))


class ReferralErasure(SQLModel, table=True):
    """(1.1) Every referral whose personal data was erased, written with the erasure (and
    journaled on `domain.ERASURE_JOURNAL`): a submission read again after a restore is
    stored already erased. No personal data."""

    __tablename__ = "referral_erasure"

    referral_id: str = Field(primary_key=True, max_length=64)
    erased_at: datetime = Field(sa_type=UtcDateTime)
    reason: str = Field(max_length=40)


class PersonClaim(SQLModel, table=True):
    """At most one live referral per person: the primary key makes a concurrent second
    acceptance of the same person fail (and its batch retry), whatever the partition."""

    __tablename__ = "person_claim"

    person_key: str = Field(primary_key=True, max_length=64)
    referral_id: str = Field(max_length=64)


class StoreSecret(SQLModel, table=True):
    """Random keys of this store, made on first use (shared by every instance on the store)."""

    __tablename__ = "store_secret"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=128)


class ReferralHistory(SQLModel, table=True):
    """The history of a referral: every decision taken on it, in order, with its reasons."""

    __tablename__ = "referral_history"

    id: int | None = Field(default=None, primary_key=True)
    referral_id: str = Field(index=True, max_length=64)
    # referral, resend, derogation, enrollment, exit, erasure, expiry
    kind: str = Field(max_length=32)
    request_event_id: str | None = Field(default=None, max_length=36)
    status: str = Field(max_length=32)
    reasons: str = "[]"
    at: datetime = Field(sa_type=UtcDateTime)


class ReferralSubmission(SQLModel, table=True):
    """(1.1) A referral received over HTTP: what makes a retry idempotent and a reused
    `referral_id` a conflict. No personal data: the candidate is kept as a keyed digest, and
    the event itself leaves through the outbox onto `e2c.referrals.submitted.v1`."""

    __tablename__ = "referral_submission"

    referral_id: str = Field(primary_key=True, max_length=64)
    agency_id: str = Field(max_length=200)
    event_id: str = Field(max_length=36)
    candidate_digest: str = Field(max_length=64)
    received_at: datetime = Field(sa_type=UtcDateTime)


class WebhookEndpoint(SQLModel, table=True):
    """An agency's callback URL and the secret its deliveries are signed with. The secret is
    shown once, when it is made, and is kept here only (never logged, never listed)."""

    __tablename__ = "webhook_endpoint"

    agency_id: str = Field(primary_key=True, max_length=200)
    url: str = Field(max_length=domain.MAX_WEBHOOK_URL_LENGTH)
    secret: str = Field(max_length=128)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


PENDING, PARKED = "pending", "parked"


class WebhookDelivery(SQLModel, table=True):
    """One decision to push to an agency's webhook, written in the transaction of the decision
    (append-only: on the batch's fast path it is written in bulk with the batch). Deleted once
    the partner answered 2xx; `parked` after too many failures, until replayed. A worker
    sending it holds `lease_until`, so that another instance does not send it meanwhile."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (Index("ix_webhook_delivery_due", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    agency_id: str = Field(index=True, max_length=200)
    event_id: str = Field(max_length=36)  # the decision's event_id (E2C-Event-Id)
    type: str = Field(max_length=64)
    body: str  # the JSON sent, pseudonymous (see `domain.webhook_body`)
    created_at: datetime = Field(sa_type=UtcDateTime)
    state: str = Field(default=PENDING, max_length=16)  # pending, parked
    attempts: int = 0  # failed tries so far
    next_attempt_at: datetime = Field(sa_type=UtcDateTime)
    lease_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_attempt_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_status: int | None = None  # the partner's HTTP status, None without an answer
    last_error: str | None = Field(default=None, max_length=300)  # never a body or a URL
    parked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


@dataclass(frozen=True)
class Outgoing:
    """A delivery a worker claimed, with where and how to send it."""

    id: int
    agency_id: str
    event_id: str
    type: str
    body: str
    attempts: int
    url: str
    secret: str


class AuditEntry(SQLModel, table=True):
    """One access to, or erasure of, personal data: who (role, agency), when, which referral
    and what was done. Append-only (triggers refuse UPDATE, DELETE and, on PostgreSQL,
    TRUNCATE); it holds no personal data itself: `detail` is a JSON list of codes."""

    __tablename__ = "access_audit"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(index=True, sa_type=UtcDateTime)
    action: str = Field(max_length=40)
    role: str = Field(max_length=16)  # partner, admin, ops, operator, system
    agency_id: str | None = Field(default=None, max_length=200)  # a partner's only
    referral_id: str | None = Field(default=None, index=True, max_length=64)
    detail: str = "[]"

    @property
    def detail_codes(self) -> list[str]:
        return [str(code) for code in json.loads(self.detail)]


_REFUSED = "access_audit is append-only"
_APPEND_ONLY = {
    "sqlite": [
        f"CREATE TRIGGER access_audit_no_{verb.lower()} BEFORE {verb} ON access_audit "
        f"BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END"
        for verb in ("UPDATE", "DELETE")
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION access_audit_append_only() RETURNS trigger "
        f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{_REFUSED}'; END $$",
        "CREATE TRIGGER access_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON access_audit FOR EACH STATEMENT EXECUTE FUNCTION access_audit_append_only()",
    ],
}
for _dialect, _statements in _APPEND_ONLY.items():
    for _statement in _statements:
        event.listen(AuditEntry.__table__, "after_create",
                     DDL(_statement).execute_if(dialect=_dialect))


class AuditAction(StrEnum):
    """What an audit row records."""

    READ_PERSONAL_DATA = "read_personal_data"  # GET /referrals/{id}/personal-data
    READ_REFERRAL = "read_referral"  # a partner's GET of its referral (with the candidate)
    LIST_REFERRALS = "list_referrals"  # a partner's listing: one row per referral shown
    SHOW_DEAD_LETTER_ORIGINAL = "show_dead_letter_original"  # e2c deadletters --show-original
    EXPORT = "export"
    ERASURE = "erasure"


@dataclass(frozen=True)
class Actor:
    """Who reads or erases: a token's role (`partner` with its agency, `admin`, `ops`), the
    `operator` running a command on the host, or the service itself (`system`)."""

    role: str
    agency_id: str | None = None


SYSTEM = Actor("system")
OPERATOR = Actor("operator")


TABLES = (
    Referral.__table__,
    ReferralSubmission.__table__,
    PersonClaim.__table__,
    StoreSecret.__table__,
    ReferralHistory.__table__,
    WebhookEndpoint.__table__,
    WebhookDelivery.__table__,
    AuditEntry.__table__,
    ReferralErasure.__table__,
)
# The periodic jobs that several instances must never run at once: each one's PostgreSQL
# advisory lock key (any fixed 64-bit numbers, unique in the database).
JOB_LOCKS = {"expiry": 0x6532_6365_7870_0001, "retention": 0x6532_6365_7870_0002}
PERSON_KEY_SECRET = "person_key"
CANDIDATE_SECRET = "candidate"
_secrets: dict[tuple[URL, str], bytes] = {}  # (the store's URL, the secret's name)

class Stage(StrEnum):
    """Where a referral is: its decision, or enrolled / exited after it (`Referral.stage`)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PENDING_DEROGATION = "pending_derogation"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"
    ENROLLED = "enrolled"
    EXITED = "exited"


STAGES = tuple(stage.value for stage in Stage)


@dataclass(frozen=True)
class Page:
    items: list[Referral]
    total: int


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditEntry]
    total: int


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class BatchCache:
    """What a batch's handlers read, loaded at once: referrals by id and by trainee, live
    claims by person digest (None: known to be absent). Kept up to date by the store."""

    referrals: dict[str, Referral | None] = field(default_factory=dict)
    by_trainee: dict[str, Referral | None] = field(default_factory=dict)
    claims: dict[str, str | None] = field(default_factory=dict)
    webhook_agencies: frozenset[str] = frozenset()  # the agencies with a webhook
    erased: dict[str, ReferralErasure] = field(default_factory=dict)  # of the batch's ids
    # The person digest of each candidate of the batch (first name, last name, birth date):
    # keyed hashing costs as much as a query's share, done once per candidate.
    person_digests: dict[tuple[str, str, date], str] = field(default_factory=dict)


class ReferralStore(Store):
    """On the batch's fast path the store reads what the batch loaded at once (`BatchCache`)
    and writes new referrals, their claims and the history in bulk with the batch;
    everywhere else it reads and writes at once."""

    @property
    def cache(self) -> BatchCache | None:
        cache: BatchCache | None = self.batch.cache if self.batch is not None else None
        return cache


    def get(self, referral_id: str, for_update: bool = False) -> Referral | None:
        """`for_update` locks the row (PostgreSQL) against a concurrent change of it."""
        if self.cache is not None and referral_id in self.cache.referrals:
            return self.cache.referrals[referral_id]
        return self.session.get(Referral, referral_id, with_for_update=for_update)

    def by_trainee(self, trainee_id: str) -> Referral | None:
        if self.cache is not None and trainee_id in self.cache.by_trainee:
            return self.cache.by_trainee[trainee_id]
        query = select(Referral).where(
            Referral.trainee_id == trainee_id, Referral.duplicate_of == None  # noqa: E711
        )
        return self.session.exec(query).first()

    def load_batch(
        self, referral_ids: set[str], trainee_ids: set[str], digests: set[str]
    ) -> BatchCache:
        """Three queries for the whole batch instead of a few per record (the batch's
        `prepare`)."""
        cache = BatchCache()
        cache.referrals = dict.fromkeys(referral_ids)
        if referral_ids:
            # Locked (PostgreSQL), in the expiry job's order: an enrollment read before an
            # expiry commits would otherwise enroll a referral that has just expired.
            found = (select(Referral).where(col(Referral.referral_id).in_(referral_ids))
                     .order_by(col(Referral.referral_id)).with_for_update())
            cache.referrals.update({r.referral_id: r for r in self.session.exec(found).all()})
        cache.by_trainee = dict.fromkeys(trainee_ids)
        if trainee_ids:
            found = select(Referral).where(
                col(Referral.trainee_id).in_(trainee_ids), col(Referral.duplicate_of).is_(None)
            )
            cache.by_trainee.update({r.trainee_id: r for r in self.session.exec(found).all()
                                     if r.trainee_id})
        cache.claims = dict.fromkeys(digests)
        if digests:
            found_claims = select(PersonClaim).where(col(PersonClaim.person_key).in_(digests))
            cache.claims.update({c.person_key: c.referral_id
                                 for c in self.session.exec(found_claims).all()})
        cache.webhook_agencies = frozenset(self.session.exec(select(WebhookEndpoint.agency_id)))
        cache.erased = self._erasures(referral_ids)
        return cache

    def _erasures(self, referral_ids: set[str]) -> dict[str, ReferralErasure]:
        if not referral_ids:
            return {}
        found = select(ReferralErasure).where(col(ReferralErasure.referral_id).in_(referral_ids))
        return {row.referral_id: row for row in self.session.exec(found).all()}

    def erasure_of(self, referral_id: str) -> ReferralErasure | None:
        """(1.1) The journaled erasure of `referral_id` (one made before a restore, too)."""
        if self.cache is not None:
            return self.cache.erased.get(referral_id)
        return self.session.get(ReferralErasure, referral_id)

    def record_erasure(self, referral_id: str, erased_at: datetime, reason: str) -> bool:
        """Keeps an erasure learned from the journal (True when it was not known yet)."""
        return insert_ignore(self.session, ReferralErasure.__table__,  # type: ignore[arg-type]
                             {"referral_id": referral_id, "erased_at": erased_at,
                              "reason": reason})

    def person_digest(self, person_key: str) -> str:
        """The person key as stored: keyed with this store's secret, so that neither the
        table nor an error quoting it shows a name or a birth date."""
        secret = self._secret(PERSON_KEY_SECRET)
        return hmac.new(secret, person_key.encode("utf-8"), hashlib.sha256).hexdigest()

    def candidate_digest(self, candidate: dict[str, Any]) -> str:
        """A submitted candidate as stored: keyed, so that it reveals nothing, and taken
        over the canonical JSON, so that the same candidate always gives the same digest."""
        canonical = json.dumps(candidate, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False)
        secret = self._secret(CANDIDATE_SECRET)
        return hmac.new(secret, canonical.encode("utf-8"), hashlib.sha256).hexdigest()

    def submission(self, referral_id: str) -> ReferralSubmission | None:
        return self.session.get(ReferralSubmission, referral_id)

    def record_submission(self, submission: ReferralSubmission) -> None:
        self.session.add(submission)
        self.session.flush()  # a concurrent submission of the same id fails here

    def request_event_of(self, referral_id: str) -> str | None:
        """The `event_id` of the submission that created the referral (its history)."""
        query = select(ReferralHistory.request_event_id).where(
            ReferralHistory.referral_id == referral_id, ReferralHistory.kind == "referral"
        )
        return self.session.exec(query).first()

    def _secret(self, name: str) -> bytes:
        cache_key = (self.session.get_bind().url, name)  # no URL rendered per call
        if cache_key not in _secrets:
            row = self.session.get(StoreSecret, name)
            if row is None:
                # Two instances racing here: one insert fails and its batch is retried.
                row = StoreSecret(name=name, value=secrets.token_hex(32))
                self.session.add(row)
                self.session.flush()
            _secrets[cache_key] = bytes.fromhex(row.value)
        return _secrets[cache_key]

    def live_referral_of(self, person_key: str) -> str | None:
        if self.cache is not None and person_key in self.cache.claims:
            return self.cache.claims[person_key]
        query = select(PersonClaim.referral_id).where(PersonClaim.person_key == person_key)
        return self.session.exec(query).first()

    def add(self, row: dict[str, Any], live: bool) -> Referral | NewReferral:
        """A new referral (and its claim on the person while it is live).

        On the batch's fast path its rows are written in bulk with the batch and the batch
        reads a frozen copy (`NewReferral`); elsewhere they are ORM rows like any other.
        """
        claim = {"person_key": row["person_key"], "referral_id": row["referral_id"]}
        if self.batch is not None and self.cache is not None:  # the batch reads its cache
            self.batch.insert(Referral.__table__, row)  # type: ignore[arg-type]
            if live:
                self.batch.insert(PersonClaim.__table__, claim)  # type: ignore[arg-type]
            new: Referral | NewReferral = NewReferral.of(row)
        else:
            new = Referral(**row)
            self.session.add(new)
            if live:
                self.session.add(PersonClaim(**claim))
        if self.cache is not None:
            self.cache.referrals[row["referral_id"]] = new  # type: ignore[assignment]
            if row["trainee_id"] is not None and row["duplicate_of"] is None:
                self.cache.by_trainee[row["trainee_id"]] = new  # type: ignore[assignment]
            if live:
                self.cache.claims[row["person_key"]] = row["referral_id"]
        return new

    def changeable(self, referral: Referral | NewReferral) -> Referral:
        """The row to change. A referral created on the batch's fast path is not written yet:
        the batch's pending rows are written first, then the real row is read (and the
        batch's cache points at it from then on)."""
        if isinstance(referral, Referral):
            return referral
        assert self.batch is not None, "a NewReferral only exists in a batch"
        self.batch.write_pending()
        row = self.session.get(Referral, referral.referral_id)
        assert row is not None
        if self.cache is not None:
            self.cache.referrals[row.referral_id] = row
            if row.trainee_id is not None and row.duplicate_of is None:
                self.cache.by_trainee[row.trainee_id] = row
        return row

    def release_claim(self, referral: Referral) -> None:
        if referral.person_key is None:
            return
        if self.cache is not None:
            self.cache.claims[referral.person_key] = None
        self.session.exec(
            delete(PersonClaim).where(
                col(PersonClaim.person_key) == referral.person_key,
                col(PersonClaim.referral_id) == referral.referral_id,
            )
        )

    def set_status(self, referral: Referral, status: str, reasons: list[str]) -> None:
        moment = now()
        referral.status = status
        referral.reasons = json.dumps(reasons)
        referral.status_changed_at = moment
        referral.updated_at = moment
        self.session.add(referral)

    def touch(self, referral: Referral) -> None:
        referral.updated_at = now()
        self.session.add(referral)

    def log(
        self,
        referral_id: str,
        kind: str,
        status: str,
        reasons: list[str],
        request_event_id: str | None,
    ) -> None:
        row = {"referral_id": referral_id, "kind": kind, "request_event_id": request_event_id,
               "status": status, "reasons": json.dumps(reasons), "at": now()}
        if self.batch is not None:
            self.batch.insert(ReferralHistory.__table__, row)  # type: ignore[arg-type]
        else:
            self.session.add(ReferralHistory(**row))

    def has_webhook(self, agency_id: str) -> bool:
        if self.cache is not None:
            return agency_id in self.cache.webhook_agencies
        return self.session.get(WebhookEndpoint, agency_id) is not None

    def enqueue_webhook(
        self, agency_id: str, topic: str, event: BaseModel, referral_id: str
    ) -> bool:
        """Queues `event` (published on, or read from, `topic`) for the agency's webhook, in
        the transaction that decided it; False when the agency has none. Append-only: on the
        batch's fast path the row is written in bulk with the batch."""
        if not agency_id or not self.has_webhook(agency_id):
            return False
        moment = now()
        row = {
            "agency_id": agency_id, "event_id": str(event.event_id),  # type: ignore[attr-defined]
            "type": domain.WEBHOOK_KINDS[topic].type,
            "body": domain.webhook_body(topic, event, referral_id),
            "created_at": moment, "state": PENDING, "attempts": 0, "next_attempt_at": moment,
            "lease_until": None, "last_attempt_at": None, "last_status": None,
            "last_error": None, "parked_at": None,
        }
        if self.batch is not None:
            self.batch.insert(WebhookDelivery.__table__, row)  # type: ignore[arg-type]
        else:
            self.session.add(WebhookDelivery(**row))
        return True

    def history(self, referral_id: str) -> list[ReferralHistory]:
        query = (
            select(ReferralHistory)
            .where(ReferralHistory.referral_id == referral_id)
            .order_by(col(ReferralHistory.id))
        )
        return list(self.session.exec(query).all())

    def erase(self, referral: Referral, why: str, actor: Actor = SYSTEM,
              journal: bool = True) -> bool:
        """Deletes the person's data; the pseudonymous decisions stay. False if already done.
        The erasure is audited (as `actor`: retention and other callers are `system`) and,
        unless it is one applied again from the journal, journaled."""
        if referral.erased_at is not None:
            return False
        self.release_claim(referral)
        for name in PERSONAL_FIELDS:
            setattr(referral, name, None)
        referral.erased_at = now()
        self.touch(referral)
        self.log(referral.referral_id, "erasure", referral.status, [why], None)
        self.audit(actor, AuditAction.ERASURE, [referral.referral_id], [why])
        # (1.1) Its submission leaves the topic too: compaction drops it behind this tombstone.
        write_tombstone(self.session, Topic.REFERRALS_SUBMITTED, referral.referral_id)
        if journal:
            self.journal_erasure(referral.referral_id, referral.erased_at, why)
        return True

    def journal_erasure(self, referral_id: str, erased_at: datetime, why: str) -> None:
        """(1.1) The erasure kept in the store and, through the outbox, on the journal topic,
        in the erasure's transaction: a restored backup re-applies it (`deploy.backup`)."""
        self.record_erasure(referral_id, erased_at, why)
        write_outbox(self.session, [{
            "topic": domain.ERASURE_JOURNAL, "key": referral_id,
            "payload": domain.erasure_record(referral_id, erased_at, why),
            "created_at": erased_at,
        }])

    def audit(self, actor: Actor, action: AuditAction, referral_ids: Sequence[str | None],
              detail: Sequence[str] = ()) -> None:
        """Appends one audit row per referral (None: an access naming no referral), in the
        transaction of the access. `detail` holds codes, never personal data."""
        moment = now()
        for referral_id in referral_ids:
            row = {"at": moment, "action": action.value, "role": actor.role,
                   "agency_id": actor.agency_id, "referral_id": referral_id,
                   "detail": json.dumps(list(detail))}
            if self.batch is not None:
                self.batch.insert(AuditEntry.__table__, row)  # type: ignore[arg-type]
            else:
                self.session.add(AuditEntry(**row))

    def audit_page(self, referral_id: str | None, since: datetime | None, page: int,
                   page_size: int) -> AuditPage:
        """The audit rows (of `referral_id`, at or after `since`), oldest first."""
        conditions = []
        if referral_id is not None:
            conditions.append(col(AuditEntry.referral_id) == referral_id)
        if since is not None:
            conditions.append(col(AuditEntry.at) >= since)
        total = self.session.exec(
            select(func.count()).select_from(AuditEntry).where(*conditions)
        ).one()
        query = (
            select(AuditEntry).where(*conditions).order_by(col(AuditEntry.id))
            .offset((page - 1) * page_size).limit(page_size)
        )
        return AuditPage(items=list(self.session.exec(query).all()), total=int(total))

    def erasure_candidates(self, cutoff: datetime) -> list[Referral]:
        settled = col(Referral.status).in_([status.value for status in domain.SETTLED_STATUSES])
        not_exited = col(Referral.exited_on).is_(None)
        settled_before = settled & (col(Referral.status_changed_at) < cutoff) & not_exited
        query = select(Referral).where(
            col(Referral.erased_at).is_(None),
            or_(col(Referral.exited_on) < cutoff.date(), settled_before),
        )
        return list(self.session.exec(query).all())

    def enrolled_erasure_candidates(self, cutoff: datetime) -> list[tuple[Referral, datetime]]:
        """(1.1) Referrals enrolled (on the service's clock: its history) before `cutoff`,
        never exited and not erased, with the moment of their enrollment."""
        enrolled = (
            select(ReferralHistory.referral_id, func.min(ReferralHistory.at).label("at"))
            .where(col(ReferralHistory.kind) == "enrollment",
                   col(ReferralHistory.status) == "enrolled",
                   col(ReferralHistory.at) < cutoff)
            .group_by(col(ReferralHistory.referral_id))
            .subquery()
        )
        query = (
            select(Referral, enrolled.c.at)
            .join(enrolled, enrolled.c.referral_id == col(Referral.referral_id))
            .where(col(Referral.erased_at).is_(None), col(Referral.enrolled_on).is_not(None),
                   col(Referral.exited_on).is_(None))
        )
        return [(referral, at) for referral, at in self.session.exec(query).all()]

    def lock_job(self, job: str) -> bool:
        """Whether this transaction may run `job` (see `JOB_LOCKS`): several instances never
        run it at once. PostgreSQL: a transaction-scoped advisory lock, False when another
        instance holds it (skip this run). SQLite: True; the transaction holds the write lock
        from its BEGIN IMMEDIATE, so another instance's run waits for this one to commit."""
        if not is_postgresql(self.session.get_bind()):  # type: ignore[arg-type]
            return True
        lock = select(func.pg_try_advisory_xact_lock(JOB_LOCKS[job]))
        return bool(self.session.exec(lock).one())

    def expiry_candidates(self, deadline: datetime) -> list[Referral]:
        """(1.1) Accepted or pending referrals, not enrolled, decided before `deadline`,
        locked (PostgreSQL) so that an enrollment committed meanwhile takes them out."""
        query = (
            select(Referral)
            .where(col(Referral.status).in_([s.value for s in domain.EXPIRABLE_STATUSES]),
                   col(Referral.enrolled_on).is_(None),
                   col(Referral.status_changed_at) < deadline)
            .order_by(col(Referral.referral_id))  # the consumers' lock order (load_batch)
            .with_for_update()
        )
        return list(self.session.exec(query).all())

    def expire(self, referral: Referral) -> None:
        """(1.1) The referral expired: the person is free for a new referral."""
        self.set_status(referral, ReferralStatus.EXPIRED.value, [])
        self.release_claim(referral)
        self.log(referral.referral_id, "expiry", ReferralStatus.EXPIRED.value, [], None)

    def page_for_agency(
        self,
        agency_id: str,
        stage: str | None,
        since: datetime | None,
        page: int,
        page_size: int,
    ) -> Page:
        conditions = [col(Referral.agency_id) == agency_id]
        if since is not None:
            conditions.append(col(Referral.updated_at) >= since)
        if stage is not None:
            conditions.append(_stage_condition(stage))
        total = self.session.exec(
            select(func.count()).select_from(Referral).where(*conditions)
        ).one()
        query = (
            select(Referral)
            .where(*conditions)
            .order_by(col(Referral.updated_at), col(Referral.referral_id))
            .offset((page - 1) * page_size)
            .limit(page_size)
        )
        return Page(items=list(self.session.exec(query).all()), total=int(total))


def _stage_condition(stage: str):  # type: ignore[no-untyped-def]
    exited = col(Referral.exited_on).is_not(None)
    enrolled = col(Referral.enrolled_on).is_not(None)
    if stage == "exited":
        return exited
    if stage == "enrolled":
        return enrolled & col(Referral.exited_on).is_(None)
    return (col(Referral.status) == stage) & col(Referral.enrolled_on).is_(None) & ~exited


# --- Webhooks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookSet:
    """What setting a webhook did: `secret` is the new signing secret, to show once (None
    when an existing webhook kept its secret)."""

    agency_id: str
    url: str
    created: bool
    secret: str | None


class WebhookStore(ReferralStore):
    """The referrals store's webhook side: registrations, the queue of deliveries and what
    operations see of it. `ReferralStore` enqueues (in a handler's transaction); the worker,
    the admin route and the command use the rest."""

    def set_webhook(self, agency_id: str, url: str, rotate_secret: bool = False) -> WebhookSet:
        """Registers (or changes) the agency's URL; a new one gets a secret, an existing one
        keeps its own unless `rotate_secret`. The URL must be checked first."""
        moment = now()
        row = self.session.get(WebhookEndpoint, agency_id, with_for_update=True)
        secret = new_webhook_secret() if row is None or rotate_secret else None
        if row is None:
            assert secret is not None
            row = WebhookEndpoint(agency_id=agency_id, url=url, secret=secret,
                                  created_at=moment, updated_at=moment)
        else:
            row.url = url
            row.updated_at = moment
            if secret is not None:
                row.secret = secret
        self.session.add(row)
        self.session.flush()
        return WebhookSet(agency_id, url, created=row.created_at == moment, secret=secret)

    def remove_webhook(self, agency_id: str) -> int | None:
        """Removes the agency's webhook and the deliveries still queued for it (their count;
        None when it had no webhook)."""
        row = self.session.get(WebhookEndpoint, agency_id, with_for_update=True)
        if row is None:
            return None
        dropped = self.session.exec(  # type: ignore[call-overload]
            delete(WebhookDelivery).where(col(WebhookDelivery.agency_id) == agency_id)
        ).rowcount
        self.session.delete(row)
        return int(dropped or 0)

    def webhooks(self) -> list[dict[str, Any]]:
        """Every registration with its queue, without the secret or the URL's query string."""
        counts: dict[tuple[str, str], int] = {
            (agency, state): int(count)
            for agency, state, count in self.session.exec(
                select(WebhookDelivery.agency_id, WebhookDelivery.state, func.count())
                .group_by(col(WebhookDelivery.agency_id), col(WebhookDelivery.state))
            )
        }
        rows = self.session.exec(select(WebhookEndpoint).order_by(col(WebhookEndpoint.agency_id)))
        return [
            {"agency_id": row.agency_id, "url": domain.shown_url(row.url),
             "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat(),
             "pending": counts.get((row.agency_id, PENDING), 0),
             "parked": counts.get((row.agency_id, PARKED), 0)}
            for row in rows
        ]

    def claim_deliveries(self, limit: int, lease_seconds: float,
                         moment: datetime | None = None) -> list[Outgoing]:
        """Leases up to `limit` due deliveries for `lease_seconds` and returns them with their
        URL and secret. On PostgreSQL the rows another worker is claiming are skipped (`FOR
        UPDATE SKIP LOCKED`); on SQLite the transaction holds the write lock from its start.
        Deliveries of an agency whose webhook is gone are dropped. Commit to hold the lease."""
        moment = moment or now()
        due = (
            select(WebhookDelivery.id)
            .where(col(WebhookDelivery.state) == PENDING,
                   col(WebhookDelivery.next_attempt_at) <= moment,
                   or_(col(WebhookDelivery.lease_until).is_(None),
                       col(WebhookDelivery.lease_until) <= moment))
            .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
            .limit(limit)
        )
        if is_postgresql(self.session.get_bind()):  # type: ignore[arg-type]
            due = due.with_for_update(skip_locked=True)
        ids = list(self.session.exec(due))
        if not ids:
            return []
        self.session.exec(  # type: ignore[call-overload]
            update(WebhookDelivery).where(col(WebhookDelivery.id).in_(ids))
            .values(lease_until=moment + timedelta(seconds=lease_seconds))
        )
        found = self.session.exec(
            select(WebhookDelivery, WebhookEndpoint)
            .join(WebhookEndpoint, col(WebhookEndpoint.agency_id) == WebhookDelivery.agency_id,
                  isouter=True)
            .where(col(WebhookDelivery.id).in_(ids))
            .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
        ).all()
        orphans = [delivery.id for delivery, endpoint in found if endpoint is None]
        if orphans:
            self.session.exec(delete(WebhookDelivery).where(col(WebhookDelivery.id).in_(orphans)))
        return [
            Outgoing(id=delivery.id, agency_id=delivery.agency_id, event_id=delivery.event_id,
                     type=delivery.type, body=delivery.body, attempts=delivery.attempts,
                     url=endpoint.url, secret=endpoint.secret)
            for delivery, endpoint in found
            if endpoint is not None and delivery.id is not None
        ]

    def delivered(self, delivery_ids: Sequence[int]) -> None:
        if delivery_ids:
            self.session.exec(delete(WebhookDelivery).where(
                col(WebhookDelivery.id).in_(delivery_ids)))

    def failed(self, delivery: Outgoing, error: str, status: int | None,
               retry_in: float | None, moment: datetime | None = None) -> None:
        """Records a failed try: due again in `retry_in` seconds, or parked (None)."""
        moment = moment or now()
        values: dict[str, Any] = {
            "attempts": delivery.attempts + 1, "lease_until": None, "last_attempt_at": moment,
            "last_status": status, "last_error": error[:300],
        }
        if retry_in is None:
            values.update(state=PARKED, parked_at=moment)
        else:
            values["next_attempt_at"] = moment + timedelta(seconds=retry_in)
        self.session.exec(  # type: ignore[call-overload]
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == delivery.id,
                   col(WebhookDelivery.state) == PENDING)
            .values(**values)
        )

    def replay_parked(self, agency_id: str | None = None,
                      delivery_ids: Sequence[int] = ()) -> int:
        """Parked deliveries (of `agency_id`, or these ids, else all) due again now, with a
        fresh count of tries; returns how many."""
        conditions = [col(WebhookDelivery.state) == PARKED]
        if agency_id is not None:
            conditions.append(col(WebhookDelivery.agency_id) == agency_id)
        if delivery_ids:
            conditions.append(col(WebhookDelivery.id).in_(list(delivery_ids)))
        replayed = self.session.exec(  # type: ignore[call-overload]
            update(WebhookDelivery).where(*conditions).values(
                state=PENDING, attempts=0, next_attempt_at=now(), lease_until=None,
                parked_at=None)
        ).rowcount
        return int(replayed or 0)

    def webhook_state(self, limit: int, moment: datetime | None = None) -> dict[str, Any]:
        """What operations see: registrations, pending (and due) and parked deliveries, and
        the last failures (no body, no URL, no secret)."""
        moment = moment or now()
        counts = dict(self.session.exec(
            select(WebhookDelivery.state, func.count()).group_by(col(WebhookDelivery.state))
        ).all())
        due = self.session.exec(select(func.count()).select_from(WebhookDelivery).where(
            col(WebhookDelivery.state) == PENDING,
            col(WebhookDelivery.next_attempt_at) <= moment)).one()
        oldest = self.session.exec(
            select(WebhookDelivery.created_at).where(col(WebhookDelivery.state) == PENDING)
            .order_by(col(WebhookDelivery.created_at)).limit(1)).first()
        failures = self.session.exec(
            select(WebhookDelivery)
            .where(col(WebhookDelivery.last_error).is_not(None))
            .order_by(col(WebhookDelivery.last_attempt_at).desc(), col(WebhookDelivery.id).desc())
            .limit(limit)
        ).all()
        endpoints = self.session.exec(select(func.count()).select_from(WebhookEndpoint)).one()
        return {
            "endpoints": int(endpoints),
            "pending": int(counts.get(PENDING, 0)),
            "due": int(due),
            "parked": int(counts.get(PARKED, 0)),
            "oldest_pending_age_seconds":
                round((moment - oldest).total_seconds(), 1) if oldest else None,
            "last_errors": [
                {"id": row.id, "agency_id": row.agency_id, "type": row.type,
                 "event_id": row.event_id, "state": row.state, "attempts": row.attempts,
                 "last_status": row.last_status, "last_error": row.last_error,
                 "last_attempt_at": _iso_or_none(row.last_attempt_at),
                 "next_attempt_at": _iso_or_none(row.next_attempt_at)
                 if row.state == PENDING else None}
                for row in failures
            ],
        }


def new_webhook_secret() -> str:
    return secrets.token_urlsafe(32)


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
