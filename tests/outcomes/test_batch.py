"""Outcomes' batch fast path on SQLite and PostgreSQL: a batch read in a few queries and
written in grouped statements leaves the state and the answers that the same records give
handled one by one, without the batch's loading (the service before it batched)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlmodel import Session

from services.outcomes.app import TOPOLOGY
from services.outcomes.handlers import OutcomeHandlers
from services.outcomes.store import TABLES, HeldExit, OutcomeStore
from shared.contract import Topic
from shared.messaging import BatchResult, Inbound, unit_of_work
from tests.events import (
    aid_decided,
    enrollment_decided,
    exit_submitted,
    new_id,
    referral_decided,
)
from tests.plumbing import inbound, outbox, processor, published, store_engine

pytestmark = pytest.mark.infra

HANDLERS = OutcomeHandlers()
# Columns that differ between two stores fed the same records: when a row was written.
MOMENTS = {"outcome_held_exit": {"id", "received_at"}}


@pytest.fixture
def engines(request: pytest.FixtureRequest, store_url: str, tmp_path: Path
            ) -> Iterator[tuple[Engine, Engine]]:
    """Two fresh stores on the same backend: the batch's, and the one-by-one reference."""
    if store_url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path / 'reference.db'}"
    else:
        create: Callable[[str], str] = request.getfixturevalue("postgres_database")
        other = create("e2c_store_test_reference")
    with store_engine(store_url, TABLES) as batched, store_engine(other, TABLES) as reference:
        yield batched, reference


def in_one_batch(engine: Engine, records: list[Inbound]) -> BatchResult:
    return processor(TOPOLOGY, engine, handlers=HANDLERS).process(records)


def one_by_one(engine: Engine, records: list[Inbound]) -> BatchResult:
    """Each record in its own batch, with no batch loading: every read and write at once."""
    handler = processor(TOPOLOGY, engine, handlers=HANDLERS, prepared=False)
    total = BatchResult()
    for record in records:
        result = handler.process([record])
        for name in ("handled", "duplicates", "dead_letters", "emitted"):
            for topic, count in getattr(result, name).items():
                bucket = getattr(total, name)
                bucket[topic] = bucket.get(topic, 0) + count
    return total


def state(engine: Engine) -> dict[str, Any]:
    """Every row of the service's tables (the moments rows were written apart) and the
    events waiting in the outbox (their `occurred_at` apart), in order."""
    found: dict[str, Any] = {}
    with Session(engine) as session:
        for table in TABLES:
            left_out = MOMENTS.get(table.name, set())
            columns = [c for c in table.columns if c.name not in left_out]
            rows = session.exec(select(*columns)).mappings().all()  # type: ignore[call-overload]
            found[table.name] = sorted((dict(row) for row in rows), key=repr)
    events = []
    for row in outbox(engine):
        payload = json.loads(row.payload)
        payload.pop("occurred_at", None)
        events.append((row.topic, row.key, payload))
    found["outbox"] = events
    return found


def records_of(*pairs: tuple[str, dict[str, Any] | bytes]) -> list[Inbound]:
    return [inbound(topic, value) for topic, value in pairs]


def answers(engine: Engine) -> dict[str, tuple[str, list[str]]]:
    """exits.decided by the submission it answers: (status, reasons)."""
    return {e["request_event_id"]: (e["status"], e["reasons"])
            for e in published(engine, Topic.EXITS_DECIDED)}


def mixed_batch() -> tuple[list[Inbound], dict[str, Any]]:
    """Referrals, enrollments, aids and exits as a month brings them, with the cases a
    batch must get right; and what each exit's answer must be, counted by hand."""
    known, early, twice, unknown = (uuid.uuid4().hex for _ in range(4))
    referral = f"R-{known[:10]}"
    exits = {
        "known": exit_submitted(known, exited_on="2024-06-30", outcome="iae"),
        "known_again": exit_submitted(known, exited_on="2024-07-31"),
        "early": exit_submitted(early, exited_on="2024-05-31", satisfied=False),
        "before_enrollment": exit_submitted(twice, exited_on="2023-12-01"),
        "twice": exit_submitted(twice, exited_on="2024-04-30", outcome="other"),
        "unknown": exit_submitted(unknown),
    }
    records = records_of(
        (Topic.REFERRALS_DECIDED, referral_decided(
            referral, trainee_id=None, status="pending_derogation",
            occurred_at="2024-01-05T10:00:00+01:00")),
        (Topic.REFERRALS_DECIDED, referral_decided(
            referral, trainee_id=known, occurred_at="2024-01-08T10:00:00+01:00")),
        (Topic.REFERRALS_DECIDED, referral_decided(
            referral, trainee_id=known, status="accepted", reasons=["not_pending"],
            occurred_at="2024-01-09T10:00:00+01:00")),
        (Topic.EXITS_SUBMITTED, exits["early"]),  # held: its enrollment comes next
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(known, referral_id=referral)),
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(early)),
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(twice)),
        (Topic.AIDS_DECIDED, aid_decided(known, "meals")),
        (Topic.AIDS_DECIDED, aid_decided(known, "meals")),
        (Topic.AIDS_DECIDED, aid_decided(known, "laptop", status="rejected")),
        (Topic.EXITS_SUBMITTED, exits["known"]),
        (Topic.EXITS_SUBMITTED, exits["known_again"]),  # already exited
        (Topic.EXITS_SUBMITTED, exits["before_enrollment"]),
        (Topic.EXITS_SUBMITTED, exits["twice"]),
        (Topic.EXITS_SUBMITTED, exits["unknown"]),  # held, no answer yet
        (Topic.AIDS_DECIDED, aid_decided(twice, "childcare")),
        (Topic.EXITS_SUBMITTED, b"{not json"),  # a dead letter
    )
    records.append(records[-3])  # the same record read twice: a duplicate
    expected = {
        str(exits[name]["event_id"]): answer for name, answer in {
            "known": ("recorded", []),
            "known_again": ("rejected", ["already_exited"]),
            "early": ("recorded", []),
            "before_enrollment": ("rejected", ["exit_before_enrollment"]),
            "twice": ("recorded", []),
        }.items()
    }
    return records, {"answers": expected, "known": known, "referral": referral,
                     "unknown": unknown, "twice": twice}


