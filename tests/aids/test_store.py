"""The aids store on SQLite and PostgreSQL: aggregates equal the ledger, the envelope lock
makes a second instance wait, held requests are decided on enrollment or after the hold."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from services.aids.app import TOPOLOGY
from services.aids.handlers import AidHandlers
from services.aids.store import TABLES, AidStore, HeldRequest, LedgerLine
from shared.aid_rules import load_rules
from shared.contract import AidKind, Topic
from shared.messaging import unit_of_work
from tests import plumbing
from tests.events import aid_request, budget, enrollment_decided
from tests.plumbing import engine_fixture, pending_outbox, published

pytestmark = pytest.mark.infra

HANDLERS = AidHandlers(load_rules())
engine = engine_fixture(TABLES)
feed = partial(plumbing.feed, TOPOLOGY, handlers=HANDLERS)


def decisions(engine: Engine) -> list[dict[str, Any]]:
    return published(engine, Topic.AIDS_DECIDED)


def test_the_aggregates_equal_the_ledger(engine: Engine) -> None:
    trainees = [uuid.uuid4().hex for _ in range(4)]
    records = [(Topic.ENROLLMENTS_DECIDED, enrollment_decided(t, school_id=school))
               for t, school in zip(trainees, ["toulouse", "nimes", "nimes", "ales"], strict=True)]
    for index, trainee in enumerate(trainees):
        laptop = aid_request(trainee, "laptop", amount_cents=40000 + index)
        records.append((Topic.AIDS_REQUESTED, laptop))
        records.append((Topic.AIDS_REQUESTED, aid_request(
            trainee, "meals", quantity=10 + index, period_start="2024-03-01",
            period_end="2024-03-31")))
        records.append((Topic.AIDS_REQUESTED, aid_request(
            trainee, "childcare", amount_cents=12345, period_start="2024-04-10",
            period_end="2024-04-30")))
    records.append((Topic.AIDS_REQUESTED, aid_request(trainees[0], "laptop", amount_cents=1)))
    feed(engine, *records)

    with Session(engine) as session:
        lines = session.exec(select(LedgerLine)).all()
        totals = AidStore(session).year_totals(2024)
    assert len(lines) == 12
    for kind in AidKind:
        ours = [line for line in lines if line.kind == kind]
        assert totals.by_kind[kind].amount_cents == sum(line.amount_cents for line in ours)
        assert totals.by_kind[kind].granted == len(ours)
        assert totals.by_kind[kind].quantity == sum(line.quantity for line in ours)
    assert totals.by_kind[AidKind.LAPTOP].rejected == 1
    assert totals.by_kind[AidKind.CHILDCARE].trainees == 4
    assert totals.by_school["nimes"][AidKind.LAPTOP] == 40001 + 40002
    assert totals.by_month[3][AidKind.MEALS] == sum(10 + i for i in range(4)) * 700
    assert sum(sum(kinds.values()) for kinds in totals.by_school.values()) == sum(
        line.amount_cents for line in lines
    )


def test_a_trainee_granted_childcare_twice_counts_once(engine: Engine) -> None:
    """Two months of childcare, in one batch then in the next: one childcare trainee (on
    PostgreSQL an INSERT's rowcount read -1 and every grant counted a new trainee)."""
    trainee = uuid.uuid4().hex
    feed(engine, (Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee)),
         (Topic.AIDS_REQUESTED, aid_request(trainee, "childcare", amount_cents=29200,
                                            period_start="2024-11-21", period_end="2024-11-30")),
         (Topic.AIDS_REQUESTED, aid_request(trainee, "childcare", amount_cents=18600,
                                            period_start="2024-12-01", period_end="2024-12-31")))
    feed(engine, (Topic.AIDS_REQUESTED, aid_request(trainee, "childcare", amount_cents=100,
                                                    period_start="2024-10-01",
                                                    period_end="2024-10-31")))

    with Session(engine) as session:
        childcare = AidStore(session).year_totals(2024).by_kind[AidKind.CHILDCARE]
    assert (childcare.granted, childcare.trainees) == (3, 1)


def test_a_second_instance_waits_for_the_envelope_lock(engine: Engine) -> None:
    order: list[str] = []

    def second_instance() -> None:
        with Session(engine) as session:
            AidStore(session).lock_envelope(2024, AidKind.MEALS)
            order.append("second locked")
            session.commit()

    with Session(engine) as first:
        AidStore(first).lock_envelope(2024, AidKind.MEALS)
        first.flush()
        racer = threading.Thread(target=second_instance)
        racer.start()
        racer.join(timeout=0.5)
        order.append("first commits")
        first.commit()
    racer.join(timeout=30)

    assert order == ["first commits", "second locked"]


