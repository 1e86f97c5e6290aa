"""(1.1) Expiry and the retention of the enrolled through the real broker: the stack's two
referrals instances (one PostgreSQL store) restarted with the bounds shortened to seconds,
then put back as they were."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from deploy.harness import ServiceProcesses
from shared.contract import Topic
from tests import events
from tests.events import referral
from tests.infra import Publisher, TopicWatcher, poll
from tests.tokens import ADMIN, bearer

pytestmark = pytest.mark.infra

DECIDED = Topic.REFERRALS_DECIDED
ENROLLED = Topic.ENROLLMENTS_DECIDED
BOUND_SECONDS = 6.0
SHORT_BOUNDS = {
    "E2C_REFERRAL_EXPIRY_DAYS": str(BOUND_SECONDS / 86400),
    "E2C_EXPIRY_INTERVAL_SECONDS": "0.5",
    "E2C_ENROLLED_RETENTION_MONTHS": str(BOUND_SECONDS / (30 * 86400)),
    "E2C_RETENTION_INTERVAL_HOURS": str(0.5 / 3600),
}


@contextlib.contextmanager
def shortened_bounds(stack: ServiceProcesses) -> Iterator[None]:
    """Every referrals instance restarted with `SHORT_BOUNDS`, and with its own settings at
    the end. (Referrals of earlier tests still live expire meanwhile: nothing reads them.)"""
    instances = [s for s in stack.services.values() if s.name == "referrals"]
    try:
        for instance in instances:
            instance.stop()
            instance.start(extra_env=SHORT_BOUNDS)
        yield
    finally:
        for instance in instances:
            instance.stop()
            instance.start()


async def decide(publisher: Publisher, watcher: TopicWatcher, topic: Topic, answer: Topic,
                 event: dict[str, Any]) -> dict[str, Any]:
    await publisher.send(topic, event, key=event["referral_id"])
    [decision] = await watcher.wait_for(answer, request_event_id=event["event_id"], timeout=60)
    return decision


def personal_data(stack: ServiceProcesses, referral_id: str) -> tuple[str | None, bool]:
    """The stored last name and whether the row says it was erased (read from the store)."""
    engine = create_engine(stack.services["referrals"].env["REFERRALS_DATABASE_URL"])
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT last_name, erased_at FROM referral WHERE referral_id = :id"),
                {"id": referral_id},
            ).one()
    finally:
        engine.dispose()
    return row.last_name, row.erased_at is not None


async def test_a_referral_not_enrolled_in_time_expires_and_an_enrolled_one_is_erased(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    with shortened_bounds(stack):
        waiting, enrolled = referral(), referral()
        first = await decide(publisher, watcher, Topic.REFERRALS_SUBMITTED, DECIDED, waiting)
        await decide(publisher, watcher, Topic.REFERRALS_SUBMITTED, DECIDED, enrolled)
        enrollment = events.enrollment(enrolled["referral_id"])
        assert (await decide(publisher, watcher, Topic.ENROLLMENTS_SUBMITTED, ENROLLED,
                             enrollment))["status"] == "enrolled"
        assert first["status"] == "accepted"

        [expired] = await watcher.wait_for(DECIDED, referral_id=waiting["referral_id"],
                                           status="expired", timeout=60)
        again = referral(candidate=waiting["candidate"])
        second = await decide(publisher, watcher, Topic.REFERRALS_SUBMITTED, DECIDED, again)
        late = await decide(publisher, watcher, Topic.ENROLLMENTS_SUBMITTED, ENROLLED,
                            events.enrollment(waiting["referral_id"]))

        async def erased() -> bool:
            return personal_data(stack, enrolled["referral_id"]) == (None, True)

        await poll(erased, timeout=60)
        url = f"{stack.services['referrals'].url}/referrals/{enrolled['referral_id']}"
        shown = httpx.get(url, headers=bearer(ADMIN), timeout=5).json()

    assert expired["request_event_id"] is None
    assert (expired["trainee_id"], expired["agency_id"], expired["school_id"]) == (
        first["trainee_id"], first["agency_id"], first["school_id"])
    assert second["status"] == "accepted"  # the person is free again
    assert (late["status"], late["reasons"]) == ("rejected", ["referral_not_accepted"])
    assert (shown["stage"], shown["erased"]) == ("enrolled", True)
    # Two instances ran the timers all along: one expiry of the referral, no more.
    assert len(watcher.find(DECIDED, referral_id=waiting["referral_id"],
                            status="expired")) == 1
