"""(1.1) Expiry and retention for every state, on SQLite and on PostgreSQL: the `expired`
decision on the service's clock, what it frees and refuses, its webhook, two runs at once,
and the erasure of expired and of enrolled-never-exited referrals."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from services.referrals.app import TOPOLOGY
from services.referrals.handlers import erase_due, expire_due
from services.referrals.store import (
    TABLES,
    PersonClaim,
    Referral,
    ReferralStore,
    WebhookDelivery,
    WebhookStore,
)
from shared.contract import ReferralDecided, Topic
from shared.messaging import unit_of_work
from tests import events, plumbing
from tests.events import referral
from tests.plumbing import engine_fixture, inbound, published

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)
processor = partial(plumbing.processor, TOPOLOGY)
EXPIRY_DAYS = 90.0
LATER = timedelta(days=EXPIRY_DAYS, seconds=1)  # just past the bound, from now


def feed(engine: Engine, topic: str, *values: dict[str, Any]) -> None:
    processor(engine).process([inbound(topic, value) for value in values])


def expire(engine: Engine, reference: datetime) -> int | None:
    with unit_of_work(engine, ReferralStore, TOPOLOGY.name) as uow:
        return expire_due(uow, EXPIRY_DAYS, reference)


def expired_events(engine: Engine) -> list[dict[str, Any]]:
    return [e for e in published(engine, Topic.REFERRALS_DECIDED) if e["status"] == "expired"]


def answers_to(engine: Engine, topic: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in published(engine, topic) if e["request_event_id"] == request["event_id"]]


def test_accepted_and_pending_referrals_not_enrolled_in_time_expire_once(
    engine: Engine,
) -> None:
    accepted, pending = referral(), referral(candidate={"birth_date": "1997-01-02"})
    refused, enrolled = referral(candidate={"in_school": True}), referral()
    feed(engine, Topic.REFERRALS_SUBMITTED, accepted, pending, refused, enrolled)
    feed(engine, Topic.ENROLLMENTS_SUBMITTED, events.enrollment(enrolled["referral_id"]))
    decided = {e["referral_id"]: e for e in published(engine, Topic.REFERRALS_DECIDED)}

    # The events say 2024, the service decided them now: nothing is due yet.
    assert expire(engine, datetime.now(UTC)) == 0
    assert expire(engine, datetime.now(UTC) + LATER) == 2
    assert expire(engine, datetime.now(UTC) + LATER) == 0  # idempotent

    expired = expired_events(engine)
    assert sorted(e["referral_id"] for e in expired) == sorted(
        [accepted["referral_id"], pending["referral_id"]])
    for event in expired:
        ReferralDecided.model_validate(event)
        before = decided[event["referral_id"]]
        assert event["request_event_id"] is None and event["reasons"] == []
        assert event["duplicate_of"] is None
        assert (event["trainee_id"], event["agency_id"], event["school_id"]) == (
            before["trainee_id"], before["agency_id"], before["school_id"])
    with Session(engine) as session:
        store = ReferralStore(session)
        row = store.get(accepted["referral_id"])
        assert row is not None and row.status == "expired" and row.stage == "expired"
        assert [h.kind for h in store.history(accepted["referral_id"])] == [
            "referral", "expiry"]
        assert session.exec(select(PersonClaim).where(
            PersonClaim.referral_id == accepted["referral_id"])).first() is None


def test_after_expiry_the_person_is_free_and_the_referral_closed(engine: Engine) -> None:
    first = referral()
    feed(engine, Topic.REFERRALS_SUBMITTED, first)
    assert expire(engine, datetime.now(UTC) + LATER) == 1

    again = referral(candidate=first["candidate"])
    enrollment = events.enrollment(first["referral_id"])
    derogation = events.derogation(first["referral_id"])
    resend = {**first, "event_id": events.new_id()}
    feed(engine, Topic.REFERRALS_SUBMITTED, again, resend)
    feed(engine, Topic.ENROLLMENTS_SUBMITTED, enrollment)
    feed(engine, Topic.DEROGATIONS_SUBMITTED, derogation)

    [new_decision] = answers_to(engine, Topic.REFERRALS_DECIDED, again)
    assert new_decision["status"] == "accepted"
    [refused] = answers_to(engine, Topic.ENROLLMENTS_DECIDED, enrollment)
    assert (refused["status"], refused["reasons"]) == ("rejected", ["referral_not_accepted"])
    [not_pending] = answers_to(engine, Topic.REFERRALS_DECIDED, derogation)
    assert (not_pending["status"], not_pending["reasons"]) == ("rejected", ["not_pending"])
    [answered_again] = answers_to(engine, Topic.REFERRALS_DECIDED, resend)
    assert answered_again["status"] == "expired"
    with Session(engine) as session:
        row = ReferralStore(session).get(first["referral_id"])
        assert row is not None and (row.status, row.enrolled_on) == ("expired", None)


def test_an_agency_with_a_webhook_receives_the_expiry(engine: Engine) -> None:
    agency = {"kind": "mission_locale", "id": "ml-hooked", "name": "Mission Locale"}
    with Session(engine) as session:
        WebhookStore(session).set_webhook(agency["id"], "https://partner.example/e2c")
        session.commit()
    hooked, other = referral(agency=agency), referral()
    feed(engine, Topic.REFERRALS_SUBMITTED, hooked, other)

    assert expire(engine, datetime.now(UTC) + LATER) == 2

    with Session(engine) as session:
        deliveries = session.exec(select(WebhookDelivery)).all()
    bodies = [json.loads(d.body) for d in deliveries]
    assert {d.agency_id for d in deliveries} == {agency["id"]}
    [expiry] = [b for b in bodies if b["data"]["status"] == "expired"]
    [event] = [e for e in expired_events(engine) if e["referral_id"] == hooked["referral_id"]]
    assert expiry["type"] == "referral.decided"
    assert (expiry["event_id"], expiry["referral_id"]) == (event["event_id"],
                                                            hooked["referral_id"])
    assert expiry["data"]["request_event_id"] is None
    assert expiry["data"]["trainee_id"] == event["trainee_id"]


def test_two_runs_at_once_expire_each_referral_once(engine: Engine) -> None:
    """Two instances' timers firing together: on PostgreSQL the second finds the advisory
    lock taken and skips its run; on SQLite it waits for the first's write lock, then finds
    nothing left to expire. Either way one `expired` event per referral."""
    referrals = [referral() for _ in range(3)]
    feed(engine, Topic.REFERRALS_SUBMITTED, *referrals)
    reference = datetime.now(UTC) + LATER
    second: dict[str, int | None] = {}

    def other_instance() -> None:
        second["result"] = expire(engine, reference)

    with unit_of_work(engine, ReferralStore, TOPOLOGY.name) as uow:
        assert expire_due(uow, EXPIRY_DAYS, reference) == 3
        racer = threading.Thread(target=other_instance)
        racer.start()
        racer.join(timeout=1.0)
        if engine.dialect.name == "postgresql":
            assert not racer.is_alive() and second["result"] is None  # skipped
        else:
            assert racer.is_alive()  # waits for the first transaction
    racer.join(timeout=30)

    if engine.dialect.name != "postgresql":
        assert second["result"] == 0
    assert sorted(e["referral_id"] for e in expired_events(engine)) == sorted(
        r["referral_id"] for r in referrals)


def test_concurrent_runs_emit_one_expiry_per_referral(engine: Engine) -> None:
    """Four runs released at the same moment from four threads."""
    referrals = [referral() for _ in range(5)]
    feed(engine, Topic.REFERRALS_SUBMITTED, *referrals)
    reference = datetime.now(UTC) + LATER
    start = threading.Barrier(4)
    results: list[int | None] = []

    def run() -> None:
        start.wait()
        results.append(expire(engine, reference))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sum(r or 0 for r in results) == len(referrals)
    assert len(expired_events(engine)) == len(referrals)


def personal(engine: Engine, referral_id: str) -> str | None:
    with Session(engine) as session:
        row = ReferralStore(session).get(referral_id)
        assert row is not None
        return row.last_name


def test_every_state_has_its_retention(engine: Engine) -> None:
    """Expired: erased `E2C_RETENTION_MONTHS` after the expiry; enrolled and never exited:
    `E2C_ENROLLED_RETENTION_MONTHS` after the enrollment (both on the service's clock);
    a live referral is never erased by retention (it expires first)."""
    expired, enrolled, live = referral(), referral(), referral()
    feed(engine, Topic.REFERRALS_SUBMITTED, expired, enrolled)
    feed(engine, Topic.ENROLLMENTS_SUBMITTED, events.enrollment(enrolled["referral_id"]))
    assert expire(engine, datetime.now(UTC) + LATER) == 1  # the expiry happens "now"
    feed(engine, Topic.REFERRALS_SUBMITTED, live)

    def retention(after: timedelta) -> int:
        with unit_of_work(engine, ReferralStore, TOPOLOGY.name) as uow:
            return erase_due(uow.store, 24, datetime.now(UTC) + after, 36)

    assert retention(timedelta(days=23 * 31)) == 0
    assert retention(timedelta(days=24 * 31)) == 1
    assert personal(engine, expired["referral_id"]) is None
    assert personal(engine, enrolled["referral_id"]) is not None
    assert retention(timedelta(days=35 * 31)) == 0
    assert retention(timedelta(days=36 * 31)) == 1
    assert personal(engine, enrolled["referral_id"]) is None
    assert retention(timedelta(days=36 * 31)) == 0  # idempotent
    assert personal(engine, live["referral_id"]) == live["candidate"]["last_name"]
    with Session(engine) as session:
        store = ReferralStore(session)
        assert [h.kind for h in store.history(enrolled["referral_id"])] == [
            "referral", "enrollment", "erasure"]
        assert [h.kind for h in store.history(expired["referral_id"])] == [
            "referral", "expiry", "erasure"]


def test_a_retention_run_is_skipped_while_another_holds_it(engine: Engine) -> None:
    """PostgreSQL: `lock_job` is a transaction-scoped advisory lock, one per job. SQLite:
    always granted, the write lock taken at BEGIN IMMEDIATE serialises the runs instead
    (`test_two_runs_at_once_expire_each_referral_once`)."""
    if engine.dialect.name != "postgresql":
        with Session(engine) as session:
            assert ReferralStore(session).lock_job("retention")
        return
    with Session(engine) as first, Session(engine) as second:
        assert ReferralStore(first).lock_job("retention")
        assert not ReferralStore(second).lock_job("retention")
        assert ReferralStore(second).lock_job("expiry")  # another job, another lock
        first.commit()  # the lock ends with its transaction
        second.rollback()
        assert ReferralStore(second).lock_job("retention")


def wait_for_a_blocked_lock(engine: Engine, deadline_seconds: float = 30) -> None:
    """Until another PostgreSQL session waits for a lock (the racing enrollment)."""
    deadline = time.monotonic() + deadline_seconds
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar_one()
            if waiting:
                return
            connection.rollback()
            time.sleep(0.01)
    raise AssertionError("the racing enrollment never waited for the expiry's lock")


def test_an_enrollment_racing_the_expiry_is_refused(engine: Engine) -> None:
    """On PostgreSQL an enrollment read while the expiry job holds the referral waits for it,
    then reads it expired (its batch locks the rows it reads, in the job's order); without
    that it would enroll a referral that has just expired. SQLite runs the two one after the
    other (the racer waits for the write lock): the same answer, without a race to see."""
    racing = referral()
    feed(engine, Topic.REFERRALS_SUBMITTED, racing)
    enrollment = events.enrollment(racing["referral_id"])

    with unit_of_work(engine, ReferralStore, TOPOLOGY.name) as uow:
        assert expire_due(uow, EXPIRY_DAYS, datetime.now(UTC) + LATER) == 1
        racer = threading.Thread(
            target=feed, args=(engine, Topic.ENROLLMENTS_SUBMITTED, enrollment))
        racer.start()
        if engine.dialect.name == "postgresql":
            wait_for_a_blocked_lock(engine)
    racer.join(timeout=60)

    [answer] = answers_to(engine, Topic.ENROLLMENTS_DECIDED, enrollment)
    assert (answer["status"], answer["reasons"]) == ("rejected", ["referral_not_accepted"])
    with Session(engine) as session:
        row = session.exec(select(Referral).where(
            Referral.referral_id == racing["referral_id"])).one()
    assert (row.status, row.enrolled_on) == ("expired", None)
