"""Referral subscribers: decide (domain), persist (store), emit (outbox)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from shared.contract import (
    DerogationSubmitted,
    EnrollmentDecided,
    EnrollmentReason,
    EnrollmentStatus,
    EnrollmentSubmitted,
    ExitDecided,
    ExitStatus,
    ReferralDecided,
    ReferralStatus,
    ReferralSubmitted,
    Topic,
    new_event_fields,
)
from shared.messaging import UnitOfWork
from shared.schools import load_schools
from shared.settings import Settings

from . import domain
from .store import (
    PERSONAL_FIELDS,
    SYSTEM,
    AuditAction,
    BatchCache,
    NewReferral,
    Referral,
    ReferralStore,
    ReferralSubmission,
    now,
)

Work = UnitOfWork[ReferralStore]


@dataclass(frozen=True)
class Received:
    """A submission accepted for the pipeline: the answer to it and to its retries."""

    referral_id: str
    event_id: str


class ReferralHandlers:
    def __init__(self, known_schools: set[str]) -> None:
        self.known_schools = frozenset(known_schools)

    @classmethod
    def from_settings(cls, settings: Settings) -> ReferralHandlers:
        return cls(set(load_schools(settings.schools_file)))

    def prepare(self, store: ReferralStore, events: list[BaseModel]) -> BatchCache:
        """Loads what the batch's handlers will read, so that they query nothing."""
        referral_ids = {e.referral_id for e in events  # type: ignore[attr-defined]
                        if isinstance(e, ReferralSubmitted | DerogationSubmitted
                                      | EnrollmentSubmitted)}
        trainee_ids = {e.trainee_id for e in events if isinstance(e, ExitDecided)}
        digests = {self._identity(e): store.person_digest(self._person_key(e)) for e in events
                   if isinstance(e, ReferralSubmitted)}
        cache = store.load_batch(referral_ids, trainee_ids, set(digests.values()))
        cache.person_digests = digests
        return cache

    @staticmethod
    def _identity(event: ReferralSubmitted) -> tuple[str, str, date]:
        candidate = event.candidate
        return candidate.first_name, candidate.last_name, candidate.birth_date

    @staticmethod
    def _person_key(event: ReferralSubmitted) -> str:
        candidate = event.candidate
        return domain.person_key(candidate.first_name, candidate.last_name, candidate.birth_date)

    def _person_digest(self, store: ReferralStore, event: ReferralSubmitted) -> str:
        """The candidate's person key as stored, from the batch's `prepare` when it has it."""
        known = store.cache.person_digests.get(self._identity(event)) if store.cache else None
        return known if known is not None else store.person_digest(self._person_key(event))

    def submit(self, uow: Work, event: ReferralSubmitted) -> Received | None:
        """(1.1) A referral received over HTTP: recorded, and published on
        `e2c.referrals.submitted.v1` through the outbox, where the same pipeline decides it
        as one sent on Kafka. The same `referral_id` with the same candidate and agency is a
        retry, answered as the first time; with another one it is a conflict (None)."""
        store = uow.store
        digest = store.candidate_digest(event.candidate.model_dump(mode="json"))
        previous = store.submission(event.referral_id)
        if previous is not None:
            same = (previous.candidate_digest, previous.agency_id) == (digest, event.agency.id)
            return Received(previous.referral_id, previous.event_id) if same else None
        existing = store.get(event.referral_id)
        if existing is not None:  # sent on Kafka before: the same person of the same agency?
            same = (existing.agency_id == event.agency.id and existing.person_key is not None
                    and existing.person_key == store.person_digest(self._person_key(event)))
            if not same:
                return None
            return Received(existing.referral_id,
                            store.request_event_of(existing.referral_id) or str(event.event_id))
        store.record_submission(ReferralSubmission(
            referral_id=event.referral_id, agency_id=event.agency.id,
            event_id=str(event.event_id), candidate_digest=digest, received_at=now(),
        ))
        uow.emit(Topic.REFERRALS_SUBMITTED, event, original=True)  # the cause of what follows
        return Received(event.referral_id, str(event.event_id))

    def on_referral(self, uow: Work, event: ReferralSubmitted) -> None:
        store = uow.store
        existing = store.get(event.referral_id)
        if existing is not None:
            # Re-sent under a new event_id: the decision already taken, nothing changes.
            store.log(existing.referral_id, "resend", existing.status, existing.reason_codes,
                      str(event.event_id))
            answer(uow, existing, Topic.REFERRALS_DECIDED,
                   referral_decided(existing, event.event_id))
            return
        candidate = event.candidate
        key = self._person_digest(store, event)
        live = store.live_referral_of(key)
        decision = domain.decide_referral(
            domain.Applicant(
                birth_date=candidate.birth_date,
                highest_qualification=candidate.highest_qualification,
                in_school=candidate.in_school,
                school_id=event.school_id,
            ),
            event.occurred_at.date(),
            self.known_schools,
            live,
        )
        trainee_id = self._trainee_for(store, decision)
        row = new_referral(event, decision, key, trainee_id)
        erasure = store.erasure_of(event.referral_id)
        if erasure is not None:  # (1.1) erased after the backup this store was restored from
            row = erased(row, erasure.erased_at)
        created = store.add(row, decision.is_live and erasure is None)
        store.log(event.referral_id, "referral", decision.status,
                  [str(r) for r in decision.reasons], str(event.event_id))
        if erasure is not None:
            store.log(event.referral_id, "erasure", decision.status, [domain.RESTORE_REASON],
                      None)
            store.audit(SYSTEM, AuditAction.ERASURE, [event.referral_id],
                        [erasure.reason, domain.RESTORE_REASON])
        answer(uow, created, Topic.REFERRALS_DECIDED, referral_decided(created, event.event_id))

    @staticmethod
    def _trainee_for(store: ReferralStore, decision: domain.Decision) -> str | None:
        if decision.duplicate_of is not None:
            original = store.get(decision.duplicate_of)
            return original.trainee_id if original else None  # no new trainee
        return new_trainee_id() if decision.gives_trainee else None

    def on_derogation(self, uow: Work, event: DerogationSubmitted) -> None:
        store = uow.store
        referral = store.get(event.referral_id)
        current = ReferralStatus(referral.status) if referral else ReferralStatus.REJECTED
        decision = domain.decide_derogation(current, event.granted)
        reasons = [str(r) for r in decision.reasons]
        if referral is None:
            uow.emit(Topic.REFERRALS_DECIDED, not_pending_unknown(event))
            return
        if current is ReferralStatus.PENDING_DEROGATION:
            referral = store.changeable(referral)
            store.set_status(referral, decision.status, reasons)
            if not decision.gives_trainee:
                store.release_claim(referral)
                referral.trainee_id = None
            store.log(referral.referral_id, "derogation", decision.status, reasons,
                      str(event.event_id))
            answer(uow, referral, Topic.REFERRALS_DECIDED,
                   referral_decided(referral, event.event_id))
            return
        store.log(referral.referral_id, "derogation", decision.status, reasons,
                  str(event.event_id))
        answer(
            uow, referral, Topic.REFERRALS_DECIDED,
            referral_decided(referral, event.event_id, decision.status, reasons),
        )

    def on_enrollment(self, uow: Work, event: EnrollmentSubmitted) -> None:
        store = uow.store
        referral = store.get(event.referral_id)
        state = None
        if referral is not None:
            state = domain.ReferralState(
                status=ReferralStatus(referral.status),
                enrolled=referral.enrolled_on is not None,
                erased=referral.erased_at is not None,
            )
        refusal = domain.enrollment_refusal(state)
        if refusal is not None:
            refused = enrollment_refused(event, refusal)
            if referral is None:
                uow.emit(Topic.ENROLLMENTS_DECIDED, refused)  # no agency to tell
                return
            store.log(referral.referral_id, "enrollment", "rejected", [str(refusal)],
                      str(event.event_id))
            answer(uow, referral, Topic.ENROLLMENTS_DECIDED, refused)
            return
        assert referral is not None
        referral = store.changeable(referral)
        assert referral.birth_date is not None
        referral.enrolled_on = event.enrolled_on
        referral.enrolled_school_id = event.school_id
        referral.age_at_entry = domain.age_on(referral.birth_date, event.enrolled_on)
        store.touch(referral)
        store.log(referral.referral_id, "enrollment", "enrolled", [], str(event.event_id))
        answer(uow, referral, Topic.ENROLLMENTS_DECIDED, enrolled(referral, event))

    def on_exit(self, uow: Work, event: ExitDecided) -> None:
        """Learns from outcomes that a trainee left: the person may be referred again."""
        if event.status is not ExitStatus.RECORDED:
            return
        store = uow.store
        referral = store.by_trainee(event.trainee_id)
        if referral is None or referral.exited_on is not None:
            return
        referral = store.changeable(referral)
        referral.exited_on = event.exited_on
        store.release_claim(referral)
        store.touch(referral)
        store.log(referral.referral_id, "exit", str(event.outcome), [], str(event.event_id))
        # The agency's webhook learns the exit with the outcomes service's event id.
        store.enqueue_webhook(referral.agency_id, Topic.EXITS_DECIDED, event,
                              referral.referral_id)


