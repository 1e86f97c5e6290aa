"""Outcome rules and the yearly indicators: exit decisions, categories, the report, the
funnel. Pure functions over plain facts, no I/O."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from shared.contract import (
    OUTCOME_CATEGORY,
    AgencyKind,
    AidKind,
    ExitReason,
    Outcome,
    OutcomeCategory,
)

MINOR_AGE = 18


def category_of(outcome: Outcome) -> OutcomeCategory:
    return OUTCOME_CATEGORY[outcome]


def is_solution(category: OutcomeCategory | str) -> bool:
    return category != OutcomeCategory.NONE


@dataclass(frozen=True)
class Enrolled:
    """A trainee as outcomes knows it: from enrollments.decided and its own exits."""

    trainee_id: str
    school_id: str
    enrolled_on: date
    agency_kind: AgencyKind
    age_at_entry: int
    rqth: bool
    qpv_resident: bool
    has_work_experience: bool
    exited_on: date | None = None
    outcome: Outcome | None = None
    satisfied: bool | None = None

    @property
    def category(self) -> OutcomeCategory | None:
        return category_of(self.outcome) if self.outcome is not None else None


def exit_refusal(trainee: Enrolled | None, exited_on: date) -> ExitReason | None:
    """The first reason that applies (an unknown trainee is held before it is refused)."""
    if trainee is None:
        return ExitReason.UNKNOWN_TRAINEE
    if exited_on < trainee.enrolled_on:
        return ExitReason.EXIT_BEFORE_ENROLLMENT
    if trainee.exited_on is not None:
        return ExitReason.ALREADY_EXITED
    return None


# --- the yearly indicators ------------------------------------------------------------------


def accompanied_in(trainee: Enrolled, year: int) -> bool:
    """Enrolled on or before 31 December and not exited before 1 January of `year`."""
    return trainee.enrolled_on <= date(year, 12, 31) and (
        trainee.exited_on is None or trainee.exited_on >= date(year, 1, 1)
    )


def entered_in(trainee: Enrolled, year: int) -> bool:
    return trainee.enrolled_on.year == year


def exited_in(trainee: Enrolled, year: int) -> bool:
    return trainee.exited_on is not None and trainee.exited_on.year == year


def outcomes_report(
    trainees: Iterable[Enrolled], year: int, schools: Sequence[str]
) -> dict[str, object]:
    """The contract's `GET /reports/outcomes` body: counts only, every key always present."""
    trainees = list(trainees)
    accompanied = [t for t in trainees if accompanied_in(t, year)]
    entries = [t for t in trainees if entered_in(t, year)]
    exits = [t for t in trainees if exited_in(t, year)]
    solutions = [t for t in exits if _solution(t)]
    by_school = {
        school: {"accompanied": 0, "entries": 0, "exits": 0, "solutions": 0}
        for school in sorted({*schools, *(t.school_id for t in trainees)})
    }
    for group, name in ((accompanied, "accompanied"), (entries, "entries"), (exits, "exits"),
                        (solutions, "solutions")):
        for trainee in group:
            by_school[trainee.school_id][name] += 1
    # one pass per count (the counters), not one pass per outcome, category or kind
    outcomes = Counter(t.outcome for t in exits)
    categories = Counter(t.category for t in exits)
    agency_kinds = Counter(t.agency_kind for t in entries)
    return {
        "year": year,
        "accompanied": len(accompanied),
        "entries": len(entries),
        "exits": len(exits),
        "exits_by_outcome": {o.value: outcomes[o] for o in Outcome},
        "exits_by_category": {c.value: categories[c] for c in OutcomeCategory},
        "solutions": len(solutions),
        "satisfaction": {
            "answered": sum(t.satisfied is not None for t in exits),
            "satisfied": sum(t.satisfied is True for t in exits),
        },
        "profile": {
            "age_at_entry_sum": sum(t.age_at_entry for t in accompanied),
            "minors": sum(t.age_at_entry < MINOR_AGE for t in accompanied),
            "rqth": sum(t.rqth for t in accompanied),
            "qpv_resident": sum(t.qpv_resident for t in accompanied),
            "no_work_experience": sum(not t.has_work_experience for t in accompanied),
        },
        "entries_by_agency_kind": {k.value: agency_kinds[k] for k in AgencyKind},
        "by_school": by_school,
    }


