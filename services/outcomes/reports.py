"""The outcome reports: the contract's JSON in one canonical form, and the same figures as
people read them (rates computed from the counts) for the command line.

The JSON holds counts only, as the contract says; every rate of the text form is the
quotient of two of its counts, with "–" where the denominator is zero.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from shared.contract import AgencyKind, AidKind, Outcome, OutcomeCategory
from shared.reports import report_engine, text_table

from . import domain
from .store import OutcomeStore

Json = dict[str, Any]

__all__ = [
    "NO_RATE",
    "aids_outcomes_body",
    "aids_outcomes_report",
    "canonical_json",
    "funnel_body",
    "load_aids_outcomes",
    "load_funnel",
    "load_outcomes_report",
    "outcomes_report_body",
    "outcomes_report_json",
    "percent",
    "render_aids_outcomes_text",
    "render_funnel_text",
    "render_outcomes_text",
]

NO_RATE = "–"  # a rate over zero (en dash)

# The contract's `GET /reports/outcomes` body, key by key, in the contract's order.
REPORT_KEYS = (
    "year", "accompanied", "entries", "exits", "exits_by_outcome", "exits_by_category",
    "solutions", "satisfaction", "profile", "entries_by_agency_kind", "by_school",
)
OUTCOME_ORDER = tuple(outcome.value for outcome in Outcome)  # exit outcomes, in `Outcome` order
CATEGORIES = tuple(category.value for category in OutcomeCategory)
SATISFACTION_KEYS = ("answered", "satisfied")
PROFILE_KEYS = ("age_at_entry_sum", "minors", "rqth", "qpv_resident", "no_work_experience")
AGENCY_KINDS = tuple(kind.value for kind in AgencyKind)
SCHOOL_KEYS = ("accompanied", "entries", "exits", "solutions")
MEDIAN_KEYS = ("received_to_accepted", "accepted_to_enrolled", "enrolled_to_exited")


# --- The canonical JSON ------------------------------------------------------------------


def canonical_json(body: object) -> bytes:
    """UTF-8 JSON without spaces or escapes of non-ASCII text: one form for one value."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _ordered(section: Json, keys: Sequence[str]) -> Json:
    """`section` with exactly `keys`, in that order (a missing key is a KeyError: a bug)."""
    return {key: section[key] for key in keys}


def outcomes_report_json(report: Json) -> bytes:
    """The report of `domain.outcomes_report` in the contract's exact shape and key order,
    schools sorted by id: the same counts always give the same bytes (after a rebuild too)."""
    body = _ordered(report, REPORT_KEYS)
    body["exits_by_outcome"] = _ordered(report["exits_by_outcome"], OUTCOME_ORDER)
    body["exits_by_category"] = _ordered(report["exits_by_category"], CATEGORIES)
    body["satisfaction"] = _ordered(report["satisfaction"], SATISFACTION_KEYS)
    body["profile"] = _ordered(report["profile"], PROFILE_KEYS)
    body["entries_by_agency_kind"] = _ordered(report["entries_by_agency_kind"], AGENCY_KINDS)
    body["by_school"] = {
        school: _ordered(report["by_school"][school], SCHOOL_KEYS)
        for school in sorted(report["by_school"])
    }
    return canonical_json(body)


def aids_outcomes_report(year: int, by_kind: dict[str, dict[str, dict[str, int]]]) -> Json:
    """`domain.aids_and_outcomes` with its year, kinds in the contract's order."""
    return {"year": year, "by_kind": {kind.value: by_kind[kind.value] for kind in AidKind}}


# --- Reading the store (blocking: call from a worker thread or a command) -----------------


def load_outcomes_report(engine: Engine, year: int, schools: Iterable[str]) -> Json:
    """The year's trainees only (those it counts), and every school ever seen (the report
    lists them all, with zeros): what it costs follows the year, not the history."""
    with Session(report_engine(engine)) as session:
        store = OutcomeStore(session)
        trainees, seen = store.trainees_of_year(year), store.school_ids()
    return domain.outcomes_report(trainees, year, [*schools, *seen])


def load_funnel(engine: Engine, year: int, agency_id: str | None = None) -> Json:
    """The funnel of `year`; only `agency_id`'s referrals when given (a partner's view)."""
    with Session(report_engine(engine)) as session:
        referrals = OutcomeStore(session).referrals_of_year(year, agency_id)
    return domain.funnel_report(referrals, year, agency_id=agency_id)


def load_aids_outcomes(engine: Engine, year: int) -> Json:
    """The year's exits and the aids of those trainees only."""
    with Session(report_engine(engine)) as session:
        store = OutcomeStore(session)
        exits, aided = store.exits_of_year(year), store.aided_exits_of_year(year)
    return aids_outcomes_report(year, domain.aids_and_outcomes(exits, aided, year))


# --- The bodies: `GET /reports/...` and `e2c report ... --json` both print these bytes -----


def outcomes_report_body(engine: Engine, year: int, schools: Iterable[str]) -> bytes:
    return outcomes_report_json(load_outcomes_report(engine, year, schools))


def funnel_body(engine: Engine, year: int, agency_id: str | None = None) -> bytes:
    return canonical_json(load_funnel(engine, year, agency_id))


def aids_outcomes_body(engine: Engine, year: int) -> bytes:
    return canonical_json(load_aids_outcomes(engine, year))


# --- Rates as people read them -----------------------------------------------------------


def _half_up(value: Decimal, places: str) -> Decimal:
    return value.quantize(Decimal(places), rounding=ROUND_HALF_UP)


