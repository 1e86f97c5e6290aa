"""The outcome reports read only the rows of the year asked, on SQLite and PostgreSQL: a store
that also holds earlier and later years (and trainees who never exited) gives for the year
exactly the bytes a store holding only that year's rows gives, and the year reads return no
row outside the year's own (each side decided here by the dates written, not by the store).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, insert
from sqlmodel import Session

from services.outcomes import domain, reports
from services.outcomes.store import (
    TABLES,
    OutcomeStore,
    ReferralView,
    TraineeAid,
    TraineeView,
)
from shared.contract import AgencyKind, AidKind, Outcome
from shared.schools import load_schools
from tests.plumbing import engine_fixture

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)

YEAR = 2024
SCHOOLS = list(load_schools())
AGENCIES = ("ml-toulouse", "ft-toulouse", "ml-castres", "mlds-31")
PARIS = ZoneInfo("Europe/Paris")
JAN_1, DEC_31 = date(YEAR, 1, 1), date(YEAR, 12, 31)


@dataclass
class Rows:
    """Rows for the three tables the reports read, in two piles: those of YEAR (by this
    module's own reading of the year rules) and the others."""

    trainees: list[dict[str, Any]] = field(default_factory=list)
    referrals: list[dict[str, Any]] = field(default_factory=list)
    aids: list[dict[str, Any]] = field(default_factory=list)


def counted_in_year(enrolled_on: date, exited_on: date | None) -> bool:
    """Accompanied (enrolled by 31 December, not gone before 1 January), entered or exited
    in YEAR: written out here from the dates, apart from the domain's functions."""
    there = enrolled_on <= DEC_31 and (exited_on is None or exited_on >= JAN_1)
    entered = JAN_1 <= enrolled_on <= DEC_31
    exited = exited_on is not None and JAN_1 <= exited_on <= DEC_31
    return there or entered or exited


def received_in_year(at: datetime) -> bool:
    return at.astimezone(PARIS).year == YEAR


class History:
    """Referrals, trainees and aids from 2019 to 2029, with the edges of YEAR written in."""

    def __init__(self) -> None:
        self.rng = random.Random(17)
        self.serial = 0
        self.of_year, self.others = Rows(), Rows()

    def add(self, received_at: datetime, enrolled_on: date | None, exited_on: date | None,
            aids: tuple[AidKind, ...] = (), agency: str | None = None) -> None:
        """A referral received at `received_at`; its trainee enrolled (and exited) on the
        dates given, None: never. Each row goes to the year's pile when the year counts it."""
        self.serial += 1
        rng = self.rng
        referral_id, trainee_id = f"R{self.serial:05d}", f"T{self.serial:05d}"
        school = rng.choice(SCHOOLS)
        accepted = enrolled_on is not None or rng.random() < 0.3
        referral = {
            "referral_id": referral_id, "agency_id": agency or rng.choice(AGENCIES),
            "school_id": school, "received_at": received_at,
            "status": "accepted" if accepted else rng.choice(("rejected", "pending")),
            "accepted_at": received_at + timedelta(days=rng.randint(0, 20)) if accepted else None,
            "trainee_id": trainee_id if accepted else None,
        }
        referral_pile = self.of_year if received_in_year(received_at) else self.others
        referral_pile.referrals.append(referral)
        if enrolled_on is None:
            return
        outcome = rng.choice(list(Outcome)) if exited_on is not None else None
        trainee = {
            "trainee_id": trainee_id, "referral_id": referral_id, "school_id": school,
            "enrolled_on": enrolled_on, "agency_kind": rng.choice(list(AgencyKind)).value,
            "age_at_entry": rng.randint(16, 26), "rqth": rng.random() < 0.1,
            "qpv_resident": rng.random() < 0.3, "has_work_experience": rng.random() < 0.5,
            "exited_on": exited_on, "outcome": outcome.value if outcome else None,
            "category": domain.category_of(outcome).value if outcome else None,
            "satisfied": rng.choice((True, False, None)) if outcome else None,
        }
        # the funnel of YEAR follows its referrals' trainees, whenever they exited
        counted = counted_in_year(enrolled_on, exited_on) or referral_pile is self.of_year
        pile = self.of_year if counted else self.others
        pile.trainees.append(trainee)
        exited_in_year = exited_on is not None and exited_on.year == YEAR
        for kind in aids:
            (self.of_year if exited_in_year else self.others).aids.append(
                {"trainee_id": trainee_id, "kind": kind.value, "grants": rng.randint(1, 9)})

    def year_of_network(self, year: int, trainees: int) -> None:
        rng = self.rng
        for _ in range(trainees):
            received = datetime(year, 1, 1, 8, tzinfo=UTC) + timedelta(
                days=rng.randint(0, 364), hours=rng.randint(0, 10))
            enrolled: date | None = received.date() + timedelta(days=rng.randint(5, 60))
            if rng.random() < 0.15:
                enrolled = None  # never enrolled
            exited = None
            if enrolled is not None and rng.random() < 0.9:
                exited = enrolled + timedelta(days=rng.randint(0, 400))
            aids = tuple(kind for kind in AidKind if rng.random() < 0.4)
            self.add(received, enrolled, exited, aids)

    def edges(self) -> None:
        """The days on each side of YEAR's limits (dates, and Paris time for referrals)."""
        at = datetime(YEAR - 3, 6, 1, 9, tzinfo=UTC)
        self.add(at, date(YEAR - 2, 1, 5), date(YEAR - 1, 12, 31))  # left the eve: not counted
        self.add(at, date(YEAR - 2, 1, 5), JAN_1, (AidKind.MEALS,))  # left on 1 January
        self.add(at, date(YEAR - 3, 7, 1), None, (AidKind.LAPTOP,))  # never exited, long ago
        self.add(at, date(YEAR - 1, 3, 1), date(YEAR + 1, 1, 1))  # there all year
        self.add(at, DEC_31, DEC_31, (AidKind.CHILDCARE,))  # in and out on 31 December
        self.add(at, date(YEAR + 1, 1, 1), None)  # never exited, from the next year
        self.add(at, date(YEAR + 1, 1, 1), date(YEAR + 1, 5, 1), (AidKind.MEALS,))
        # 1 January 00:30 in Paris is still 31 December in UTC, and the reverse a year on
        self.add(datetime(YEAR - 1, 12, 31, 23, 30, tzinfo=UTC), JAN_1, None, agency="mlds-31")
        self.add(datetime(YEAR - 1, 12, 31, 22, 59, tzinfo=UTC), None, None, agency="mlds-31")
        self.add(datetime(YEAR, 12, 31, 22, 59, tzinfo=UTC), None, None, agency="mlds-31")
        self.add(datetime(YEAR, 12, 31, 23, 0, tzinfo=UTC), None, None, agency="mlds-31")


@pytest.fixture(scope="module")
def history() -> History:
    made = History()
    for year in range(YEAR - 5, YEAR + 6):
        made.year_of_network(year, 60)
    made.edges()
    assert made.of_year.trainees and made.others.trainees  # both piles hold rows
    assert made.of_year.aids and made.others.aids
    return made


def write(engine: Engine, rows: Rows) -> None:
    with engine.begin() as connection:
        for model, values in ((ReferralView, rows.referrals), (TraineeView, rows.trainees),
                              (TraineeAid, rows.aids)):
            if values:
                connection.execute(insert(model.__table__), values)  # type: ignore[attr-defined]


def every_report(engine: Engine) -> dict[str, bytes]:
    bodies = {
        "outcomes": reports.outcomes_report_body(engine, YEAR, SCHOOLS),
        "funnel": reports.funnel_body(engine, YEAR),
        "aids": reports.aids_outcomes_body(engine, YEAR),
    }
    for agency in AGENCIES:
        bodies[f"funnel {agency}"] = reports.funnel_body(engine, YEAR, agency)
    return bodies


def full_read_reports(engine: Engine) -> dict[str, bytes]:
    """The same bodies from the store's full reads (every trainee, referral and aid): the
    reports as they were computed before they read by year."""
    with Session(engine) as session:
        store = OutcomeStore(session)
        trainees, referrals, aided = store.all_trainees(), store.referrals(), store.aided()
    bodies = {
        "outcomes": reports.outcomes_report_json(
            domain.outcomes_report(trainees, YEAR, SCHOOLS)),
        "funnel": reports.canonical_json(domain.funnel_report(referrals, YEAR)),
        "aids": reports.canonical_json(reports.aids_outcomes_report(
            YEAR, domain.aids_and_outcomes(trainees, aided, YEAR))),
    }
    for agency in AGENCIES:
        bodies[f"funnel {agency}"] = reports.canonical_json(
            domain.funnel_report(referrals, YEAR, agency_id=agency))
    return bodies


@pytest.fixture
def only_the_year(engine: Engine, history: History) -> Iterator[dict[str, bytes]]:
    """The store holding the year's rows only, and its reports."""
    write(engine, history.of_year)
    yield every_report(engine)


def test_other_years_change_no_byte_of_the_years_reports(
    engine: Engine, history: History, only_the_year: dict[str, bytes]
) -> None:
    assert only_the_year == full_read_reports(engine)
    write(engine, history.others)
    assert every_report(engine) == only_the_year
    assert full_read_reports(engine) == only_the_year


def test_the_years_reports_count_something(only_the_year: dict[str, bytes]) -> None:
    """Not an empty comparison: the year's rows show in each report."""
    assert b'"accompanied":0,' not in only_the_year["outcomes"]
    assert b'"received":0,' not in only_the_year["funnel"]
    assert b'"exits":0,' not in only_the_year["aids"].split(b'"without_aid"')[0]


def test_the_year_reads_return_no_row_of_another_year(engine: Engine, history: History) -> None:
    write(engine, history.of_year)
    write(engine, history.others)
    counted = {row["trainee_id"] for row in history.of_year.trainees
               if counted_in_year(row["enrolled_on"], row["exited_on"])}
    exits = {row["trainee_id"] for row in history.of_year.trainees
             if row["exited_on"] is not None and row["exited_on"].year == YEAR}
    received = {row["referral_id"] for row in history.of_year.referrals}
    mlds = {row["referral_id"] for row in history.of_year.referrals
            if row["agency_id"] == "mlds-31"}
    with Session(engine) as session:
        store = OutcomeStore(session)
        assert {t.trainee_id for t in store.trainees_of_year(YEAR)} == counted
        assert {t.trainee_id for t in store.exits_of_year(YEAR)} == exits
        aided = store.aided_exits_of_year(YEAR)
        network = store.referrals_of_year(YEAR)
        partner = store.referrals_of_year(YEAR, "mlds-31")
    assert {(t, k.value) for k, ids in aided.items() for t in ids} == {
        (row["trainee_id"], row["kind"]) for row in history.of_year.aids}
    # the SQL bounds are a day wider than the Paris year: the year's referrals, and at most
    # those of the days just outside it (the funnel leaves them out by their Paris date)
    edges = {date(YEAR - 1, 12, 31), date(YEAR + 1, 1, 1)}
    for read, expected in ((network, received), (partner, mlds)):
        assert {r.referral_id for r in read if r.received_on.year == YEAR} == expected
        assert {r.received_on for r in read if r.received_on.year != YEAR} <= edges
    assert {r.agency_id for r in partner} == {"mlds-31"}
    assert {r.received_on for r in partner} >= edges  # the edges were read, then left out
