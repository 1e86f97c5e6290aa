"""Outcome rules of the contract (stage 4) and the yearly indicators of
`GET :8003/reports/outcomes`: categories, exit refusals, the accompanied-year boundaries
(enrolled on 31 December, exited on 1 January), the report on a hand-counted cohort, aid
beside outcome, the referral funnel. Pure: no I/O."""

from __future__ import annotations

import json
from datetime import date

import pytest

from services.outcomes.domain import (
    FUNNEL_STEPS,
    Enrolled,
    Referred,
    accompanied_in,
    aids_and_outcomes,
    category_of,
    entered_in,
    exit_refusal,
    exited_in,
    funnel,
    funnel_report,
    is_solution,
    outcomes_report,
)
from shared.contract import AgencyKind, AidKind, ExitReason, Outcome, OutcomeCategory


def trainee(
    trainee_id: str = "T",
    *,
    school_id: str = "toulouse",
    enrolled_on: date = date(2024, 1, 15),
    agency_kind: AgencyKind = AgencyKind.MISSION_LOCALE,
    age_at_entry: int = 19,
    rqth: bool = False,
    qpv_resident: bool = False,
    has_work_experience: bool = True,
    exited_on: date | None = None,
    outcome: Outcome | None = None,
    satisfied: bool | None = None,
) -> Enrolled:
    return Enrolled(
        trainee_id=trainee_id,
        school_id=school_id,
        enrolled_on=enrolled_on,
        agency_kind=agency_kind,
        age_at_entry=age_at_entry,
        rqth=rqth,
        qpv_resident=qpv_resident,
        has_work_experience=has_work_experience,
        exited_on=exited_on,
        outcome=outcome,
        satisfied=satisfied,
    )


# --- categories ------------------------------------------------------------------------------

# The contract's table, written out again here rather than read from shared.contract.
CONTRACT_CATEGORIES = {
    "qualifying_training": "training",
    "durable_employment": "employment",
    "short_employment": "dynamic",
    "iae": "dynamic",
    "pre_qualifying_training": "dynamic",
    "civic_service": "dynamic",
    "no_solution": "none",
    "dropout": "none",
    "other": "none",
}


def test_the_nine_outcomes_are_the_contracts() -> None:
    assert [o.value for o in Outcome] == list(CONTRACT_CATEGORIES)


@pytest.mark.parametrize(("outcome", "category"), CONTRACT_CATEGORIES.items())
def test_category_of_every_outcome(outcome: str, category: str) -> None:
    assert category_of(Outcome(outcome)) is OutcomeCategory(category)


@pytest.mark.parametrize(
    ("category", "solution"),
    [("training", True), ("employment", True), ("dynamic", True), ("none", False)],
)
def test_a_solution_is_any_category_but_none(category: str, solution: bool) -> None:
    assert is_solution(OutcomeCategory(category)) is solution
    assert is_solution(category) is solution  # as read back from a store or a message


def test_enrolled_category_follows_its_outcome() -> None:
    assert trainee().category is None
    exited = trainee(exited_on=date(2024, 6, 1), outcome=Outcome.IAE)
    assert exited.category is OutcomeCategory.DYNAMIC


# --- exit refusals ---------------------------------------------------------------------------

ENROLLED = trainee(enrolled_on=date(2024, 1, 15))
EXITED = trainee(enrolled_on=date(2024, 1, 15), exited_on=date(2024, 6, 30),
                 outcome=Outcome.DROPOUT)


@pytest.mark.parametrize(
    ("known", "exited_on", "reason"),
    [
        pytest.param(None, date(2024, 9, 30), ExitReason.UNKNOWN_TRAINEE, id="unknown"),
        pytest.param(ENROLLED, date(2024, 1, 14), ExitReason.EXIT_BEFORE_ENROLLMENT,
                     id="day-before-enrollment"),
        pytest.param(ENROLLED, date(2024, 1, 15), None, id="on-enrollment-day"),
        pytest.param(ENROLLED, date(2024, 9, 30), None, id="later"),
        pytest.param(EXITED, date(2024, 9, 30), ExitReason.ALREADY_EXITED, id="already-exited"),
        pytest.param(EXITED, date(2024, 6, 30), ExitReason.ALREADY_EXITED,
                     id="already-exited-same-day"),
        pytest.param(EXITED, date(2024, 1, 15), ExitReason.ALREADY_EXITED,
                     id="already-exited-on-enrollment-day"),
        # Both apply: the first in the contract's order wins.
        pytest.param(EXITED, date(2023, 12, 31), ExitReason.EXIT_BEFORE_ENROLLMENT,
                     id="before-enrollment-and-already-exited"),
    ],
)
def test_exit_refusal(known: Enrolled | None, exited_on: date, reason: ExitReason | None) -> None:
    assert exit_refusal(known, exited_on) is reason


