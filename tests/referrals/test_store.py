"""The referrals store on SQLite and on PostgreSQL: personal data in the referral row only,
the race of two claims of one person, retention, and the batch fast path of referrals."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from services.referrals.app import TOPOLOGY
from services.referrals.handlers import ReferralHandlers, erase_due
from services.referrals.store import TABLES, PersonClaim, Referral, ReferralStore
from shared.contract import MODELS, Topic
from shared.messaging import Route, UnitOfWork
from shared.schools import load_schools
from tests import events, plumbing
from tests.events import referral
from tests.plumbing import engine_fixture, inbound, outbox

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)
processor = partial(plumbing.processor, TOPOLOGY)  # the referrals service's, as deployed
record = partial(inbound, Topic.REFERRALS_SUBMITTED)


def test_personal_data_is_kept_only_in_the_referral_row(engine: Engine) -> None:
    event = referral()
    processor(engine).process([record(event, 0)])
    with Session(engine) as session:
        stored = session.get(Referral, event["referral_id"])
        assert stored is not None and stored.last_name == event["candidate"]["last_name"]
    assert all(event["candidate"]["last_name"] not in m.payload for m in outbox(engine))


def test_two_live_claims_of_one_person_cannot_both_commit(engine: Engine) -> None:
    """The race of two instances accepting one person at once: the store refuses the second
    claim (its batch then rolls back and, read again, finds the first: a duplicate)."""
    outcome: dict[str, BaseException | None] = {}

    def second_instance() -> None:
        try:
            with Session(engine) as session:
                session.add(PersonClaim(person_key="digest-of-one-person", referral_id="B"))
                session.commit()
            outcome["second"] = None
        except BaseException as error:
            outcome["second"] = error

    with Session(engine) as first:
        first.add(PersonClaim(person_key="digest-of-one-person", referral_id="A"))
        first.flush()  # holds the row (PostgreSQL) or the write lock (SQLite)
        racer = threading.Thread(target=second_instance)
        racer.start()
        racer.join(timeout=0.5)
        assert racer.is_alive()  # the second instance waits for the first transaction
        first.commit()
    racer.join(timeout=30)

    assert isinstance(outcome["second"], IntegrityError)
    with Session(engine) as session:
        claims = session.exec(select(PersonClaim)).all()
    assert [(c.person_key, c.referral_id) for c in claims] == [("digest-of-one-person", "A")]


def test_retention_erases_settled_and_exited_referrals_only(engine: Engine) -> None:
    rejected, live, exited = referral(candidate={"in_school": True}), referral(), referral()
    processor(engine).process([record(e, i) for i, e in enumerate((rejected, live, exited))])
    with Session(engine) as session:
        store = ReferralStore(session)
        leaver = store.get(exited["referral_id"])
        assert leaver is not None
        leaver.exited_on = date.today()
        session.commit()

    with Session(engine) as session:
        too_soon = erase_due(ReferralStore(session), 24, datetime.now(UTC))
        later = erase_due(
            ReferralStore(session), 24, datetime.now(UTC) + timedelta(days=25 * 31)
        )
        session.commit()

    assert (too_soon, later) == (0, 2)
    with Session(engine) as session:
        store = ReferralStore(session)
        kept = {e["referral_id"]: store.get(e["referral_id"]) for e in (rejected, live, exited)}
        still_followed = kept[live["referral_id"]]
        assert still_followed is not None
        assert still_followed.last_name == live["candidate"]["last_name"]
        for gone in (rejected, exited):
            row = kept[gone["referral_id"]]
            assert row is not None and row.last_name is None and row.birth_date is None
            assert row.status in ("rejected", "accepted")
            assert [h.kind for h in store.history(gone["referral_id"])][-1] == "erasure"


@pytest.mark.parametrize("prepared", [True, False])
def test_the_same_person_twice_in_one_batch_is_one_acceptance_and_one_duplicate(
    engine: Engine, prepared: bool
) -> None:
    """With the batch cache (the fast path) and without it (the savepoint path)."""
    person = {"last_name": referral()["candidate"]["last_name"]}
    first, second = referral(candidate=person), referral(candidate=person)
    handlers = ReferralHandlers(set(load_schools()))
    batch = processor(engine, handlers=handlers, prepared=prepared)

    batch.process([record(first, 0), record(second, 1)])

    statuses = [json.loads(m.payload)["status"] for m in outbox(engine)]
    assert statuses == ["accepted", "duplicate"]


def test_a_referral_changed_in_the_batch_that_created_it_is_still_right(engine: Engine) -> None:
    """The fast path writes new referrals in bulk and lets the batch read a frozen copy; a
    derogation and an enrollment of that referral in the same batch ask the store for the
    row to change (the batch's pending rows are written first): they apply as they would in
    separate batches."""
    pending = referral(candidate={"birth_date": "1997-01-02"})  # 27 on 2024-03-04
    derogation = events.derogation(pending["referral_id"])
    enrollment = events.enrollment(pending["referral_id"], enrolled_on="2024-03-06")

    processor(engine).process([
        record(pending, 0),
        inbound(Topic.DEROGATIONS_SUBMITTED, derogation, 1),
        inbound(Topic.ENROLLMENTS_SUBMITTED, enrollment, 2),
    ])

    answers = [(m.topic, json.loads(m.payload)["status"]) for m in outbox(engine)]
    assert answers == [
        (Topic.REFERRALS_DECIDED, "pending_derogation"),
        (Topic.REFERRALS_DECIDED, "accepted"),
        (Topic.ENROLLMENTS_DECIDED, "enrolled"),
    ]
    with Session(engine) as session:
        stored = ReferralStore(session).get(pending["referral_id"])
        assert stored is not None
        assert (stored.status, str(stored.enrolled_on)) == ("accepted", "2024-03-06")
        kinds = [h.kind for h in ReferralStore(session).history(pending["referral_id"])]
    assert kinds == ["referral", "derogation", "enrollment"]


def test_a_change_to_a_referral_of_the_same_batch_stays_on_the_fast_path(
    engine: Engine,
) -> None:
    """The derogation and the enrollment of a referral created in their batch are each
    handled once: the batch is not rolled back and handled again record by record."""
    handlers = ReferralHandlers(set(load_schools()))
    calls: Counter[str] = Counter()

    def counted(method: Any) -> Any:
        def handle(unit: UnitOfWork[ReferralStore], event: Any) -> None:
            calls[method.__name__] += 1
            method(handlers, unit, event)
        return handle

    routes = {topic: Route(MODELS[topic], counted(method))
              for topic, method in TOPOLOGY.consumes.items()}
    pending = referral(candidate={"birth_date": "1997-01-02"})  # needs a derogation
    derogation = events.derogation(pending["referral_id"])
    enrollment = events.enrollment(pending["referral_id"], enrolled_on="2024-03-06")

    result = processor(engine, routes).process([
        record(pending, 0),
        inbound(Topic.DEROGATIONS_SUBMITTED, derogation, 1),
        inbound(Topic.ENROLLMENTS_SUBMITTED, enrollment, 2),
    ])

    assert calls == {"on_referral": 1, "on_derogation": 1, "on_enrollment": 1}
    assert sum(result.handled.values()) == 3