def answer(
    uow: Work,
    referral: Referral | NewReferral,
    topic: Topic,
    event: BaseModel,
    cause: str | None = None,
) -> None:
    """Publishes a decision about `referral` and queues it for its agency's webhook (if it
    has one), both in the transaction of the decision, with the event's id as published
    (derived from `cause`, see `UnitOfWork.emit`)."""
    published = uow.emit(topic, event, cause=cause)
    uow.store.enqueue_webhook(referral.agency_id, topic, published, referral.referral_id)


def new_referral(
    event: ReferralSubmitted, decision: domain.Decision, person_key: str, trainee_id: str | None
) -> dict[str, Any]:
    """The columns of a new referral row."""
    moment = now()
    candidate = event.candidate
    return {
        "referral_id": event.referral_id,
        "agency_id": event.agency.id,
        "agency_kind": event.agency.kind.value,
        "school_id": event.school_id,
        "referred_on": event.occurred_at.date(),
        "status": decision.status.value,
        "reasons": _json_reasons(decision),
        "status_changed_at": moment,
        "trainee_id": trainee_id,
        "duplicate_of": decision.duplicate_of,
        "highest_qualification": candidate.highest_qualification.value,
        "in_school": candidate.in_school,
        "has_work_experience": candidate.has_work_experience,
        "rqth": candidate.rqth,
        "qpv_resident": candidate.qpv_resident,
        "first_name": candidate.first_name,
        "last_name": candidate.last_name,
        "birth_date": candidate.birth_date,
        "email": candidate.email,
        "phone": candidate.phone,
        "person_key": person_key,
        "created_at": moment,
        "updated_at": moment,
        "enrolled_on": None, "enrolled_school_id": None, "age_at_entry": None,
        "exited_on": None, "erased_at": None,
    }