def test_a_mixed_batch_leaves_the_state_of_the_records_handled_one_by_one(
    engines: tuple[Engine, Engine],
) -> None:
    batched, reference = engines
    records, expected = mixed_batch()

    result = in_one_batch(batched, records)
    reference_result = one_by_one(reference, records)

    assert answers(batched) == expected["answers"]
    assert state(batched) == state(reference)
    assert result.handled == reference_result.handled
    assert result.duplicates == {Topic.EXITS_SUBMITTED: 1}
    assert result.dead_letters == {Topic.EXITS_SUBMITTED: 1}
    found = state(batched)
    assert sorted(found["outcome_trainee_aid"], key=lambda row: row["kind"]) == [
        {"trainee_id": expected["twice"], "kind": "childcare", "grants": 1},
        {"trainee_id": expected["known"], "kind": "meals", "grants": 2}]
    [view] = found["outcome_referral"]
    assert (view["referral_id"], view["status"], view["trainee_id"]) == (
        expected["referral"], "accepted", expected["known"])
    assert view["accepted_at"] == datetime(2024, 1, 8, 9, tzinfo=UTC)
    with Session(batched) as session:
        held = session.exec(select(HeldExit.trainee_id)).scalars().all()
    assert list(held) == [expected["unknown"]]


def test_a_batch_that_fails_on_its_fast_path_is_handled_again_record_by_record(
    engines: tuple[Engine, Engine],
) -> None:
    """A record that makes a handler fail (an enrollment without its school) sends the batch
    to the savepoint path: nothing the fast path had kept in memory survives it."""
    batched, reference = engines
    records, expected = mixed_batch()
    poison = enrollment_decided(uuid.uuid4().hex, school_id=None)
    records.insert(8, inbound(Topic.ENROLLMENTS_DECIDED, poison))

    result = in_one_batch(batched, records)
    one_by_one(reference, records)

    assert result.dead_letters == {Topic.EXITS_SUBMITTED: 1, Topic.ENROLLMENTS_DECIDED: 1}
    assert answers(batched) == expected["answers"]
    assert state(batched) == state(reference)


def test_exits_held_in_earlier_batches_are_released_by_a_batchs_enrollment(
    engines: tuple[Engine, Engine],
) -> None:
    """The held exits of a trainee enrolled in a batch are decided there, each in its own
    savepoint, and what the batch kept in memory before and after stays right: one held
    exit the contract no longer reads becomes a dead letter, the others are decided."""
    batched, reference = engines
    trainee, other = uuid.uuid4().hex, uuid.uuid4().hex
    first = exit_submitted(trainee, exited_on="2024-03-31", outcome="civic_service")
    second = exit_submitted(trainee, exited_on="2024-04-30")
    earlier = records_of((Topic.EXITS_SUBMITTED, first), (Topic.EXITS_SUBMITTED, second))
    unreadable = json.dumps(exit_submitted(trainee, outcome="retired"))  # an older version's
    for engine in engines:
        one_by_one(engine, earlier)
        with Session(engine) as session:
            OutcomeStore(session).held.hold(trainee, unreadable)
            session.commit()
    after = exit_submitted(trainee, exited_on="2024-05-31")
    held_here = exit_submitted(other)
    records = records_of(
        (Topic.EXITS_SUBMITTED, held_here),  # held in this batch
        (Topic.AIDS_DECIDED, aid_decided(trainee, "meals")),
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee)),
        (Topic.EXITS_SUBMITTED, after),
        (Topic.AIDS_DECIDED, aid_decided(trainee, "meals")),
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(other)),
    )

    result = in_one_batch(batched, records)
    one_by_one(reference, records)

    assert result.handled == {Topic.EXITS_SUBMITTED: 2, Topic.AIDS_DECIDED: 2,
                              Topic.ENROLLMENTS_DECIDED: 2}
    assert answers(batched) == {
        first["event_id"]: ("recorded", []),
        second["event_id"]: ("rejected", ["already_exited"]),
        after["event_id"]: ("rejected", ["already_exited"]),
        held_here["event_id"]: ("recorded", []),
    }
    assert len(published(batched, Topic.DEADLETTER)) == 1
    assert state(batched) == state(reference)
    with Session(batched) as session:
        assert OutcomeStore(session).held.count() == 0


