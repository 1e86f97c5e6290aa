"""The aids batch's fast path (`AidHandlers.prepare`, decisions kept in memory, aggregates
written in bulk) on SQLite and PostgreSQL: it decides exactly as the rules do one request at
a time, and leaves exactly the rows and totals the per-record path leaves."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Table, select, text
from sqlmodel import Session

from services.aids import domain
from services.aids.app import TOPOLOGY
from services.aids.handlers import AidHandlers
from services.aids.store import (
    CHILDCARE,
    DECISION,
    KIND_TOTAL,
    LEDGER,
    MONTH_TOTAL,
    SCHOOL_TOTAL,
    TABLES,
    TRAINEE,
    AidStore,
)
from shared.aid_rules import load_rules
from shared.contract import AidKind, AidReason, Topic
from tests import plumbing
from tests.events import aid_request, budget, enrollment_decided, exit_decided, new_id
from tests.plumbing import engine_fixture, inbound, published, store_engine

pytestmark = pytest.mark.infra

RULES = load_rules()
HANDLERS = AidHandlers(RULES)
engine = engine_fixture(TABLES)
feed = partial(plumbing.feed, TOPOLOGY, handlers=HANDLERS)
SCHOOLS = ("toulouse", "nimes", "ales", "castres")


@pytest.fixture
def second_engine(
    store_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Engine]:
    """Another empty store on the same backend as `engine`."""
    if store_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'second.db'}"
    else:
        create: Callable[[str], str] = request.getfixturevalue("postgres_database")
        url = create("e2c_store_test_second")
    with store_engine(url, TABLES) as created:
        yield created


# --- the rules, one request at a time, with no store ------------------------------------------


@dataclass
class Model:
    """What the rules decide for a sequence of inputs, kept in plain dicts."""

    trainees: dict[str, domain.Trainee] = field(default_factory=dict)
    budgets: dict[tuple[int, str], int] = field(default_factory=dict)
    committed: dict[tuple[int, str], int] = field(default_factory=dict)
    laptops: set[str] = field(default_factory=set)
    meals: dict[str, list[tuple[date, date]]] = field(default_factory=dict)
    answers: dict[str, tuple[str, str | None, int | None]] = field(default_factory=dict)
    grants: list[dict[str, Any]] = field(default_factory=list)
    rejected: dict[tuple[int, str], int] = field(default_factory=dict)
    held: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by trainee

    def take(self, topic: str, value: dict[str, Any]) -> None:
        if topic == Topic.ENROLLMENTS_DECIDED:
            exited = self.trainees.get(value["trainee_id"])
            self.trainees[value["trainee_id"]] = domain.Trainee(
                value["school_id"], date.fromisoformat(value["enrolled_on"]),
                exited.exited_on if exited else None)
            for request in self.held.pop(value["trainee_id"], []):  # oldest first
                self.request(request)
        elif topic == Topic.EXITS_DECIDED:
            known = self.trainees[value["trainee_id"]]
            self.trainees[value["trainee_id"]] = domain.Trainee(
                known.school_id, known.enrolled_on, date.fromisoformat(value["exited_on"]))
        elif topic == Topic.BUDGETS_SUBMITTED:
            self.budgets[(value["year"], value["kind"])] = value["envelope_cents"]
        elif topic == Topic.AIDS_REQUESTED:
            self.request(value)

    def request(self, value: dict[str, Any]) -> None:
        """Decides a request as the rules say (held while its trainee is unknown)."""
        if value["request_id"] in self.answers:
            return
        request = domain.AidRequest(
            AidKind(value["kind"]), value["quantity"], value["amount_cents"],
            date.fromisoformat(value["period_start"]), date.fromisoformat(value["period_end"]))
        trainee = self.trainees.get(value["trainee_id"])
        early = domain.request_refusal(request, RULES)
        key = (request.year, value["kind"])
        if early is None and trainee is None:
            self.held.setdefault(value["trainee_id"], []).append(value)
            return
        if early is not None or trainee is None:
            reason = early or AidReason.UNKNOWN_TRAINEE
            decision = domain.refused(reason)
        else:
            granted = domain.Granted(value["trainee_id"] in self.laptops,
                                     tuple(self.meals.get(value["trainee_id"], [])))
            envelope = domain.Envelope(self.budgets.get(key), self.committed.get(key, 0))
            decision = domain.decide(request, trainee, granted, envelope, RULES)
        if decision.granted:
            assert decision.amount_cents is not None and trainee is not None
            self.committed[key] = self.committed.get(key, 0) + decision.amount_cents
            if request.kind is AidKind.LAPTOP:
                self.laptops.add(value["trainee_id"])
            if request.kind is AidKind.MEALS:
                self.meals.setdefault(value["trainee_id"], []).append(
                    (request.period_start, request.period_end))
            self.grants.append({"trainee_id": value["trainee_id"], "kind": value["kind"],
                                "school_id": trainee.school_id, "year": request.year,
                                "month": request.period_start.month,
                                "quantity": value["quantity"],
                                "amount_cents": decision.amount_cents})
            answer = ("granted", None, decision.amount_cents)
        else:
            self.rejected[key] = self.rejected.get(key, 0) + 1
            answer = ("rejected", decision.reason.value if decision.reason else None,
                      value["amount_cents"])
        self.answers[value["request_id"]] = answer

    def totals(self) -> dict[str, dict[tuple[Any, ...], tuple[int, ...]]]:
        """The aggregate tables' rows the grants and refusals give, as `table_rows` reads."""
        by_kind: dict[tuple[Any, ...], list[int]] = {}
        by_school: dict[tuple[Any, ...], list[int]] = {}
        by_month: dict[tuple[Any, ...], list[int]] = {}
        childcare: set[tuple[int, str]] = set()
        for (year, kind), count in self.rejected.items():
            by_kind.setdefault((year, kind), [0, 0, 0, 0, 0])[1] += count
        for line in self.grants:
            row = by_kind.setdefault((line["year"], line["kind"]), [0, 0, 0, 0, 0])
            row[0] += 1
            row[2] += line["quantity"]
            row[3] += line["amount_cents"]
            if line["kind"] == "childcare" and (line["year"], line["trainee_id"]) not in childcare:
                childcare.add((line["year"], line["trainee_id"]))
                row[4] += 1
            school = by_school.setdefault((line["year"], line["school_id"], line["kind"]), [0])
            school[0] += line["amount_cents"]
            month = by_month.setdefault((line["year"], line["month"], line["kind"]), [0])
            month[0] += line["amount_cents"]
        return {"kind": {k: tuple(v) for k, v in by_kind.items()},
                "school": {k: tuple(v) for k, v in by_school.items()},
                "month": {k: tuple(v) for k, v in by_month.items()},
                "childcare": {pair: () for pair in childcare}}


