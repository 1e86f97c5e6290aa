"""Stage 1 and 2 of the contract through the real broker: duplicates (with a real race between
two instances), re-sends, derogations, enrollments, exits, erasure and partner access."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from deploy.harness import ServiceProcesses
from shared.contract import EnrollmentDecided, Topic
from tests import events
from tests.events import new_id, referral, unique_last_name
from tests.infra import Publisher, TopicWatcher
from tests.tokens import ADMIN, FINANCE, FT_TOULOUSE, ML_TOULOUSE, bearer

pytestmark = pytest.mark.infra

DECIDED = Topic.REFERRALS_DECIDED
ENROLLED = Topic.ENROLLMENTS_DECIDED


async def refer(publisher: Publisher, watcher: TopicWatcher, **fields: Any) -> dict[str, Any]:
    """Publishes a referral and returns its decision."""
    event = referral(**fields)
    await publisher.send(Topic.REFERRALS_SUBMITTED, event, key=event["referral_id"])
    [decision] = await watcher.wait_for(DECIDED, request_event_id=event["event_id"])
    return decision


async def derogation(
    publisher: Publisher, watcher: TopicWatcher, referral_id: str, granted: bool
) -> dict[str, Any]:
    event = events.derogation(referral_id, granted=granted, decided_by="direction-e2c")
    await publisher.send(Topic.DEROGATIONS_SUBMITTED, event, key=referral_id)
    [decision] = await watcher.wait_for(DECIDED, request_event_id=event["event_id"])
    return decision


async def enroll(
    publisher: Publisher, watcher: TopicWatcher, referral_id: str,
    enrolled_on: str = "2024-04-02", school_id: str = "toulouse",
) -> tuple[dict[str, Any], str | None]:
    event = events.enrollment(referral_id, school_id=school_id, enrolled_on=enrolled_on)
    await publisher.send(Topic.ENROLLMENTS_SUBMITTED, event, key=referral_id)
    [decision] = await watcher.wait_for(ENROLLED, request_event_id=event["event_id"])
    [key] = watcher.keys(ENROLLED, request_event_id=event["event_id"])
    return decision, key


def admin_get(stack: ServiceProcesses, path: str) -> dict[str, Any]:
    url = stack.services["referrals"].url + path
    response = httpx.get(url, headers=bearer(ADMIN), timeout=5)
    response.raise_for_status()
    return dict(response.json())


async def wait_stage(stack: ServiceProcesses, referral_id: str, stage: str) -> dict[str, Any]:
    for _ in range(150):
        body = admin_get(stack, f"/referrals/{referral_id}")
        if body["stage"] == stage:
            return body
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{referral_id} never reached {stage}")


# --- duplicates ---------------------------------------------------------------------------


async def test_the_same_person_from_another_agency_is_a_duplicate(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    last = unique_last_name()
    first = await refer(publisher, watcher, candidate={"first_name": "Inès", "last_name": last})
    again = await refer(
        publisher, watcher,
        agency={"kind": "france_travail", "id": "ft-toulouse", "name": "France Travail"},
        candidate={"first_name": "  INES ", "last_name": last.upper().replace("-", "- ")},
    )

    assert first["status"] == "accepted"
    assert again["status"] == "duplicate"
    assert again["duplicate_of"] == first["referral_id"]
    assert again["trainee_id"] == first["trainee_id"]  # no new trainee
    assert again["reasons"] == []


async def test_a_person_whose_referral_was_rejected_can_be_referred_again(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    last = unique_last_name()
    first = await refer(publisher, watcher, candidate={"last_name": last, "in_school": True})
    second = await refer(publisher, watcher, candidate={"last_name": last})

    assert first["status"] == "rejected"
    assert second["status"] == "accepted"


async def test_a_pending_referral_makes_the_next_one_a_duplicate(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    person = {"last_name": unique_last_name(), "birth_date": "1997-06-01"}
    first = await refer(publisher, watcher, candidate=person)
    second = await refer(publisher, watcher, candidate=person)

    assert first["status"] == "pending_derogation"
    assert (second["status"], second["duplicate_of"]) == ("duplicate", first["referral_id"])


async def test_two_referrals_of_one_person_at_once_on_different_partitions_accept_one(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    pairs = []
    for index in range(12):
        person = {"last_name": unique_last_name()}
        pairs.append((referral(candidate=person), referral(candidate=person), index % 3))
    await asyncio.gather(*(
        publisher.send(Topic.REFERRALS_SUBMITTED, event, key=event["referral_id"],
                       partition=(partition + offset) % 3)
        for a, b, partition in pairs
        for offset, event in enumerate((a, b))
    ))

    for a, b, _ in pairs:
        [first] = await watcher.wait_for(DECIDED, request_event_id=a["event_id"])
        [second] = await watcher.wait_for(DECIDED, request_event_id=b["event_id"])
        assert sorted([first["status"], second["status"]]) == ["accepted", "duplicate"]
        accepted, duplicate = (first, second) if first["status"] == "accepted" else (second, first)
        assert duplicate["duplicate_of"] == accepted["referral_id"]


async def test_after_an_exit_the_person_can_be_referred_again(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    person = {"last_name": unique_last_name()}
    first = await refer(publisher, watcher, candidate=person)
    await enroll(publisher, watcher, first["referral_id"])
    await publisher.send(Topic.EXITS_DECIDED, events.exit_decided(first["trainee_id"]),
                         key=first["trainee_id"])
    await wait_stage(stack, first["referral_id"], "exited")

    second = await refer(publisher, watcher, candidate=person)

    assert second["status"] == "accepted"
    assert second["trainee_id"] != first["trainee_id"]


# --- derogations --------------------------------------------------------------------------


async def test_a_granted_derogation_accepts_the_pending_referral(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    pending = await refer(publisher, watcher, candidate={"birth_date": "1996-01-10"})
    decision = await derogation(publisher, watcher, pending["referral_id"], granted=True)

    assert pending["status"] == "pending_derogation"
    assert decision["status"] == "accepted"
    assert decision["reasons"] == []
    assert decision["trainee_id"] == pending["trainee_id"]


async def test_a_refused_derogation_rejects_it(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    person = {"birth_date": "1995-02-11", "last_name": unique_last_name()}
    pending = await refer(publisher, watcher, candidate=person)
    decision = await derogation(publisher, watcher, pending["referral_id"], granted=False)
    later = await refer(publisher, watcher, candidate=person)

    assert decision["status"] == "rejected"
    assert decision["reasons"] == ["derogation_refused"]
    assert decision["trainee_id"] is None
    assert later["status"] == "pending_derogation"  # no longer a live referral of the person


async def test_a_derogation_on_a_referral_not_pending_changes_nothing(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    accepted = await refer(publisher, watcher)
    decision = await derogation(publisher, watcher, accepted["referral_id"], granted=False)
    unknown = await derogation(publisher, watcher, f"NOPE-{new_id()[:8]}", granted=True)

    assert (decision["status"], decision["reasons"]) == ("rejected", ["not_pending"])
    assert (unknown["status"], unknown["reasons"]) == ("rejected", ["not_pending"])
    state = admin_get(stack, f"/referrals/{accepted['referral_id']}")
    assert (state["status"], state["trainee_id"]) == ("accepted", accepted["trainee_id"])


# --- enrollments --------------------------------------------------------------------------


async def test_an_accepted_referral_is_enrolled_with_its_pseudonymous_profile(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    accepted = await refer(
        publisher, watcher,
        agency={"kind": "mlds", "id": "mlds-31", "name": "MLDS 31"},
        candidate={"birth_date": "2006-04-03", "rqth": True, "qpv_resident": False,
                   "has_work_experience": True},
    )
    decision, key = await enroll(publisher, watcher, accepted["referral_id"], "2024-04-03",
                                 school_id="montauban")

    EnrollmentDecided.model_validate(decision)
    assert decision["status"] == "enrolled"
    assert decision["reasons"] == []
    assert decision["trainee_id"] == accepted["trainee_id"]
    assert key == accepted["trainee_id"]
    assert decision["school_id"] == "montauban"
    assert decision["enrolled_on"] == "2024-04-03"
    assert decision["agency_kind"] == "mlds"
    assert decision["age_at_entry"] == 18  # 18th birthday that very day
    assert (decision["rqth"], decision["qpv_resident"], decision["has_work_experience"]) == (
        True, False, True,
    )


async def test_enrollment_refusals_give_the_first_reason_that_applies(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    unknown_id = f"NOPE-{new_id()[:8]}"
    unknown, unknown_key = await enroll(publisher, watcher, unknown_id)
    rejected = await refer(publisher, watcher, candidate={"in_school": True})
    not_accepted, _ = await enroll(publisher, watcher, rejected["referral_id"])
    pending = await refer(publisher, watcher, candidate={"birth_date": "1997-08-08"})
    still_pending, _ = await enroll(publisher, watcher, pending["referral_id"])
    accepted = await refer(publisher, watcher)
    await enroll(publisher, watcher, accepted["referral_id"])
    twice, _ = await enroll(publisher, watcher, accepted["referral_id"])

    assert (unknown["status"], unknown["reasons"]) == ("rejected", ["unknown_referral"])
    assert unknown_key == unknown_id
    assert not_accepted["reasons"] == ["referral_not_accepted"]
    assert still_pending["reasons"] == ["referral_not_accepted"]
    assert twice["reasons"] == ["already_enrolled"]
    for refusal in (unknown, not_accepted, still_pending, twice):
        assert refusal["age_at_entry"] is None
        assert refusal["agency_kind"] is None


# --- erasure and partner access -------------------------------------------------------------


def referral_row(stack: ServiceProcesses, referral_id: str) -> dict[str, Any]:
    url = stack.services["referrals"].env["REFERRALS_DATABASE_URL"]
    engine = create_engine(url)
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT * FROM referral WHERE referral_id = :id"), {"id": referral_id}
        ).mappings().one()
        history = connection.execute(
            text("SELECT count(*) FROM referral_history WHERE referral_id = :id"),
            {"id": referral_id},
        ).scalar_one()
    engine.dispose()
    return {**row, "history_count": history}


async def test_erase_command_deletes_the_person_and_keeps_the_decisions(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    accepted = await refer(publisher, watcher, candidate={"email": "ines@example.org"})
    before = referral_row(stack, accepted["referral_id"])
    env = {**os.environ, **stack.services["referrals"].env}
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "referrals", "erase", accepted["referral_id"]],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )

    assert done.returncode == 0, done.stderr
    after = referral_row(stack, accepted["referral_id"])
    assert before["last_name"] and before["email"] == "ines@example.org"
    for field in ("first_name", "last_name", "birth_date", "email", "phone", "person_key"):
        assert after[field] is None
    assert after["status"] == "accepted"
    assert after["trainee_id"] == accepted["trainee_id"]
    assert after["history_count"] == before["history_count"] + 1


async def test_partners_see_only_their_own_referrals(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    decision = await refer(publisher, watcher)
    url = f"{stack.services['referrals'].url}/referrals/{decision['referral_id']}"

    def get(token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(url, headers=headers, timeout=5)

    own = get(ML_TOULOUSE)
    assert own.status_code == 200
    assert own.json()["trainee_id"] == decision["trainee_id"]
    assert own.json()["candidate"]["first_name"] == "Inès"
    assert [entry["kind"] for entry in own.json()["history"]] == ["referral"]
    assert get(FT_TOULOUSE).status_code == 403
    assert get(FINANCE).status_code == 403
    assert get(None).status_code == 401
    assert get("not-a-token").status_code == 401
    assert get(ADMIN).json().get("candidate") is None


async def test_retention_command_erases_old_refusals_and_keeps_live_referrals(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    refused = await refer(publisher, watcher, candidate={"highest_qualification": "bac"})
    live = await refer(publisher, watcher)
    env = {**os.environ, **stack.services["referrals"].env}
    done = subprocess.run(
        # 25 months on: refusals of today are due, enrollments of today (36 months) not.
        [sys.executable, "-m", "deploy.cli", "referrals", "retention", "--as-of",
         (date.today() + timedelta(days=25 * 31)).isoformat()],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )

    assert done.returncode == 0, done.stderr
    assert referral_row(stack, refused["referral_id"])["last_name"] is None
    assert referral_row(stack, live["referral_id"])["last_name"] is not None


async def test_a_partner_erases_over_http_and_the_decision_stays(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    decision = await refer(publisher, watcher)
    url = f"{stack.services['referrals'].url}/referrals/{decision['referral_id']}"
    own = bearer(ML_TOULOUSE)

    other = httpx.delete(f"{url}/personal-data", timeout=5,
                         headers=bearer(FT_TOULOUSE))
    erased = httpx.delete(f"{url}/personal-data", headers=own, timeout=5)
    after = httpx.get(url, headers=own, timeout=5).json()

    assert other.status_code == 403
    assert erased.status_code == 200 and erased.json()["erased"] is True
    assert after["erased"] is True
    assert after["candidate"]["last_name"] is None
    assert (after["status"], after["trainee_id"]) == ("accepted", decision["trainee_id"])
    assert referral_row(stack, decision["referral_id"])["birth_date"] is None
