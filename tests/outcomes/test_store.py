"""Outcomes' held exits on SQLite and PostgreSQL: each is decided on its own, so that one that
cannot be decided never blocks the enrollment (or the sweep) that releases the others."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from services.outcomes.app import TOPOLOGY
from services.outcomes.handlers import OutcomeHandlers
from services.outcomes.store import TABLES, OutcomeStore
from shared.contract import EnrollmentDecided, Topic, new_event_fields
from shared.db import make_engine
from shared.messaging import BatchResult, Inbound, unit_of_work
from shared.service import create_schema
from tests import plumbing
from tests.events import new_id
from tests.plumbing import pending_outbox

pytestmark = pytest.mark.infra

HANDLERS = OutcomeHandlers()
_offsets = itertools.count()


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    store_engine = make_engine(store_url)
    create_schema(store_engine, TABLES)
    yield store_engine
    store_engine.dispose()


def feed(engine: Engine, topic: str, payload: dict[str, Any]) -> BatchResult:
    processor = plumbing.processor(TOPOLOGY, engine, handlers=HANDLERS)
    record = Inbound(topic, 0, next(_offsets), None, json.dumps(payload).encode())
    return processor.process([record])


def exit_submitted(trainee_id: str, **changes: Any) -> dict[str, Any]:
    return {"event_id": new_id(), "occurred_at": "2024-09-30T16:00:00+02:00",
            "schema_version": 1, "trainee_id": trainee_id, "exited_on": "2024-09-30",
            "outcome": "durable_employment", "satisfied": True, **changes}


def enrollment(trainee_id: str) -> dict[str, Any]:
    event = EnrollmentDecided(
        **new_event_fields(), request_event_id=new_id(), referral_id="R-1", status="enrolled",
        trainee_id=trainee_id, school_id="toulouse", enrolled_on=date(2024, 1, 8),
        agency_kind="mission_locale", age_at_entry=19, rqth=False, qpv_resident=True,
        has_work_experience=False,
    )
    return event.model_dump(mode="json")


def hold_unreadable(engine: Engine, trainee_id: str) -> None:
    """An exit held by an older version that the contract no longer reads."""
    payload = exit_submitted(trainee_id, outcome="retired")
    with Session(engine) as session:
        OutcomeStore(session).held.hold(trainee_id, json.dumps(payload))
        session.commit()


def outbox(engine: Engine, topic: str) -> list[dict[str, Any]]:
    with Session(engine) as session:
        rows = pending_outbox(session, 1000)
    return [json.loads(row.payload) for row in rows if row.topic == topic]


def test_an_undecidable_held_exit_never_blocks_its_enrollment(engine: Engine) -> None:
    trainee = uuid.uuid4().hex
    hold_unreadable(engine, trainee)
    feed(engine, Topic.EXITS_SUBMITTED, exit_submitted(trainee))

    result = feed(engine, Topic.ENROLLMENTS_DECIDED, enrollment(trainee))

    assert result.handled == {Topic.ENROLLMENTS_DECIDED: 1}
    [decided] = outbox(engine, Topic.EXITS_DECIDED)
    assert (decided["status"], decided["category"]) == ("recorded", "employment")
    [letter] = outbox(engine, Topic.DEADLETTER)
    assert (letter["source_topic"], letter["service"]) == (Topic.EXITS_SUBMITTED, "outcomes")
    assert "outcome" in letter["error"]
    with Session(engine) as session:
        assert OutcomeStore(session).held.count() == 0


def test_the_sweep_decides_each_held_exit_on_its_own(engine: Engine) -> None:
    trainee = uuid.uuid4().hex
    feed(engine, Topic.EXITS_SUBMITTED, exit_submitted(trainee))
    hold_unreadable(engine, trainee)

    with unit_of_work(engine, OutcomeStore, "outcomes") as uow:
        swept = HANDLERS.sweep(uow, timedelta(hours=24), datetime.now(UTC) + timedelta(hours=25))

    assert swept == 2
    [decided] = outbox(engine, Topic.EXITS_DECIDED)
    assert (decided["status"], decided["reasons"]) == ("rejected", ["unknown_trainee"])
    assert len(outbox(engine, Topic.DEADLETTER)) == 1