# --- the accompanied-year boundaries ---------------------------------------------------------


@pytest.mark.parametrize(
    ("enrolled_on", "exited_on", "year", "accompanied"),
    [
        pytest.param(date(2024, 12, 31), None, 2024, True, id="enrolled-31-dec"),
        pytest.param(date(2025, 1, 1), None, 2024, False, id="enrolled-1-jan-next-year"),
        pytest.param(date(2024, 1, 1), None, 2024, True, id="enrolled-1-jan"),
        pytest.param(date(2023, 6, 1), date(2024, 1, 1), 2024, True, id="exited-1-jan"),
        pytest.param(date(2023, 6, 1), date(2023, 12, 31), 2024, False,
                     id="exited-31-dec-year-before"),
        pytest.param(date(2023, 6, 1), date(2023, 12, 31), 2023, True, id="exited-31-dec"),
        pytest.param(date(2022, 9, 1), None, 2024, True, id="enrolled-two-years-before"),
        pytest.param(date(2024, 12, 31), None, 2025, True, id="still-there-next-year"),
        pytest.param(date(2024, 3, 1), date(2024, 3, 1), 2024, True, id="in-and-out-same-day"),
        pytest.param(date(2020, 1, 1), date(2022, 5, 5), 2024, False, id="long-gone"),
        pytest.param(date(2022, 9, 1), date(2025, 2, 1), 2024, True, id="across-the-year"),
    ],
)
def test_accompanied_in(
    enrolled_on: date, exited_on: date | None, year: int, accompanied: bool
) -> None:
    t = trainee(enrolled_on=enrolled_on, exited_on=exited_on,
                outcome=Outcome.OTHER if exited_on else None)
    assert accompanied_in(t, year) is accompanied


@pytest.mark.parametrize(
    ("enrolled_on", "year", "entered"),
    [
        (date(2024, 12, 31), 2024, True),
        (date(2024, 1, 1), 2024, True),
        (date(2025, 1, 1), 2024, False),
        (date(2023, 12, 31), 2024, False),
        (date(2022, 9, 1), 2024, False),
    ],
)
def test_entered_in(enrolled_on: date, year: int, entered: bool) -> None:
    assert entered_in(trainee(enrolled_on=enrolled_on), year) is entered


@pytest.mark.parametrize(
    ("exited_on", "year", "exited"),
    [
        (date(2024, 1, 1), 2024, True),
        (date(2024, 1, 1), 2023, False),
        (date(2024, 1, 1), 2025, False),
        (date(2023, 12, 31), 2023, True),
        (date(2023, 12, 31), 2024, False),
        (date(2024, 12, 31), 2024, True),
        (date(2024, 12, 31), 2025, False),
        (None, 2024, False),
    ],
)
def test_exited_in(exited_on: date | None, year: int, exited: bool) -> None:
    t = trainee(enrolled_on=date(2022, 9, 1), exited_on=exited_on,
                outcome=Outcome.OTHER if exited_on else None)
    assert exited_in(t, year) is exited


def test_an_exit_counts_in_the_exits_of_its_year_only() -> None:
    t = trainee(enrolled_on=date(2022, 9, 1), exited_on=date(2024, 1, 1),
                outcome=Outcome.DURABLE_EMPLOYMENT)
    assert [y for y in range(2021, 2027) if exited_in(t, y)] == [2024]
    assert [outcomes_report([t], y, [])["exits"] for y in range(2021, 2027)] == [0, 0, 0, 1, 0, 0]
    # ...while it is accompanied in every year from its entry to its exit.
    assert [y for y in range(2021, 2027) if accompanied_in(t, y)] == [2022, 2023, 2024]


# --- the outcomes report ---------------------------------------------------------------------

