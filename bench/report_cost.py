"""What the finance report and the CSV export cost at 10 thousand and 1 million ledger lines,
and what the outcome reports cost with 1 and 10 years of history (bench/outcome_reports.py).

    make bench-reports                 # SQLite, N = 10 000 and 1 000 000; 1 and 10 years
    make bench-reports ARGS="--sizes 10000 100000 --runs 50"
    make bench-reports ARGS="--part outcomes --histories 1 4 10 --outcome-runs 15"
    E2C_BENCH_POSTGRES_URL=postgresql+psycopg://user@127.0.0.1:5433/bench make bench-reports

For each N, a fresh store (a SQLite file under var/bench/, or the aids tables of the
database E2C_BENCH_POSTGRES_URL names, DROPPED and created again) is filled with N ledger
lines of one year, spread over the 13 schools, the 3 kinds and the 12 months, together
with the pre-aggregated totals the handlers keep beside them (by kind, school and month,
childcare trainees, rejected counts, envelopes). The lines and totals are bulk-inserted
(`AidStore.add_grant` does about five statements a line) and checked against each other
before anything is timed. Then:

- report: `reports.load_report` + `json.dumps`, what `GET /reports/finance` does in its
  worker thread, median of --runs runs;
- ledger scan: the same amounts summed from the ledger by SQL (GROUP BY kind, school,
  month): what the report would cost if it read the ledger instead of the totals;
- CSV: the whole year through `reports.LedgerCsv`, what `GET /reports/finance.csv`
  streams, one run, bytes counted and thrown away.

For the outcome reports (`--part outcomes`), see bench/outcome_reports.py: before (the full
reads of main) and after (the year reads), interleaved, bytes compared, query plans printed.
On PostgreSQL they use the schema `bench_outcomes` of the same database (made if missing,
its outcome tables DROPPED and created again).

This is a benchmark, not a test: figures depend on the machine, which it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, insert, make_url, text
from sqlmodel import Session, col, select

from bench import outcome_reports
from services.aids import reports
from services.aids.store import (
    TABLES,
    BudgetEnvelope,
    ChildcareTrainee,
    KindYearTotal,
    LedgerLine,
    MonthTotal,
    SchoolYearTotal,
)
from shared.db import make_engine
from shared.migrations import reset_store
from shared.schools import load_schools
from shared.settings import PROJECT_ROOT

YEAR = 2024
SIZES = (10_000, 1_000_000)
BATCH = 20_000
LINES_PER_TRAINEE = 50
MEAL_RATE = 700
KIND_WEIGHTS = {"meals": 0.7, "childcare": 0.2, "laptop": 0.1}
BENCH_DIR = PROJECT_ROOT / "var" / "bench"


# --- The machine --------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    memory_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"nproc": cpus, "cpu": cpu, "memory_gib": memory_gib,
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version}


def rss_mb(field: str = "VmRSS") -> float | None:
    """The process's resident memory now (VmRSS) or at its peak since the last reset
    (VmHWM), in MB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def reset_peak_rss() -> float | None:
    """Resets VmHWM to the current RSS (Linux 4.0+) and returns that RSS; None where that
    is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return rss_mb()


# --- Filling a store ----------------------------------------------------------------------


@dataclass
class Totals:
    """The aggregates of the lines inserted, kept as the handlers keep them."""

    kind: Counter[tuple[str, str]]  # (kind, field) -> value
    school: Counter[tuple[str, str]]  # (school, kind) -> cents
    month: Counter[tuple[int, str]]  # (month, kind) -> cents
    childcare_trainees: set[str]


def ledger_rows(n: int, schools: list[str], seed: int = 2024) -> Iterator[list[dict[str, Any]]]:
    """N ledger lines of YEAR in batches, reproducible."""
    rng = random.Random(seed)
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    trainees = max(1, n // LINES_PER_TRAINEE)
    granted_at = datetime(YEAR, 1, 1, 8, tzinfo=UTC)
    batch: list[dict[str, Any]] = []
    for index in range(1, n + 1):
        kind = rng.choices(kinds, weights)[0]
        trainee = rng.randrange(trainees)
        month = rng.randint(1, 12)
        start = date(YEAR, month, rng.randint(1, 28))
        quantity, rate = 1, None
        if kind == "meals":
            quantity, rate = rng.randint(1, 20), MEAL_RATE
            amount = quantity * MEAL_RATE
            end = start + timedelta(days=quantity - 1)
        elif kind == "childcare":
            amount, end = rng.randint(5_000, 30_000), start
        else:
            amount, end = rng.choice((39_900, 45_000, 52_000)), start
        batch.append({
            "request_id": f"BENCH-{YEAR}-{index:09d}",
            "request_event_id": f"00000000-0000-4000-8000-{index:012d}",
            "trainee_id": f"bench-trainee-{trainee:07d}",
            "school_id": schools[trainee % len(schools)],
            "kind": kind,
            "quantity": quantity,
            "rate_cents": rate,
            "amount_cents": amount,
            "period_start": start,
            "period_end": end,
            "year": YEAR,
            "month": month,
            "granted_at": granted_at + timedelta(seconds=index),
            "correction_of": None,
        })
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def fresh_engine(url: str) -> Engine:
    """An empty aids store at `url` (a SQLite file is deleted first; PostgreSQL tables
    dropped)."""
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    engine = make_engine(url)
    reset_store(engine, "aids", TABLES)
    return engine


def fill(engine: Engine, n: int, schools: list[str]) -> Totals:
    totals = Totals(Counter(), Counter(), Counter(), set())
    ledger = LedgerLine.__table__  # type: ignore[attr-defined]
    for rows in ledger_rows(n, schools):
        with engine.begin() as connection:
            connection.execute(insert(ledger), rows)
        for row in rows:
            kind, amount = row["kind"], row["amount_cents"]
            totals.kind[kind, "granted"] += 1
            totals.kind[kind, "quantity"] += row["quantity"]
            totals.kind[kind, "amount_cents"] += amount
            totals.school[row["school_id"], kind] += amount
            totals.month[row["month"], kind] += amount
            if kind == "childcare":
                totals.childcare_trainees.add(row["trainee_id"])
    for kind in KIND_WEIGHTS:  # refusals leave no ledger line, only a count
        totals.kind[kind, "rejected"] = totals.kind[kind, "granted"] // 30
    totals.kind["childcare", "trainees"] = len(totals.childcare_trainees)

    kind_rows = [
        {"year": YEAR, "kind": kind,
         **{name: totals.kind[kind, name]
            for name in ("granted", "rejected", "quantity", "amount_cents", "trainees")}}
        for kind in KIND_WEIGHTS
    ]
    committed = {kind: totals.kind[kind, "amount_cents"] for kind in KIND_WEIGHTS}
    with engine.begin() as connection:
        connection.execute(insert(KindYearTotal.__table__), kind_rows)  # type: ignore[attr-defined]
        connection.execute(insert(SchoolYearTotal.__table__), [  # type: ignore[attr-defined]
            {"year": YEAR, "school_id": school, "kind": kind, "amount_cents": cents}
            for (school, kind), cents in totals.school.items()
        ])
        connection.execute(insert(MonthTotal.__table__), [  # type: ignore[attr-defined]
            {"year": YEAR, "month": month, "kind": kind, "amount_cents": cents}
            for (month, kind), cents in totals.month.items()
        ])
        connection.execute(insert(ChildcareTrainee.__table__), [  # type: ignore[attr-defined]
            {"year": YEAR, "trainee_id": trainee} for trainee in totals.childcare_trainees
        ])
        connection.execute(insert(BudgetEnvelope.__table__), [  # type: ignore[attr-defined]
            # meals: a budget that runs out before December at this pace
            {"year": YEAR, "kind": "meals", "envelope_cents": committed["meals"] * 9 // 10,
             "set_at": datetime(YEAR, 1, 1, tzinfo=UTC)},
            {"year": YEAR, "kind": "childcare", "envelope_cents": committed["childcare"] * 2,
             "set_at": datetime(YEAR, 1, 1, tzinfo=UTC)},
        ])
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    return totals


# --- Measures -----------------------------------------------------------------------------


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def scan_ledger(engine: Engine) -> dict[tuple[str, str, int], int]:
    """The report's amounts summed from the ledger itself (what the aggregates avoid)."""
    query = (
        select(LedgerLine.kind, LedgerLine.school_id, LedgerLine.month,
               func.sum(LedgerLine.amount_cents))
        .where(LedgerLine.year == YEAR)
        .group_by(col(LedgerLine.kind), col(LedgerLine.school_id), col(LedgerLine.month))
    )
    with Session(engine) as session:
        return {(kind, school, month): int(total)
                for kind, school, month, total in session.exec(query).all()}


