"""(1.1) Referrals received over HTTP, at the store: recorded and published through the
outbox onto the submitted topic (then decided by the same pipeline as any), retries
answered as the first time, a reused referral_id a conflict; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from services.referrals.app import TOPOLOGY
from services.referrals.handlers import Received, ReferralHandlers
from services.referrals.store import TABLES, ReferralStore, ReferralSubmission
from shared.contract import ReferralSubmitted, Topic
from shared.messaging import unit_of_work
from shared.schools import load_schools
from tests import plumbing
from tests.events import referral
from tests.plumbing import engine_fixture, inbound, published

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)
HANDLERS = ReferralHandlers(set(load_schools()))


def submit(engine: Engine, payload: dict[str, Any]) -> Received | None:
    with unit_of_work(engine, ReferralStore, "referrals") as uow:
        return HANDLERS.submit(uow, ReferralSubmitted.model_validate(payload))


def test_a_submission_is_published_on_the_submitted_topic(engine: Engine) -> None:
    payload = referral()

    received = submit(engine, payload)

    assert received == Received(payload["referral_id"], payload["event_id"])
    [sent] = published(engine, Topic.REFERRALS_SUBMITTED)
    assert sent == ReferralSubmitted.model_validate(payload).model_dump(mode="json")
    [row] = plumbing.outbox(engine)
    assert row.key == payload["referral_id"]


def test_the_submission_row_holds_no_personal_data(engine: Engine) -> None:
    payload = referral(candidate={"email": "ines.martin@example.org", "phone": "0611223344"})
    submit(engine, payload)

    with unit_of_work(engine, ReferralStore) as uow:
        [row] = uow.session.exec(select(ReferralSubmission)).all()
    stored = json.dumps(row.model_dump(mode="json"))
    for value in ("first_name", "last_name", "birth_date", "email", "phone"):
        assert str(payload["candidate"][value]) not in stored


def test_a_retry_is_answered_as_the_first_time_and_published_once(engine: Engine) -> None:
    payload = referral()
    first = submit(engine, payload)

    again = submit(engine, {**payload, "event_id": referral()["event_id"]})

    assert again == first
    assert len(published(engine, Topic.REFERRALS_SUBMITTED)) == 1


@pytest.mark.parametrize("change", [
    {"candidate": {"first_name": "Someone"}},
    {"candidate": {"birth_date": "2005-01-01"}},
    {"candidate": {"email": "other@example.org"}},
    {"agency": {"kind": "france_travail", "id": "ft-toulouse", "name": "France Travail"}},
])
def test_a_reused_referral_id_with_another_candidate_or_agency_is_a_conflict(
    engine: Engine, change: dict[str, Any]
) -> None:
    payload = referral()
    submit(engine, payload)
    other = {**payload, **{key: {**payload[key], **value} for key, value in change.items()}}

    assert submit(engine, other) is None
    assert len(published(engine, Topic.REFERRALS_SUBMITTED)) == 1


def test_a_referral_sent_on_kafka_first_answers_its_own_event(engine: Engine) -> None:
    payload = referral()
    plumbing.feed(TOPOLOGY, engine, (Topic.REFERRALS_SUBMITTED, payload))

    same_person = submit(engine, {**payload, "event_id": referral()["event_id"]})
    someone_else = submit(engine, {**payload, "candidate": referral()["candidate"]})

    assert same_person == Received(payload["referral_id"], payload["event_id"])
    assert someone_else is None
    assert published(engine, Topic.REFERRALS_SUBMITTED) == []


def test_what_the_outbox_publishes_is_decided_like_a_kafka_referral(engine: Engine) -> None:
    over_http, over_kafka = referral(), referral(candidate={"in_school": True})
    submit(engine, over_http)
    [sent] = published(engine, Topic.REFERRALS_SUBMITTED)

    plumbing.processor(TOPOLOGY, engine).process([
        inbound(Topic.REFERRALS_SUBMITTED, sent, 0),
        inbound(Topic.REFERRALS_SUBMITTED, over_kafka, 1),
    ])

    decided = {d["referral_id"]: d for d in published(engine, Topic.REFERRALS_DECIDED)}
    assert decided[over_http["referral_id"]]["status"] == "accepted"
    assert decided[over_kafka["referral_id"]]["reasons"] == ["in_school"]