def expected(records: list[tuple[str, dict[str, Any]]], model: Model | None = None) -> Model:
    model = model or Model()
    for topic, value in records:
        model.take(topic, value)
    return model


# --- what the store holds -----------------------------------------------------------------------


def table_rows(engine: Engine) -> dict[str, dict[tuple[Any, ...], tuple[int, ...]]]:
    """The aggregate tables as {key: counters}."""
    with Session(engine) as session:
        def rows(table: Table, key: int) -> dict[tuple[Any, ...], tuple[int, ...]]:
            found = session.exec(select(*table.c)).all()  # type: ignore[call-overload]
            return {tuple(row[:key]): tuple(row[key:]) for row in found}

        return {"kind": rows(KIND_TOTAL, 2), "school": rows(SCHOOL_TOTAL, 3),
                "month": rows(MONTH_TOTAL, 3), "childcare": rows(CHILDCARE, 2)}


def answers(engine: Engine) -> dict[str, tuple[str, str | None, int | None]]:
    """request_id -> (status, reason, amount) of every decision published, checking that a
    request answered twice got the same answer."""
    found: dict[str, tuple[str, str | None, int | None]] = {}
    for decided in published(engine, Topic.AIDS_DECIDED):
        answer = (decided["status"], decided["reasons"][0] if decided["reasons"] else None,
                  decided["amount_cents"])
        assert found.setdefault(decided["request_id"], answer) == answer
    return found


