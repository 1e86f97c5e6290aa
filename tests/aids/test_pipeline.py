"""Stage 3 of the contract through the real broker: every decision, the held request, the
budget race between two instances, and the finance report against the ledger."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from deploy.harness import ServiceProcesses
from shared.contract import Topic
from tests import events, tokens
from tests.events import aid_request, exit_decided, new_id
from tests.infra import Publisher, TopicWatcher, learn_trainee

pytestmark = pytest.mark.infra

DECIDED = Topic.AIDS_DECIDED
FINANCE = tokens.bearer(tokens.FINANCE)


async def ask(
    publisher: Publisher, watcher: TopicWatcher, request: dict[str, Any], timeout: float = 30
) -> dict[str, Any]:
    await publisher.send(Topic.AIDS_REQUESTED, request, key=request["trainee_id"])
    [decision] = await watcher.wait_for(
        DECIDED, request_event_id=request["event_id"], timeout=timeout
    )
    return decision


def outcome(decision: dict[str, Any]) -> tuple[str, list[str]]:
    return decision["status"], decision["reasons"]


async def test_laptop_meals_and_childcare_are_granted_at_the_right_amounts(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    trainee = await learn_trainee(publisher, school_id="nimes")
    laptop = await ask(publisher, watcher, aid_request(trainee, "laptop", amount_cents=45000))
    meals = await ask(publisher, watcher, aid_request(
        trainee, "meals", quantity=29, period_start="2024-02-01", period_end="2024-02-29"))
    childcare = await ask(publisher, watcher, aid_request(
        trainee, "childcare", amount_cents=60000, period_start="2024-01-31",
        period_end="2024-02-01"))  # touches two months: cap 2 x 300 EUR, exactly reached

    assert outcome(laptop) == ("granted", [])
    assert (laptop["amount_cents"], laptop["school_id"]) == (45000, "nimes")
    assert outcome(meals) == ("granted", [])
    assert meals["amount_cents"] == 29 * 700
    assert meals["quantity"] == 29
    assert outcome(childcare) == ("granted", [])
    assert childcare["amount_cents"] == 60000
    assert watcher.keys(DECIDED, request_event_id=laptop["request_event_id"]) == [trainee]


async def test_every_refusal_of_the_contract(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    trainee = await learn_trainee(publisher, enrolled_on="2024-01-15")
    await ask(publisher, watcher, aid_request(trainee, "laptop", amount_cents=45000))
    await ask(publisher, watcher, aid_request(
        trainee, "meals", quantity=10, period_start="2024-03-01", period_end="2024-03-15"))
    cases = {
        "invalid_period": aid_request(trainee, "meals", quantity=1,
                                      period_start="2024-03-02", period_end="2024-03-01"),
        "invalid_quantity": aid_request(trainee, "childcare", quantity=0, amount_cents=100),
        "invalid_amount": aid_request(trainee, "meals", quantity=2, amount_cents=1400,
                                      period_end="2024-02-10"),
        "period_outside_enrollment": aid_request(trainee, "meals", quantity=3,
                                                 period_start="2024-01-14",
                                                 period_end="2024-01-20"),
        "laptop_already_granted": aid_request(trainee, "laptop", amount_cents=45000),
        "too_many_meals": aid_request(trainee, "meals", quantity=30,
                                      period_start="2024-04-01", period_end="2024-04-29"),
        "overlapping_period": aid_request(trainee, "meals", quantity=5,
                                          period_start="2024-03-15", period_end="2024-03-20"),
        "over_childcare_cap": aid_request(trainee, "childcare", amount_cents=30001),
    }
    for reason, request in cases.items():
        decision = await ask(publisher, watcher, request)
        assert outcome(decision) == ("rejected", [reason]), reason


async def wait_for_row(stack: ServiceProcesses, query: str, key: str, timeout: float = 30) -> Any:
    """Polls the aids store until `query` returns a non-null value."""
    engine = create_engine(stack.services["aids"].env["AIDS_DATABASE_URL"])
    try:
        for _ in range(int(timeout / 0.2)):
            with engine.connect() as connection:
                value = connection.execute(text(query), {"id": key}).scalar()
            if value is not None:
                return value
            await asyncio.sleep(0.2)
    finally:
        engine.dispose()
    raise TimeoutError(query)


async def test_nothing_is_granted_after_a_known_exit(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    trainee = await learn_trainee(publisher)
    exit_event = exit_decided(trainee, outcome="qualifying_training", category="training",
                              exited_on="2024-06-30")
    await publisher.send(Topic.EXITS_DECIDED, exit_event, trainee)
    await wait_for_row(stack, "SELECT exited_on FROM aid_trainee WHERE trainee_id = :id",
                       trainee)  # aids publishes nothing when it learns an exit
    on_the_day = await ask(publisher, watcher, aid_request(
        trainee, "meals", quantity=1, period_start="2024-06-30", period_end="2024-06-30"))
    after = await ask(publisher, watcher, aid_request(
        trainee, "meals", quantity=2, period_start="2024-06-30", period_end="2024-07-01"))

    assert outcome(on_the_day) == ("granted", [])
    assert outcome(after) == ("rejected", ["trainee_exited"])


async def test_a_request_before_the_enrollment_is_held_then_decided(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    trainee = uuid.uuid4().hex
    request = aid_request(trainee, "laptop", amount_cents=39900)
    await publisher.send(Topic.AIDS_REQUESTED, request, key=trainee)
    await asyncio.sleep(1.5)
    assert watcher.find(DECIDED, request_event_id=request["event_id"]) == []  # held

    await learn_trainee(publisher, trainee_id=trainee)
    [decision] = await watcher.wait_for(DECIDED, request_event_id=request["event_id"])

    assert outcome(decision) == ("granted", [])
    assert decision["school_id"] == "toulouse"


async def test_a_request_whose_enrollment_never_comes_is_refused_after_the_hold(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    request = aid_request(uuid.uuid4().hex, "meals", quantity=1)
    decision = await ask(publisher, watcher, request, timeout=30)

    assert outcome(decision) == ("rejected", ["unknown_trainee"])
    assert decision["school_id"] is None


async def test_a_resent_request_gets_the_same_answer_and_no_second_grant(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    trainee = await learn_trainee(publisher, enrolled_on="2033-01-01")
    request = aid_request(trainee, "childcare", amount_cents=25000,
                          period_start="2033-02-01", period_end="2033-02-28")
    first = await ask(publisher, watcher, request)
    again = await ask(publisher, watcher, {**request, "event_id": new_id()})
    report = httpx.get(f"{stack.services['aids'].url}/reports/finance?year=2033",
                       headers=FINANCE, timeout=10).json()

    assert outcome(first) == outcome(again) == ("granted", [])
    assert report["by_kind"]["childcare"]["granted"] == 1
    assert report["by_kind"]["childcare"]["amount_cents"] == 25000


async def test_two_instances_never_take_an_envelope_over_its_amount(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    year, cap, grants_allowed, requests = 2032, 30000, 10, 30
    envelope = events.budget("childcare", grants_allowed * cap, year=year)
    await publisher.send(Topic.BUDGETS_SUBMITTED, envelope, f"{year}:childcare")
    trainees = [
        await learn_trainee(publisher, enrolled_on=f"{year}-01-01", school_id="castres")
        for _ in range(requests)
    ]
    await wait_for_row(stack, "SELECT envelope_cents FROM aid_budget WHERE year = 2032 "
                       "AND kind = 'childcare' AND envelope_cents = :id", grants_allowed * cap)
    burst = [
        aid_request(t, "childcare", amount_cents=cap, period_start=f"{year}-03-01",
                    period_end=f"{year}-03-31")
        for t in trainees
    ]
    await asyncio.gather(*(
        publisher.send(Topic.AIDS_REQUESTED, r, key=r["trainee_id"]) for r in burst
    ))
    decisions = [
        (await watcher.wait_for(DECIDED, request_event_id=r["event_id"]))[0] for r in burst
    ]

    statuses = [outcome(d) for d in decisions]
    assert statuses.count(("granted", [])) == grants_allowed
    assert statuses.count(("rejected", ["budget_exhausted"])) == requests - grants_allowed
    for service in ("aids", "aids-2"):  # both instances answer from the one store
        report = httpx.get(f"{stack.services[service].url}/reports/finance?year={year}",
                           headers=FINANCE, timeout=10).json()
        budget = report["budgets"]["childcare"]
        assert budget == {**budget, "envelope_cents": grants_allowed * cap,
                          "committed_cents": grants_allowed * cap, "remaining_cents": 0}
        assert report["by_kind"]["childcare"]["granted"] == grants_allowed
        assert report["by_kind"]["childcare"]["rejected"] == requests - grants_allowed
        assert report["by_school"]["castres"]["childcare"] == grants_allowed * cap
        assert report["by_month"][f"{year}-03"]["childcare"] == grants_allowed * cap


async def test_the_csv_adds_up_to_the_report_to_the_cent(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    year = 2034
    trainee = await learn_trainee(publisher, enrolled_on=f"{year}-01-01", school_id="lunel")
    for month in range(1, 7):
        await ask(publisher, watcher, aid_request(
            trainee, "meals", quantity=month + 3, period_start=f"{year}-{month:02d}-01",
            period_end=f"{year}-{month:02d}-20"))
    await ask(publisher, watcher, aid_request(
        trainee, "laptop", amount_cents=41999, period_start=f"{year}-02-03",
        period_end=f"{year}-02-03"))
    base = stack.services["aids"].url
    report = httpx.get(f"{base}/reports/finance?year={year}", headers=FINANCE, timeout=10).json()
    raw = httpx.get(f"{base}/reports/finance.csv?year={year}", headers=FINANCE, timeout=30)

    assert raw.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.content.decode("utf-8-sig")), delimiter=";"))
    totals: dict[str, int] = {}
    for row in rows:
        cents = round(float(row["amount_eur"].replace(",", ".")) * 100)
        totals[row["kind"]] = totals.get(row["kind"], 0) + cents
    for kind in ("laptop", "meals", "childcare"):
        assert totals.get(kind, 0) == report["by_kind"][kind]["amount_cents"]
    assert report["by_kind"]["meals"]["amount_cents"] == sum(m + 3 for m in range(1, 7)) * 700
    assert report["by_kind"]["laptop"]["amount_cents"] == 41999