def percent(count: int, total: int) -> str:
    """`count` out of `total` as a whole percentage, half rounded up: 87/100 -> '87 %';
    '–' when `total` is zero."""
    if total == 0:
        return NO_RATE
    return f"{_half_up(Decimal(100 * count) / Decimal(total), '1')} %"


def average(total: int, count: int) -> str:
    """A mean with one decimal (19.5); '–' over nobody."""
    if count == 0:
        return NO_RATE
    return str(_half_up(Decimal(total) / Decimal(count), "0.1"))


def days(value: float | None) -> str:
    """A median number of days: '12', '12.5', '–' when nobody got that far."""
    if value is None:
        return NO_RATE
    return f"{value:g}"


def render_outcomes_text(report: Json) -> str:
    """The report as people read it: counts with their rates (solutions and categories over
    exits, satisfaction over answers, profile over the accompanied, agencies over entries)."""
    year = report["year"]
    accompanied, entries, exits = report["accompanied"], report["entries"], report["exits"]
    solutions = report["solutions"]
    answered, satisfied = (report["satisfaction"][key] for key in SATISFACTION_KEYS)
    profile = report["profile"]
    out = [f"Outcomes report {year}", ""]
    out += text_table(["trainees", "count"], [
        ["accompanied", accompanied],
        ["entries", entries],
        ["exits", exits],
    ])
    out.append("")

    out += [
        f"{percent(solutions, exits)} with a solution ({solutions} of {exits} exits)",
        "by category: " + " / ".join(
            percent(report["exits_by_category"][c], exits) for c in CATEGORIES
        ) + " (" + " / ".join(CATEGORIES) + ")",
        f"{percent(satisfied, answered)} satisfied ({satisfied} of {answered} who answered)",
        "",
    ]
    out += text_table(["exits by category", "exits", "% of exits"], [
        [c, report["exits_by_category"][c], percent(report["exits_by_category"][c], exits)]
        for c in CATEGORIES
    ])
    out.append("")
    out += text_table(["exits by outcome", "category", "exits", "% of exits"], [
        [o, domain.category_of(Outcome(o)).value, report["exits_by_outcome"][o],
         percent(report["exits_by_outcome"][o], exits)]
        for o in OUTCOME_ORDER
    ])
    out.append("")

    out += text_table([f"profile of the {accompanied} accompanied", "count", "%"], [
        ["average age at entry", "", average(profile["age_at_entry_sum"], accompanied)],
        ["minors at entry", profile["minors"], percent(profile["minors"], accompanied)],
        ["RQTH", profile["rqth"], percent(profile["rqth"], accompanied)],
        ["QPV residents", profile["qpv_resident"],
         percent(profile["qpv_resident"], accompanied)],
        ["no work experience", profile["no_work_experience"],
         percent(profile["no_work_experience"], accompanied)],
    ])
    out.append("")

    by_agency = report["entries_by_agency_kind"]
    out += text_table(["entries by agency kind", "entries", "% of entries"], [
        [kind, by_agency[kind], percent(by_agency[kind], entries)] for kind in AGENCY_KINDS
    ])
    out.append("")

    out += text_table(
        ["by school", "accompanied", "entries", "exits", "solutions", "% with a solution"],
        [
            [school, *(counts[key] for key in SCHOOL_KEYS),
             percent(counts["solutions"], counts["exits"])]
            for school, counts in sorted(report["by_school"].items())
        ],
    )
    return "\n".join(out).rstrip() + "\n"


def _funnel_row(name: str, counts: Json) -> list[object]:
    medians = counts["median_days"]
    return [
        name, counts["received"], counts["accepted"], counts["enrolled"], counts["exited"],
        counts["with_solution"], percent(counts["with_solution"], counts["exited"]),
        *(days(medians[key]) for key in MEDIAN_KEYS),
    ]


FUNNEL_HEADERS = (
    "received", "accepted", "enrolled", "exited", "with a solution", "% of exited",
    "days to accept", "to enroll", "to exit",
)


def render_funnel_text(funnel: Json) -> str:
    """The year's referrals down the funnel, in total, per agency and per school, with the
    median days between consecutive steps ('–' when no referral got that far)."""
    out = [
        f"Referral funnel {funnel['year']} (referrals received in the year; median days "
        "between steps)",
        "",
    ]
    out += text_table(["total", *FUNNEL_HEADERS], [_funnel_row("all referrals", funnel["total"])])
    for title, key in (("by agency", "by_agency"), ("by school", "by_school")):
        out.append("")
        rows = [_funnel_row(name, counts) for name, counts in funnel[key].items()]
        out += text_table([title, *FUNNEL_HEADERS], rows) if rows else [f"{title}: none"]
    return "\n".join(out).rstrip() + "\n"


def render_aids_outcomes_text(report: Json) -> str:
    """For the year's exits, the solution rate of those who received each aid kind and of
    those who did not: counts side by side, not a claim about what the aid caused."""
    out = [
        f"Aid and outcome {report['year']} (exits of the year; aid received at any time)",
        "",
    ]
    rows = []
    for kind, groups in report["by_kind"].items():
        for group, label in (("with_aid", "with"), ("without_aid", "without")):
            counts = groups[group]
            rows.append([f"{kind} {label}", counts["exits"], counts["solutions"],
                         percent(counts["solutions"], counts["exits"])])
    out += text_table(["aid kind", "exits", "solutions", "% with a solution"], rows)
    out += ["", "Counts, not causes: trainees who get an aid differ in other ways too."]
    return "\n".join(out) + "\n"