def ledger(engine: Engine) -> list[tuple[Any, ...]]:
    with Session(engine) as session:
        query = select(LEDGER.c.trainee_id, LEDGER.c.kind, LEDGER.c.school_id,
                       LEDGER.c.year, LEDGER.c.month, LEDGER.c.quantity,
                       LEDGER.c.amount_cents).order_by(LEDGER.c.id)
        return [tuple(row) for row in session.exec(query).all()]  # type: ignore[call-overload]


def expected_ledger(model: Model) -> list[tuple[Any, ...]]:
    return [(g["trainee_id"], g["kind"], g["school_id"], g["year"], g["month"], g["quantity"],
             g["amount_cents"]) for g in model.grants]


def held_count(engine: Engine) -> int:
    with Session(engine) as session:
        return AidStore(session).held.count()


# --- inputs -------------------------------------------------------------------------------------


def enrollments(trainees: list[str]) -> list[tuple[str, dict[str, Any]]]:
    return [(Topic.ENROLLMENTS_DECIDED,
             enrollment_decided(t, school_id=SCHOOLS[i % len(SCHOOLS)], enrolled_on="2024-01-08"))
            for i, t in enumerate(trainees)]


def random_request(rng: random.Random, trainee: str) -> dict[str, Any]:
    """A request of any kind, mostly valid, sometimes refused by a rule of its own."""
    year = rng.choice((2024, 2025))
    month = rng.randint(1, 12)
    start = date(year, month, rng.randint(1, 10))
    end = date(year, month, rng.randint(15, 28))
    kind = rng.choice(("meals", "meals", "meals", "laptop", "childcare"))
    if kind == "meals":
        quantity = rng.choice((1, 5, 10, 12, 40))  # 40: too many meals
        return aid_request(trainee, "meals", quantity=quantity, period_start=str(start),
                           period_end=str(end))
    if kind == "laptop":
        return aid_request(trainee, "laptop", amount_cents=rng.choice((35000, 45000)),
                           period_start=str(start), period_end=str(start))
    amount = rng.choice((10000, 25000, 30000, 30001, 0))  # 30001: over the cap; 0: invalid
    return aid_request(trainee, "childcare", amount_cents=amount, period_start=str(start),
                       period_end=str(end))


def requests_of(rng: random.Random, trainees: list[str], count: int) -> list[dict[str, Any]]:
    return [random_request(rng, rng.choice(trainees)) for _ in range(count)]


# --- the tests ----------------------------------------------------------------------------------


