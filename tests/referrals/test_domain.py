"""Eligibility rules of the contract, every boundary."""

from __future__ import annotations

import unicodedata
from datetime import UTC, date, datetime, timedelta

import pytest

from services.referrals.domain import (
    Applicant,
    ReferralState,
    age_on,
    decide_derogation,
    decide_eligibility,
    decide_referral,
    due_for_erasure,
    enrollment_refusal,
    expires,
    months_before,
    person_key,
    retention_cutoff,
)
from shared.contract import EnrollmentReason, Qualification, ReferralReason, ReferralStatus
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


# --- duplicates, derogations, enrollment, retention ----------------------------------------


@pytest.mark.parametrize(
    ("first", "last"),
    [("Inès", "Martin"), ("INES", "martin"), (" inès ", "Mar tin"), ("Ine\u0300s", "MARTIN")],
)
def test_person_key_ignores_case_accents_and_spaces(first: str, last: str) -> None:
    assert person_key(first, last, date(2006, 5, 17)) == person_key(
        "Inès", "Martin", date(2006, 5, 17)
    )


def test_person_key_keeps_birth_date_and_letters_apart() -> None:
    base = person_key("Inès", "Martin", date(2006, 5, 17))
    assert person_key("Inès", "Martin", date(2006, 5, 18)) != base
    assert person_key("Inès", "Martine", date(2006, 5, 17)) != base
    assert person_key("Martin", "Inès", date(2006, 5, 17)) != base


def test_a_live_referral_makes_a_duplicate_whatever_the_new_one_says() -> None:
    decision = decide_referral(applicant(in_school=True), DAY, SCHOOLS, "ML-1")
    assert decision.status is ReferralStatus.DUPLICATE
    assert decision.duplicate_of == "ML-1"
    assert decision.reasons == ()
    assert not decision.is_live


def test_without_a_live_referral_eligibility_decides() -> None:
    decision = decide_referral(applicant(), DAY, SCHOOLS, None)
    assert decision.status is ReferralStatus.ACCEPTED and decision.is_live


@pytest.mark.parametrize(
    ("current", "granted", "status", "reasons"),
    [
        (ReferralStatus.PENDING_DEROGATION, True, ReferralStatus.ACCEPTED, ()),
        (
            ReferralStatus.PENDING_DEROGATION,
            False,
            ReferralStatus.REJECTED,
            (ReferralReason.DEROGATION_REFUSED,),
        ),
        (ReferralStatus.ACCEPTED, True, ReferralStatus.REJECTED, (ReferralReason.NOT_PENDING,)),
        (ReferralStatus.REJECTED, True, ReferralStatus.REJECTED, (ReferralReason.NOT_PENDING,)),
        (ReferralStatus.DUPLICATE, False, ReferralStatus.REJECTED, (ReferralReason.NOT_PENDING,)),
    ],
)
def test_derogations(
    current: ReferralStatus,
    granted: bool,
    status: ReferralStatus,
    reasons: tuple[ReferralReason, ...],
) -> None:
    decision = decide_derogation(current, granted)
    assert (decision.status, decision.reasons) == (status, reasons)


NOT_ACCEPTED = EnrollmentReason.REFERRAL_NOT_ACCEPTED


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (None, EnrollmentReason.UNKNOWN_REFERRAL),
        (ReferralState(ReferralStatus.REJECTED, False, False), NOT_ACCEPTED),
        (ReferralState(ReferralStatus.PENDING_DEROGATION, False, False), NOT_ACCEPTED),
        (ReferralState(ReferralStatus.DUPLICATE, False, False), NOT_ACCEPTED),
        (ReferralState(ReferralStatus.ACCEPTED, False, True), NOT_ACCEPTED),  # erased
        (ReferralState(ReferralStatus.ACCEPTED, True, False), EnrollmentReason.ALREADY_ENROLLED),
        (ReferralState(ReferralStatus.REJECTED, True, False), NOT_ACCEPTED),  # first reason
        (ReferralState(ReferralStatus.ACCEPTED, False, False), None),
    ],
)
def test_enrollment_gives_the_first_reason_that_applies(
    state: ReferralState | None, reason: EnrollmentReason | None
) -> None:
    assert enrollment_refusal(state) == reason


@pytest.mark.parametrize(
    ("moment", "months", "expected"),
    [
        (datetime(2026, 11, 26, tzinfo=UTC), 24, datetime(2024, 11, 26, tzinfo=UTC)),
        (datetime(2026, 3, 31, tzinfo=UTC), 1, datetime(2026, 2, 28, tzinfo=UTC)),
        (datetime(2024, 3, 31, tzinfo=UTC), 1, datetime(2024, 2, 29, tzinfo=UTC)),
        (datetime(2026, 1, 15, tzinfo=UTC), 13, datetime(2024, 12, 15, tzinfo=UTC)),
    ],
)
def test_months_before(moment: datetime, months: int, expected: datetime) -> None:
    assert months_before(moment, months) == expected


