"""Outcomes' held exits on SQLite and PostgreSQL: each is decided on its own, so that one that
cannot be decided never blocks the enrollment (or the sweep) that releases the others."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from services.outcomes.app import TOPOLOGY
from services.outcomes.handlers import OutcomeHandlers
from services.outcomes.store import TABLES, OutcomeStore
from shared.contract import Topic
from shared.messaging import unit_of_work
from tests import plumbing
from tests.events import enrollment_decided, exit_submitted
from tests.plumbing import engine_fixture, published

pytestmark = pytest.mark.infra

HANDLERS = OutcomeHandlers()
engine = engine_fixture(TABLES)
feed = partial(plumbing.feed, TOPOLOGY, handlers=HANDLERS)


def hold_unreadable(engine: Engine, trainee_id: str) -> None:
    """An exit held by an older version that the contract no longer reads."""
    payload = exit_submitted(trainee_id, outcome="retired")
    with Session(engine) as session:
        OutcomeStore(session).held.hold(trainee_id, json.dumps(payload))
        session.commit()


def test_an_undecidable_held_exit_never_blocks_its_enrollment(engine: Engine) -> None:
    trainee = uuid.uuid4().hex
    hold_unreadable(engine, trainee)
    feed(engine, (Topic.EXITS_SUBMITTED, exit_submitted(trainee)))

    result = feed(engine, (Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee)))

    assert result.handled == {Topic.ENROLLMENTS_DECIDED: 1}
    [decided] = published(engine, Topic.EXITS_DECIDED)
    assert (decided["status"], decided["category"]) == ("recorded", "employment")
    [letter] = published(engine, Topic.DEADLETTER)
    assert (letter["source_topic"], letter["service"]) == (Topic.EXITS_SUBMITTED, "outcomes")
    assert "outcome" in letter["error"]
    with Session(engine) as session:
        assert OutcomeStore(session).held.count() == 0


def test_the_sweep_decides_each_held_exit_on_its_own(engine: Engine) -> None:
    trainee = uuid.uuid4().hex
    feed(engine, (Topic.EXITS_SUBMITTED, exit_submitted(trainee)))
    hold_unreadable(engine, trainee)

    with unit_of_work(engine, OutcomeStore, "outcomes") as uow:
        swept = HANDLERS.sweep(uow, timedelta(hours=24), datetime.now(UTC) + timedelta(hours=25))

    assert swept == 2
    [decided] = published(engine, Topic.EXITS_DECIDED)
    assert (decided["status"], decided["reasons"]) == ("rejected", ["unknown_trainee"])
    assert len(published(engine, Topic.DEADLETTER)) == 1
