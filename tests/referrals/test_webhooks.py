"""Webhooks without the broker: the body and its signature (pure), the queue in the store on
SQLite and PostgreSQL (written in the decision's transaction, the lease, the backoff, the
parking and the replay), and the delivery worker against a real HTTP receiver."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from services.referrals import domain, webhooks
from services.referrals.app import TOPOLOGY
from services.referrals.handlers import ReferralHandlers
from services.referrals.store import (
    PARKED,
    PENDING,
    TABLES,
    Outgoing,
    WebhookDelivery,
    WebhookStore,
)
from shared.contract import MODELS, EnrollmentDecided, ExitDecided, ReferralDecided, Topic
from shared.db import is_postgresql
from shared.messaging import Route, UnitOfWork
from shared.observability import ServiceMetrics
from shared.schools import load_schools
from shared.settings import Settings
from tests import events, plumbing
from tests.events import referral
from tests.plumbing import engine_fixture, inbound, published
from tests.receiver import receiving

infra = pytest.mark.infra

engine = engine_fixture(TABLES)
processor = partial(plumbing.processor, TOPOLOGY)
record = partial(inbound, Topic.REFERRALS_SUBMITTED)

SECRET = "s3cr3t-" + "x" * 36
PERSONAL = ("Inès", "Martin", "2006-05-17", "ines@example.org")


# --- The body and its signature (pure) -------------------------------------------------------


def test_a_signature_verifies_with_the_secret_and_nothing_else() -> None:
    body = b'{"event_id":"e","type":"referral.decided"}'
    now = 1_760_000_000
    signature = domain.webhook_signature(SECRET, now, body)

    # What the README tells partners to compute, with the standard library only.
    expected = hmac.new(SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert signature == f"v1={expected}"
    assert domain.verify_webhook(SECRET, str(now), signature, body, now=now + 10)
    assert not domain.verify_webhook(SECRET, str(now), signature, body + b" ", now=now)
    assert not domain.verify_webhook("another-secret", str(now), signature, body, now=now)
    assert not domain.verify_webhook(SECRET, str(now + 1), signature, body, now=now)
    assert not domain.verify_webhook(SECRET, "soon", signature, body, now=now)
    # An old (or replayed) request is refused past the tolerance, 5 minutes by default.
    assert domain.verify_webhook(SECRET, str(now), signature, body, now=now + 300)
    assert not domain.verify_webhook(SECRET, str(now), signature, body, now=now + 301)
    assert not domain.verify_webhook(SECRET, str(now), signature, body, now=now - 301)
    # Several signatures (a secret being rotated): one that matches is enough.
    assert domain.verify_webhook(SECRET, str(now), f"v1=00, {signature}", body, now=now)


@pytest.mark.parametrize("url", [
    "https://partner.example.org/e2c/hooks", "http://127.0.0.1:8080/x?token=abc",
    "HTTPS://Partner.Example.org", "http://[::1]:9000/",
])
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert domain.webhook_url_problem(url) is None


@pytest.mark.parametrize(("url", "problem"), [
    ("ftp://partner.example.org/x", "http:// or https://"),
    ("javascript:alert(1)", "http:// or https://"),
    ("partner.example.org/hook", "http:// or https://"),
    ("https:///no-host", "no host"),
    ("https://user:pw@partner.example.org/", "credentials"),
    ("https://partner.example.org/a b", "spaces"),
    ("https://partner.example.org:port/", "cannot be read"),
    ("https://partner.example.org/" + "a" * 2000, "longer than"),
])
def test_other_urls_are_refused_saying_why(url: str, problem: str) -> None:
    found = domain.webhook_url_problem(url)
    assert found is not None and problem in found


def test_a_url_is_shown_without_its_query_string() -> None:
    shown = domain.shown_url("https://partner.example.org:8443/hooks/e2c?token=SECRET#x")
    assert shown == "https://partner.example.org:8443/hooks/e2c?…"
    assert domain.shown_url("http://[::1]/h") == "http://[::1]/h"


def test_the_backoff_doubles_up_to_its_cap_then_parks() -> None:
    delays = [domain.retry_delay(n, 8, 2, 60) for n in range(1, 9)]
    assert delays == [2, 4, 8, 16, 32, 60, 60, None]
    assert domain.retry_delay(1, 1, 2, 60) is None  # one try only
    assert domain.retry_delay(5000, 10_000, 2, 60) == 60  # no overflow on a huge count


def test_a_body_carries_the_decision_and_no_personal_data() -> None:
    enrolled = EnrollmentDecided.model_validate(events.enrollment_decided("tr-1"))
    body = json.loads(domain.webhook_body(Topic.ENROLLMENTS_DECIDED, enrolled, "R-1"))

    assert body == {
        "event_id": str(enrolled.event_id), "type": "enrollment.decided",
        "occurred_at": enrolled.occurred_at.isoformat(), "referral_id": "R-1",
        "data": {"request_event_id": str(enrolled.request_event_id), "status": "enrolled",
                 "reasons": [], "trainee_id": "tr-1", "school_id": "toulouse",
                 "enrolled_on": "2024-01-15"},
    }  # not the profile (age at entry, RQTH...) the other services receive
    decided = ReferralDecided.model_validate(events.referral_decided("R-2"))
    assert json.loads(domain.webhook_body(Topic.REFERRALS_DECIDED, decided, "R-2"))["type"] \
        == "referral.decided"
    exited = ExitDecided.model_validate(events.exit_decided("tr-1"))
    assert json.loads(domain.webhook_body(Topic.EXITS_DECIDED, exited, "R-1"))["data"] == {
        "trainee_id": "tr-1", "school_id": "toulouse", "exited_on": "2024-09-30",
        "outcome": "durable_employment", "category": "employment"}


# --- The queue in the store ------------------------------------------------------------------


def hook(engine: Engine, agency_id: str = "ml-toulouse", url: str = "https://p.example/h",
         rotate: bool = False) -> Any:
    with Session(engine) as session:
        done = webhooks.register(WebhookStore(session), agency_id, url, rotate)
        session.commit()
    return done


def deliveries(engine: Engine) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(session.exec(select(WebhookDelivery).order_by(col(WebhookDelivery.id))))


def claim(engine: Engine, moment: datetime | None = None, lease: float = 30,
          limit: int = 20) -> list[Outgoing]:
    with Session(engine) as session:
        claimed = WebhookStore(session).claim_deliveries(limit, lease, moment)
        session.commit()
    return claimed


def fail(engine: Engine, delivery: Outgoing, retry_in: float | None,
         moment: datetime | None = None) -> None:
    with Session(engine) as session:
        WebhookStore(session).failed(delivery, "HTTP 500", 500, retry_in, moment)
        session.commit()


@infra
def test_a_webhook_secret_is_made_once_kept_on_a_change_and_never_listed(
    engine: Engine,
) -> None:
    made = hook(engine, url="https://p.example/h?token=abc")
    changed = hook(engine, url="https://q.example/h")
    rotated = hook(engine, url="https://q.example/h", rotate=True)

    assert made.created and made.secret and len(made.secret) >= 43  # token_urlsafe(32)
    assert not changed.created and changed.secret is None
    assert rotated.secret and rotated.secret != made.secret
    with Session(engine) as session:
        listed = WebhookStore(session).webhooks()
    assert listed == [{"agency_id": "ml-toulouse", "url": "https://q.example/h",
                       "created_at": listed[0]["created_at"],
                       "updated_at": listed[0]["updated_at"], "pending": 0, "parked": 0}]
    with pytest.raises(webhooks.WebhookError, match="http"):
        hook(engine, url="file:///etc/passwd")
    with pytest.raises(webhooks.WebhookError, match="agency id"):
        hook(engine, agency_id="two words")


@infra
@pytest.mark.parametrize("prepared", [True, False])
def test_every_decision_of_a_hooked_agency_is_queued_with_its_event_id(
    engine: Engine, prepared: bool
) -> None:
    """With the batch's cache (the fast path: the rows written in bulk with the batch) and
    without it (the store asked per record)."""
    hook(engine, "ml-toulouse")
    accepted = referral()
    rejected = referral(candidate={"in_school": True})
    pending = referral(candidate={"birth_date": "1997-01-02"})
    elsewhere = referral(agency={"kind": "france_travail", "id": "ft-toulouse", "name": "FT"})
    twin = referral(candidate={"last_name": accepted["candidate"]["last_name"]})
    batch = processor(engine, prepared=prepared)
    batch.process([record(e) for e in (accepted, rejected, pending, elsewhere, twin)])
    trainee = published(engine, Topic.REFERRALS_DECIDED)[0]["trainee_id"]
    batch.process([
        inbound(Topic.DEROGATIONS_SUBMITTED, events.derogation(pending["referral_id"])),
        inbound(Topic.ENROLLMENTS_SUBMITTED, events.enrollment(accepted["referral_id"])),
        inbound(Topic.ENROLLMENTS_SUBMITTED, events.enrollment(rejected["referral_id"])),
        inbound(Topic.ENROLLMENTS_SUBMITTED, events.enrollment("NOBODY")),
        inbound(Topic.EXITS_DECIDED, events.exit_decided(trainee)),
    ])

    decided = [p for p in published(engine, Topic.REFERRALS_DECIDED)
               if p["agency_id"] == "ml-toulouse"]
    enrolled = [p for p in published(engine, Topic.ENROLLMENTS_DECIDED)
                if p["referral_id"] != "NOBODY"]
    queued = deliveries(engine)
    assert [d.event_id for d in queued if d.type == "referral.decided"] == \
        [p["event_id"] for p in decided]
    assert [(d.type, json.loads(d.body)["data"].get("status")) for d in queued] == [
        ("referral.decided", "accepted"), ("referral.decided", "rejected"),
        ("referral.decided", "pending_derogation"), ("referral.decided", "duplicate"),
        ("referral.decided", "accepted"),  # the derogation granted
        ("enrollment.decided", "enrolled"), ("enrollment.decided", "rejected"),
        ("trainee.exited", None)]
    assert [d.event_id for d in queued if d.type == "enrollment.decided"] == \
        [p["event_id"] for p in enrolled]
    assert {d.agency_id for d in queued} == {"ml-toulouse"}
    assert all(d.state == PENDING and d.attempts == 0 for d in queued)
    for delivery in queued:
        for personal in (*PERSONAL, accepted["candidate"]["last_name"]):
            assert personal not in delivery.body


@infra
def test_a_batch_done_again_record_by_record_queues_each_delivery_once(engine: Engine) -> None:
    """A handler that fails on the fast path sends the batch down the savepoint path: the
    fast path's collected deliveries are dropped with it, the failed record queues none."""
    hook(engine, "ml-toulouse")
    handlers = ReferralHandlers(set(load_schools()))

    def on_referral(unit: UnitOfWork[Any], event: Any) -> None:
        handlers.on_referral(unit, event)
        if event.referral_id.startswith("BOOM"):
            raise RuntimeError("a handler bug")

    routes = {topic: Route(MODELS[topic], partial(method, handlers))
              for topic, method in TOPOLOGY.consumes.items()}
    routes[Topic.REFERRALS_SUBMITTED] = Route(MODELS[Topic.REFERRALS_SUBMITTED], on_referral)
    first, boom, last = referral(), referral(referral_id="BOOM-1"), referral()
    duplicate = record(first)

    result = processor(engine, routes).process([record(first), record(boom), record(last),
                                                duplicate])

    assert sum(result.dead_letters.values()) == 1
    queued = deliveries(engine)
    assert [json.loads(d.body)["referral_id"] for d in queued] == \
        [first["referral_id"], last["referral_id"]]
    assert [d.event_id for d in queued] == \
        [p["event_id"] for p in published(engine, Topic.REFERRALS_DECIDED)]