def erased(row: dict[str, Any], erased_at: datetime) -> dict[str, Any]:
    """A new referral's columns without its personal data, as erased at `erased_at`."""
    return {**row, **dict.fromkeys(PERSONAL_FIELDS), "erased_at": erased_at}


def _json_reasons(decision: domain.Decision) -> str:
    return json.dumps([str(r) for r in decision.reasons])


def new_trainee_id() -> str:
    """A random pseudonym: nothing about the person can be derived from it."""
    return uuid.uuid4().hex


def referral_decided(
    referral: Referral | NewReferral,
    request_event_id: uuid.UUID | None,
    status: str | None = None,
    reasons: list[str] | None = None,
) -> ReferralDecided:
    """The referral's decision; `status`/`reasons` override it for an answer that changes
    nothing (a derogation on a referral that is not pending). No `request_event_id`: (1.1)
    its expiry, which answers no input."""
    status = status or referral.status
    return ReferralDecided(
        **new_event_fields(),
        request_event_id=request_event_id,
        referral_id=referral.referral_id,
        agency_id=referral.agency_id,
        school_id=referral.school_id,
        status=status,
        reasons=referral.reason_codes if reasons is None else reasons,
        trainee_id=referral.trainee_id if status != ReferralStatus.REJECTED else None,
        duplicate_of=referral.duplicate_of if status == ReferralStatus.DUPLICATE else None,
    )