def check(report: dict[str, Any], scanned: dict[tuple[str, str, int], int], n: int) -> None:
    """The aggregates the report reads agree with the ledger, to the cent."""
    granted = sum(report["by_kind"][kind]["granted"] for kind in reports.KINDS)
    assert granted == n, (granted, n)
    for kind in reports.KINDS:
        by_kind = sum(v for (k, _, _), v in scanned.items() if k == kind)
        assert report["by_kind"][kind]["amount_cents"] == by_kind, kind
        for school, amounts in report["by_school"].items():
            expected = sum(v for (k, s, _), v in scanned.items() if (k, s) == (kind, school))
            assert amounts[kind] == expected, (kind, school)
        for month in range(1, 13):
            expected = sum(v for (k, _, m), v in scanned.items() if (k, m) == (kind, month))
            assert report["by_month"][reports.month_key(YEAR, month)][kind] == expected


@dataclass
class Result:
    backend: str
    lines: int
    fill_s: float
    store_mb: float | None
    report_ms_median: float
    report_ms_min: float
    report_ms_max: float
    report_bytes: int
    scan_ms: float
    csv_s: float
    csv_mb: float
    csv_extra_rss_mb: float | None  # peak memory growth during the export
    runs_out_month: str | None


def measure(backend: str, url: str, n: int, runs: int) -> Result:
    schools = list(load_schools())
    engine = fresh_engine(url)
    try:
        print(f"  {backend}: filling {n:,} ledger lines...", flush=True)
        fill_s, _ = timed(lambda: fill(engine, n, schools))
        today = date.today()

        def build() -> str:
            return json.dumps(reports.load_report(engine, YEAR, schools, today))

        build()  # warm: connection pool, statement cache
        durations = [timed(build)[0] * 1000 for _ in range(runs)]
        report = json.loads(build())
        scan_s, scanned = timed(lambda: scan_ledger(engine))
        check(report, scanned, n)

        before = reset_peak_rss()
        export = reports.LedgerCsv(engine, YEAR)
        csv_s, size = timed(lambda: sum(len(chunk) for chunk in export.chunks()))
        assert export.lines == n, (export.lines, n)
        store_mb = None
        if url.startswith("sqlite"):
            store_mb = round(Path(url.split("///", 1)[1]).stat().st_size / 1e6, 1)
        return Result(
            backend=backend,
            lines=n,
            fill_s=round(fill_s, 1),
            store_mb=store_mb,
            report_ms_median=round(statistics.median(durations), 2),
            report_ms_min=round(min(durations), 2),
            report_ms_max=round(max(durations), 2),
            report_bytes=len(json.dumps(report)),
            scan_ms=round(scan_s * 1000, 1),
            csv_s=round(csv_s, 2),
            csv_mb=round(size / 1e6, 1),
            csv_extra_rss_mb=_growth(before, rss_mb("VmHWM")),
            runs_out_month=report["budgets"]["meals"]["runs_out_month"],
        )
    finally:
        engine.dispose()