# The contract's example body, zeros and all, for one school.
CONTRACT_EXAMPLE = {
    "year": 2024,
    "accompanied": 0, "entries": 0, "exits": 0,
    "exits_by_outcome": {
        "qualifying_training": 0, "durable_employment": 0, "short_employment": 0,
        "iae": 0, "pre_qualifying_training": 0, "civic_service": 0, "no_solution": 0,
        "dropout": 0, "other": 0,
    },
    "exits_by_category": {"training": 0, "employment": 0, "dynamic": 0, "none": 0},
    "solutions": 0,
    "satisfaction": {"answered": 0, "satisfied": 0},
    "profile": {
        "age_at_entry_sum": 0, "minors": 0, "rqth": 0, "qpv_resident": 0,
        "no_work_experience": 0,
    },
    "entries_by_agency_kind": {
        "mission_locale": 0, "france_travail": 0, "mlds": 0, "spontaneous": 0, "other": 0,
    },
    "by_school": {"toulouse": {"accompanied": 0, "entries": 0, "exits": 0, "solutions": 0}},
}


def test_an_empty_year_is_the_contract_example() -> None:
    report = outcomes_report([], 2024, ["toulouse"])
    assert report == CONTRACT_EXAMPLE
    assert json.loads(json.dumps(report)) == CONTRACT_EXAMPLE


def test_no_school_and_no_trainee_gives_an_empty_by_school() -> None:
    report = outcomes_report([], 2024, [])
    assert report["by_school"] == {}
    assert report.keys() == CONTRACT_EXAMPLE.keys()


# A small cohort, every figure of 2024 counted by hand below. Schools passed in: toulouse,
# castres and montauban (no one); narbonne is met only through a trainee.
SCHOOLS = ["toulouse", "castres", "montauban"]
COHORT = [
    # Enrolled on 31 December 2024: accompanied and entered in 2024. 17 at entry: a minor.
    trainee("T1", school_id="toulouse", enrolled_on=date(2024, 12, 31),
            agency_kind=AgencyKind.MISSION_LOCALE, age_at_entry=17, rqth=True,
            qpv_resident=True, has_work_experience=False),
    # Enrolled on 1 January 2025: nowhere in 2024 (its profile must not leak into it).
    trainee("T2", school_id="toulouse", enrolled_on=date(2025, 1, 1),
            agency_kind=AgencyKind.FRANCE_TRAVAIL, age_at_entry=16, rqth=True,
            qpv_resident=True, has_work_experience=False),
    # Exited on 1 January 2024: accompanied and exited in 2024. 18 at entry: not a minor.
    trainee("T3", school_id="toulouse", enrolled_on=date(2023, 3, 1),
            agency_kind=AgencyKind.MLDS, age_at_entry=18, rqth=False, qpv_resident=False,
            has_work_experience=True, exited_on=date(2024, 1, 1),
            outcome=Outcome.DURABLE_EMPLOYMENT, satisfied=True),
    # Exited on 31 December 2023: nowhere in 2024.
    trainee("T4", school_id="castres", enrolled_on=date(2023, 5, 10),
            agency_kind=AgencyKind.SPONTANEOUS, age_at_entry=16, rqth=True,
            qpv_resident=True, has_work_experience=False, exited_on=date(2023, 12, 31),
            outcome=Outcome.QUALIFYING_TRAINING, satisfied=True),
    # Enrolled in 2022, never exited: accompanied in 2024, not an entry.
    trainee("T5", school_id="castres", enrolled_on=date(2022, 9, 1),
            agency_kind=AgencyKind.OTHER, age_at_entry=22, rqth=True, qpv_resident=False,
            has_work_experience=False),
    # In and out within 2024, no solution, not satisfied.
    trainee("T6", school_id="castres", enrolled_on=date(2024, 2, 5),
            agency_kind=AgencyKind.MISSION_LOCALE, age_at_entry=19, rqth=False,
            qpv_resident=True, has_work_experience=True, exited_on=date(2024, 11, 30),
            outcome=Outcome.DROPOUT, satisfied=False),
    # Entered in 2024, exited on 2 January 2025: accompanied, entry, not an exit of 2024.
    trainee("T7", school_id="toulouse", enrolled_on=date(2024, 6, 3),
            agency_kind=AgencyKind.FRANCE_TRAVAIL, age_at_entry=25, rqth=False,
            qpv_resident=False, has_work_experience=False, exited_on=date(2025, 1, 2),
            outcome=Outcome.IAE, satisfied=True),
    # A school not passed in; exited on 31 December 2024, did not answer.
    trainee("T8", school_id="narbonne", enrolled_on=date(2024, 3, 1),
            agency_kind=AgencyKind.MISSION_LOCALE, age_at_entry=16, rqth=False,
            qpv_resident=True, has_work_experience=False, exited_on=date(2024, 12, 31),
            outcome=Outcome.CIVIC_SERVICE, satisfied=None),
    trainee("T9", school_id="toulouse", enrolled_on=date(2024, 4, 1),
            agency_kind=AgencyKind.SPONTANEOUS, age_at_entry=21, rqth=False,
            qpv_resident=False, has_work_experience=True, exited_on=date(2024, 7, 15),
            outcome=Outcome.PRE_QUALIFYING_TRAINING, satisfied=False),
]