@infra
def test_a_leased_delivery_is_not_claimed_again_until_its_lease_ends(engine: Engine) -> None:
    hook(engine)
    processor(engine).process([record(referral())])
    start = datetime.now(UTC)

    [claimed] = claim(engine, start, lease=30)
    assert claimed.url == "https://p.example/h" and claimed.secret and claimed.attempts == 0
    assert claim(engine, start + timedelta(seconds=29)) == []
    # The worker died without settling: once the lease ends, another worker sends it.
    [again] = claim(engine, start + timedelta(seconds=31))
    assert again.id == claimed.id


@infra
def test_two_workers_at_once_never_claim_the_same_delivery(engine: Engine) -> None:
    """On PostgreSQL the second claim skips the rows the first holds (SKIP LOCKED) instead
    of waiting; on SQLite it waits for the first's write lock, then finds them leased."""
    hook(engine)
    processor(engine).process([record(referral()) for _ in range(5)])
    second: list[Outgoing] = []

    def other_worker() -> None:
        second.extend(claim(engine))

    with Session(engine) as session:
        first = WebhookStore(session).claim_deliveries(3, 30)
        racer = threading.Thread(target=other_worker)
        racer.start()
        if is_postgresql(engine):
            racer.join(timeout=30)
            assert not racer.is_alive()  # it did not wait for the first transaction
        session.commit()
    racer.join(timeout=30)

    assert len(first) == 3
    assert len(second) == 2
    assert not {d.id for d in first} & {d.id for d in second}


