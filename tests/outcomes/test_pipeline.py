"""Stage 4 and the reports through the real broker: exit decisions, held exits, the report
of a small cohort taken down the whole pipeline, and the rebuild from the topics."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import date
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from sqlmodel import Session

from deploy.harness import ServiceProcesses
from deploy.kafka_security import OPS
from services.outcomes.app import TOPOLOGY
from shared.contract import Topic
from shared.db import make_engine
from shared.kafka import topic_partitions
from shared.messaging import stored_offsets
from tests import events, tokens
from tests.events import aid_request, exit_submitted, referral
from tests.infra import Publisher, TopicWatcher, learn_trainee

pytestmark = pytest.mark.infra

YEAR = 2035
OUTCOMES = tokens.bearer(tokens.OUTCOMES)


async def enrolled_trainee(
    publisher: Publisher, watcher: TopicWatcher, *, birth_date: str = "2015-06-01",
    enrolled_on: str = f"{YEAR}-02-01", school_id: str = "perpignan",
    agency: str = "mission_locale", **candidate: Any,
) -> dict[str, Any]:
    """A young person referred and enrolled through the referrals service."""
    event = referral(
        occurred_at=f"{YEAR}-01-10T10:00:00+01:00", school_id=school_id,
        agency={"kind": agency, "id": f"{agency}-66", "name": "Agence"},
        candidate={"birth_date": birth_date, **candidate},
    )
    await publisher.send(Topic.REFERRALS_SUBMITTED, event, key=event["referral_id"])
    [decided] = await watcher.wait_for(Topic.REFERRALS_DECIDED, request_event_id=event["event_id"])
    assert decided["status"] == "accepted", decided
    enrollment = events.enrollment(event["referral_id"], school_id=school_id,
                                   enrolled_on=enrolled_on)
    await publisher.send(Topic.ENROLLMENTS_SUBMITTED, enrollment, key=event["referral_id"])
    [answer] = await watcher.wait_for(
        Topic.ENROLLMENTS_DECIDED, request_event_id=enrollment["event_id"]
    )
    assert answer["status"] == "enrolled", answer
    return dict(answer)


async def leave(
    publisher: Publisher, watcher: TopicWatcher, trainee_id: str, outcome: str,
    exited_on: str = f"{YEAR}-09-30", satisfied: bool | None = True,
) -> dict[str, Any]:
    event = exit_submitted(trainee_id, outcome=outcome, exited_on=exited_on, satisfied=satisfied)
    await publisher.send(Topic.EXITS_SUBMITTED, event, key=trainee_id)
    [decision] = await watcher.wait_for(Topic.EXITS_DECIDED, request_event_id=event["event_id"])
    return dict(decision)


async def test_exits_are_recorded_with_their_category_and_refused_by_the_contract(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    trainee = await enrolled_trainee(publisher, watcher, enrolled_on=f"{YEAR}-03-01")
    too_early = await leave(publisher, watcher, trainee["trainee_id"], "iae",
                            exited_on=f"{YEAR}-02-28")
    recorded = await leave(publisher, watcher, trainee["trainee_id"], "civic_service")
    again = await leave(publisher, watcher, trainee["trainee_id"], "dropout")
    unknown = await leave(publisher, watcher, uuid.uuid4().hex, "other")

    assert (too_early["status"], too_early["reasons"]) == ("rejected", ["exit_before_enrollment"])
    assert (recorded["status"], recorded["reasons"]) == ("recorded", [])
    assert (recorded["category"], recorded["school_id"]) == ("dynamic", "perpignan")
    assert (again["status"], again["reasons"]) == ("rejected", ["already_exited"])
    assert (unknown["status"], unknown["reasons"]) == ("rejected", ["unknown_trainee"])
    assert unknown["school_id"] is None
    assert watcher.keys(Topic.EXITS_DECIDED, request_event_id=recorded["request_event_id"]) == [
        trainee["trainee_id"]
    ]


async def test_an_exit_before_its_enrollment_is_held_then_recorded(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    trainee_id = uuid.uuid4().hex
    event = exit_submitted(trainee_id, outcome="qualifying_training",
                           exited_on=f"{YEAR}-11-30", satisfied=True)
    await publisher.send(Topic.EXITS_SUBMITTED, event, key=trainee_id)
    await learn_trainee(
        publisher, trainee_id, referral_id="R-held", school_id="beziers",
        enrolled_on=f"{YEAR}-01-05", agency_kind="other", age_at_entry=22, rqth=False,
        qpv_resident=False, has_work_experience=True,
    )
    [decision] = await watcher.wait_for(Topic.EXITS_DECIDED, request_event_id=event["event_id"])

    assert (decision["status"], decision["category"]) == ("recorded", "training")


async def input_ends(stack: ServiceProcesses) -> dict[tuple[str, int], int]:
    """Where each partition of the outcomes service's inputs ends now."""
    access = stack.access(OPS)
    consumer = AIOKafkaConsumer(**access.client_options(), group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await topic_partitions(access, list(TOPOLOGY.inputs)))
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): end for tp, end in ends.items()}


