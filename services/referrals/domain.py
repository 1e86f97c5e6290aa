"""Referral rules: eligibility and the decision it leads to. Pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from shared.contract import Qualification, ReferralReason, ReferralStatus

MIN_AGE = 16
DEROGATION_AGE = 26  # 26 to 29 need a derogation
MAX_AGE_WITH_DEROGATION = 29
QUALIFYING_DIPLOMAS = frozenset(
    {Qualification.CAP_BEP, Qualification.BAC, Qualification.POST_BAC}
)


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
    reasons: tuple[ReferralReason, ...]

    @property
    def gives_trainee(self) -> bool:
        return self.status is not ReferralStatus.REJECTED


def age_on(birth_date: date, day: date) -> int:
    """Age in completed years on `day` (born 29 February: a year older on 1 March)."""
    had_birthday = (day.month, day.day) >= (birth_date.month, birth_date.day)
    return day.year - birth_date.year - (0 if had_birthday else 1)


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
