"""Aid subscribers: learn trainees, decide requests (or hold them), set envelopes, emit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from shared.aid_rules import load_rules
from shared.contract import (
    AidDecided,
    AidKind,
    AidReason,
    AidRequested,
    BudgetSubmitted,
    EnrollmentDecided,
    EnrollmentStatus,
    ExitDecided,
    ExitStatus,
    Topic,
    new_event_fields,
)
from shared.held import release_each
from shared.messaging import UnitOfWork
from shared.settings import Settings

from . import domain
from .store import AidBatch, AidStore, DecisionRow, EnvelopeKey, GrantRow, HeldRequest, now

Work = UnitOfWork[AidStore]


class AidHandlers:
    def __init__(self, rules: domain.AidRules) -> None:
        self.rules = rules

    @classmethod
    def from_settings(cls, settings: Settings) -> AidHandlers:
        return cls(load_rules(settings.aid_rules_file))

    def prepare(self, store: AidStore, events: list[BaseModel]) -> AidBatch:
        """Loads what the batch's handlers will read, so that they query nothing: its
        trainees (locked), previous decisions and grants, then the committed totals of the
        (year, kind) its requests are decided against (locked once for the batch)."""
        requests = [e for e in events if isinstance(e, AidRequested)]
        enrolled = [e for e in events if isinstance(e, EnrollmentDecided) and _enrolls(e)]
        exits = [e for e in events if isinstance(e, ExitDecided) and _records(e)]
        learnt = {e.trainee_id for e in enrolled if e.trainee_id is not None}
        learnt |= {e.trainee_id for e in exits}
        cache = store.load_batch(
            trainee_ids={e.trainee_id for e in requests} | learnt,
            learnt=learnt,
            request_ids={e.request_id for e in requests},
            held_for={e.trainee_id for e in enrolled if e.trainee_id is not None},
        )
        keys, childcare = self._decided_against(events, cache)
        store.load_envelopes(cache, keys, childcare)
        return cache

    def _decided_against(
        self, events: list[BaseModel], cache: AidBatch
    ) -> tuple[set[EnvelopeKey], set[tuple[int, str]]]:
        """The (year, kind) totals the batch's requests will be decided against or refused
        in (the rows `decide` would lock or count in), in the batch's order: a request
        decided before, or held, touches none; and the (year, trainee) of childcare ones."""
        enrolled = {trainee_id for trainee_id, row in cache.trainees.items()
                    if row is not None and row.as_domain() is not None}
        decided = {request_id for request_id, row in cache.decisions.items() if row is not None}
        keys: set[EnvelopeKey] = set()
        childcare: set[tuple[int, str]] = set()
        for event in events:
            if isinstance(event, EnrollmentDecided) and _enrolls(event):
                enrolled.add(event.trainee_id)  # type: ignore[arg-type]
            if not isinstance(event, AidRequested) or event.request_id in decided:
                continue
            decided.add(event.request_id)
            refusal = domain.request_refusal(as_request(event), self.rules)
            if refusal is None and event.trainee_id not in enrolled:
                continue  # held
            keys.add((event.period_start.year, event.kind.value))
            if event.kind is AidKind.CHILDCARE:
                childcare.add((event.period_start.year, event.trainee_id))
        return keys, childcare

    def on_request(self, uow: Work, event: AidRequested) -> None:
        store = uow.store
        if store.decision(event.request_id) is None and self._must_wait(store, event):
            store.hold(event.trainee_id, event.model_dump_json())
            return
        self.decide(uow, event)

    def _must_wait(self, store: AidStore, event: AidRequested) -> bool:
        """Valid on its own, but its trainee's enrollment not seen yet: held, not refused."""
        trainee = store.trainee(event.trainee_id)
        unknown = trainee is None or trainee.as_domain() is None
        return unknown and domain.request_refusal(as_request(event), self.rules) is None

    def decide(self, uow: Work, event: AidRequested) -> None:
        store = uow.store
        previous = store.decision(event.request_id)
        if previous is not None:  # a re-sent request: the same answer, nothing granted again
            uow.emit(Topic.AIDS_DECIDED, decided_event(previous, event))
            return
        # Locking the trainee serialises two decisions for one trainee across instances
        # (on the batch's fast path `prepare` locked the batch's trainees at once).
        row = store.trainee(event.trainee_id, for_update=True)
        trainee = row.as_domain() if row is not None else None
        decision = self._decision(store, event, trainee)
        school_id = trainee.school_id if trainee is not None else None
        record = decision_record(event, decision, school_id)
        store.record_decision(record)
        if decision.granted:
            assert school_id is not None
            store.add_grant(ledger_line(event, decision, school_id))
        uow.emit(Topic.AIDS_DECIDED, decided_event(record, event))

    def _decision(
        self, store: AidStore, event: AidRequested, trainee: domain.Trainee | None
    ) -> domain.AidDecision:
        request = as_request(event)
        early = domain.request_refusal(request, self.rules)
        if early is not None:
            return domain.refused(early)
        if trainee is None:
            return domain.refused(AidReason.UNKNOWN_TRAINEE)
        envelope = store.lock_envelope(request.year, request.kind)
        granted = store.granted_to(event.trainee_id)
        return domain.decide(request, trainee, granted, envelope, self.rules)

    def on_budget(self, uow: Work, event: BudgetSubmitted) -> None:
        uow.store.set_envelope(event.year, event.kind, event.envelope_cents)

    def on_enrollment(self, uow: Work, event: EnrollmentDecided) -> None:
        if not _enrolls(event):
            return
        assert event.trainee_id is not None
        assert event.school_id is not None and event.enrolled_on is not None
        uow.store.learn_enrollment(event.trainee_id, event.school_id, event.enrolled_on)
        held = uow.store.held_for(event.trainee_id)
        if held:
            self.decide_held(uow, held)

    def on_exit(self, uow: Work, event: ExitDecided) -> None:
        if _records(event):
            uow.store.learn_exit(event.trainee_id, event.exited_on)

    def decide_held(self, uow: Work, held: Sequence[HeldRequest]) -> None:
        """Each held request released and decided on its own (see `release_each`)."""

        def decide_one(request: HeldRequest) -> None:
            self.decide(uow, AidRequested.model_validate_json(request.payload))

        release_each(uow, uow.store.held, held, decide_one, Topic.AIDS_REQUESTED)

    def sweep(self, uow: Work, hold: timedelta, moment: datetime | None = None) -> int:
        """Decides the requests held longer than `hold`: still unknown, they are refused."""
        expired = uow.store.held.received_before((moment or now()) - hold)
        self.decide_held(uow, expired)
        return len(expired)


