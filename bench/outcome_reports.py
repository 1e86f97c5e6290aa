"""What the outcome reports cost with 1 and 10 simulated years of history (part of
`make bench-reports`, see bench/report_cost.py).

A store is filled, by bulk inserts, with the network as it runs: about 2,000 referrals
received a year over 13 schools, most of them accepted and enrolled (about 1,750 trainees a
year), each trainee leaving after one to fourteen months (those whose exit would fall after
the history's last day are still there), aids received by about half of them. Then, for the
history's last year (older years behind it) and its first (newer years after it), each
report is built both ways, runs interleaved, and their bytes compared:

- before: the full reads the reports made until revision 0003 (every trainee, referral and
  aid through `OutcomeStore.all_trainees`, `referrals`, `aided`), then the same domain
  functions: the code of the reports on main;
- after: `services.outcomes.reports.load_*`, which read the year's rows through indexes.

Each figure is the median of the runs (a few before, more after), wall-clock milliseconds;
the CPU milliseconds of this process (`time.process_time`) are printed beside it: on SQLite
they include the queries, on PostgreSQL the server's share is not in them. The query plans
of the `after` queries are printed for the largest history.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, event, insert
from sqlmodel import Session

from services.outcomes import domain, reports
from services.outcomes.store import TABLES, OutcomeStore, ReferralView, TraineeAid, TraineeView
from shared.contract import AgencyKind, AidKind, Outcome
from shared.migrations import reset_store

LAST_YEAR = 2024  # every history ends on 31 December of this year
HISTORIES = (1, 10)
REFERRALS_A_YEAR = 2_000
ACCEPTED, ENROLLED = 0.92, 0.95  # of the received, of the accepted: ~1,750 trainees a year
AID_SHARE = {AidKind.MEALS: 0.55, AidKind.CHILDCARE: 0.15, AidKind.LAPTOP: 0.12}
PARTNER = "ml-toulouse"
# agencies of the 13 schools' area, their kind, and their share of the referrals
AGENCIES: tuple[tuple[str, AgencyKind, int], ...] = (
    (PARTNER, AgencyKind.MISSION_LOCALE, 20),
    ("ml-montpellier", AgencyKind.MISSION_LOCALE, 12),
    ("ml-castres", AgencyKind.MISSION_LOCALE, 6),
    ("ml-perpignan", AgencyKind.MISSION_LOCALE, 8),
    ("ml-nimes", AgencyKind.MISSION_LOCALE, 8),
    ("ft-toulouse", AgencyKind.FRANCE_TRAVAIL, 12),
    ("ft-montpellier", AgencyKind.FRANCE_TRAVAIL, 10),
    ("mlds-31", AgencyKind.MLDS, 6),
    ("mlds-34", AgencyKind.MLDS, 4),
    ("spontaneous", AgencyKind.SPONTANEOUS, 10),
    ("other", AgencyKind.OTHER, 4),
)
OUTCOME_WEIGHTS = {
    Outcome.QUALIFYING_TRAINING: 14, Outcome.DURABLE_EMPLOYMENT: 10,
    Outcome.SHORT_EMPLOYMENT: 14, Outcome.IAE: 5, Outcome.PRE_QUALIFYING_TRAINING: 8,
    Outcome.CIVIC_SERVICE: 3, Outcome.NO_SOLUTION: 25, Outcome.DROPOUT: 16, Outcome.OTHER: 5,
}
REFUSED = ("rejected", "pending_derogation")  # referrals with no trainee
REPORTS = ("outcomes", "funnel", f"funnel {PARTNER}", "aids-outcomes")


# --- Filling a store ----------------------------------------------------------------------


@dataclass
class Filled:
    referrals: int = 0
    trainees: int = 0
    still_there: int = 0
    aids: int = 0


def network_rows(years: int, schools: list[str], seed: int = 17
                 ) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]],
                                     list[dict[str, Any]]]]:
    """Referrals, trainees and aid counts of `years` years ending with LAST_YEAR, a year at a
    time, reproducible."""
    rng = random.Random(seed)
    history_end = date(LAST_YEAR, 12, 31)
    agencies = [(agency, kind) for agency, kind, _ in AGENCIES]
    weights = [weight for *_, weight in AGENCIES]
    outcomes, outcome_weights = list(OUTCOME_WEIGHTS), list(OUTCOME_WEIGHTS.values())
    serial = 0
    for year in range(LAST_YEAR - years + 1, LAST_YEAR + 1):
        referrals, trainees, aids = [], [], []
        for _ in range(REFERRALS_A_YEAR):
            serial += 1
            referral_id, trainee_id = f"BENCH-R{serial:07d}", f"bench-t{serial:07d}"
            (agency, kind), = rng.choices(agencies, weights)
            school = schools[rng.randrange(len(schools))]
            received = datetime(year, 1, 1, 7, tzinfo=UTC) + timedelta(
                days=rng.randrange(365), minutes=rng.randrange(600))
            accepted = rng.random() < ACCEPTED
            accepted_at = received + timedelta(days=rng.randint(0, 20)) if accepted else None
            referrals.append({
                "referral_id": referral_id, "agency_id": agency, "school_id": school,
                "received_at": received,
                "status": "accepted" if accepted else rng.choice(REFUSED),
                "accepted_at": accepted_at, "trainee_id": trainee_id if accepted else None,
            })
            if accepted_at is None or rng.random() >= ENROLLED:
                continue
            enrolled_on = accepted_at.date() + timedelta(days=rng.randint(3, 40))
            if enrolled_on > history_end:
                continue
            exited_on: date | None = enrolled_on + timedelta(days=rng.randint(30, 420))
            if exited_on is not None and exited_on > history_end:
                exited_on = None  # still there on the history's last day
            outcome = rng.choices(outcomes, outcome_weights)[0]
            trainees.append({
                "trainee_id": trainee_id, "referral_id": referral_id, "school_id": school,
                "enrolled_on": enrolled_on, "agency_kind": kind.value,
                "age_at_entry": rng.randint(16, 25), "rqth": rng.random() < 0.08,
                "qpv_resident": rng.random() < 0.35, "has_work_experience": rng.random() < 0.45,
                "exited_on": exited_on,
                "outcome": outcome.value if exited_on else None,
                "category": domain.category_of(outcome).value if exited_on else None,
                "satisfied": rng.choice((True, True, False, None)) if exited_on else None,
            })
            aids.extend(
                {"trainee_id": trainee_id, "kind": aid.value, "grants": rng.randint(1, 12)}
                for aid, share in AID_SHARE.items() if rng.random() < share
            )
        yield referrals, trainees, aids


def fill(engine: Engine, years: int, schools: list[str]) -> Filled:
    filled = Filled()
    tables = [model.__table__ for model in (ReferralView, TraineeView, TraineeAid)]  # type: ignore[attr-defined]
    for rows in network_rows(years, schools):
        with engine.begin() as connection:
            for table, values in zip(tables, rows, strict=True):
                connection.execute(insert(table), values)
        referrals, trainees, aids = rows
        filled.referrals += len(referrals)
        filled.trainees += len(trainees)
        filled.still_there += sum(t["exited_on"] is None for t in trainees)
        filled.aids += len(aids)
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
    return filled


def fresh_store(engine: Engine) -> None:
    reset_store(engine, "outcomes", TABLES)


# --- The two ways of building a report ------------------------------------------------------


def before(engine: Engine, report: str, year: int, schools: list[str]) -> bytes:
    """The report from the full reads (the reports' code before revision 0003)."""
    with Session(engine) as session:
        store = OutcomeStore(session)
        if report == "outcomes":
            return reports.outcomes_report_json(
                domain.outcomes_report(store.all_trainees(), year, schools))
        if report.startswith("funnel"):
            agency = report.removeprefix("funnel").strip() or None
            return reports.canonical_json(
                domain.funnel_report(store.referrals(), year, agency_id=agency))
        trainees, aided = store.all_trainees(), store.aided()
    return reports.canonical_json(reports.aids_outcomes_report(
        year, domain.aids_and_outcomes(trainees, aided, year)))


def after(engine: Engine, report: str, year: int, schools: list[str]) -> bytes:
    """The report as `GET /reports/...` builds it now."""
    if report == "outcomes":
        return reports.outcomes_report_body(engine, year, schools)
    if report.startswith("funnel"):
        return reports.funnel_body(engine, year, report.removeprefix("funnel").strip() or None)
    return reports.aids_outcomes_body(engine, year)


Build = Callable[[Engine, str, int, list[str]], bytes]


@dataclass
class Timing:
    backend: str
    history_years: int
    year: int
    asked: str  # "last" (history behind it) or "first" (history after it)
    report: str
    bytes: int
    rows_before: int  # the rows the full reads return
    rows_after: int  # the rows the year reads return
    before_ms: float
    after_ms: float
    before_cpu_ms: float
    after_cpu_ms: float
    after_min_ms: float
    after_max_ms: float


def _timed(build: Build, engine: Engine, report: str, year: int,
           schools: list[str]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    build(engine, report, year, schools)
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def rows_read(engine: Engine, report: str, year: int) -> tuple[int, int]:
    """How many rows each way reads: trainees (and aid counts), or referrals."""
    with Session(engine) as session:
        store = OutcomeStore(session)
        if report == "outcomes":
            return len(store.all_trainees()), len(store.trainees_of_year(year))
        if report.startswith("funnel"):
            agency = report.removeprefix("funnel").strip() or None
            return len(store.referrals()), len(store.referrals_of_year(year, agency))
        every = len(store.all_trainees()) + sum(len(ids) for ids in store.aided().values())
        exits = store.exits_of_year(year)
        aided = store.aided_exits_of_year(year)
        return every, len(exits) + sum(len(ids) for ids in aided.values())


def time_reports(backend: str, engine: Engine, history: int, schools: list[str],
                 runs: int, before_runs: int) -> list[Timing]:
    """`runs` of each report after, the first `before_runs` of them each followed by one
    before (the full reads take seconds at 10 years: a few suffice for their median)."""
    asked = {"last": LAST_YEAR}
    if history > 1:
        asked["first"] = LAST_YEAR - history + 1
    timings = []
    for label, year in asked.items():
        for report in REPORTS:
            old, new = before(engine, report, year, schools), after(engine, report, year, schools)
            if old != new:
                raise AssertionError(f"{backend} {history} years, {report} {year}: the bytes "
                                     "differ between the full reads and the year reads")
            samples: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
            for run in range(max(runs, before_runs)):  # interleaved: the same conditions
                if run < runs:
                    samples["after"].append(_timed(after, engine, report, year, schools))
                if run < before_runs:
                    samples["before"].append(_timed(before, engine, report, year, schools))
            walls = {way: [wall for wall, _ in got] for way, got in samples.items()}
            cpus = {way: [cpu for _, cpu in got] for way, got in samples.items()}
            rows_before, rows_after = rows_read(engine, report, year)
            timings.append(Timing(
                backend=backend, history_years=history, year=year, asked=label, report=report,
                bytes=len(new), rows_before=rows_before, rows_after=rows_after,
                before_ms=round(statistics.median(walls["before"]), 1),
                after_ms=round(statistics.median(walls["after"]), 2),
                before_cpu_ms=round(statistics.median(cpus["before"]), 1),
                after_cpu_ms=round(statistics.median(cpus["after"]), 2),
                after_min_ms=round(min(walls["after"]), 2),
                after_max_ms=round(max(walls["after"]), 2),
            ))
    return timings


# --- Query plans ------------------------------------------------------------------------------


def query_plans(engine: Engine, year: int, schools: list[str]) -> list[tuple[str, list[str]]]:
    """Each statement the `after` reports send, with the plan the database chose for it."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        for report in REPORTS:
            after(engine, report, year, schools)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    plans = []
    seen = set()
    with engine.connect() as connection:
        for statement, parameters in sent:
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                continue  # BEGIN, SET TRANSACTION...
            key = (statement, repr(parameters))
            if key in seen:
                continue
            seen.add(key)
            rows = connection.exec_driver_sql(explain + statement, parameters).all()
            plans.append((" ".join(statement.split()), [_plan_line(row) for row in rows]))
    return plans


def _plan_line(row: Any) -> str:
    return str(row[-1]) if len(row) > 1 else str(row[0])


# --- Printing ---------------------------------------------------------------------------------


def print_timings(timings: list[Timing], runs: int, before_runs: int) -> None:
    headers = ["backend", "history", "year asked", "report", "rows before/after",
               "before ms", "after ms", "after min/max", "x faster", "cpu ms before/after"]
    rows = [
        [t.backend, f"{t.history_years} y", f"{t.year} ({t.asked})", t.report,
         f"{t.rows_before:,}/{t.rows_after:,}",
         f"{t.before_ms}", f"{t.after_ms}", f"{t.after_min_ms}/{t.after_max_ms}",
         f"{t.before_ms / t.after_ms:.0f}" if t.after_ms else "-",
         f"{t.before_cpu_ms}/{t.after_cpu_ms}"]
        for t in timings
    ]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    print(f"outcome reports, wall ms, median of {before_runs} runs before and {runs} after, "
          "interleaved (cpu: this process's; rows: what the full reads and the year reads "
          "return)")
    for row in [headers, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print()
    print("CPU ms of this process (steadier than wall-clock on a shared machine), per year "
          "read (rows the year reads):")
    for backend in dict.fromkeys(t.backend for t in timings):
        for report in REPORTS:
            mine = [t for t in timings if (t.backend, t.report) == (backend, report)]
            figures = ", ".join(
                f"{t.history_years} y {t.asked} {t.before_cpu_ms:.0f} -> {t.after_cpu_ms:.1f} "
                f"({t.rows_after:,} rows)" for t in mine)
            print(f"  {backend} {report}: before -> after: {figures}")


def print_plans(backend: str, plans: list[tuple[str, list[str]]]) -> None:
    print(f"{backend} query plans of the year reads (10-year history):")
    for statement, lines in plans:
        print(f"  {statement[:150]}{'...' if len(statement) > 150 else ''}")
        for line in lines:
            print(f"      {line}")
