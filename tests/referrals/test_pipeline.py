"""The first slice through the real broker: referral in, decision out, and what can go wrong."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from deploy.faults import CRASH_EXIT_CODE
from deploy.harness import ServiceProcesses
from shared.contract import ReferralDecided, Topic
from tests import tokens
from tests.events import new_id, referral
from tests.infra import Publisher, TopicWatcher

SUBMITTED = Topic.REFERRALS_SUBMITTED
DECIDED = Topic.REFERRALS_DECIDED
ADMIN = {"Authorization": f"Bearer {tokens.ADMIN}"}  # the stack's tokens

pytestmark = pytest.mark.infra


async def test_an_eligible_referral_is_accepted_with_a_pseudonym(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    event = referral()
    await publisher.send(SUBMITTED, event, key=event["referral_id"])

    [decision] = await watcher.wait_for(DECIDED, request_event_id=event["event_id"])

    ReferralDecided.model_validate(decision)
    assert decision["referral_id"] == event["referral_id"]
    assert decision["agency_id"] == "ml-toulouse"
    assert decision["school_id"] == "toulouse"
    assert decision["status"] == "accepted"
    assert decision["reasons"] == []
    assert decision["trainee_id"]
    assert decision["duplicate_of"] is None
    assert watcher.keys(DECIDED, request_event_id=event["event_id"]) == [event["referral_id"]]
    raw = json.dumps(decision)
    for personal in ("Inès", event["candidate"]["last_name"], "2006-05-17"):
        assert personal not in raw


async def test_every_failing_rule_is_answered(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    event = referral(
        school_id="paris-15",
        candidate={"birth_date": "1990-01-01", "highest_qualification": "bac", "in_school": True},
    )
    await publisher.send(SUBMITTED, event, key=event["referral_id"])

    [decision] = await watcher.wait_for(DECIDED, request_event_id=event["event_id"])

    assert decision["status"] == "rejected"
    assert decision["reasons"] == ["too_old", "has_qualification", "in_school", "unknown_school"]
    assert decision["trainee_id"] is None


async def test_a_26_year_old_waits_for_a_derogation(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    event = referral(candidate={"birth_date": "1998-03-04"})  # 26 on 2024-03-04
    await publisher.send(SUBMITTED, event, key=event["referral_id"])

    [decision] = await watcher.wait_for(DECIDED, request_event_id=event["event_id"])

    assert decision["status"] == "pending_derogation"
    assert decision["reasons"] == ["needs_derogation"]
    assert decision["trainee_id"]


def _malformed_cases() -> list[tuple[str, bytes]]:
    missing = referral()
    del missing["candidate"]["birth_date"]
    wrong_enum = referral(agency={"kind": "prefecture", "id": "x", "name": "x"})
    bad_date = referral(candidate={"birth_date": "2006-02-30"})
    wrong_version = referral(schema_version=2)
    return [
        ("not json", b"{this is not json"),
        ("missing field", json.dumps(missing).encode()),
        ("wrong enum", json.dumps(wrong_enum).encode()),
        ("bad date", json.dumps(bad_date).encode()),
        ("schema version 2", json.dumps(wrong_version).encode()),
    ]


async def test_malformed_messages_go_to_the_dead_letter_topic_and_the_next_is_answered(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    key = f"POISON-{new_id()[:8]}"
    cases = _malformed_cases()
    for _name, raw in cases:
        await publisher.send(SUBMITTED, raw, key=key)
    good = referral(referral_id=key)
    await publisher.send(SUBMITTED, good, key=key)

    await watcher.wait_for(DECIDED, request_event_id=good["event_id"])
    letters = await watcher.wait_for(Topic.DEADLETTER, count=len(cases), source_topic=SUBMITTED)
    ours = [letter for letter in letters if letter["original"] in {r.decode() for _, r in cases}]

    assert len(ours) == len(cases)
    assert {letter["original"] for letter in ours} == {raw.decode() for _, raw in cases}
    for letter in ours:
        assert letter["service"] == "referrals"
        assert letter["schema_version"] == 1
        assert letter["error"].startswith("invalid event")
        assert isinstance(letter["partition"], int)
        assert isinstance(letter["offset"], int)
    assert set(watcher.keys(Topic.DEADLETTER, source_topic=SUBMITTED)) >= {key}
    errors = {letter["original"]: letter["error"] for letter in ours}
    assert "birth_date" in errors[cases[1][1].decode()]
    assert "agency.kind" in errors[cases[2][1].decode()]
    assert "schema_version" in errors[cases[4][1].decode()]
    for letter in ours:
        assert "Inès" not in letter["error"]  # reasons name fields, never echo their values


async def test_the_same_event_twice_gives_one_decision_and_a_resend_the_same_answer(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    event = referral()
    await publisher.send(SUBMITTED, event, key=event["referral_id"])
    await publisher.send(SUBMITTED, event, key=event["referral_id"])
    resent = {**event, "event_id": new_id()}
    await publisher.send(SUBMITTED, resent, key=event["referral_id"])

    [answer] = await watcher.wait_for(DECIDED, request_event_id=resent["event_id"])
    first = watcher.find(DECIDED, request_event_id=event["event_id"])

    assert len(first) == 1
    assert (answer["status"], answer["reasons"], answer["trainee_id"]) == (
        first[0]["status"],
        first[0]["reasons"],
        first[0]["trainee_id"],
    )


async def test_a_crash_after_the_db_commit_before_the_offset_commit_decides_once(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    service, twin = stack.services["referrals"], stack.services["referrals-2"]
    twin.stop()  # one instance holds every partition, so the record reaches the crashing one
    service.stop()
    service.start(crash_at="after_db_commit")
    event = referral()
    await publisher.send(SUBMITTED, event, key=event["referral_id"])

    exit_code = await asyncio.to_thread(service.wait_exit, 60)
    assert exit_code == CRASH_EXIT_CODE
    await asyncio.to_thread(service.start)

    await watcher.wait_for(DECIDED, request_event_id=event["event_id"], timeout=60)
    resent = {**event, "event_id": new_id()}
    await publisher.send(SUBMITTED, resent, key=event["referral_id"])
    await watcher.wait_for(DECIDED, request_event_id=resent["event_id"], timeout=60)

    assert len(watcher.find(DECIDED, request_event_id=event["event_id"])) == 1
    redelivered = service.metric(
        "e2c_events_consumed_total", topic=str(SUBMITTED), result="duplicate"
    )
    # Its store recorded the offset after it: the fresh process starts there, Kafka's commit
    # behind it notwithstanding, and does not even read the record again.
    assert redelivered == 0
    await asyncio.to_thread(twin.start)


async def test_every_service_reports_ready_with_health_and_metrics(stack: ServiceProcesses) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        for service in stack.services.values():
            ready = await client.get(f"{service.url}/health/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"broker": "ok", "store": "ok", "cache": "ok"}
            assert (await client.get(f"{service.url}/health/live")).status_code == 200
            metrics = await client.get(f"{service.url}/metrics")
            assert "e2c_outbox_backlog" in metrics.text
            assert (await client.get(f"{service.url}/docs/asyncapi.json")).status_code == 401
            doc = await client.get(f"{service.url}/docs/asyncapi.json", headers=ADMIN)
            assert doc.status_code == 200
            assert doc.json()["asyncapi"].startswith("3.")
            assert "servers" not in doc.json()  # the broker's address is not shown
            if service.name == "referrals":
                schemas = doc.json()["components"]["schemas"]
                assert {"ReferralSubmitted", "ReferralDecided"} <= set(schemas)
            try_it = await client.post(f"{service.url}/docs/asyncapi/try", json={},
                                       headers=ADMIN)
            assert try_it.status_code != 200  # nobody publishes events over HTTP


def test_every_answer_so_far_was_published_once(watcher: TopicWatcher) -> None:
    """Two instances per service share each outbox: no decision may leave twice as two
    different events (a republished one would keep its event_id, which consumers drop).
    (1.1) An expiry answers no input: one per referral, whichever instance's timer ran."""
    events_by_request: dict[tuple[str, str], set[str]] = {}
    for topic, _key, body, _raw in watcher.messages:
        if body is None or "request_event_id" not in body:
            continue
        request = body["request_event_id"]
        if request is None and body.get("status") == "expired":
            request = f"expiry of {body['referral_id']}"
        events_by_request.setdefault((topic, request), set()).add(body["event_id"])
    assert events_by_request
    repeated = {request: ids for request, ids in events_by_request.items() if len(ids) > 1}
    assert repeated == {}


def test_service_logs_carry_no_personal_data(stack: ServiceProcesses) -> None:
    """Run last in this file: every earlier test fed names and birth dates to the services."""
    logs = {path.name: path.read_text(errors="replace") for path in stack.data_dir.glob("*.log")}
    assert logs
    for name, text in logs.items():
        for personal in ("Inès", "Martin-", "2006-05-17", "1997-06-01", "ines@example.org"):
            assert personal not in text, f"{personal!r} in {name}"