def test_a_batch_decides_as_the_rules_do_one_request_at_a_time(
    engine: Engine, second_engine: Engine
) -> None:
    """300 requests of 30 trainees, across three kinds, two years and envelopes that run
    out, a re-sent request and a few of unknown trainees: the fast path answers each as the
    rules do one at a time, and leaves the rows the per-record path leaves."""
    rng = random.Random(17)
    trainees = [uuid.uuid4().hex for _ in range(30)]
    setup = [*enrollments(trainees),
             (Topic.BUDGETS_SUBMITTED, budget("meals", 300_000, year=2024)),
             (Topic.BUDGETS_SUBMITTED, budget("childcare", 400_000, year=2024)),
             (Topic.BUDGETS_SUBMITTED, budget("childcare", 250_000, year=2025))]
    requests = requests_of(rng, trainees, 290)
    requests.append({**requests[3], "event_id": new_id()})  # re-sent in the same batch
    strangers = [uuid.uuid4().hex for _ in range(5)]
    requests += [aid_request(s, "meals", quantity=2) for s in strangers]  # held
    requests += [aid_request(s, "meals", quantity=0) for s in strangers]  # refused at once
    batch = [(Topic.AIDS_REQUESTED, r) for r in requests]
    model = expected([*setup, *batch])

    feed(engine, *setup)
    result = feed(engine, *batch)
    slow = plumbing.processor(TOPOLOGY, second_engine, handlers=HANDLERS, prepared=False)
    slow.process([inbound(topic, value) for topic, value in setup])
    slow.process([inbound(topic, value) for topic, value in batch])

    assert result.handled == {Topic.AIDS_REQUESTED: len(batch)}
    statuses = {answer[0] for answer in model.answers.values()}
    reasons = {answer[1] for answer in model.answers.values()}
    assert statuses == {"granted", "rejected"}
    assert {"budget_exhausted", "overlapping_period", "laptop_already_granted"} <= reasons
    assert answers(engine) == model.answers
    assert ledger(engine) == expected_ledger(model)
    assert table_rows(engine) == model.totals()
    assert held_count(engine) == sum(len(held) for held in model.held.values()) == len(strangers)
    # The per-record path leaves the same rows.
    assert answers(second_engine) == model.answers
    assert ledger(second_engine) == expected_ledger(model)
    assert table_rows(second_engine) == table_rows(engine)
    with Session(engine) as fast, Session(second_engine) as per_record:
        columns = [c for c in DECISION.c if c.name != "decided_at"]
        order = DECISION.c.request_id
        assert (fast.exec(select(*columns).order_by(order)).all()  # type: ignore[call-overload]
                == per_record.exec(select(*columns).order_by(order)).all())  # type: ignore[call-overload]


def test_an_envelope_runs_out_exactly_inside_one_batch(engine: Engine) -> None:
    cap, trainees = 30000, [uuid.uuid4().hex for _ in range(6)]
    feed(engine, *enrollments(trainees),
         (Topic.BUDGETS_SUBMITTED, budget("childcare", 3 * cap + 10000)))
    requests = [aid_request(t, "childcare", amount_cents=cap, period_start="2024-03-01",
                            period_end="2024-03-31") for t in trainees[:5]]
    requests.append(aid_request(trainees[5], "childcare", amount_cents=10000,
                                period_start="2024-03-01", period_end="2024-03-31"))
    requests.append(aid_request(trainees[4], "childcare", amount_cents=1,
                                period_start="2024-04-01", period_end="2024-04-30"))

    feed(engine, *[(Topic.AIDS_REQUESTED, r) for r in requests])

    got = answers(engine)
    assert [got[r["request_id"]][:2] for r in requests] == [
        ("granted", None)] * 3 + [("rejected", "budget_exhausted")] * 2 + [
        ("granted", None), ("rejected", "budget_exhausted")]
    with Session(engine) as session:
        childcare = AidStore(session).year_totals(2024).by_kind[AidKind.CHILDCARE]
    assert (childcare.amount_cents, childcare.granted, childcare.rejected,
            childcare.trainees) == (3 * cap + 10000, 4, 3, 4)


def test_a_request_sent_twice_in_one_batch_gets_one_answer_and_one_grant(
    engine: Engine,
) -> None:
    trainee, refused = uuid.uuid4().hex, uuid.uuid4().hex
    feed(engine, *enrollments([trainee, refused]),
         (Topic.BUDGETS_SUBMITTED, budget("laptop", 40000)))
    laptop = aid_request(trainee, "laptop", amount_cents=40000)
    over = aid_request(refused, "laptop", amount_cents=40000)

    result = feed(engine, (Topic.AIDS_REQUESTED, laptop), (Topic.AIDS_REQUESTED, over),
                  (Topic.AIDS_REQUESTED, {**laptop, "event_id": new_id()}),
                  (Topic.AIDS_REQUESTED, {**over, "event_id": new_id()}))

    assert result.handled == {Topic.AIDS_REQUESTED: 4}
    decided = published(engine, Topic.AIDS_DECIDED)
    assert [(d["request_id"], d["status"], d["reasons"]) for d in decided] == [
        (laptop["request_id"], "granted", []), (over["request_id"], "rejected",
                                                 ["budget_exhausted"]),
        (laptop["request_id"], "granted", []), (over["request_id"], "rejected",
                                                 ["budget_exhausted"])]
    assert len(ledger(engine)) == 1
    assert table_rows(engine)["kind"] == {(2024, "laptop"): (1, 1, 1, 40000, 0)}