# 2024: accompanied T1 T3 T5 T6 T7 T8 T9; entries T1 T6 T7 T8 T9; exits T3 T6 T8 T9.
EXPECTED_2024 = {
    "year": 2024,
    "accompanied": 7,
    "entries": 5,
    "exits": 4,
    "exits_by_outcome": {
        "qualifying_training": 0,  # T4's is in 2023
        "durable_employment": 1,  # T3
        "short_employment": 0,
        "iae": 0,  # T7's is in 2025
        "pre_qualifying_training": 1,  # T9
        "civic_service": 1,  # T8
        "no_solution": 0,
        "dropout": 1,  # T6
        "other": 0,
    },
    "exits_by_category": {"training": 0, "employment": 1, "dynamic": 2, "none": 1},
    "solutions": 3,  # T3, T8, T9
    "satisfaction": {"answered": 3, "satisfied": 1},  # T3 T6 T9 answered (T8 null), T3 yes
    "profile": {
        "age_at_entry_sum": 17 + 18 + 22 + 19 + 25 + 16 + 21,  # 138
        "minors": 2,  # T1 (17), T8 (16); T3 (18) is not, T2 (16) is not accompanied
        "rqth": 2,  # T1, T5
        "qpv_resident": 3,  # T1, T6, T8
        "no_work_experience": 4,  # T1, T5, T7, T8
    },
    "entries_by_agency_kind": {
        "mission_locale": 3,  # T1, T6, T8
        "france_travail": 1,  # T7 (T2 enters in 2025)
        "mlds": 0,  # T3 entered in 2023
        "spontaneous": 1,  # T9 (T4 entered in 2023)
        "other": 0,  # T5 entered in 2022
    },
    "by_school": {
        "castres": {"accompanied": 2, "entries": 1, "exits": 1, "solutions": 0},  # T5 T6
        "montauban": {"accompanied": 0, "entries": 0, "exits": 0, "solutions": 0},
        "narbonne": {"accompanied": 1, "entries": 1, "exits": 1, "solutions": 1},  # T8
        "toulouse": {"accompanied": 4, "entries": 3, "exits": 2, "solutions": 2},  # T1 T3 T7 T9
    },
}


def test_the_report_of_a_hand_counted_cohort() -> None:
    assert outcomes_report(COHORT, 2024, SCHOOLS) == EXPECTED_2024


def test_the_report_has_the_contracts_keys_and_nesting() -> None:
    report = outcomes_report(COHORT, 2024, SCHOOLS)
    assert report.keys() == CONTRACT_EXAMPLE.keys()
    for key, value in CONTRACT_EXAMPLE.items():
        if isinstance(value, dict) and key != "by_school":
            assert report[key].keys() == value.keys(), key
    school_keys = CONTRACT_EXAMPLE["by_school"]["toulouse"].keys()
    assert all(row.keys() == school_keys for row in report["by_school"].values())
    assert json.loads(json.dumps(report)) == EXPECTED_2024


def test_the_reports_totals_add_up() -> None:
    report = outcomes_report(COHORT, 2024, SCHOOLS)
    assert sum(report["exits_by_outcome"].values()) == report["exits"]
    assert sum(report["exits_by_category"].values()) == report["exits"]
    assert report["solutions"] == report["exits"] - report["exits_by_category"]["none"]
    assert sum(report["entries_by_agency_kind"].values()) == report["entries"]
    for name in ("accompanied", "entries", "exits", "solutions"):
        assert sum(row[name] for row in report["by_school"].values()) == report[name], name


