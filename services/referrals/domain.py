"""Referral rules: eligibility, duplicates, derogations, enrollment, retention. No I/O."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from shared.contract import (
    EnrollmentReason,
    Qualification,
    ReferralReason,
    ReferralStatus,
)

MIN_AGE = 16
DEROGATION_AGE = 26  # 26 to 29 need a derogation
MAX_AGE_WITH_DEROGATION = 29
QUALIFYING_DIPLOMAS = frozenset(
    {Qualification.CAP_BEP, Qualification.BAC, Qualification.POST_BAC}
)
# A person has a live referral while it is accepted or pending (enrolled ones are accepted)
# and not exited: a new referral of that person is then a duplicate.
LIVE_STATUSES = frozenset({ReferralStatus.ACCEPTED, ReferralStatus.PENDING_DEROGATION})
SETTLED_STATUSES = frozenset({ReferralStatus.REJECTED, ReferralStatus.DUPLICATE})


@dataclass(frozen=True)
class Applicant:
    """The facts eligibility looks at."""

    birth_date: date
    highest_qualification: Qualification
    in_school: bool
    school_id: str


@dataclass(frozen=True)
class Decision:
    status: ReferralStatus
    reasons: tuple[ReferralReason, ...] = ()
    duplicate_of: str | None = None

    @property
    def gives_trainee(self) -> bool:
        return self.status is not ReferralStatus.REJECTED

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES


def age_on(birth_date: date, day: date) -> int:
    """Age in completed years on `day` (born 29 February: a year older on 1 March)."""
    had_birthday = (day.month, day.day) >= (birth_date.month, birth_date.day)
    return day.year - birth_date.year - (0 if had_birthday else 1)


def person_key(first_name: str, last_name: str, birth_date: date) -> str:
    """Who the person is for duplicates: names without case, accents or spaces, and birth date."""
    return f"{_fold(first_name)}|{_fold(last_name)}|{birth_date.isoformat()}"


def _fold(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name)
    without_accents = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(without_accents.casefold().split())


def eligibility_reasons(
    applicant: Applicant, referral_date: date, known_schools: frozenset[str] | set[str]
) -> list[ReferralReason]:
    """Every failing rule, in the contract's order."""
    reasons: list[ReferralReason] = []
    age = age_on(applicant.birth_date, referral_date)
    if age < MIN_AGE:
        reasons.append(ReferralReason.TOO_YOUNG)
    elif DEROGATION_AGE <= age <= MAX_AGE_WITH_DEROGATION:
        reasons.append(ReferralReason.NEEDS_DEROGATION)
    elif age > MAX_AGE_WITH_DEROGATION:
        reasons.append(ReferralReason.TOO_OLD)
    if applicant.highest_qualification in QUALIFYING_DIPLOMAS:
        reasons.append(ReferralReason.HAS_QUALIFICATION)
    if applicant.in_school:
        reasons.append(ReferralReason.IN_SCHOOL)
    if applicant.school_id not in known_schools:
        reasons.append(ReferralReason.UNKNOWN_SCHOOL)
    return reasons


def decide_eligibility(
    applicant: Applicant, referral_date: date, known_schools: frozenset[str] | set[str]
) -> Decision:
    reasons = eligibility_reasons(applicant, referral_date, known_schools)
    if any(reason is not ReferralReason.NEEDS_DEROGATION for reason in reasons):
        status = ReferralStatus.REJECTED
    elif reasons:
        status = ReferralStatus.PENDING_DEROGATION
    else:
        status = ReferralStatus.ACCEPTED
    return Decision(status=status, reasons=tuple(reasons))


def decide_referral(
    applicant: Applicant,
    referral_date: date,
    known_schools: frozenset[str] | set[str],
    live_referral_of_person: str | None,
) -> Decision:
    """A person already followed is a duplicate, whatever the new referral says."""
    if live_referral_of_person is not None:
        return Decision(ReferralStatus.DUPLICATE, duplicate_of=live_referral_of_person)
    return decide_eligibility(applicant, referral_date, known_schools)


def decide_derogation(current: ReferralStatus, granted: bool) -> Decision:
    """The answer to a derogation; on a referral that is not pending nothing changes."""
    if current is not ReferralStatus.PENDING_DEROGATION:
        return Decision(ReferralStatus.REJECTED, (ReferralReason.NOT_PENDING,))
    if granted:
        return Decision(ReferralStatus.ACCEPTED)
    return Decision(ReferralStatus.REJECTED, (ReferralReason.DEROGATION_REFUSED,))


@dataclass(frozen=True)
class ReferralState:
    """What enrollment needs to know of a referral."""

    status: ReferralStatus
    enrolled: bool
    erased: bool


def enrollment_refusal(referral: ReferralState | None) -> EnrollmentReason | None:
    """The first reason that applies, or None when the enrollment is accepted."""
    if referral is None:
        return EnrollmentReason.UNKNOWN_REFERRAL
    if referral.status is not ReferralStatus.ACCEPTED or referral.erased:
        # An erased referral has no birth date left to compute the profile from.
        return EnrollmentReason.REFERRAL_NOT_ACCEPTED
    if referral.enrolled:
        return EnrollmentReason.ALREADY_ENROLLED
    return None


def months_before(moment: datetime, months: int) -> datetime:
    """`moment` shifted back by whole calendar months (day clamped to the month's length)."""
    month_index = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(month_index, 12)
    day = min(moment.day, _days_in_month(year, month + 1))
    return moment.replace(year=year, month=month + 1, day=day)


def _days_in_month(year: int, month: int) -> int:
    first_next = date(year + (month == 12), month % 12 + 1, 1)
    return (first_next - timedelta(days=1)).day


def due_for_erasure(
    status: ReferralStatus,
    settled_at: datetime,
    exited_on: date | None,
    cutoff: datetime,
) -> bool:
    """Personal data goes once a referral was refused, a duplicate, or exited before `cutoff`."""
    if exited_on is not None:
        return exited_on < cutoff.date()
    return status in SETTLED_STATUSES and settled_at < cutoff
