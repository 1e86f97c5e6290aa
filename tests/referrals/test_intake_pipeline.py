"""(1.1) Partners over HTTP through the real broker: a cohort sent over HTTP and the same
cohort sent on Kafka are decided, counted and reported alike; `?wait=N` answers the
decision; a partner's token never submits for another agency."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import httpx
import pytest

from deploy.harness import ServiceProcesses
from shared.contract import Topic
from tests import tokens
from tests.events import referral
from tests.infra import Publisher, TopicWatcher, poll

pytestmark = pytest.mark.infra

DECIDED = Topic.REFERRALS_DECIDED
PARTNER = tokens.bearer(tokens.ML_TOULOUSE)  # partner:ml-toulouse
ADMIN = tokens.bearer(tokens.ADMIN)  # may submit for any agency: here, one of this test's
OUTCOMES = tokens.bearer(tokens.OUTCOMES)
YEAR = 2015  # when the cohort was referred (its ages are taken then)

# (candidate changes, school): one of each decision the contract describes.
COHORT: list[tuple[dict[str, Any], str]] = [
    ({"birth_date": "1997-05-10"}, "toulouse"),  # 18 on the day: accepted
    ({"birth_date": "1994-05-10"}, "nimes"),  # 21: accepted
    ({"birth_date": "2000-01-01"}, "toulouse"),  # 15: too young
    ({"birth_date": "1988-06-01"}, "ales"),  # 26: pending a derogation
    ({"birth_date": "1980-01-01"}, "toulouse"),  # 35: too old
    ({"birth_date": "1995-03-03", "highest_qualification": "bac"}, "nimes"),
    ({"birth_date": "1995-03-03", "in_school": True}, "toulouse"),
    ({"birth_date": "1995-03-03"}, "paris-15"),  # unknown school
]


def cohort(agency: dict[str, str]) -> list[dict[str, Any]]:
    referrals = [
        referral(agency=agency, school_id=school, occurred_at=f"{YEAR}-05-10T10:00:00+02:00",
                 candidate=changes)
        for changes, school in COHORT
    ]
    twin = {**referrals[0], "event_id": str(uuid.uuid4()),  # the same person: a duplicate
            "referral_id": f"ML-TLS-{uuid.uuid4().hex[:12]}"}
    return [*referrals, twin]


def without_event_fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("event_id", "schema_version")}


async def test_a_cohort_over_http_is_decided_and_reported_as_on_kafka(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    kafka_agency = {"kind": "mission_locale", "id": f"ml-kafka-{uuid.uuid4().hex[:6]}",
                    "name": "ML (Kafka)"}
    http_agency = {"kind": "mission_locale", "id": f"ml-http-{uuid.uuid4().hex[:6]}",
                   "name": "ML (HTTP)"}
    on_kafka, over_http = cohort(kafka_agency), cohort(http_agency)
    for event in on_kafka:
        await publisher.send(Topic.REFERRALS_SUBMITTED, event, key=event["referral_id"])
    referrals_url = stack.services["referrals"].url
    answer = httpx.post(f"{referrals_url}/referrals/batch", headers=ADMIN, timeout=30,
                        json={"referrals": [without_event_fields(e) for e in over_http]})
    assert [r["status"] for r in answer.json()["results"]] == [202] * len(over_http)

    async def decisions(sent: list[dict[str, Any]]) -> list[tuple[str, list[str], bool]]:
        found = []
        for event in sent:
            [decided] = await watcher.wait_for(DECIDED, referral_id=event["referral_id"],
                                               timeout=60)
            found.append((decided["status"], decided["reasons"], bool(decided["trainee_id"])))
        return found

    # The twins are keyed apart (two partitions): which one is the duplicate depends on
    # which is decided first, the same way on both doors. The rest is profile by profile.
    kafka_decisions, http_decisions = await decisions(on_kafka), await decisions(over_http)
    assert http_decisions[1:-1] == kafka_decisions[1:-1]
    assert sorted(http_decisions) == sorted(kafka_decisions)
    assert sorted(status for status, _, _ in kafka_decisions) == sorted([
        "accepted", "accepted", "rejected", "pending_derogation", "rejected", "rejected",
        "rejected", "rejected", "duplicate"])

    async def funnel(agency_id: str) -> dict[str, Any] | None:
        """The agency's funnel (the year it was decided in) once outcomes counted all."""
        body = httpx.get(f"{stack.services['outcomes'].url}/reports/funnel", timeout=10,
                         params={"year": date.today().year, "agency_id": agency_id},
                         headers=OUTCOMES).json()
        return body if body["total"]["received"] == len(COHORT) + 1 else None

    kafka_funnel = await poll(lambda: funnel(kafka_agency["id"]), timeout=60)
    http_funnel = await poll(lambda: funnel(http_agency["id"]), timeout=60)
    assert http_funnel["by_agency"] == {http_agency["id"]: kafka_funnel["total"]}
    assert {k: v for k, v in http_funnel.items() if k != "by_agency"} == {
        k: v for k, v in kafka_funnel.items() if k != "by_agency"}


async def test_wait_answers_the_decision_and_the_status_url_follows_it(
    stack: ServiceProcesses,
) -> None:
    url = stack.services["referrals"].url
    body = without_event_fields(referral())

    answer = httpx.post(f"{url}/referrals", params={"wait": 10}, json=body, headers=PARTNER,
                        timeout=30)

    assert answer.status_code == 200
    assert (answer.json()["referral_id"], answer.json()["status"]) == (
        body["referral_id"], "accepted")
    assert answer.json()["candidate"]["last_name"] == body["candidate"]["last_name"]
    status = httpx.get(f"{url}/referrals/{body['referral_id']}", headers=PARTNER, timeout=10)
    assert status.json()["status"] == "accepted"
    again = httpx.post(f"{url}/referrals", json=body, headers=PARTNER, timeout=10)
    assert again.status_code == 202 and again.json()["referral_id"] == body["referral_id"]


async def test_a_partner_never_submits_for_another_agency(
    stack: ServiceProcesses, watcher: TopicWatcher
) -> None:
    url = stack.services["referrals"].url
    other = referral(agency={"kind": "france_travail", "id": "ft-toulouse", "name": "FT"})
    own = referral()

    single = httpx.post(f"{url}/referrals", json=without_event_fields(other), headers=PARTNER,
                        timeout=10)
    batch = httpx.post(f"{url}/referrals/batch", headers=PARTNER, timeout=10,
                       json={"referrals": [without_event_fields(e) for e in (other, own)]})

    assert single.status_code == 403
    assert [r["status"] for r in batch.json()["results"]] == [403, 202]
    await watcher.wait_for(DECIDED, referral_id=own["referral_id"], timeout=60)
    assert watcher.find(DECIDED, referral_id=other["referral_id"]) == []
