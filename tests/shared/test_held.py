"""Held inputs released one by one (`release_each`), on SQLite and on PostgreSQL: a bad one
becomes a dead letter, but a request to do the whole batch again is never swallowed."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from services.aids.store import TABLES, HeldRequest
from shared.contract import Topic
from shared.held import HeldQueue, release_each
from shared.messaging import BatchScope, NeedsIsolation, UnitOfWork
from tests.plumbing import engine_fixture

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)


def _held_unit(session: Session) -> tuple[UnitOfWork[None], HeldQueue[HeldRequest]]:
    queue = HeldQueue(session, HeldRequest)
    queue.hold("T-1", "{}")
    queue.hold("T-1", "{}")
    session.flush()
    scope = BatchScope(session, isolated=False)
    return UnitOfWork(session, None, service="aids", batch=scope, cause="c"), queue


def test_a_held_input_that_fails_is_a_dead_letter_and_the_next_is_released(
    engine: Engine,
) -> None:
    with Session(engine) as session:
        unit, queue = _held_unit(session)
        decided: list[int | None] = []

        def decide(row: HeldRequest) -> None:
            if not decided:
                decided.append(None)
                raise RuntimeError("a bug")
            decided.append(row.id)

        release_each(unit, queue, queue.for_trainee("T-1"), decide, Topic.AIDS_REQUESTED)
        session.flush()
        assert len(decided) == 2 and decided[1] is not None
        assert queue.for_trainee("T-1") == []
        # On the batch's fast path the letter waits in the unit for the batch's bulk write.
        assert [row["topic"] for row in unit.emitted] == [Topic.DEADLETTER]


def test_needs_isolation_from_a_held_input_reaches_the_batch(engine: Engine) -> None:
    """The batch is then done again record by record; a dead letter would lose the input."""
    with Session(engine) as session:
        unit, queue = _held_unit(session)

        def decide(row: HeldRequest) -> None:
            raise NeedsIsolation("deferred work inside a savepoint")

        with pytest.raises(NeedsIsolation):
            release_each(unit, queue, queue.for_trainee("T-1"), decide, Topic.AIDS_REQUESTED)
