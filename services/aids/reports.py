"""The finance report: the contract's JSON, its CSV ledger export and a readable table.

The JSON report is built from the pre-aggregated totals only (`AidStore.year_totals`), so
its cost does not grow with the ledger. The CSV export is the one place that reads every
ledger line of the year, in chunks, without holding them all in memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from shared.contract import AidKind
from shared.reports import report_engine, text_table

from .domain import run_out_month
from .store import AidStore, LedgerLine, YearTotals

Json = dict[str, Any]

KINDS: tuple[str, ...] = tuple(kind.value for kind in AidKind)  # laptop, meals, childcare
CURRENCY = "EUR"

CSV_COLUMNS = (
    "line_id", "granted_at", "request_id", "trainee_id", "school_id", "kind", "quantity",
    "rate_eur", "amount_eur", "period_start", "period_end", "month", "correction_of",
)
CSV_CHUNK_LINES = 5000
UTF8_BOM = "\ufeff"
# A text cell starting with one of these is read as a formula by spreadsheets.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# --- The JSON report (pure) ---------------------------------------------------------------


def month_key(year: int, month: int) -> str:
    return f"{year}-{month:02d}"


def finance_report(
    year: int, totals: YearTotals, school_ids: Iterable[str], today: date
) -> Json:
    """The contract's `GET /reports/finance` body, plus `runs_out_month` in each budget.

    `by_school` lists every school of the registry (zeros included) and then any other
    school found in the totals; `by_month` always has the twelve months.
    """
    by_kind: Json = {}
    for kind in KINDS:
        row = totals.by_kind.get(kind)
        entry = {
            "granted": row.granted if row else 0,
            "rejected": row.rejected if row else 0,
            "quantity": row.quantity if row else 0,
            "amount_cents": row.amount_cents if row else 0,
        }
        if kind == AidKind.CHILDCARE:
            entry["trainees"] = row.trainees if row else 0
        by_kind[kind] = entry

    registry = list(school_ids)
    others = sorted(set(totals.by_school) - set(registry))
    by_school = {
        school: _amounts(totals.by_school.get(school, {})) for school in [*registry, *others]
    }
    by_month = {
        month_key(year, month): _amounts(totals.by_month.get(month, {}))
        for month in range(1, 13)
    }

    budgets: Json = {}
    for kind in KINDS:
        envelope = totals.envelopes.get(kind)
        committed = by_kind[kind]["amount_cents"]
        monthly = [by_month[month_key(year, month)][kind] for month in range(1, 13)]
        budgets[kind] = {
            "envelope_cents": envelope,
            "committed_cents": committed,
            "remaining_cents": None if envelope is None else envelope - committed,
            "runs_out_month": run_out_month(envelope, monthly, year, today),
        }

    return {
        "year": year,
        "currency": CURRENCY,
        "by_kind": by_kind,
        "by_school": by_school,
        "by_month": by_month,
        "budgets": budgets,
    }


def _amounts(by_kind: dict[str, int]) -> dict[str, int]:
    return {kind: by_kind.get(kind, 0) for kind in KINDS}


def load_report(
    engine: Engine, year: int, school_ids: Iterable[str], as_of: date | None = None
) -> Json:
    """Reads the year's aggregates (never the ledger) and builds the report, its run-out
    months projected from `as_of` (default `today()`). `GET /reports/finance` and
    `e2c report finance` both build it here."""
    with Session(report_engine(engine)) as session:
        totals = AidStore(session).year_totals(year)
    return finance_report(year, totals, school_ids, as_of if as_of is not None else today())


# --- The CSV export -----------------------------------------------------------------------


def euros(cents: int) -> str:
    """Cents as euros with a decimal comma and two decimals: 700 -> '7,00', -700 -> '-7,00'."""
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole},{rest:02d}"


def safe_text(value: str) -> str:
    """A text cell a spreadsheet will not evaluate as a formula (a leading quote if needed)."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def csv_row(line: LedgerLine) -> list[str]:
    granted_at = line.granted_at.astimezone(UTC).isoformat(" ", "seconds")[:19]  # UTC
    return [
        str(line.id),
        granted_at,
        safe_text(line.request_id),
        safe_text(line.trainee_id),
        safe_text(line.school_id),
        line.kind,
        str(line.quantity),
        "" if line.rate_cents is None else euros(line.rate_cents),
        euros(line.amount_cents),
        line.period_start.isoformat(),
        line.period_end.isoformat(),
        month_key(line.year, line.month),
        "" if line.correction_of is None else str(line.correction_of),
    ]