@infra
def test_a_failed_delivery_waits_its_backoff_then_is_parked_and_replayed(
    engine: Engine,
) -> None:
    hook(engine)
    hook(engine, "ft-toulouse")
    processor(engine).process([
        record(referral()),
        record(referral(agency={"kind": "france_travail", "id": "ft-toulouse", "name": "FT"})),
    ])
    moment = datetime.now(UTC)
    toulouse, france_travail = claim(engine, moment)

    fail(engine, toulouse, 4, moment)
    fail(engine, france_travail, None, moment)  # parked

    assert claim(engine, moment + timedelta(seconds=3.9)) == []
    [retried] = claim(engine, moment + timedelta(seconds=4.1))
    assert (retried.id, retried.attempts) == (toulouse.id, 1)
    with Session(engine) as session:
        state = WebhookStore(session).webhook_state(10, moment + timedelta(seconds=5))
    assert (state["endpoints"], state["pending"], state["parked"]) == (2, 1, 1)
    assert [(e["agency_id"], e["state"], e["last_error"], e["last_status"])
            for e in state["last_errors"]][-1:] in (
        [("ft-toulouse", PARKED, "HTTP 500", 500)], [("ml-toulouse", PENDING, "HTTP 500", 500)])
    assert "body" not in json.dumps(state) and "secret" not in json.dumps(state)

    with Session(engine) as session:
        store = WebhookStore(session)
        assert webhooks.replay(store, "ml-toulouse") == 0  # nothing of it is parked
        assert webhooks.replay(store, delivery_ids=[toulouse.id]) == 0
        assert webhooks.replay(store, "ft-toulouse", [france_travail.id]) == 1
        session.commit()
    [replayed] = [d for d in claim(engine, datetime.now(UTC) + timedelta(seconds=1))
                  if d.agency_id == "ft-toulouse"]
    assert (replayed.id, replayed.attempts) == (france_travail.id, 0)


