"""The referrals store: referrals (with the only copy of personal data) and their decisions."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from sqlmodel import Field, Session, SQLModel, col, select


class Referral(SQLModel, table=True):
    """One referral. Name, birth date and contacts are erasable; the rest is pseudonymous."""

    __tablename__ = "referral"

    referral_id: str = Field(primary_key=True, max_length=64)
    agency_id: str = Field(index=True, max_length=200)
    agency_kind: str = Field(max_length=32)
    school_id: str = Field(max_length=100)
    referred_on: date
    status: str = Field(max_length=32)
    reasons: str = "[]"
    trainee_id: str | None = Field(default=None, index=True, max_length=64)
    duplicate_of: str | None = Field(default=None, max_length=64)
    highest_qualification: str = Field(max_length=16)
    in_school: bool
    has_work_experience: bool
    rqth: bool
    qpv_resident: bool
    first_name: str | None = None
    last_name: str | None = None
    birth_date: date | None = None
    email: str | None = None
    phone: str | None = None
    created_at: datetime
    updated_at: datetime

    @property
    def reason_codes(self) -> list[str]:
        return json.loads(self.reasons)


class ReferralDecision(SQLModel, table=True):
    """The history of a referral: every decision taken, in order, with its reasons."""

    __tablename__ = "referral_decision"

    id: int | None = Field(default=None, primary_key=True)
    referral_id: str = Field(index=True, max_length=64)
    request_event_id: str = Field(max_length=36)
    status: str = Field(max_length=32)
    reasons: str = "[]"
    decided_at: datetime


TABLES = (Referral.__table__, ReferralDecision.__table__)


class ReferralStore:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, referral_id: str) -> Referral | None:
        return self.session.get(Referral, referral_id)

    def add(self, referral: Referral) -> None:
        self.session.add(referral)

    def record_decision(
        self, referral: Referral, request_event_id: str, status: str, reasons: list[str]
    ) -> None:
        now = datetime.now(UTC)
        referral.status = status
        referral.reasons = json.dumps(reasons)
        referral.updated_at = now
        self.session.add(referral)
        self.session.add(
            ReferralDecision(
                referral_id=referral.referral_id,
                request_event_id=request_event_id,
                status=status,
                reasons=json.dumps(reasons),
                decided_at=now,
            )
        )

    def history(self, referral_id: str) -> list[ReferralDecision]:
        query = (
            select(ReferralDecision)
            .where(ReferralDecision.referral_id == referral_id)
            .order_by(col(ReferralDecision.id))
        )
        return list(self.session.exec(query).all())