def test_a_poison_record_in_the_middle_of_a_batch_is_one_dead_letter(engine: Engine) -> None:
    """An unreadable record and an amount the store cannot hold (the batch is done again
    one record at a time): each is a dead letter, every other request is decided as the
    rules say, the totals exact."""
    rng = random.Random(3)
    trainees = [uuid.uuid4().hex for _ in range(8)]
    setup = [*enrollments(trainees),
             (Topic.BUDGETS_SUBMITTED, budget("meals", 50_000, year=2024))]
    requests = requests_of(rng, trainees, 60)
    feed(engine, *setup)
    model = expected([*setup, *[(Topic.AIDS_REQUESTED, r) for r in requests]])

    records: list[tuple[str, Any]] = [(Topic.AIDS_REQUESTED, r) for r in requests]
    records.insert(20, (Topic.AIDS_REQUESTED, b"{not json"))
    records.insert(40, (Topic.AIDS_REQUESTED, aid_request(trainees[0], "childcare",
                                                          amount_cents=2**70)))
    result = feed(engine, *records)

    assert result.handled == {Topic.AIDS_REQUESTED: 60}
    assert result.dead_letters == {Topic.AIDS_REQUESTED: 2}
    assert answers(engine) == model.answers
    assert ledger(engine) == expected_ledger(model)
    assert table_rows(engine) == model.totals()


def test_enrollments_exits_budgets_and_requests_in_one_batch(engine: Engine) -> None:
    """A trainee enrolled earlier in the batch is known to its later requests; one whose
    request came first has it held, then decided when the enrollment comes, and the
    requests after see that grant; an exit and a budget of the batch apply after them."""
    first, second, third = (uuid.uuid4().hex for _ in range(3))
    held_laptop = aid_request(second, "laptop", amount_cents=45000)
    records: list[tuple[str, dict[str, Any]]] = [
        (Topic.BUDGETS_SUBMITTED, budget("meals", 10 * 700, year=2024)),
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(first, enrolled_on="2024-01-08")),
        (Topic.AIDS_REQUESTED, aid_request(first, "meals", quantity=6,
                                           period_start="2024-02-01", period_end="2024-02-10")),
        (Topic.AIDS_REQUESTED, held_laptop),
        (Topic.AIDS_REQUESTED, aid_request(second, "meals", quantity=4,
                                           period_start="2024-02-01", period_end="2024-02-10")),
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(second, school_id="nimes",
                                                       enrolled_on="2024-01-08")),
        (Topic.AIDS_REQUESTED, aid_request(second, "laptop", amount_cents=30000)),
        (Topic.AIDS_REQUESTED, aid_request(first, "meals", quantity=1,
                                           period_start="2024-03-01", period_end="2024-03-01")),
        (Topic.EXITS_DECIDED, exit_decided(first, exited_on="2024-06-30")),
        (Topic.AIDS_REQUESTED, aid_request(first, "laptop", amount_cents=30000,
                                           period_start="2024-07-01", period_end="2024-07-01")),
        (Topic.BUDGETS_SUBMITTED, budget("laptop", 45000 + 10000, year=2024)),
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(third, enrolled_on="2024-01-08")),
        (Topic.AIDS_REQUESTED, aid_request(third, "laptop", amount_cents=10001)),
        (Topic.AIDS_REQUESTED, aid_request(third, "laptop", amount_cents=10000)),
    ]
    model = expected(records)

    result = feed(engine, *records)

    assert result.dead_letters == {}
    got = answers(engine)
    assert got == model.answers
    assert [got[v["request_id"]][:2] for _, v in records if "request_id" in v] == [
        ("granted", None),  # first's meals, learnt in the batch
        ("granted", None),  # second's laptop, held then decided on its enrollment
        ("granted", None),  # second's meals, held too: 6 + 4 meals, the whole envelope
        ("rejected", "laptop_already_granted"),  # sees the held one's grant
        ("rejected", "budget_exhausted"),  # first's March meal: the envelope is spent
        ("rejected", "trainee_exited"),
        ("rejected", "budget_exhausted"),  # the laptop budget set in the batch
        ("granted", None),
    ]
    assert ledger(engine) == expected_ledger(model)
    assert table_rows(engine) == model.totals()
    assert held_count(engine) == 0
    with Session(engine) as session:
        found = session.exec(select(TRAINEE.c.trainee_id, TRAINEE.c.school_id,  # type: ignore[call-overload]
                                    TRAINEE.c.exited_on)).all()
    assert sorted(found) == sorted([(first, "toulouse", date(2024, 6, 30)),
                                    (second, "nimes", None), (third, "toulouse", None)])


