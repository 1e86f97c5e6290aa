"""The finance report as an XLSX workbook for French spreadsheets (XlsxWriter), pure of HTTP.

Four sheets: "Budgets", "Par école", "Par mois" (from the report's aggregates) and
"Grand livre" (every ledger line of the year, as the CSV has it). Amounts are euro cells
written as exact decimals (cents / 100) beside a cents column; dates are date cells;
moments are in Europe/Paris wall time, since a spreadsheet cell has no time zone (the
first row of each sheet says so). The whole workbook is built in memory: a year's ledger
is some ten thousand lines.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from datetime import date
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import xlsxwriter
from sqlalchemy import Engine
from sqlmodel import Session
from xlsxwriter.format import Format
from xlsxwriter.worksheet import Worksheet

from shared.reports import report_engine

from . import reports
from .store import AidStore, LedgerLine

Json = dict[str, Any]

MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PARIS = ZoneInfo("Europe/Paris")
# Number formats are stored in the file's neutral syntax; a French Excel or LibreOffice
# shows this one as `1 234,56 €`.
EURO_FORMAT = '#,##0.00\\ "€"'
DATE_FORMAT = "dd/mm/yyyy"
MONTH_FORMAT = "mm/yyyy"
MOMENT_FORMAT = "dd/mm/yyyy hh:mm:ss"

KIND_LABELS = {"laptop": "Ordinateur portable", "meals": "Repas", "childcare": "Garde d'enfants"}
SHEETS = ("Budgets", "Par école", "Par mois", "Grand livre")

BUDGET_HEADERS = (
    "Aide", "Accordées", "Refusées", "Quantité", "Enveloppe (€)", "Engagé (€)", "Restant (€)",
    "Épuisement prévu", "Enveloppe (centimes)", "Engagé (centimes)", "Restant (centimes)",
)
AMOUNT_HEADERS = (*(f"{label} (€)" for label in KIND_LABELS.values()), "Total (€)",
                  "Total (centimes)")
SCHOOL_HEADERS = ("École", "Nom", *AMOUNT_HEADERS)
MONTH_HEADERS = ("Mois", *AMOUNT_HEADERS)
LEDGER_HEADERS = (
    "N° de ligne", "Accordée le (heure de Paris)", "Demande", "Stagiaire", "École", "Aide",
    "Quantité", "Taux (€)", "Montant (€)", "Montant (centimes)", "Début de période",
    "Fin de période", "Mois", "Correction de la ligne",
)
HEADER_ROW = 1  # row 0 holds the sheet's note


def euros(cents: int) -> Decimal:
    """Cents as exact euros: 123456 -> Decimal('1234.56'), never a float computed on the way."""
    return Decimal(cents).scaleb(-2)


def month_date(key: str) -> date:
    """'2024-03' -> the first of March 2024 (a month cell is a date shown as mm/yyyy)."""
    year, month = key.split("-")
    return date(int(year), int(month), 1)


class _Formats:
    def __init__(self, book: xlsxwriter.Workbook) -> None:
        self.header: Format = book.add_format({"bold": True, "text_wrap": True,
                                               "valign": "top", "bottom": 1})
        self.note: Format = book.add_format({"italic": True})
        self.euro: Format = book.add_format({"num_format": EURO_FORMAT})
        self.euro_total: Format = book.add_format({"num_format": EURO_FORMAT, "bold": True,
                                                   "top": 1})
        self.total: Format = book.add_format({"bold": True, "top": 1})
        self.date: Format = book.add_format({"num_format": DATE_FORMAT})
        self.month: Format = book.add_format({"num_format": MONTH_FORMAT})
        self.moment: Format = book.add_format({"num_format": MOMENT_FORMAT})


def finance_workbook(
    report: Json, ledger: Iterable[LedgerLine], schools: Mapping[str, str]
) -> bytes:
    """The workbook of `report` (`reports.finance_report`) and the year's `ledger` lines;
    `schools` names the registry's schools by id."""
    output = io.BytesIO()
    book = xlsxwriter.Workbook(output, {"in_memory": True})
    formats = _Formats(book)
    year = report["year"]
    _budgets_sheet(book.add_worksheet(SHEETS[0]), formats, report)
    _amounts_sheet(book.add_worksheet(SHEETS[1]), formats, year, SCHOOL_HEADERS,
                   [((school, schools.get(school, "")), amounts)
                    for school, amounts in report["by_school"].items()])
    _amounts_sheet(book.add_worksheet(SHEETS[2]), formats, year, MONTH_HEADERS,
                   [((month_date(month),), amounts)
                    for month, amounts in report["by_month"].items()])
    _ledger_sheet(book.add_worksheet(SHEETS[3]), formats, year, ledger)
    book.close()
    return output.getvalue()


def build(engine: Engine, year: int, schools: Mapping[str, str],
          as_of: date | None = None) -> bytes:
    """The year's workbook from the store: the aggregates and the ledger read in one
    snapshot (so that the sheets agree), run-out months projected from `as_of`. The
    workbook is written after the transaction ends: on SQLite it holds the write lock."""
    with Session(report_engine(engine)) as session:
        store = AidStore(session)
        totals = store.year_totals(year)
        lines = list(store.ledger_lines(year))
    report = reports.finance_report(
        year, totals, schools, as_of if as_of is not None else reports.today()
    )
    return finance_workbook(report, lines, schools)