def test_the_same_cohort_in_2023_and_2025() -> None:
    # 2023: accompanied T3 T4 T5, entries T3 T4, exits T4 (qualifying training, satisfied).
    r2023 = outcomes_report(COHORT, 2023, SCHOOLS)
    assert (r2023["accompanied"], r2023["entries"], r2023["exits"]) == (3, 2, 1)
    assert r2023["exits_by_outcome"]["qualifying_training"] == 1
    assert r2023["exits_by_category"] == {"training": 1, "employment": 0, "dynamic": 0,
                                          "none": 0}
    assert r2023["solutions"] == 1
    assert r2023["satisfaction"] == {"answered": 1, "satisfied": 1}
    assert r2023["profile"]["age_at_entry_sum"] == 18 + 16 + 22
    assert r2023["profile"]["minors"] == 1  # T4
    # 2025: accompanied T1 T2 T5 T7, entries T2, exits T7 (iae).
    r2025 = outcomes_report(COHORT, 2025, SCHOOLS)
    assert (r2025["accompanied"], r2025["entries"], r2025["exits"]) == (4, 1, 1)
    assert r2025["exits_by_outcome"]["iae"] == 1
    assert r2025["exits_by_category"]["dynamic"] == 1
    assert r2025["entries_by_agency_kind"]["france_travail"] == 1
    assert r2025["profile"]["minors"] == 2  # T1 (17), T2 (16)
    assert r2025["by_school"]["narbonne"] == {"accompanied": 0, "entries": 0, "exits": 0,
                                              "solutions": 0}


@pytest.mark.parametrize(("age", "minor"), [(16, 1), (17, 1), (18, 0), (19, 0)])
def test_a_minor_is_under_18_at_entry(age: int, minor: int) -> None:
    report = outcomes_report([trainee(age_at_entry=age)], 2024, [])
    assert report["profile"]["minors"] == minor
    assert report["profile"]["age_at_entry_sum"] == age


@pytest.mark.parametrize(
    ("satisfied", "answered", "yes"), [(True, 1, 1), (False, 1, 0), (None, 0, 0)]
)
def test_satisfaction_counts_answers_of_the_years_exits(
    satisfied: bool | None, answered: int, yes: int
) -> None:
    exited = trainee(exited_on=date(2024, 9, 30), outcome=Outcome.OTHER, satisfied=satisfied)
    assert outcomes_report([exited], 2024, [])["satisfaction"] == {
        "answered": answered, "satisfied": yes,
    }
    assert outcomes_report([exited], 2025, [])["satisfaction"] == {"answered": 0, "satisfied": 0}


@pytest.mark.parametrize("outcome", list(Outcome))
def test_each_outcome_lands_in_its_row_and_category(outcome: Outcome) -> None:
    exited = trainee(exited_on=date(2024, 9, 30), outcome=outcome)
    report = outcomes_report([exited], 2024, ["toulouse"])
    assert report["exits_by_outcome"] == {o.value: int(o is outcome) for o in Outcome}
    category = CONTRACT_CATEGORIES[outcome.value]
    assert report["exits_by_category"] == {
        c: int(c == category) for c in ("training", "employment", "dynamic", "none")
    }
    solution = int(category != "none")
    assert report["solutions"] == solution
    assert report["by_school"]["toulouse"]["solutions"] == solution


@pytest.mark.parametrize("kind", list(AgencyKind))
def test_each_agency_kind_of_an_entry(kind: AgencyKind) -> None:
    report = outcomes_report([trainee(agency_kind=kind)], 2024, [])
    assert report["entries_by_agency_kind"] == {k.value: int(k is kind) for k in AgencyKind}


def test_profile_counts_accompanied_not_only_entries() -> None:
    # Entered in 2022, still there: in the profile of 2024, not in its entries.
    old = trainee(enrolled_on=date(2022, 9, 1), age_at_entry=17, rqth=True,
                  qpv_resident=True, has_work_experience=False)
    report = outcomes_report([old], 2024, [])
    assert report["entries"] == 0
    assert report["entries_by_agency_kind"]["mission_locale"] == 0
    assert report["profile"] == {
        "age_at_entry_sum": 17, "minors": 1, "rqth": 1, "qpv_resident": 1,
        "no_work_experience": 1,
    }


# --- aid beside outcome ----------------------------------------------------------------------