def not_pending_unknown(event: DerogationSubmitted) -> ReferralDecided:
    """A derogation for a referral never seen: not pending; agency and school are unknown."""
    return ReferralDecided(
        **new_event_fields(),
        request_event_id=event.event_id,
        referral_id=event.referral_id,
        agency_id="",
        school_id="",
        status=ReferralStatus.REJECTED,
        reasons=["not_pending"],
    )


def enrollment_refused(event: EnrollmentSubmitted, reason: EnrollmentReason) -> EnrollmentDecided:
    return EnrollmentDecided(
        **new_event_fields(),
        request_event_id=event.event_id,
        referral_id=event.referral_id,
        status=EnrollmentStatus.REJECTED,
        reasons=[reason],
    )


def enrolled(referral: Referral, event: EnrollmentSubmitted) -> EnrollmentDecided:
    return EnrollmentDecided(
        **new_event_fields(),
        request_event_id=event.event_id,
        referral_id=referral.referral_id,
        status=EnrollmentStatus.ENROLLED,
        trainee_id=referral.trainee_id,
        school_id=event.school_id,
        enrolled_on=event.enrolled_on,
        agency_kind=referral.agency_kind,
        age_at_entry=referral.age_at_entry,
        rqth=referral.rqth,
        qpv_resident=referral.qpv_resident,
        has_work_experience=referral.has_work_experience,
    )


def erase_due(store: ReferralStore, retention_months: int, reference: datetime,
              enrolled_retention_months: float = 36) -> int:
    """Erases personal data of referrals settled (refused, duplicate, expired) or exited
    `retention_months` before `reference`, and of those enrolled and never exited
    `enrolled_retention_months` before it."""
    cutoff = domain.months_before(reference, retention_months)
    erased = 0
    for referral in store.erasure_candidates(cutoff):
        if domain.due_for_erasure(
            ReferralStatus(referral.status), referral.status_changed_at, referral.exited_on, cutoff
        ) and store.erase(referral, "retention"):
            erased += 1
    enrolled_cutoff = domain.retention_cutoff(reference, enrolled_retention_months)
    for referral, enrolled_at in store.enrolled_erasure_candidates(enrolled_cutoff):
        if domain.due_for_erasure(
            ReferralStatus(referral.status), referral.status_changed_at, referral.exited_on,
            cutoff, enrolled_at=enrolled_at, enrolled_cutoff=enrolled_cutoff,
        ) and store.erase(referral, "retention"):
            erased += 1
    return erased


def expire_due(uow: Work, expiry_days: float, reference: datetime) -> int | None:
    """(1.1) Expires the referrals accepted or pending and not enrolled `expiry_days` after
    the service decided them (`reference`: the service's clock): one `expired` decision each,
    published and queued for the agency's webhook in this transaction. None: another
    instance is running it (nothing done)."""
    store = uow.store
    if not store.lock_job("expiry"):
        return None
    deadline = reference - timedelta(days=expiry_days)
    expired = 0
    for referral in store.expiry_candidates(deadline):
        if not domain.expires(ReferralStatus(referral.status), referral.enrolled_on is not None,
                              referral.status_changed_at, deadline):
            continue
        store.expire(referral)
        answer(uow, referral, Topic.REFERRALS_DECIDED, referral_decided(referral, None),
               cause=f"expired:{referral.referral_id}")
        expired += 1
    return expired