# --- Sheets -------------------------------------------------------------------------------


def _start(sheet: Worksheet, formats: _Formats, year: int, headers: Iterable[str],
           widths: Iterable[int]) -> None:
    """The note row, the header row (frozen) and the column widths."""
    sheet.write_string(0, 0, f"Année {year} — montants en euros, aides comptées au mois où "
                             "elles commencent ; heures de Paris (Europe/Paris), un tableur "
                             "n'ayant pas de fuseau horaire.", formats.note)
    for column, (header, width) in enumerate(zip(headers, widths, strict=True)):
        sheet.write_string(HEADER_ROW, column, header, formats.header)
        sheet.set_column(column, column, width)
    sheet.freeze_panes(HEADER_ROW + 1, 0)


def _money(sheet: Worksheet, row: int, column: int, cents: int | None, fmt: Format) -> None:
    if cents is not None:
        sheet.write_number(row, column, euros(cents), fmt)


def _budgets_sheet(sheet: Worksheet, formats: _Formats, report: Json) -> None:
    _start(sheet, formats, report["year"], BUDGET_HEADERS, (22, 10, 10, 10, 14, 14, 14, 16,
                                                             12, 12, 12))
    row = HEADER_ROW
    for kind, label in KIND_LABELS.items():
        row += 1
        totals, budget = report["by_kind"][kind], report["budgets"][kind]
        sheet.write_string(row, 0, label)
        for column, key in ((1, "granted"), (2, "rejected"), (3, "quantity")):
            sheet.write_number(row, column, totals[key])
        for offset, key in enumerate(("envelope_cents", "committed_cents", "remaining_cents")):
            _money(sheet, row, 4 + offset, budget[key], formats.euro)
            if budget[key] is not None:
                sheet.write_number(row, 8 + offset, budget[key])
        if budget["runs_out_month"] is not None:
            sheet.write_datetime(row, 7, month_date(budget["runs_out_month"]), formats.month)
        elif budget["envelope_cents"] is not None:
            sheet.write_string(row, 7, "pas cette année")


def _amounts_sheet(sheet: Worksheet, formats: _Formats, year: int, headers: tuple[str, ...],
                   rows: list[tuple[tuple[Any, ...], dict[str, int]]]) -> None:
    """One line per school or month: its leading cells, an amount per kind, the total; then
    a total line (values, not formulas, so that any reader sees them)."""
    leading = len(headers) - len(AMOUNT_HEADERS)
    _start(sheet, formats, year, headers, (18,) * leading + (18, 14, 16, 14, 14))
    row = HEADER_ROW
    column_totals = dict.fromkeys(KIND_LABELS, 0)
    for cells, amounts in rows:
        row += 1
        for column, cell in enumerate(cells):
            if isinstance(cell, date):
                sheet.write_datetime(row, column, cell, formats.month)
            else:
                sheet.write_string(row, column, cell)
        _amount_cells(sheet, formats.euro, row, leading, amounts)
        for kind in KIND_LABELS:
            column_totals[kind] += amounts[kind]
    row += 1
    sheet.write_string(row, 0, "Total", formats.total)
    _amount_cells(sheet, formats.euro_total, row, leading, column_totals)


def _amount_cells(sheet: Worksheet, fmt: Format, row: int, first: int,
                  amounts: Mapping[str, int]) -> None:
    for offset, kind in enumerate(KIND_LABELS):
        _money(sheet, row, first + offset, amounts[kind], fmt)
    total = sum(amounts[kind] for kind in KIND_LABELS)
    _money(sheet, row, first + len(KIND_LABELS), total, fmt)
    sheet.write_number(row, first + len(KIND_LABELS) + 1, total)


def _ledger_sheet(sheet: Worksheet, formats: _Formats, year: int,
                  ledger: Iterable[LedgerLine]) -> None:
    _start(sheet, formats, year, LEDGER_HEADERS,
           (10, 20, 22, 14, 16, 20, 10, 10, 12, 12, 14, 14, 10, 12))
    row = HEADER_ROW
    for line in ledger:
        row += 1
        sheet.write_number(row, 0, line.id or 0)
        moment = line.granted_at.astimezone(PARIS).replace(tzinfo=None)
        sheet.write_datetime(row, 1, moment, formats.moment)
        # write_string: a text cell is never read as a formula or a link.
        sheet.write_string(row, 2, line.request_id)
        sheet.write_string(row, 3, line.trainee_id)
        sheet.write_string(row, 4, line.school_id)
        sheet.write_string(row, 5, KIND_LABELS.get(line.kind, line.kind))
        sheet.write_number(row, 6, line.quantity)
        _money(sheet, row, 7, line.rate_cents, formats.euro)
        _money(sheet, row, 8, line.amount_cents, formats.euro)
        sheet.write_number(row, 9, line.amount_cents)
        sheet.write_datetime(row, 10, line.period_start, formats.date)
        sheet.write_datetime(row, 11, line.period_end, formats.date)
        sheet.write_datetime(row, 12, date(line.year, line.month, 1), formats.month)
        if line.correction_of is not None:
            sheet.write_number(row, 13, line.correction_of)
    sheet.autofilter(HEADER_ROW, 0, max(row, HEADER_ROW), len(LEDGER_HEADERS) - 1)
