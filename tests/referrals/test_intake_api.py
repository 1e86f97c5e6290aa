"""(1.1) Partners over HTTP: `POST /referrals` and `POST /referrals/batch` on a real store
(no broker: what leaves goes to the outbox), and the rate limit through a real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.testclient import TestClient

from services.referrals.api import router
from services.referrals.handlers import ReferralHandlers
from services.referrals.store import TABLES
from shared.contract import ReferralSubmitted, Topic
from shared.ratelimit import RateLimiter
from shared.schools import load_schools
from tests.events import referral
from tests.http_app import app_for, assert_documented
from tests.plumbing import engine_fixture, published

OWN, OTHER = "ml-toulouse", "ft-31"
TOKENS = {"tok-own-" + "x" * 24: f"partner:{OWN}", "tok-other-" + "x" * 22: f"partner:{OTHER}",
          "tok-admin-" + "x" * 22: "admin", "tok-finance-" + "x" * 20: "finance"}
OWN_TOKEN, OTHER_TOKEN, ADMIN_TOKEN, FINANCE_TOKEN = (
    {"Authorization": f"Bearer {token}"} for token in TOKENS)
SUBMITTED = Topic.REFERRALS_SUBMITTED

engine = engine_fixture(TABLES, sqlite_only=True)


def intake_app(engine: Engine) -> FastAPI:
    app = app_for(router, engine, TOKENS)
    app.state.context.handlers = ReferralHandlers(set(load_schools()))
    return app


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(intake_app(engine)) as test_client:
        yield test_client


def own(**overrides: Any) -> dict[str, Any]:
    """A referral of the own agency, as a partner's software sends it (no event fields)."""
    body = referral(agency={"kind": "mission_locale", "id": OWN, "name": "ML Toulouse"},
                    **overrides)
    for name in ("event_id", "occurred_at", "schema_version"):
        body.pop(name)
    return body


def test_a_referral_is_accepted_and_published_with_the_fields_the_service_sets(
    client: TestClient, engine: Engine
) -> None:
    body = own()

    answer = client.post("/referrals", json=body, headers=OWN_TOKEN)

    assert answer.status_code == 202
    assert answer.json() == {"referral_id": body["referral_id"],
                             "event_id": answer.json()["event_id"],
                             "status_url": f"/referrals/{body['referral_id']}"}
    assert_documented(answer, "referrals", "/referrals", "post")
    [sent] = published(engine, SUBMITTED)
    event = ReferralSubmitted.model_validate(sent)
    assert str(event.event_id) == answer.json()["event_id"] and event.schema_version == 1
    assert sent["candidate"] == body["candidate"] and sent["agency"]["id"] == OWN


def test_until_decided_the_status_url_answers_received(client: TestClient) -> None:
    body = own()
    url = client.post("/referrals", json=body, headers=OWN_TOKEN).json()["status_url"]

    status = client.get(url, headers=OWN_TOKEN)

    assert status.status_code == 200 and status.json()["status"] == "received"
    assert client.get(url, headers=OTHER_TOKEN).status_code == 403
    assert client.get(url, headers=ADMIN_TOKEN).json()["status"] == "received"


def test_a_retry_gets_the_same_answer_and_nothing_is_published_twice(
    client: TestClient, engine: Engine
) -> None:
    body = own()
    first = client.post("/referrals", json=body, headers=OWN_TOKEN)

    again = client.post("/referrals", json=body, headers=OWN_TOKEN)

    assert again.status_code == 202 and again.json() == first.json()
    assert len(published(engine, SUBMITTED)) == 1


def test_a_reused_referral_id_with_another_person_is_409(client: TestClient) -> None:
    body = own()
    client.post("/referrals", json=body, headers=OWN_TOKEN)

    other = {**body, "candidate": {**body["candidate"], "first_name": "Someone"}}
    answer = client.post("/referrals", json=other, headers=OWN_TOKEN)

    assert answer.status_code == 409 and "referral_id" in answer.json()["detail"]