def _solution(trainee: Enrolled) -> bool:
    return trainee.category is not None and is_solution(trainee.category)


# --- aid and outcome side by side -----------------------------------------------------------


def aids_and_outcomes(
    trainees: Iterable[Enrolled], aided: dict[AidKind, set[str]], year: int
) -> dict[str, dict[str, dict[str, int]]]:
    """For the year's exits: exits and solutions of those who received each aid kind, and of
    those who did not. Counts, not claims: whatever explains a difference is not here."""
    exits = [(t.trainee_id, _solution(t)) for t in trainees if exited_in(t, year)]
    report: dict[str, dict[str, dict[str, int]]] = {}
    for kind in AidKind:
        received = aided.get(kind, set())
        groups: dict[str, list[bool]] = {"with_aid": [], "without_aid": []}
        for trainee_id, solution in exits:
            groups["with_aid" if trainee_id in received else "without_aid"].append(solution)
        report[kind.value] = {
            name: {"exits": len(group), "solutions": sum(group)}
            for name, group in groups.items()
        }
    return report


# --- the referral funnel ---------------------------------------------------------------------


@dataclass(frozen=True)
class Referred:
    """A referral followed down the funnel (dates in Europe/Paris)."""

    referral_id: str
    agency_id: str
    school_id: str
    received_on: date
    accepted_on: date | None
    enrolled_on: date | None
    exited_on: date | None
    solution: bool | None


FUNNEL_STEPS = ("received", "accepted", "enrolled", "exited", "with_solution")


def funnel(referrals: Iterable[Referred]) -> dict[str, object]:
    """Counts at each step and the median days between consecutive steps."""
    referrals = list(referrals)
    return {
        "received": len(referrals),
        "accepted": sum(r.accepted_on is not None for r in referrals),
        "enrolled": sum(r.enrolled_on is not None for r in referrals),
        "exited": sum(r.exited_on is not None for r in referrals),
        "with_solution": sum(bool(r.solution) for r in referrals),
        "median_days": {
            "received_to_accepted": _median_days(
                (r.received_on, r.accepted_on) for r in referrals
            ),
            "accepted_to_enrolled": _median_days(
                (r.accepted_on, r.enrolled_on) for r in referrals
            ),
            "enrolled_to_exited": _median_days((r.enrolled_on, r.exited_on) for r in referrals),
        },
    }


def _median_days(pairs: Iterable[tuple[date | None, date | None]]) -> float | None:
    days = [(end - start).days for start, end in pairs if start is not None and end is not None]
    return float(statistics.median(days)) if days else None


def funnel_report(
    referrals: Iterable[Referred], year: int, agency_id: str | None = None
) -> dict[str, object]:
    """The funnel of the referrals received in `year`, overall, per agency and per school
    (only one agency's when `agency_id` is given: what a partner may see)."""
    cohort = [
        r for r in referrals
        if r.received_on.year == year and (agency_id is None or r.agency_id == agency_id)
    ]
    by_agency: dict[str, list[Referred]] = {}
    by_school: dict[str, list[Referred]] = {}
    for referral in cohort:
        by_agency.setdefault(referral.agency_id, []).append(referral)
        by_school.setdefault(referral.school_id, []).append(referral)
    return {
        "year": year,
        "steps": list(FUNNEL_STEPS),
        "total": funnel(cohort),
        "by_agency": {agency: funnel(group) for agency, group in sorted(by_agency.items())},
        "by_school": {school: funnel(group) for school, group in sorted(by_school.items())},
    }