def test_aids_and_outcomes_for_the_years_exits() -> None:
    # 2024's exits: T3 (solution), T6 (none), T8 (solution), T9 (solution).
    aided = {
        AidKind.LAPTOP: {"T3", "T6", "T4", "T1"},  # T4 exited in 2023, T1 has not exited
        AidKind.MEALS: {"T8"},
        # no childcare at all: everyone is without it
    }
    assert aids_and_outcomes(COHORT, aided, 2024) == {
        "laptop": {
            "with_aid": {"exits": 2, "solutions": 1},  # T3, T6
            "without_aid": {"exits": 2, "solutions": 2},  # T8, T9
        },
        "meals": {
            "with_aid": {"exits": 1, "solutions": 1},  # T8
            "without_aid": {"exits": 3, "solutions": 2},  # T3, T6, T9
        },
        "childcare": {
            "with_aid": {"exits": 0, "solutions": 0},
            "without_aid": {"exits": 4, "solutions": 3},
        },
    }


def test_aids_and_outcomes_other_years_and_nothing() -> None:
    aided = {AidKind.LAPTOP: {"T4"}, AidKind.CHILDCARE: {"T4", "T7"}}
    # 2023: T4 alone exited (qualifying training, a solution).
    report = aids_and_outcomes(COHORT, aided, 2023)
    assert report["laptop"] == {"with_aid": {"exits": 1, "solutions": 1},
                                "without_aid": {"exits": 0, "solutions": 0}}
    assert report["childcare"]["with_aid"] == {"exits": 1, "solutions": 1}
    assert report["meals"] == {"with_aid": {"exits": 0, "solutions": 0},
                               "without_aid": {"exits": 1, "solutions": 1}}
    # No exit at all: every cell is zero, every kind still present.
    empty = aids_and_outcomes([], {}, 2024)
    zero = {"exits": 0, "solutions": 0}
    assert empty == {k.value: {"with_aid": zero, "without_aid": zero} for k in AidKind}


# --- the referral funnel ---------------------------------------------------------------------


def referred(
    referral_id: str,
    agency_id: str,
    school_id: str,
    received_on: date,
    accepted_on: date | None = None,
    enrolled_on: date | None = None,
    exited_on: date | None = None,
    solution: bool | None = None,
) -> Referred:
    return Referred(referral_id, agency_id, school_id, received_on, accepted_on, enrolled_on,
                    exited_on, solution)


ML = "ml-toulouse"
FT = "ft-castres"
REFERRALS = [
    # received→accepted, accepted→enrolled, enrolled→exited (days)
    referred("R1", ML, "toulouse", date(2024, 3, 1), date(2024, 3, 3), date(2024, 3, 10),
             date(2024, 3, 30), True),  # 2, 7, 20
    referred("R2", ML, "toulouse", date(2024, 4, 1), date(2024, 4, 5), date(2024, 4, 8),
             date(2024, 4, 18), False),  # 4, 3, 10
    referred("R3", FT, "castres", date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 6)),  # 1, 4
    referred("R4", FT, "toulouse", date(2024, 6, 1)),  # never accepted
    referred("R5", ML, "castres", date(2024, 12, 31), date(2025, 1, 3)),  # 3, across the year
    # Outside the 2024 cohort (received in 2023, in 2025), whatever happened later.
    referred("R6", ML, "toulouse", date(2023, 12, 31), date(2024, 1, 2), date(2024, 1, 8),
             date(2024, 2, 1), True),
    referred("R7", FT, "castres", date(2025, 1, 1), date(2025, 1, 2)),
]


def counts(received: int, accepted: int, enrolled: int, exited: int, with_solution: int,
           r2a: float | None, a2e: float | None, e2x: float | None) -> dict[str, object]:
    return {
        "received": received, "accepted": accepted, "enrolled": enrolled, "exited": exited,
        "with_solution": with_solution,
        "median_days": {"received_to_accepted": r2a, "accepted_to_enrolled": a2e,
                        "enrolled_to_exited": e2x},
    }


NO_FUNNEL = counts(0, 0, 0, 0, 0, None, None, None)


def test_the_funnel_steps() -> None:
    assert FUNNEL_STEPS == ("received", "accepted", "enrolled", "exited", "with_solution")


def test_funnel_counts_and_medians() -> None:
    cohort = REFERRALS[:5]
    # r2a [2, 4, 1, 3] → 2.5 (even), a2e [7, 3, 4] → 4 (odd), e2x [20, 10] → 15 (even).
    assert funnel(cohort) == counts(5, 4, 3, 2, 1, 2.5, 4.0, 15.0)


def test_an_empty_funnel() -> None:
    assert funnel([]) == NO_FUNNEL