def test_a_partner_submits_for_its_own_agency_only(client: TestClient, engine: Engine) -> None:
    body = own()

    assert client.post("/referrals", json=body, headers=OTHER_TOKEN).status_code == 403
    assert client.post("/referrals", json=body, headers=FINANCE_TOKEN).status_code == 403
    assert client.post("/referrals", json=body).status_code == 401
    assert published(engine, SUBMITTED) == []
    assert client.post("/referrals", json=body, headers=ADMIN_TOKEN).status_code == 202


def test_an_invalid_body_is_422_naming_each_field_never_its_value(
    client: TestClient, engine: Engine
) -> None:
    body = own()
    body["candidate"]["birth_date"] = "1999-02-31"
    body["candidate"]["in_school"] = "Ines-Martin-secret"
    del body["school_id"]

    answer = client.post("/referrals", json=body, headers=OWN_TOKEN)

    assert answer.status_code == 422
    detail = answer.json()["detail"]
    for field in ("birth_date", "in_school", "school_id"):
        assert field in detail
    assert "1999-02-31" not in answer.text and "Ines-Martin-secret" not in answer.text
    assert client.post("/referrals", content=b"{", headers=OWN_TOKEN).status_code == 422
    assert published(engine, SUBMITTED) == []


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_1_mib_is_413(client: TestClient, chunked: bool) -> None:
    body = own()
    body["candidate"]["first_name"] = "x" * (1024 * 1024)
    raw = json.dumps(body).encode()
    headers = {**OWN_TOKEN, "content-type": "application/json"}

    if chunked:
        answer = client.post("/referrals", content=iter([raw[:1000], raw[1000:]]),
                             headers=headers)
    else:
        answer = client.post("/referrals", content=raw, headers=headers)

    assert answer.status_code == 413 and "detail" in answer.json()


def test_a_batch_answers_each_referral_in_order(client: TestClient, engine: Engine) -> None:
    first, conflicting = own(), own()
    client.post("/referrals", json=conflicting, headers=OWN_TOKEN)
    other_agency = referral(agency={"kind": "france_travail", "id": OTHER, "name": "FT"})
    invalid = own(school_id=None)
    items = [first, other_agency, invalid,
             {**conflicting, "candidate": own()["candidate"]}, first, "not a referral"]

    answer = client.post("/referrals/batch", json={"referrals": items}, headers=OWN_TOKEN)

    assert answer.status_code == 200
    assert_documented(answer, "referrals", "/referrals/batch", "post")
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [202, 403, 422, 409, 202, 422]
    assert [r["referral_id"] for r in results] == [r["referral_id"] for r in items[:-1]] + [
        None]
    assert results[0]["event_id"] == results[4]["event_id"]  # the retry in the same batch
    assert "school_id" in results[2]["detail"]
    sent = [event["referral_id"] for event in published(engine, SUBMITTED)]
    assert sent == [conflicting["referral_id"], first["referral_id"]]  # never another agency's


def test_a_batch_over_500_is_refused_whole(client: TestClient) -> None:
    answer = client.post("/referrals/batch", json={"referrals": [own()] * 501},
                         headers=OWN_TOKEN)
    assert answer.status_code == 422 and "referrals" in answer.json()["detail"]


async def test_over_the_rate_it_is_429_with_retry_after(
    engine: Engine, redis_server: str
) -> None:
    app = intake_app(engine)
    redis = aioredis.from_url(redis_server)
    app.state.context.limiter = RateLimiter(redis, rate=0.2, burst=3)
    try:
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            answers = [await http.post("/referrals", json=own(), headers=OWN_TOKEN)
                       for _ in range(4)]
            other = await http.post("/referrals", json=own(), headers=ADMIN_TOKEN)
    finally:
        await redis.aclose()

    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert answers[-1].headers["retry-after"] == "5"
    assert other.status_code == 202  # another token has its own bucket
