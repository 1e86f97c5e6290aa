"""Referral subscribers: decode (done by the processor), decide, persist, emit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from shared.contract import ReferralDecided, ReferralSubmitted, Topic, new_event_fields
from shared.messaging import Route, Unit

from . import domain
from .store import Referral, ReferralStore


class ReferralHandlers:
    def __init__(self, known_schools: set[str]) -> None:
        self.known_schools = frozenset(known_schools)

    def routes(self) -> dict[str, Route]:
        return {Topic.REFERRALS_SUBMITTED: Route(ReferralSubmitted, self.on_referral_submitted)}

    def on_referral_submitted(self, unit: Unit, event: ReferralSubmitted) -> None:  # type: ignore[override]
        store = ReferralStore(unit.session)
        existing = store.get(event.referral_id)
        if existing is not None:
            # Re-sent under a new event_id: answer with the decision already taken.
            unit.emit(Topic.REFERRALS_DECIDED, decided_event(existing, event.event_id))
            return
        applicant = domain.Applicant(
            birth_date=event.candidate.birth_date,
            highest_qualification=event.candidate.highest_qualification,
            in_school=event.candidate.in_school,
            school_id=event.school_id,
        )
        decision = domain.decide_eligibility(
            applicant, event.occurred_at.date(), self.known_schools
        )
        referral = new_referral(event, decision)
        store.add(referral)
        store.record_decision(
            referral, str(event.event_id), decision.status, [str(r) for r in decision.reasons]
        )
        unit.emit(Topic.REFERRALS_DECIDED, decided_event(referral, event.event_id))


def new_referral(event: ReferralSubmitted, decision: domain.Decision) -> Referral:
    now = datetime.now(UTC)
    candidate = event.candidate
    return Referral(
        referral_id=event.referral_id,
        agency_id=event.agency.id,
        agency_kind=event.agency.kind,
        school_id=event.school_id,
        referred_on=event.occurred_at.date(),
        status=decision.status,
        trainee_id=new_trainee_id() if decision.gives_trainee else None,
        highest_qualification=candidate.highest_qualification,
        in_school=candidate.in_school,
        has_work_experience=candidate.has_work_experience,
        rqth=candidate.rqth,
        qpv_resident=candidate.qpv_resident,
        first_name=candidate.first_name,
        last_name=candidate.last_name,
        birth_date=candidate.birth_date,
        email=candidate.email,
        phone=candidate.phone,
        created_at=now,
        updated_at=now,
    )


def new_trainee_id() -> str:
    """A random pseudonym: nothing about the person can be derived from it."""
    return uuid.uuid4().hex


def decided_event(referral: Referral, request_event_id: uuid.UUID) -> ReferralDecided:
    return ReferralDecided(
        **new_event_fields(),
        request_event_id=request_event_id,
        referral_id=referral.referral_id,
        agency_id=referral.agency_id,
        school_id=referral.school_id,
        status=referral.status,
        reasons=referral.reason_codes,
        trainee_id=referral.trainee_id,
        duplicate_of=referral.duplicate_of,
    )
