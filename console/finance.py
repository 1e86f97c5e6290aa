"""The finance page's content from the aids service's finance report (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from console import charts, formats

KINDS = ("laptop", "meals", "childcare")
KIND_LABELS = {"laptop": "Ordinateurs", "meals": "Repas", "childcare": "Garde d'enfants"}


@dataclass
class MonthRow:
    month: str  # YYYY-MM
    label: str
    cents: dict[str, int]  # spent that month, per kind
    cumulative: dict[str, int]


@dataclass
class BudgetRow:
    kind: str
    label: str
    envelope_cents: int | None
    committed_cents: int
    remaining_cents: int | None
    runs_out: str


@dataclass
class FinancePage:
    year: int
    months: list[MonthRow]
    charts: list[charts.CumulativeChart]
    budgets: list[BudgetRow]
    by_kind: list[tuple[str, str, int]]  # kind, label, cents
    by_kind_chart: charts.BarChart
    by_school: list[tuple[str, str, int]]  # school id, its name, cents
    by_school_chart: charts.BarChart
    total_cents: int


def last_month_index(year: int, now: datetime) -> int:
    """The last month of `year` with spending so far (Paris time): 11 for a past year,
    -1 for a year to come."""
    today = now.astimezone(formats.PARIS)
    if year < today.year:
        return 11
    return today.month - 1 if year == today.year else -1


def finance_page(report: dict[str, Any], now: datetime,
                 school_names: Mapping[str, str]) -> FinancePage:
    """The page of `report`; schools named from the registry (an unknown id as itself)."""
    year = report["year"]
    months = sorted(report["by_month"])
    monthly = {kind: [report["by_month"][m][kind] for m in months] for kind in KINDS}
    running = {kind: charts.cumulative(monthly[kind]) for kind in KINDS}
    last = last_month_index(year, now)
    budgets = report["budgets"]
    by_kind = [(kind, KIND_LABELS[kind], report["by_kind"][kind]["amount_cents"])
               for kind in KINDS]
    by_school = [(school, school_names.get(school, school), sum(amounts[kind] for kind in KINDS))
                 for school, amounts in report["by_school"].items()]
    return FinancePage(
        year=year,
        months=[MonthRow(m, formats.month(m), {k: monthly[k][i] for k in KINDS},
                         {k: running[k][i] for k in KINDS}) for i, m in enumerate(months)],
        charts=[charts.cumulative_chart(kind, months, monthly[kind],
                                        budgets[kind]["envelope_cents"],
                                        budgets[kind]["runs_out_month"], last)
                for kind in KINDS],
        budgets=[BudgetRow(kind, KIND_LABELS[kind], budgets[kind]["envelope_cents"],
                           budgets[kind]["committed_cents"], budgets[kind]["remaining_cents"],
                           formats.month(budgets[kind]["runs_out_month"]))
                 for kind in KINDS],
        by_kind=by_kind,
        by_kind_chart=charts.bar_chart([(label, cents) for _, label, cents in by_kind]),
        by_school=by_school,
        by_school_chart=charts.bar_chart([(name, cents) for _, name, cents in by_school]),
        total_cents=sum(cents for _, _, cents in by_kind),
    )