def outcomes_offsets(stack: ServiceProcesses) -> dict[tuple[str, int], int]:
    """The next offsets the outcomes store recorded (the stack's outcomes runs on SQLite)."""
    store = f"sqlite:///{stack.services['outcomes'].env['E2C_DATA_DIR']}/stores/outcomes.db"
    engine = make_engine(store)
    try:
        with Session(engine) as session:
            return stored_offsets(session)
    finally:
        engine.dispose()


def report(stack: ServiceProcesses, path: str) -> httpx.Response:
    response = httpx.get(f"{stack.services['outcomes'].url}{path}", headers=OUTCOMES, timeout=10)
    response.raise_for_status()
    return response


async def test_the_yearly_report_of_a_cohort_and_its_rebuild_from_the_topics(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    school = "montauban"
    people = [
        # (birth date, agency, rqth, qpv, work experience, outcome, satisfied)
        ("2018-05-01", "mission_locale", True, True, False, "qualifying_training", True),
        ("2017-01-01", "mission_locale", False, True, False, "durable_employment", True),
        ("2016-01-01", "france_travail", False, False, True, "short_employment", False),
        ("2015-01-01", "spontaneous", False, True, False, "no_solution", None),
        ("2012-01-01", "mlds", False, False, False, None, None),  # still in training
    ]
    trainees = []
    for birth, agency, rqth, qpv, work, *_ in people:
        trainees.append(await enrolled_trainee(
            publisher, watcher, birth_date=birth, school_id=school, agency=agency,
            rqth=rqth, qpv_resident=qpv, has_work_experience=work,
        ))
    aid = aid_request(trainees[0]["trainee_id"], "laptop", amount_cents=40000,
                      period_start=f"{YEAR}-02-02", period_end=f"{YEAR}-02-02")
    await publisher.send(Topic.AIDS_REQUESTED, aid, key=aid["trainee_id"])
    await watcher.wait_for(Topic.AIDS_DECIDED, request_event_id=aid["event_id"])
    for trainee, (*_, outcome, satisfied) in zip(trainees, people, strict=True):
        if outcome is not None:
            await leave(publisher, watcher, trainee["trainee_id"], outcome, satisfied=satisfied)
    await asyncio.sleep(1)  # outcomes has read the aid decision published meanwhile

    body = report(stack, f"/reports/outcomes?year={YEAR}").json()
    ours = body["by_school"][school]
    assert ours == {"accompanied": 5, "entries": 5, "exits": 4, "solutions": 3}
    assert body["exits_by_category"]["training"] >= 1
    ages = [t["age_at_entry"] for t in trainees]
    assert ages == [16, 18, 19, 20, 23]
    aids_side = report(stack, f"/reports/aids-outcomes?year={YEAR}").json()
    assert aids_side["by_kind"]["laptop"]["with_aid"] == {"exits": 1, "solutions": 1}

    before = report(stack, f"/reports/outcomes?year={YEAR}").content
    this_year = date.today().year  # the funnel dates referrals by their decision
    funnel_before = report(stack, f"/reports/funnel?year={this_year}").content
    assert funnel_before != report(stack, f"/reports/funnel?year={this_year - 10}").content
    outcomes = stack.services["outcomes"]
    outcomes.stop()
    ends_before = await input_ends(stack)
    rebuilt = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c",
         "from services.outcomes.app import rebuild; from shared.settings import Settings; "
         "print(rebuild(Settings()))"],
        env=outcomes.env, capture_output=True, text=True, timeout=300, check=False,
    )
    ends_after = await input_ends(stack)
    offsets = outcomes_offsets(stack)  # before it starts and reads on
    await asyncio.to_thread(outcomes.start)

    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    # The store resumes where the replay ended (nothing published meanwhile: both equal).
    assert all(ends_before[p] <= offsets.get(p, -1) <= ends_after[p] for p in ends_before)
    assert report(stack, f"/reports/outcomes?year={YEAR}").content == before
    assert report(stack, f"/reports/funnel?year={this_year}").content == funnel_before