def test_the_sweep_and_the_rebuild_read_and_write_at_once(engines: tuple[Engine, Engine]) -> None:
    """Outside a consumed batch (a sweep, a rebuild's replay) the store has no batch state:
    what it decides is in the database at once."""
    batched, _ = engines
    trainee = uuid.uuid4().hex
    in_one_batch(batched, records_of((Topic.EXITS_SUBMITTED, exit_submitted(trainee))))

    with unit_of_work(batched, OutcomeStore, "outcomes") as uow:
        swept = HANDLERS.sweep(uow, timedelta(hours=24), datetime.now(UTC) + timedelta(hours=25))

    assert swept == 1
    [decided] = published(batched, Topic.EXITS_DECIDED)
    assert decided["reasons"] == ["unknown_trainee"]
    replay = TOPOLOGY.rebuild_processor(batched, HANDLERS)
    result = replay.process(records_of(
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee)),
        (Topic.EXITS_DECIDED, {**decided, "event_id": new_id()}),
    ))
    assert result.handled == {Topic.ENROLLMENTS_DECIDED: 1, Topic.EXITS_DECIDED: 1}


def test_a_batch_reads_what_it_needs_in_a_few_statements(engines: tuple[Engine, Engine]) -> None:
    """The fast path's point: the statements of a batch do not grow with its records."""
    batched, _ = engines
    trainees = [uuid.uuid4().hex for _ in range(40)]
    records = records_of(
        *[(Topic.ENROLLMENTS_DECIDED, enrollment_decided(t)) for t in trainees],
        *[(Topic.AIDS_DECIDED, aid_decided(t, "meals")) for t in trainees],
        *[(Topic.EXITS_SUBMITTED, exit_submitted(t)) for t in trainees],
    )
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(batched, "before_cursor_execute", seen)
    try:
        result = in_one_batch(batched, records)
    finally:
        event.remove(batched, "before_cursor_execute", seen)

    assert result.handled == {Topic.ENROLLMENTS_DECIDED: 40, Topic.AIDS_DECIDED: 40,
                              Topic.EXITS_SUBMITTED: 40}
    assert len(answers(batched)) == 40
    assert len(statements) < 30, statements


def test_an_exit_whose_submission_is_stored_already_is_marked_decided(
    engines: tuple[Engine, Engine],
) -> None:
    """A submission kept before its exit was read (a replay, a restored store) is marked
    decided by the batch that decides the exit, as the one-by-one path marks it."""
    batched, reference = engines
    trainee = uuid.uuid4().hex
    leaving = exit_submitted(trainee)
    for engine in engines:
        one_by_one(engine, records_of((Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee))))
        with unit_of_work(engine, OutcomeStore, "outcomes") as uow:
            uow.store.remember_submission(leaving["event_id"], trainee, json.dumps(leaving))
    records = records_of((Topic.EXITS_SUBMITTED, leaving))

    in_one_batch(batched, records)
    one_by_one(reference, records)

    assert answers(batched) == {leaving["event_id"]: ("recorded", [])}
    with unit_of_work(batched, OutcomeStore, "outcomes") as uow:
        assert uow.store.undecided_submissions() == []
    assert state(batched) == state(reference)


def test_rows_an_earlier_batch_wrote_are_changed_by_a_later_one(
    engines: tuple[Engine, Engine],
) -> None:
    """A referral's status, a trainee's exit and an aid count stored by one batch are
    changed by the next as they are record by record."""
    batched, reference = engines
    trainee = uuid.uuid4().hex
    referral = f"R-{trainee[:10]}"
    first = records_of(
        (Topic.REFERRALS_DECIDED, referral_decided(referral, trainee_id=None,
                                                   status="pending_derogation")),
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee, referral_id=referral)),
        (Topic.AIDS_DECIDED, aid_decided(trainee, "meals")),
    )
    then = records_of(
        (Topic.REFERRALS_DECIDED, referral_decided(referral, trainee_id=trainee)),
        (Topic.AIDS_DECIDED, aid_decided(trainee, "meals")),
        (Topic.AIDS_DECIDED, aid_decided(trainee, "laptop")),
        (Topic.EXITS_SUBMITTED, exit_submitted(trainee)),
    )

    for records in (first, then):
        in_one_batch(batched, records)
        one_by_one(reference, records)

    found = state(batched)
    assert found == state(reference)
    assert sorted((row["kind"], row["grants"]) for row in found["outcome_trainee_aid"]) == [
        ("laptop", 1), ("meals", 2)]
    [view] = found["outcome_referral"]
    assert (view["status"], view["trainee_id"]) == ("accepted", trainee)
    [row] = found["outcome_trainee"]
    assert (row["outcome"], row["category"]) == ("durable_employment", "employment")