def csv_text(rows: Iterable[Sequence[str]]) -> str:
    """Rows as `;`-separated CSV with CRLF line ends (quoted only where needed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    writer.writerows(rows)
    return buffer.getvalue()


def csv_header() -> bytes:
    """The BOM (so that spreadsheets read UTF-8) and the header row."""
    return (UTF8_BOM + csv_text([CSV_COLUMNS])).encode("utf-8")


class LedgerCsv:
    """The year's ledger as CSV chunks, read `lines_per_chunk` lines at a time.

    Each chunk is read in its own short transaction: on SQLite a transaction holds the
    write lock (BEGIN IMMEDIATE), so an export of a million lines must not keep one open
    while the consumer waits. Lines are immutable and read in id order, so the chunks
    follow on from one another. `next_chunk` is blocking: call it from a worker thread.
    """

    def __init__(self, engine: Engine, year: int, lines_per_chunk: int = CSV_CHUNK_LINES):
        self.year = year
        self.lines_per_chunk = lines_per_chunk
        self.lines = 0
        self._header_sent = False
        # Objects stay readable after each commit: committing only ends the transaction.
        self._session = Session(engine, expire_on_commit=False)
        self._ledger: Iterator[LedgerLine] = AidStore(self._session).ledger_lines(
            year, chunk=lines_per_chunk
        )

    def next_chunk(self) -> bytes | None:
        """The next piece of the file (the BOM and header first), None at the end."""
        if not self._header_sent:
            self._header_sent = True
            return csv_header()
        rows = []
        for line in self._ledger:
            rows.append(csv_row(line))
            if len(rows) == self.lines_per_chunk:
                break
        self._session.commit()  # ends the read transaction between chunks
        if not rows:
            return None
        self.lines += len(rows)
        return csv_text(rows).encode("utf-8")

    def chunks(self) -> Iterator[bytes]:
        """Every chunk in turn (for a command or a file); closes the session at the end."""
        try:
            while (chunk := self.next_chunk()) is not None:
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self._session.close()


# --- A readable table (the command line) --------------------------------------------------


def euros_text(cents: int | None) -> str:
    """Cents as '1 234,56 €' (French grouping); '-' for none."""
    if cents is None:
        return "-"
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole:,}".replace(",", " ") + f",{rest:02d} €"


def render_text(report: Json) -> str:
    """The report as plain-text tables: by kind, budgets, by school, by month."""
    year = report["year"]
    out = [f"Finance report {year} (amounts in euros, aid counted in the month it starts)", ""]

    kind_rows = []
    for kind, entry in report["by_kind"].items():
        trainees = str(entry["trainees"]) if "trainees" in entry else ""
        kind_rows.append([kind, str(entry["granted"]), str(entry["rejected"]),
                          str(entry["quantity"]), euros_text(entry["amount_cents"]), trainees])
    total = sum(entry["amount_cents"] for entry in report["by_kind"].values())
    kind_rows.append(["total", "", "", "", euros_text(total), ""])
    out += text_table(["by kind", "granted", "rejected", "quantity", "amount", "trainees"],
                  kind_rows)
    out.append("")

    budget_rows = [
        [kind, euros_text(b["envelope_cents"]), euros_text(b["committed_cents"]),
         euros_text(b["remaining_cents"]), b["runs_out_month"] or "-"]
        for kind, b in report["budgets"].items()
    ]
    out += text_table(["budgets", "envelope", "committed", "remaining", "runs out"], budget_rows)
    out.append("")

    for title, section in (("by school", report["by_school"]), ("by month", report["by_month"])):
        rows = [
            [name, *(euros_text(amounts[kind]) for kind in KINDS),
             euros_text(sum(amounts.values()))]
            for name, amounts in section.items()
        ]
        out += text_table([title, *KINDS, "total"], rows)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def today() -> date:
    """The reference day of the run-out projection (the server's local date)."""
    return date.today()
