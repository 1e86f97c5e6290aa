"""Outcome subscribers: decide exits (or hold them), and keep the view the reports read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

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
from shared.messaging import Route, Unit

from . import domain
from .store import HeldExit, OutcomeStore, TraineeView, now


class OutcomeHandlers:
    def routes(self) -> dict[str, Route]:
        """What the running service consumes."""
        return {
            Topic.EXITS_SUBMITTED: Route(ExitSubmitted, self.on_exit),
            Topic.REFERRALS_DECIDED: Route(ReferralDecided, self.on_referral_decided),
            Topic.ENROLLMENTS_DECIDED: Route(EnrollmentDecided, self.on_enrollment),
            Topic.AIDS_DECIDED: Route(AidDecided, self.on_aid_decided),
        }

    def rebuild_routes(self) -> dict[str, Route]:
        """What a rebuild replays: the submissions (for their answers, deciding nothing), the
        view's topics, and the exits as they were decided."""
        return {
            Topic.EXITS_SUBMITTED: Route(ExitSubmitted, self.on_exit_replayed),
            Topic.REFERRALS_DECIDED: Route(ReferralDecided, self.on_referral_decided),
            Topic.ENROLLMENTS_DECIDED: Route(EnrollmentDecided, self.on_enrollment),
            Topic.AIDS_DECIDED: Route(AidDecided, self.on_aid_decided),
            Topic.EXITS_DECIDED: Route(ExitDecided, self.on_exit_decided),
        }

    # --- exits ----------------------------------------------------------------------------

    def on_exit(self, unit: Unit, event: ExitSubmitted) -> None:
        store = OutcomeStore(unit.session)
        payload = event.model_dump_json()
        store.remember_submission(str(event.event_id), event.trainee_id, payload)
        if store.trainee(event.trainee_id) is None:
            store.held.hold(event.trainee_id, payload)  # its enrollment may follow
            return
        self.decide(unit, store, event)

    def decide(self, unit: Unit, store: OutcomeStore, event: ExitSubmitted) -> None:
        row = store.trainee(event.trainee_id, for_update=True)
        trainee = row.as_domain() if row is not None else None
        reason = domain.exit_refusal(trainee, event.exited_on)
        if reason is None and row is not None:
            store.record_exit(row, event.exited_on, event.outcome, event.satisfied)
        store.mark_decided(str(event.event_id))
        unit.emit(Topic.EXITS_DECIDED, exit_decided(event, row, reason))

    def on_exit_replayed(self, unit: Unit, event: ExitSubmitted) -> None:
        OutcomeStore(unit.session).remember_submission(
            str(event.event_id), event.trainee_id, event.model_dump_json()
        )

    def on_exit_decided(self, unit: Unit, event: ExitDecided) -> None:
        """Rebuild: the view learns the exit as it was decided, with the satisfaction answer
        of the submission it answered."""
        store = OutcomeStore(unit.session)
        store.mark_decided(str(event.request_event_id))
        if event.status is not ExitStatus.RECORDED:
            return
        row = store.trainee(event.trainee_id)
        submission = store.submission(str(event.request_event_id))
        if row is None or submission is None:
            return
        satisfied = ExitSubmitted.model_validate_json(submission.payload).satisfied
        store.record_exit(row, event.exited_on, event.outcome, satisfied)

    def sweep(self, unit: Unit, hold: timedelta, moment: datetime | None = None) -> int:
        """Decides the exits held longer than `hold`: still unknown, they are refused."""
        store = OutcomeStore(unit.session)
        expired = store.held.received_before((moment or now()) - hold)
        self._decide_held(unit, store, expired)
        return len(expired)

    def _decide_held(self, unit: Unit, store: OutcomeStore, held: Sequence[HeldExit]) -> None:
        """Each held exit released and decided on its own (see `release_each`)."""

        def decide_one(row: HeldExit) -> None:
            self.decide(unit, store, ExitSubmitted.model_validate_json(row.payload))

        release_each(unit, store.held, held, decide_one, Topic.EXITS_SUBMITTED)

    # --- the view -------------------------------------------------------------------------

    def on_referral_decided(self, unit: Unit, event: ReferralDecided) -> None:
        if ReferralReason.NOT_PENDING in event.reasons:
            return  # an answer that changed nothing on the referral
        OutcomeStore(unit.session).learn_referral(
            event.referral_id, event.agency_id, event.school_id, event.status.value,
            event.trainee_id, event.occurred_at,
        )

    def on_enrollment(self, unit: Unit, event: EnrollmentDecided) -> None:
        if event.status is not EnrollmentStatus.ENROLLED or event.trainee_id is None:
            return
        store = OutcomeStore(unit.session)
        store.add_trainee(trainee_view(event))
        self._decide_held(unit, store, store.held.for_trainee(event.trainee_id))

    def on_aid_decided(self, unit: Unit, event: AidDecided) -> None:
        if event.status is AidStatus.GRANTED:
            OutcomeStore(unit.session).count_aid(event.trainee_id, event.kind)


def trainee_view(event: EnrollmentDecided) -> TraineeView:
    assert event.trainee_id and event.school_id and event.enrolled_on and event.agency_kind
    assert event.age_at_entry is not None
    return TraineeView(
        trainee_id=event.trainee_id,
        referral_id=event.referral_id,
        school_id=event.school_id,
        enrolled_on=event.enrolled_on,
        agency_kind=event.agency_kind.value,
        age_at_entry=event.age_at_entry,
        rqth=bool(event.rqth),
        qpv_resident=bool(event.qpv_resident),
        has_work_experience=bool(event.has_work_experience),
    )


def exit_decided(
    event: ExitSubmitted, trainee: TraineeView | None, reason: ExitReason | None
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
