"""The referrals store: referrals (the only copy of personal data), claims and history."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Field, SQLModel, col, delete, select

from shared.contract import ReferralStatus
from shared.db import UtcDateTime
from shared.messaging import Store

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
            "duplicate_of", "person_key")})

    @property
    def reason_codes(self) -> list[str]:
        return list(json.loads(self.reasons))


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
    kind: str = Field(max_length=32)  # referral, resend, derogation, enrollment, exit, erasure
    request_event_id: str | None = Field(default=None, max_length=36)
    status: str = Field(max_length=32)
    reasons: str = "[]"
    at: datetime = Field(sa_type=UtcDateTime)


TABLES = (
    Referral.__table__,
    PersonClaim.__table__,
    StoreSecret.__table__,
    ReferralHistory.__table__,
)
PERSON_KEY_SECRET = "person_key"
_secrets: dict[str, bytes] = {}

class Stage(StrEnum):
    """Where a referral is: its decision, or enrolled / exited after it (`Referral.stage`)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PENDING_DEROGATION = "pending_derogation"
    DUPLICATE = "duplicate"
    ENROLLED = "enrolled"
    EXITED = "exited"


STAGES = tuple(stage.value for stage in Stage)


@dataclass(frozen=True)
class Page:
    items: list[Referral]
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
            found = select(Referral).where(col(Referral.referral_id).in_(referral_ids))
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
        return cache

    def person_digest(self, person_key: str) -> str:
        """The person key as stored: keyed with this store's secret, so that neither the
        table nor an error quoting it shows a name or a birth date."""
        secret = self._secret(PERSON_KEY_SECRET)
        return hmac.new(secret, person_key.encode("utf-8"), hashlib.sha256).hexdigest()

    def _secret(self, name: str) -> bytes:
        bind = str(self.session.get_bind().url)
        cache_key = f"{bind}#{name}"
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

    def history(self, referral_id: str) -> list[ReferralHistory]:
        query = (
            select(ReferralHistory)
            .where(ReferralHistory.referral_id == referral_id)
            .order_by(col(ReferralHistory.id))
        )
        return list(self.session.exec(query).all())

    def erase(self, referral: Referral, why: str) -> bool:
        """Deletes the person's data; the pseudonymous decisions stay. False if already done."""
        if referral.erased_at is not None:
            return False
        self.release_claim(referral)
        for name in PERSONAL_FIELDS:
            setattr(referral, name, None)
        referral.erased_at = now()
        self.touch(referral)
        self.log(referral.referral_id, "erasure", referral.status, [why], None)
        return True

    def erasure_candidates(self, cutoff: datetime) -> list[Referral]:
        settled = col(Referral.status).in_(
            [ReferralStatus.REJECTED.value, ReferralStatus.DUPLICATE.value]
        )
        not_exited = col(Referral.exited_on).is_(None)
        settled_before = settled & (col(Referral.status_changed_at) < cutoff) & not_exited
        query = select(Referral).where(
            col(Referral.erased_at).is_(None),
            or_(col(Referral.exited_on) < cutoff.date(), settled_before),
        )
        return list(self.session.exec(query).all())

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