@infra
def test_removing_a_webhook_drops_its_queue(engine: Engine) -> None:
    hook(engine)
    processor(engine).process([record(referral()), record(referral())])
    with Session(engine) as session:
        store = WebhookStore(session)
        assert webhooks.remove(store, "ml-toulouse") == 2
        assert webhooks.remove(store, "ml-toulouse") is None
        session.commit()
    assert deliveries(engine) == []
    processor(engine).process([record(referral())])
    assert deliveries(engine) == []  # no webhook: nothing queued


# --- The worker against a real receiver ------------------------------------------------------


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics("referrals", CollectorRegistry())


def worker(engine: Engine, metrics: ServiceMetrics, **settings: Any) -> webhooks.WebhookWorker:
    values = {"E2C_WEBHOOK_BACKOFF_SECONDS": 0.05, "E2C_WEBHOOK_MAX_ATTEMPTS": 4,
              "E2C_WEBHOOK_TIMEOUT_SECONDS": 2, "E2C_WEBHOOK_LEASE_SECONDS": 5, **settings}
    return webhooks.WebhookWorker(engine, Settings(**values), metrics)


async def rounds_until(sender: webhooks.WebhookWorker, engine: Engine, done: Any,
                       timeout: float = 30) -> None:
    """Runs the worker's rounds until `done()` (observable state), with a deadline."""
    deadline = time.monotonic() + timeout
    async with sender.client() as client:
        while not done():
            assert time.monotonic() < deadline, "the worker never got there"
            if not await sender.round(client):
                await _pause()