def _enrolls(event: EnrollmentDecided) -> bool:
    return event.status is EnrollmentStatus.ENROLLED and event.trainee_id is not None


def _records(event: ExitDecided) -> bool:
    return event.status is ExitStatus.RECORDED


def as_request(event: AidRequested) -> domain.AidRequest:
    return domain.AidRequest(
        kind=event.kind,
        quantity=event.quantity,
        amount_cents=event.amount_cents,
        period_start=event.period_start,
        period_end=event.period_end,
    )


def _request_columns(event: AidRequested, school_id: str | None) -> dict[str, Any]:
    """What a decision and a ledger line both keep of the request."""
    return {"request_id": event.request_id, "request_event_id": str(event.event_id),
            "trainee_id": event.trainee_id, "school_id": school_id, "kind": event.kind.value,
            "quantity": event.quantity, "period_start": event.period_start,
            "period_end": event.period_end}


def decision_record(
    event: AidRequested, decision: domain.AidDecision, school_id: str | None
) -> DecisionRow:
    return DecisionRow(
        **_request_columns(event, school_id),
        status=decision.status.value,
        reason=decision.reason.value if decision.reason else None,
        amount_cents=decision.amount_cents if decision.granted else event.amount_cents,
        decided_at=now(),
    )


def ledger_line(event: AidRequested, decision: domain.AidDecision, school_id: str) -> GrantRow:
    assert decision.amount_cents is not None
    return GrantRow(
        **_request_columns(event, school_id),
        rate_cents=decision.rate_cents,
        amount_cents=decision.amount_cents,
        year=event.period_start.year,
        month=event.period_start.month,
        granted_at=now(),
    )


def decided_event(record: DecisionRow, event: AidRequested) -> AidDecided:
    return AidDecided(
        **new_event_fields(),
        request_event_id=event.event_id,
        request_id=record.request_id,
        trainee_id=record.trainee_id,
        school_id=record.school_id,
        kind=record.kind,
        status=record.status,
        reasons=[record.reason] if record.reason else [],
        quantity=record.quantity,
        amount_cents=record.amount_cents,
        period_start=record.period_start,
        period_end=record.period_end,
    )