def test_a_held_request_is_decided_when_its_enrollment_arrives(engine: Engine) -> None:
    trainee = uuid.uuid4().hex
    feed(engine, (Topic.AIDS_REQUESTED, aid_request(trainee, "laptop", amount_cents=30000)))
    assert decisions(engine) == []
    with Session(engine) as session:
        assert AidStore(session).held.count() == 1

    feed(engine, (Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee, enrolled_on="2024-01-08")))

    [decision] = decisions(engine)
    assert (decision["status"], decision["school_id"]) == ("granted", "toulouse")
    with Session(engine) as session:
        assert AidStore(session).held.count() == 0


def test_the_sweep_refuses_what_is_held_past_the_hold(engine: Engine) -> None:
    feed(engine, (Topic.AIDS_REQUESTED, aid_request(uuid.uuid4().hex, "meals", quantity=1)))
    hold = timedelta(hours=24)
    with unit_of_work(engine, AidStore, "aids") as uow:
        too_early = HANDLERS.sweep(uow, hold)
    with unit_of_work(engine, AidStore, "aids") as uow:
        later = HANDLERS.sweep(uow, hold, datetime.now(UTC) + timedelta(hours=25))

    assert (too_early, later) == (0, 1)
    [decision] = decisions(engine)
    assert (decision["status"], decision["reasons"]) == ("rejected", ["unknown_trainee"])
    with Session(engine) as session:
        assert session.exec(select(HeldRequest)).all() == []
        assert AidStore(session).year_totals(2024).by_kind[AidKind.MEALS].rejected == 1


def test_an_amount_too_large_for_the_store_is_a_dead_letter_not_a_stuck_partition(
    engine: Engine,
) -> None:
    trainee = uuid.uuid4().hex
    huge = aid_request(trainee, "childcare", amount_cents=2**70)
    feed(engine, (Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee)),
         (Topic.AIDS_REQUESTED, huge),
         (Topic.AIDS_REQUESTED, aid_request(trainee, "laptop", amount_cents=30000)))

    with Session(engine) as session:
        rows = pending_outbox(session, 100)
    topics = [row.topic for row in rows]
    assert topics.count(Topic.DEADLETTER) == 1
    assert [d["status"] for d in decisions(engine)] == ["granted"]  # the next one still is


def test_a_budget_above_two_billion_cents_is_stored(engine: Engine) -> None:
    feed(engine, (Topic.BUDGETS_SUBMITTED, budget("meals", 3_000_000_000)))
    with Session(engine) as session:
        assert AidStore(session).year_totals(2024).envelopes == {"meals": 3_000_000_000}


def hold_unreadable(engine: Engine, trainee_id: str) -> None:
    """A request held by an older version, which the contract no longer reads (2^70 meals)."""
    payload = aid_request(trainee_id, "meals", quantity=2**70)
    with Session(engine) as session:
        AidStore(session).held.hold(trainee_id, json.dumps(payload))
        session.commit()


def dead_letters(engine: Engine) -> list[dict[str, Any]]:
    return published(engine, Topic.DEADLETTER)


def test_an_undecidable_held_request_never_blocks_its_enrollment(engine: Engine) -> None:
    trainee = uuid.uuid4().hex
    feed(engine, (Topic.AIDS_REQUESTED, aid_request(trainee, "laptop", amount_cents=30000)))
    hold_unreadable(engine, trainee)
    feed(engine, (Topic.AIDS_REQUESTED, aid_request(trainee, "meals", quantity=1)))

    result = feed(engine, (Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee)))

    assert result.handled == {Topic.ENROLLMENTS_DECIDED: 1}
    assert result.dead_letters == {}
    assert [(d["kind"], d["status"]) for d in decisions(engine)] == [
        ("laptop", "granted"), ("meals", "granted")]
    [letter] = dead_letters(engine)
    assert (letter["source_topic"], letter["service"]) == (Topic.AIDS_REQUESTED, "aids")
    assert letter["error"].startswith("held input could not be decided")
    assert "quantity" in letter["error"]
    with Session(engine) as session:
        assert AidStore(session).held.count() == 0


def test_the_sweep_decides_each_held_request_on_its_own(engine: Engine) -> None:
    trainee = uuid.uuid4().hex
    feed(engine, (Topic.AIDS_REQUESTED, aid_request(trainee, "meals", quantity=1)))
    hold_unreadable(engine, trainee)
    feed(engine, (Topic.AIDS_REQUESTED, aid_request(trainee, "laptop", amount_cents=30000)))

    with unit_of_work(engine, AidStore, "aids") as uow:
        swept = HANDLERS.sweep(uow, timedelta(hours=24), datetime.now(UTC) + timedelta(hours=25))

    assert swept == 3
    assert [(d["status"], d["reasons"]) for d in decisions(engine)] == [
        ("rejected", ["unknown_trainee"])] * 2
    assert len(dead_letters(engine)) == 1
    with Session(engine) as session:
        assert AidStore(session).held.count() == 0