async def _pause() -> None:
    await asyncio.sleep(0.02)  # between rounds of the worker, not a wait for a result


@pytest.fixture
def quiet_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="services.referrals.webhooks")
    yield caplog


@infra
async def test_the_worker_retries_until_the_partner_answers_and_signs_every_try(
    engine: Engine, metrics: ServiceMetrics, quiet_logs: pytest.LogCaptureFixture
) -> None:
    with receiving(failures=2) as receiver:
        made = hook(engine, url=f"{receiver.url}/hooks?token=PARTNER-TOKEN")
        event = referral()
        processor(engine).process([record(event)])
        [decided] = published(engine, Topic.REFERRALS_DECIDED)

        await rounds_until(worker(engine, metrics), engine, lambda: receiver.delivered())

    tries = receiver.all()
    assert [r.status for r in tries] == [500, 500, 200]
    for received in tries:
        assert received.path == "/hooks?token=PARTNER-TOKEN"
        assert received.verifies(made.secret)
        assert received.event_id == decided["event_id"]
        assert received.headers["content-type"] == "application/json"
        assert abs(int(received.headers["e2c-timestamp"]) - time.time()) < 60
        body = json.loads(received.body)
        assert body["event_id"] == decided["event_id"] and body["type"] == "referral.decided"
        assert body["referral_id"] == event["referral_id"]
        assert body["data"]["trainee_id"] == decided["trainee_id"]
    assert deliveries(engine) == []  # delivered: gone from the queue
    assert metrics.webhook_attempts.labels("referrals", "failed")._value.get() == 2
    assert metrics.webhook_attempts.labels("referrals", "delivered")._value.get() == 1
    logged = quiet_logs.text
    assert "HTTP 500" in logged and "/hooks?…" in logged
    assert "PARTNER-TOKEN" not in logged and made.secret not in logged
    assert event["candidate"]["last_name"] not in logged


@infra
async def test_a_delivery_that_keeps_failing_is_parked_and_counted(
    engine: Engine, metrics: ServiceMetrics
) -> None:
    with receiving(failures=1000) as receiver:
        hook(engine, url=receiver.url)
        processor(engine).process([record(referral())])
        await rounds_until(worker(engine, metrics, E2C_WEBHOOK_MAX_ATTEMPTS=3), engine,
                           lambda: [d for d in deliveries(engine) if d.state == PARKED])

    assert len(receiver.all()) == 3
    [parked] = deliveries(engine)
    assert (parked.attempts, parked.last_status, parked.last_error) == (3, 500, "HTTP 500")
    assert metrics.webhook_parked.labels("referrals")._value.get() == 1


@infra
async def test_a_redirect_is_never_followed(engine: Engine, metrics: ServiceMetrics) -> None:
    with receiving() as elsewhere, receiving(
        answer=lambda _i: (307, {"Location": f"{elsewhere.url}/steal"})
    ) as receiver:
        hook(engine, url=receiver.url)
        processor(engine).process([record(referral())])
        await rounds_until(worker(engine, metrics, E2C_WEBHOOK_MAX_ATTEMPTS=1), engine,
                           lambda: [d for d in deliveries(engine) if d.state == PARKED])

        assert elsewhere.all() == []
    [parked] = deliveries(engine)
    assert parked.last_error == "HTTP 307 (redirects are not followed)"


@infra
async def test_an_unreachable_partner_is_a_failure_like_another(
    engine: Engine, metrics: ServiceMetrics
) -> None:
    with receiving() as receiver:
        url = receiver.url
    hook(engine, url=url)  # nothing listens there any more
    processor(engine).process([record(referral())])
    await rounds_until(worker(engine, metrics, E2C_WEBHOOK_MAX_ATTEMPTS=1), engine,
                       lambda: [d for d in deliveries(engine) if d.state == PARKED])
    [parked] = deliveries(engine)
    assert parked.last_status is None and parked.last_error == "ConnectError"


def test_a_lease_shorter_than_a_send_is_refused() -> None:
    settings = Settings(E2C_WEBHOOK_TIMEOUT_SECONDS=5, E2C_WEBHOOK_LEASE_SECONDS=5)
    with pytest.raises(ValueError, match="E2C_WEBHOOK_LEASE_SECONDS"):
        webhooks.check_settings(settings)
