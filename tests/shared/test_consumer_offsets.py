"""Offsets kept with the data, on SQLite and on PostgreSQL: each batch's transaction records
the next offset of every partition it read (whatever became of the records), never moves
one back, and records nothing when it fails. And output ids derived from their cause: an
input decided again on a store that lost it is answered under the same `event_id`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel

from services.aids.app import TOPOLOGY as AIDS
from services.aids.store import TABLES as AID_TABLES
from services.referrals.app import TOPOLOGY as REFERRALS
from services.referrals.handlers import ReferralHandlers
from services.referrals.store import TABLES, ReferralStore
from shared.contract import ReferralSubmitted, Topic
from shared.messaging import (
    PLUMBING_TABLES,
    Inbound,
    Route,
    UnitOfWork,
    stored_offsets,
    unit_of_work,
)
from shared.schools import load_schools
from shared.service import create_schema
from tests import plumbing
from tests.events import aid_request, enrollment_decided, referral
from tests.plumbing import engine_fixture, inbound, published, store_engine

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)
processor = partial(plumbing.processor, REFERRALS)
SUBMITTED = Topic.REFERRALS_SUBMITTED


def at(partition: int, offset: int, value: dict[str, Any] | bytes | None,
       topic: str = SUBMITTED) -> Inbound:
    raw = json.dumps(value).encode() if isinstance(value, dict) else value
    return Inbound(topic, partition, offset, "k", raw)


def offsets(engine: Engine) -> dict[tuple[str, int], int]:
    with Session(engine) as session:
        return stored_offsets(session)


def lose_the_store(engine: Engine, tables: Any) -> None:
    """Every row gone, as if the store were lost and made anew."""
    SQLModel.metadata.drop_all(engine, tables=[*PLUMBING_TABLES, *tables])
    create_schema(engine, tables)


def test_a_batch_records_the_next_offset_of_each_partition_it_read(engine: Engine) -> None:
    unreadable = referral()
    unreadable["schema_version"] = 2
    records = [
        at(0, 40, referral()), at(0, 41, unreadable), at(0, 42, None),  # answer, letter, tomb
        at(1, 7, None),  # a partition of tombstones only
        at(2, 3, referral()), at(2, 5, referral()),  # a gap (compacted away)
    ]
    result = processor(engine).process(records)

    assert (result.handled, result.dead_letters) == ({SUBMITTED: 3}, {SUBMITTED: 1})
    assert offsets(engine) == {(SUBMITTED, 0): 43, (SUBMITTED, 1): 8, (SUBMITTED, 2): 6}


def test_a_batch_read_again_records_nothing_new_and_never_moves_back(engine: Engine) -> None:
    first = [at(0, 10, referral()), at(0, 11, referral())]
    processor(engine).process(first)
    processor(engine).process(first)  # redelivered: duplicates, still read up to 12
    processor(engine).process([at(0, 3, referral())])  # an older batch, after a rebalance

    assert offsets(engine) == {(SUBMITTED, 0): 12}
    processor(engine).process([at(0, 12, referral())])
    assert offsets(engine) == {(SUBMITTED, 0): 13}


def test_the_record_by_record_pass_records_the_offsets_too(engine: Engine) -> None:
    handlers = ReferralHandlers(set(load_schools()))

    def buggy(unit: UnitOfWork[ReferralStore], event: object) -> None:
        handlers.on_referral(unit, event)  # type: ignore[arg-type]
        if unit.inbound is not None and unit.inbound.offset == 20:
            raise KeyError("bug after a write")

    routes = {SUBMITTED: Route(ReferralSubmitted, buggy)}
    result = processor(engine, routes).process([at(0, 20, referral()), at(0, 21, referral())])

    assert (result.handled, result.dead_letters) == ({SUBMITTED: 1}, {SUBMITTED: 1})
    assert offsets(engine) == {(SUBMITTED, 0): 22}


def test_a_failed_transaction_records_no_offset(engine: Engine) -> None:
    handlers = ReferralHandlers(set(load_schools()))
    processor(engine).process([at(0, 0, referral())])

    def failing(unit: UnitOfWork[ReferralStore], event: object) -> None:
        handlers.on_referral(unit, event)  # type: ignore[arg-type]
        raise OperationalError("SELECT 1", {}, Exception("store went away"))

    routes = {SUBMITTED: Route(ReferralSubmitted, failing)}
    with pytest.raises(OperationalError):
        processor(engine, routes).process([at(0, 1, referral()), at(3, 9, referral())])

    assert offsets(engine) == {(SUBMITTED, 0): 1}


# --- Output ids derived from their cause ---------------------------------------------------


def answer_ids(engine: Engine, topic: str) -> dict[str, str]:
    """request_event_id -> event_id of the answers in the outbox."""
    return {e["request_event_id"]: e["event_id"] for e in published(engine, topic)}


def test_an_input_decided_again_on_a_lost_store_gets_the_same_event_id(engine: Engine) -> None:
    inputs = [referral(), referral(), referral(candidate={"in_school": True})]
    processor(engine).process([inbound(SUBMITTED, e) for e in inputs])
    before = answer_ids(engine, Topic.REFERRALS_DECIDED)

    lose_the_store(engine, TABLES)
    processor(engine).process([inbound(SUBMITTED, e) for e in reversed(inputs)])
    again = answer_ids(engine, Topic.REFERRALS_DECIDED)

    assert set(before) == {e["event_id"] for e in inputs}
    assert again == before
    assert len(set(before.values())) == len(inputs)  # two inputs never share an answer's id
    assert not set(before.values()) & set(before)  # nor an id of an input


def test_a_resend_under_a_new_event_id_is_answered_under_a_new_id(engine: Engine) -> None:
    first = referral()
    resent = {**first, "event_id": referral()["event_id"]}
    processor(engine).process([inbound(SUBMITTED, first), inbound(SUBMITTED, resent)])

    ids = answer_ids(engine, Topic.REFERRALS_DECIDED)
    assert set(ids) == {first["event_id"], resent["event_id"]}
    assert ids[first["event_id"]] != ids[resent["event_id"]]


@pytest.fixture
def aids_engine(store_url: str) -> Iterator[Engine]:
    with store_engine(store_url, AID_TABLES) as created:
        yield created


def test_a_held_request_gets_the_same_id_whatever_released_it(aids_engine: Engine) -> None:
    """The id of an answer depends on the request it answers, not on the enrollment that
    released it: held or not, decided again or not, the same id."""
    trainee = "f" * 32
    requests = [aid_request(trainee, "meals"), aid_request(trainee, "laptop", amount_cents=40000)]
    enrollment = enrollment_decided(trainee)
    feed = partial(plumbing.feed, AIDS, aids_engine)

    feed(*[(Topic.AIDS_REQUESTED, r) for r in requests])  # held: the trainee is unknown
    assert answer_ids(aids_engine, Topic.AIDS_DECIDED) == {}
    feed((Topic.ENROLLMENTS_DECIDED, enrollment))  # releases both, in one unit of work
    held_then_released = answer_ids(aids_engine, Topic.AIDS_DECIDED)

    lose_the_store(aids_engine, AID_TABLES)
    feed((Topic.ENROLLMENTS_DECIDED, enrollment), *[(Topic.AIDS_REQUESTED, r) for r in requests])
    decided_at_once = answer_ids(aids_engine, Topic.AIDS_DECIDED)

    assert set(held_then_released) == {r["event_id"] for r in requests}
    assert decided_at_once == held_then_released
    assert len(set(held_then_released.values())) == 2


def test_an_intake_submission_keeps_its_own_event_id(engine: Engine) -> None:
    event = ReferralSubmitted.model_validate(referral())
    with unit_of_work(engine, ReferralStore, REFERRALS.name) as uow:
        ReferralHandlers(set(load_schools())).submit(uow, event)

    [published_event] = published(engine, SUBMITTED)
    assert published_event["event_id"] == str(event.event_id)


def test_an_event_with_no_cause_is_refused(engine: Engine) -> None:
    event = ReferralSubmitted.model_validate(referral())
    with (pytest.raises(ValueError, match="no cause"),
          unit_of_work(engine, ReferralStore, REFERRALS.name) as uow):
        uow.emit(Topic.REFERRALS_SUBMITTED, event)
