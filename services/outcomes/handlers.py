"""Outcome subscribers: decide exits (or hold them), and keep the view the reports read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from shared.contract import (
    AidDecided,
    AidStatus,
    EnrollmentDecided,
    EnrollmentStatus,
    ExitDecided,
    ExitReason,
    ExitStatus,
    ExitSubmitted,
    ReferralDecided,
    ReferralReason,
    Topic,
    new_event_fields,
)
from shared.held import release_each
from shared.messaging import UnitOfWork
from shared.settings import Settings

from . import domain
from .store import HeldExit, OutcomeBatch, OutcomeStore, Trainee, now

Work = UnitOfWork[OutcomeStore]


class OutcomeHandlers:
    @classmethod
    def from_settings(cls, settings: Settings) -> OutcomeHandlers:
        return cls()

    def prepare(self, store: OutcomeStore, events: list[BaseModel]) -> OutcomeBatch:
        """Loads what the batch's handlers will read, so that they query nothing."""
        exits = [e for e in events if isinstance(e, ExitSubmitted)]
        enrolling = {e.trainee_id for e in events
                     if isinstance(e, EnrollmentDecided) and enrolls(e) and e.trainee_id}
        referral_ids = {e.referral_id for e in events
                        if isinstance(e, ReferralDecided) and changes_referral(e)}
        return store.load_batch(
            trainee_ids={e.trainee_id for e in exits} | enrolling,
            referral_ids=referral_ids,
            submission_ids={str(e.event_id) for e in exits},
            enrolling=enrolling,
        )

    # --- exits ----------------------------------------------------------------------------

    def on_exit(self, uow: Work, event: ExitSubmitted) -> None:
        store = uow.store
        payload = event.model_dump_json()
        store.remember_submission(str(event.event_id), event.trainee_id, payload)
        if store.trainee(event.trainee_id) is None:
            store.hold_exit(event.trainee_id, payload)  # its enrollment may follow
            return
        self.decide(uow, event)

    def decide(self, uow: Work, event: ExitSubmitted) -> None:
        store = uow.store
        row = store.trainee(event.trainee_id, for_update=True)
        trainee = row.as_domain() if row is not None else None
        reason = domain.exit_refusal(trainee, event.exited_on)
        if reason is None and row is not None:
            store.record_exit(row, event.exited_on, event.outcome, event.satisfied)
        store.mark_decided(str(event.event_id))
        uow.emit(Topic.EXITS_DECIDED, exit_decided(event, row, reason))

    def on_exit_replayed(self, uow: Work, event: ExitSubmitted) -> None:
        uow.store.remember_submission(
            str(event.event_id), event.trainee_id, event.model_dump_json()
        )

    def on_exit_decided(self, uow: Work, event: ExitDecided) -> None:
        """Rebuild: the view learns the exit as it was decided, with the satisfaction answer
        of the submission it answered."""
        store = uow.store
        store.mark_decided(str(event.request_event_id))
        if event.status is not ExitStatus.RECORDED:
            return
        row = store.trainee(event.trainee_id)
        submission = store.submission(str(event.request_event_id))
        if row is None or submission is None:
            return
        satisfied = ExitSubmitted.model_validate_json(submission.payload).satisfied
        store.record_exit(row, event.exited_on, event.outcome, satisfied)

    def finish_rebuild(self, uow: Work) -> int:
        """After a rebuild's replay, the submissions never answered: decided now when their
        trainee is known (a first answer), held again otherwise. Returns how many are held."""
        held = 0
        for submission in uow.store.undecided_submissions():
            event = ExitSubmitted.model_validate_json(submission.payload)
            if uow.store.trainee(event.trainee_id) is None:
                uow.store.hold_exit(submission.trainee_id, submission.payload)
                held += 1
            else:
                self.decide(uow, event)
        return held

    def sweep(self, uow: Work, hold: timedelta, moment: datetime | None = None) -> int:
        """Decides the exits held longer than `hold`: still unknown, they are refused."""
        expired = uow.store.held.received_before((moment or now()) - hold)
        self._decide_held(uow, expired)
        return len(expired)

    def _decide_held(self, uow: Work, held: Sequence[HeldExit]) -> None:
        """Each held exit released and decided on its own (see `release_each`)."""

        def decide_one(row: HeldExit) -> None:
            self.decide(uow, ExitSubmitted.model_validate_json(row.payload))

        release_each(uow, uow.store.held, held, decide_one, Topic.EXITS_SUBMITTED)

    # --- the view -------------------------------------------------------------------------

    def on_referral_decided(self, uow: Work, event: ReferralDecided) -> None:
        if not changes_referral(event):
            return
        uow.store.learn_referral(
            event.referral_id, event.agency_id, event.school_id, event.status.value,
            event.trainee_id, event.occurred_at,
        )

    def on_enrollment(self, uow: Work, event: EnrollmentDecided) -> None:
        if not enrolls(event) or event.trainee_id is None:
            return
        uow.store.add_trainee(trainee_columns(event))
        self._decide_held(uow, uow.store.held_exits(event.trainee_id))

    def on_aid_decided(self, uow: Work, event: AidDecided) -> None:
        if event.status is AidStatus.GRANTED:
            uow.store.count_aid(event.trainee_id, event.kind)


def changes_referral(event: ReferralDecided) -> bool:
    """Whether the view follows this answer: one that changed nothing on the referral
    (it was not pending any more) is left out."""
    return ReferralReason.NOT_PENDING not in event.reasons


def enrolls(event: EnrollmentDecided) -> bool:
    return event.status is EnrollmentStatus.ENROLLED and event.trainee_id is not None


def trainee_columns(event: EnrollmentDecided) -> dict[str, Any]:
    """The trainee's row as its enrollment makes it (no exit yet)."""
    assert event.trainee_id and event.school_id and event.enrolled_on and event.agency_kind
    assert event.age_at_entry is not None
    return {
        "trainee_id": event.trainee_id,
        "referral_id": event.referral_id,
        "school_id": event.school_id,
        "enrolled_on": event.enrolled_on,
        "agency_kind": event.agency_kind.value,
        "age_at_entry": event.age_at_entry,
        "rqth": bool(event.rqth),
        "qpv_resident": bool(event.qpv_resident),
        "has_work_experience": bool(event.has_work_experience),
        "exited_on": None, "outcome": None, "category": None, "satisfied": None,
    }


def exit_decided(
    event: ExitSubmitted, trainee: Trainee | None, reason: ExitReason | None
) -> ExitDecided:
    return ExitDecided(
        **new_event_fields(),
        request_event_id=event.event_id,
        trainee_id=event.trainee_id,
        school_id=trainee.school_id if trainee is not None else None,
        status=ExitStatus.REJECTED if reason else ExitStatus.RECORDED,
        reasons=[reason] if reason else [],
        outcome=event.outcome,
        category=domain.category_of(event.outcome),
        exited_on=event.exited_on,
    )
