"""Eligibility rules of the contract, every boundary."""

from __future__ import annotations

from datetime import date

import pytest

from services.referrals.domain import Applicant, age_on, decide_eligibility
from shared.contract import Qualification, ReferralReason, ReferralStatus
from shared.schools import load_schools

SCHOOLS = set(load_schools())
DAY = date(2024, 3, 4)


def applicant(
    birth_date: date = date(2006, 5, 17),
    qualification: Qualification = Qualification.NONE,
    in_school: bool = False,
    school_id: str = "toulouse",
) -> Applicant:
    return Applicant(birth_date, qualification, in_school, school_id)


def born_years_before(years: int, days_later: int = 0) -> date:
    """Birth date making the person exactly `years` old on DAY (later by `days_later`)."""
    birthday = DAY.replace(year=DAY.year - years)
    return date.fromordinal(birthday.toordinal() + days_later)


def test_the_registry_ships_the_13_sites() -> None:
    assert len(SCHOOLS) == 13
    assert {"toulouse", "montauban", "onet-le-chateau", "montpellier-2"} <= SCHOOLS


@pytest.mark.parametrize(
    ("birth", "day", "age"),
    [
        (date(2008, 3, 4), date(2024, 3, 4), 16),  # birthday today
        (date(2008, 3, 5), date(2024, 3, 4), 15),  # birthday tomorrow
        (date(2004, 2, 29), date(2023, 2, 28), 18),  # leap-day birth, not yet
        (date(2004, 2, 29), date(2023, 3, 1), 19),
        (date(2004, 2, 29), date(2024, 2, 29), 20),
    ],
)
def test_age_in_completed_years(birth: date, day: date, age: int) -> None:
    assert age_on(birth, day) == age


@pytest.mark.parametrize(
    ("birth", "status", "reasons"),
    [
        (born_years_before(16, days_later=1), ReferralStatus.REJECTED, [ReferralReason.TOO_YOUNG]),
        (born_years_before(16), ReferralStatus.ACCEPTED, []),
        (born_years_before(25), ReferralStatus.ACCEPTED, []),
        (born_years_before(26, days_later=1), ReferralStatus.ACCEPTED, []),  # still 25
        (
            born_years_before(26),
            ReferralStatus.PENDING_DEROGATION,
            [ReferralReason.NEEDS_DEROGATION],
        ),
        (
            born_years_before(30, days_later=1),
            ReferralStatus.PENDING_DEROGATION,
            [ReferralReason.NEEDS_DEROGATION],
        ),  # still 29
        (born_years_before(30), ReferralStatus.REJECTED, [ReferralReason.TOO_OLD]),
        (born_years_before(45), ReferralStatus.REJECTED, [ReferralReason.TOO_OLD]),
    ],
)
def test_age_boundaries(
    birth: date, status: ReferralStatus, reasons: list[ReferralReason]
) -> None:
    decision = decide_eligibility(applicant(birth_date=birth), DAY, SCHOOLS)
    assert decision.status is status
    assert list(decision.reasons) == reasons


@pytest.mark.parametrize(
    ("qualification", "rejected"),
    [
        (Qualification.NONE, False),
        (Qualification.DNB, False),
        (Qualification.CAP_BEP, True),
        (Qualification.BAC, True),
        (Qualification.POST_BAC, True),
    ],
)
def test_qualification(qualification: Qualification, rejected: bool) -> None:
    decision = decide_eligibility(applicant(qualification=qualification), DAY, SCHOOLS)
    assert (decision.status is ReferralStatus.REJECTED) is rejected
    assert (ReferralReason.HAS_QUALIFICATION in decision.reasons) is rejected


def test_in_school_is_rejected() -> None:
    decision = decide_eligibility(applicant(in_school=True), DAY, SCHOOLS)
    assert decision.status is ReferralStatus.REJECTED
    assert list(decision.reasons) == [ReferralReason.IN_SCHOOL]


def test_unknown_school_is_rejected() -> None:
    decision = decide_eligibility(applicant(school_id="paris"), DAY, SCHOOLS)
    assert decision.status is ReferralStatus.REJECTED
    assert list(decision.reasons) == [ReferralReason.UNKNOWN_SCHOOL]


def test_every_failing_rule_is_listed_in_order() -> None:
    decision = decide_eligibility(
        applicant(born_years_before(31), Qualification.BAC, True, "nowhere"), DAY, SCHOOLS
    )
    assert decision.status is ReferralStatus.REJECTED
    assert list(decision.reasons) == [
        ReferralReason.TOO_OLD,
        ReferralReason.HAS_QUALIFICATION,
        ReferralReason.IN_SCHOOL,
        ReferralReason.UNKNOWN_SCHOOL,
    ]


def test_derogation_age_with_another_failure_is_rejected_listing_both() -> None:
    decision = decide_eligibility(applicant(born_years_before(27), in_school=True), DAY, SCHOOLS)
    assert decision.status is ReferralStatus.REJECTED
    assert list(decision.reasons) == [ReferralReason.NEEDS_DEROGATION, ReferralReason.IN_SCHOOL]


def test_only_rejections_have_no_trainee() -> None:
    assert not decide_eligibility(applicant(in_school=True), DAY, SCHOOLS).gives_trainee
    assert decide_eligibility(applicant(), DAY, SCHOOLS).gives_trainee
    assert decide_eligibility(applicant(born_years_before(27)), DAY, SCHOOLS).gives_trainee