CUTOFF = datetime(2024, 11, 26, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "settled_at", "exited_on", "due"),
    [
        (ReferralStatus.REJECTED, CUTOFF - timedelta(seconds=1), None, True),
        (ReferralStatus.REJECTED, CUTOFF, None, False),
        (ReferralStatus.DUPLICATE, CUTOFF - timedelta(days=1), None, True),
        (ReferralStatus.ACCEPTED, CUTOFF - timedelta(days=900), None, False),  # still followed
        (ReferralStatus.PENDING_DEROGATION, CUTOFF - timedelta(days=900), None, False),
        (ReferralStatus.ACCEPTED, CUTOFF, date(2024, 11, 25), True),
        (ReferralStatus.ACCEPTED, CUTOFF, date(2024, 11, 26), False),
        (ReferralStatus.EXPIRED, CUTOFF - timedelta(seconds=1), None, True),  # (1.1)
        (ReferralStatus.EXPIRED, CUTOFF, None, False),
    ],
)
def test_due_for_erasure(
    status: ReferralStatus, settled_at: datetime, exited_on: date | None, due: bool
) -> None:
    assert due_for_erasure(status, settled_at, exited_on, CUTOFF) is due


# --- (1.1) expiry, and the retention of the enrolled who never exit --------------------------

ENROLLED_CUTOFF = datetime(2023, 11, 26, tzinfo=UTC)


@pytest.mark.parametrize(
    ("enrolled_at", "exited_on", "due"),
    [
        (ENROLLED_CUTOFF - timedelta(seconds=1), None, True),
        (ENROLLED_CUTOFF, None, False),
        (ENROLLED_CUTOFF + timedelta(days=300), None, False),
        # An exit counts from the exit, under the shorter bound, whenever the enrollment was.
        (ENROLLED_CUTOFF - timedelta(days=300), date(2024, 11, 26), False),
        (ENROLLED_CUTOFF + timedelta(days=300), date(2024, 11, 25), True),
    ],
)
def test_enrolled_and_never_exited_is_erased_after_its_own_bound(
    enrolled_at: datetime, exited_on: date | None, due: bool
) -> None:
    assert due_for_erasure(ReferralStatus.ACCEPTED, CUTOFF - timedelta(days=900), exited_on,
                           CUTOFF, enrolled_at=enrolled_at,
                           enrolled_cutoff=ENROLLED_CUTOFF) is due


@pytest.mark.parametrize(
    ("months", "expected"),
    [
        (24, datetime(2024, 11, 26, 12, tzinfo=UTC)),
        (36.0, datetime(2023, 11, 26, 12, tzinfo=UTC)),
        (0.5, datetime(2026, 11, 11, 12, tzinfo=UTC)),  # half of a 30-day month
        (1.5, datetime(2026, 10, 11, 12, tzinfo=UTC)),
        (2 / (30 * 24 * 3600), datetime(2026, 11, 26, 11, 59, 58, tzinfo=UTC)),  # 2 s
    ],
)
def test_retention_cutoff_counts_whole_months_then_30_day_fractions(
    months: float, expected: datetime
) -> None:
    cutoff = retention_cutoff(datetime(2026, 11, 26, 12, tzinfo=UTC), months)
    assert abs(cutoff - expected) < timedelta(milliseconds=1)


DEADLINE = datetime(2024, 11, 26, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "enrolled", "decided_at", "expired"),
    [
        (ReferralStatus.ACCEPTED, False, DEADLINE - timedelta(seconds=1), True),
        (ReferralStatus.PENDING_DEROGATION, False, DEADLINE - timedelta(days=1), True),
        (ReferralStatus.ACCEPTED, False, DEADLINE, False),  # not yet
        (ReferralStatus.ACCEPTED, True, DEADLINE - timedelta(days=400), False),  # enrolled
        (ReferralStatus.REJECTED, False, DEADLINE - timedelta(days=400), False),
        (ReferralStatus.DUPLICATE, False, DEADLINE - timedelta(days=400), False),
        (ReferralStatus.EXPIRED, False, DEADLINE - timedelta(days=400), False),  # once only
    ],
)
def test_expiry(status: ReferralStatus, enrolled: bool, decided_at: datetime,
                expired: bool) -> None:
    assert expires(status, enrolled, decided_at, DEADLINE) is expired


def test_an_expired_referral_cannot_be_enrolled_nor_derogated() -> None:
    state = ReferralState(ReferralStatus.EXPIRED, enrolled=False, erased=False)
    assert enrollment_refusal(state) is EnrollmentReason.REFERRAL_NOT_ACCEPTED
    for granted in (True, False):
        refusal = decide_derogation(ReferralStatus.EXPIRED, granted)
        assert (refusal.status, refusal.reasons) == (
            ReferralStatus.REJECTED, (ReferralReason.NOT_PENDING,))


def _folded_by_unicode(name: str) -> str:
    """The rule spelled out: compatibility decomposition, accents dropped, case folded,
    whitespace removed."""
    decomposed = unicodedata.normalize("NFKD", name)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(kept.casefold().split())


def test_person_key_of_ascii_names_follows_the_unicode_rule() -> None:
    every_ascii = "".join(chr(code) for code in range(128))
    for name in (every_ascii, "O'Neil-Smith", "  DE\tla\x1cFONTAINE "):
        assert person_key(name, "X", date(2006, 5, 17)) == (
            f"{_folded_by_unicode(name)}|x|2006-05-17")