def lock_waiters(engine: Engine) -> int:
    """PostgreSQL: the sessions of the store waiting for a lock now."""
    with engine.connect() as connection:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                     "AND datname = current_database()")
        return int(connection.execute(query).scalar_one())


def test_two_processors_on_one_store_never_overrun_an_envelope(engine: Engine) -> None:
    """Two instances deciding batches against one envelope: the first stops after its
    `prepare` until the second waits for its locks (PostgreSQL; on SQLite the second waits
    for the write lock at BEGIN) or has finished, so that the batches overlap; the second
    then sees the first's grants."""
    cap, allowed = 30000, 7
    trainees = [uuid.uuid4().hex for _ in range(21)]
    feed(engine, *enrollments(trainees),
         (Topic.BUDGETS_SUBMITTED, budget("childcare", (allowed + 1) * cap)))
    # A grant before: the locked total is a row both instances find (not one they create).
    feed(engine, (Topic.AIDS_REQUESTED, aid_request(trainees.pop(), "childcare",
                                                    amount_cents=cap)))
    requests = [aid_request(t, "childcare", amount_cents=cap, period_start="2024-05-01",
                            period_end="2024-05-31") for t in trainees]
    first_prepared, second_done = threading.Event(), threading.Event()
    failures: list[BaseException] = []
    postgresql = engine.dialect.name == "postgresql"

    def first_prepare(store: AidStore, events: list[Any]) -> Any:
        cache = HANDLERS.prepare(store, events)
        first_prepared.set()
        while postgresql and not second_done.wait(0.01) and lock_waiters(engine) == 0:
            pass  # until the second instance waits for a lock of ours, or is done
        return cache

    def instance(half: list[dict[str, Any]], done: threading.Event,
                 prepare: Callable[[AidStore, list[Any]], Any] | None = None) -> None:
        processor = plumbing.processor(TOPOLOGY, engine, handlers=HANDLERS)
        if prepare is not None:
            processor.prepare = prepare
        try:
            processor.process([inbound(Topic.AIDS_REQUESTED, r) for r in half])
        except BaseException as error:  # reported below
            failures.append(error)
        finally:
            done.set()

    first = threading.Thread(target=instance,
                             args=(requests[::2], threading.Event(), first_prepare))
    second = threading.Thread(target=instance, args=(requests[1::2], second_done))
    first.start()
    assert first_prepared.wait(60)
    second.start()
    first.join(timeout=60)
    second.join(timeout=60)

    assert failures == []
    got = answers(engine)
    statuses = [got[r["request_id"]][:2] for r in requests]
    assert statuses.count(("granted", None)) == allowed
    assert statuses.count(("rejected", "budget_exhausted")) == len(requests) - allowed
    with Session(engine) as session:
        childcare = AidStore(session).year_totals(2024).by_kind[AidKind.CHILDCARE]
    assert (childcare.amount_cents, childcare.granted) == ((allowed + 1) * cap, allowed + 1)
    assert sum(line[-1] for line in ledger(engine)) == (allowed + 1) * cap