@pytest.mark.parametrize(
    ("days", "median"),
    [
        pytest.param([5], 5.0, id="one"),
        pytest.param([9, 1, 4], 4.0, id="odd"),
        pytest.param([10, 1, 4, 7], 5.5, id="even"),
        pytest.param([3, 1], 2.0, id="even-whole"),
        pytest.param([0, 0], 0.0, id="same-day"),
        pytest.param([], None, id="no-pair"),
    ],
)
def test_median_days(days: list[int], median: float | None) -> None:
    start = date(2024, 2, 1)
    referrals = [
        referred(f"R{i}", ML, "toulouse", start, date.fromordinal(start.toordinal() + d))
        for i, d in enumerate(days)
    ]
    # One more that was never accepted: no pair, so it changes no median.
    referrals.append(referred("never", ML, "toulouse", start))
    result = funnel(referrals)
    assert result["median_days"]["received_to_accepted"] == median
    if median is not None:
        assert isinstance(result["median_days"]["received_to_accepted"], float)
    assert result["median_days"]["accepted_to_enrolled"] is None
    assert result["received"] == len(days) + 1
    assert result["accepted"] == len(days)


def test_a_funnel_step_without_its_previous_step_makes_no_pair() -> None:
    # enrolled_on known, accepted_on not (never happens by the rules, but no crash, no pair).
    odd = referred("R", ML, "toulouse", date(2024, 2, 1), None, date(2024, 2, 10))
    result = funnel([odd])
    assert result["accepted"] == 0 and result["enrolled"] == 1
    assert result["median_days"] == {"received_to_accepted": None,
                                     "accepted_to_enrolled": None, "enrolled_to_exited": None}


def test_funnel_report_of_a_year() -> None:
    assert funnel_report(REFERRALS, 2024) == {
        "year": 2024,
        "steps": ["received", "accepted", "enrolled", "exited", "with_solution"],
        # R1..R5: received in 2024 (R6 in 2023 and R7 in 2025 are not).
        "total": counts(5, 4, 3, 2, 1, 2.5, 4.0, 15.0),
        "by_agency": {
            FT: counts(2, 1, 1, 0, 0, 1.0, 4.0, None),  # R3, R4
            ML: counts(3, 3, 2, 2, 1, 3.0, 5.0, 15.0),  # R1, R2, R5: [2, 4, 3] [7, 3] [20, 10]
        },
        "by_school": {
            "castres": counts(2, 2, 1, 0, 0, 2.0, 4.0, None),  # R3, R5: [1, 3] [4]
            "toulouse": counts(3, 2, 2, 2, 1, 3.0, 5.0, 15.0),  # R1, R2, R4: [2, 4] [7, 3]
        },
    }


def test_funnel_report_cohort_is_the_year_received() -> None:
    r2023 = funnel_report(REFERRALS, 2023)
    # R6 alone, though it was accepted, enrolled and exited in 2024.
    assert r2023["total"] == counts(1, 1, 1, 1, 1, 2.0, 6.0, 24.0)
    assert list(r2023["by_agency"]) == [ML]
    r2025 = funnel_report(REFERRALS, 2025)
    assert r2025["total"] == counts(1, 1, 0, 0, 0, 1.0, None, None)  # R7; R5 stays in 2024
    assert funnel_report(REFERRALS, 2026) == {
        "year": 2026, "steps": list(FUNNEL_STEPS), "total": NO_FUNNEL,
        "by_agency": {}, "by_school": {},
    }


def test_funnel_report_for_one_agency() -> None:
    report = funnel_report(REFERRALS, 2024, agency_id=FT)
    assert report == {
        "year": 2024,
        "steps": list(FUNNEL_STEPS),
        "total": counts(2, 1, 1, 0, 0, 1.0, 4.0, None),  # R3, R4 only
        "by_agency": {FT: counts(2, 1, 1, 0, 0, 1.0, 4.0, None)},
        "by_school": {
            "castres": counts(1, 1, 1, 0, 0, 1.0, 4.0, None),  # R3 (not ML's R5)
            "toulouse": counts(1, 0, 0, 0, 0, None, None, None),  # R4 (not ML's R1, R2)
        },
    }
    assert ML not in report["by_agency"]


def test_funnel_report_for_an_agency_with_nothing() -> None:
    assert funnel_report(REFERRALS, 2024, agency_id="nobody") == {
        "year": 2024, "steps": list(FUNNEL_STEPS), "total": NO_FUNNEL,
        "by_agency": {}, "by_school": {},
    }