def _growth(before: float | None, peak: float | None) -> float | None:
    return None if before is None or peak is None else round(peak - before, 1)


def print_table(results: list[Result], runs: int) -> None:
    headers = ["backend", "ledger lines", "fill s", f"report ms (median of {runs})",
               "report ms min/max", "ledger scan ms", "csv s", "csv MB", "csv +RSS MB"]
    rows = [
        [r.backend, f"{r.lines:,}", f"{r.fill_s}", f"{r.report_ms_median}",
         f"{r.report_ms_min}/{r.report_ms_max}", f"{r.scan_ms}", f"{r.csv_s}", f"{r.csv_mb}",
         "-" if r.csv_extra_rss_mb is None else f"{r.csv_extra_rss_mb}"]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print()
    for backend in dict.fromkeys(r.backend for r in results):
        mine = sorted((r for r in results if r.backend == backend), key=lambda r: r.lines)
        if len(mine) < 2:
            continue
        small, large = mine[0], mine[-1]
        factor = large.lines / small.lines
        print(f"{backend}: {factor:,.0f}x the ledger lines -> report x"
              f"{large.report_ms_median / small.report_ms_median:.2f}, ledger scan x"
              f"{large.scan_ms / small.scan_ms:.0f}, CSV x{large.csv_s / small.csv_s:.0f} "
              f"({large.lines / large.csv_s:,.0f} lines/s)")


def outcomes_url(postgres: str) -> str:
    """The bench database with `bench_outcomes` first on the search path (made if missing),
    so that the outcome tables and their revision mark never meet the aids ones."""
    engine = make_engine(postgres)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE SCHEMA IF NOT EXISTS bench_outcomes"))
    finally:
        engine.dispose()
    url = make_url(postgres).update_query_dict({"options": "-csearch_path=bench_outcomes"})
    return url.render_as_string(hide_password=False)


def measure_outcomes(backend: str, url: str, history: int, runs: int, before_runs: int,
                     explain: bool) -> list[outcome_reports.Timing]:
    schools = list(load_schools())
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    engine = make_engine(url)
    try:
        outcome_reports.fresh_store(engine)
        print(f"  {backend}: filling {history} year(s) of outcomes history...", flush=True)
        fill_s, filled = timed(lambda: outcome_reports.fill(engine, history, schools))
        print(f"    {filled.referrals:,} referrals, {filled.trainees:,} trainees "
              f"({filled.still_there:,} still there), {filled.aids:,} aid counts "
              f"in {fill_s:.1f} s", flush=True)
        timings = outcome_reports.time_reports(backend, engine, history, schools, runs,
                                               before_runs)
        if explain:
            plans = outcome_reports.query_plans(
                engine, outcome_reports.LAST_YEAR - history + 1, schools)
            outcome_reports.print_plans(backend, plans)
        return timings
    finally:
        engine.dispose()


def run_finance(args: argparse.Namespace, backends: list[tuple[str, Callable[[int], str]]]
                ) -> tuple[list[Result], list[str]]:
    results, failures = [], []
    for backend, url_for in backends:
        for n in args.sizes:
            url = url_for(n)
            try:
                results.append(measure(backend, url, n, args.runs))
            except Exception as error:  # one failing size must not lose the others' figures
                first_line = str(error).strip().splitlines()[0]
                failures.append(f"{backend} {n:,} lines: {type(error).__name__}: {first_line}")
                print(f"  {failures[-1]}", flush=True)
            finally:
                if url.startswith("sqlite") and not args.keep:
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{url.split('///', 1)[1]}{suffix}").unlink(missing_ok=True)
    return results, failures


def run_outcomes(args: argparse.Namespace, postgres: str | None
                 ) -> tuple[list[outcome_reports.Timing], list[str]]:
    targets: list[tuple[str, Callable[[int], str]]] = []
    if args.backend in ("all", "sqlite"):
        targets.append(("sqlite", lambda h: f"sqlite:///{BENCH_DIR / f'outcomes-{h}y.db'}"))
    if postgres and args.backend in ("all", "postgresql"):
        schema_url = outcomes_url(postgres)
        targets.append(("postgresql", lambda _h: schema_url))
    timings, failures = [], []
    for backend, url_for in targets:
        for history in args.histories:
            url = url_for(history)
            try:
                timings += measure_outcomes(backend, url, history, args.outcome_runs,
                                            args.before_runs,
                                            explain=history == max(args.histories))
            except Exception as error:  # one failing history must not lose the others
                first_line = str(error).strip().splitlines()[0]
                failures.append(f"{backend} outcomes {history} years: "
                                f"{type(error).__name__}: {first_line}")
                print(f"  {failures[-1]}", flush=True)
            finally:
                if url.startswith("sqlite") and not args.keep:
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{url.split('///', 1)[1]}{suffix}").unlink(missing_ok=True)
    return timings, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "finance", "outcomes"), default="all")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--runs", type=int, default=20, help="report runs per size")
    parser.add_argument("--histories", type=int, nargs="+",
                        default=list(outcome_reports.HISTORIES),
                        help="years of outcomes history (each ending in 2024)")
    parser.add_argument("--outcome-runs", type=int, default=7,
                        help="runs of each outcome report as it is built now")
    parser.add_argument("--before-runs", type=int, default=2,
                        help="runs of each outcome report from the full reads (main's way)")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite files")
    parser.add_argument(
        "--backend", choices=("all", "sqlite", "postgresql"), default="all",
        help="postgresql needs E2C_BENCH_POSTGRES_URL (default: all that are available)",
    )
    args = parser.parse_args(argv)

    about = machine()
    print(f"machine: {about['nproc']} CPUs ({about['cpu']}), {about['memory_gib']} GiB, "
          f"Python {about['python']}, SQLite {about['sqlite']}")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    backends: list[tuple[str, Callable[[int], str]]] = []
    if args.backend in ("all", "sqlite"):
        backends.append(("sqlite", lambda n: f"sqlite:///{BENCH_DIR / f'aids-{n}.db'}"))
    postgres = os.environ.get("E2C_BENCH_POSTGRES_URL")
    if postgres and args.backend in ("all", "postgresql"):
        backends.append(("postgresql", lambda _n: postgres))
    elif args.backend == "postgresql":
        parser.error("--backend postgresql needs E2C_BENCH_POSTGRES_URL")
    results: list[Result] = []
    timings: list[outcome_reports.Timing] = []
    failures: list[str] = []
    if args.part in ("all", "finance"):
        results, failures = run_finance(args, backends)
    if args.part in ("all", "outcomes"):
        timings, outcome_failures = run_outcomes(args, postgres)
        failures += outcome_failures
    print()
    if results:
        print_table(results, args.runs)
        print()
    if timings:
        outcome_reports.print_timings(timings, args.outcome_runs, args.before_runs)
    for failure in failures:
        print(f"FAILED {failure}")
    out = BENCH_DIR / "report-cost.json"
    out.write_text(json.dumps({"machine": about, "year": YEAR, "failures": failures,
                               "results": [asdict(r) for r in results],
                               "outcomes": [asdict(t) for t in timings]}, indent=2) + "\n")
    print(f"\n(figures also in {out.relative_to(PROJECT_ROOT)})")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
