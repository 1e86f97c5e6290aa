"""The console's French formats and chart geometry, pure (no stack)."""

from __future__ import annotations

from datetime import UTC, datetime

from console import charts, formats
from console.finance import last_month_index

NNBSP, NBSP = "\u202f", "\u00a0"


def test_euros_are_written_as_fr_fr_writes_them() -> None:
    assert formats.euros(123456) == f"1{NNBSP}234,56{NBSP}€"
    assert formats.euros(123456789) == f"1{NNBSP}234{NNBSP}567,89{NBSP}€"
    assert formats.euros(5) == f"0,05{NBSP}€"
    assert formats.euros(-100) == f"-1,00{NBSP}€"


def test_percents_dates_and_months() -> None:
    assert formats.percent(87, 100) == f"87{NBSP}%"
    assert formats.percent(2, 3) == f"67{NBSP}%"
    assert formats.percent(1, 0) == "–"
    # 23:30 UTC on 1 December is already 2 December in Paris.
    assert formats.day(datetime(2026, 12, 1, 23, 30, tzinfo=UTC)) == "02/12/2026"
    assert formats.month("2024-03") == "mars 2024"
    assert formats.month(None) == "–"


MONTHS = [f"2026-{m:02d}" for m in range(1, 13)]


def test_the_cumulative_line_holds_the_running_sums() -> None:
    chart = charts.cumulative_chart("meals", MONTHS, [100, 0, 250] + [0] * 9, 1000, None, 2)
    assert chart.values == [100, 100, 350] + [350] * 9
    assert len(chart.points.split()) == 12
    assert chart.forecast is None


def test_the_forecast_runs_from_the_last_month_to_the_envelope_at_run_out() -> None:
    chart = charts.cumulative_chart("meals", MONTHS, [300] * 4 + [0] * 8, 2000, "2026-07", 3)
    assert chart.forecast is not None and chart.envelope_y is not None
    assert chart.forecast.y2 == chart.envelope_y
    x = [float(point.split(",")[0]) for point in chart.points.split()]
    y = [float(point.split(",")[1]) for point in chart.points.split()]
    assert (round(chart.forecast.x1, 1), round(chart.forecast.x2, 1)) == (x[3], x[6])
    assert round(chart.forecast.y1, 1) == y[3]


def test_no_forecast_without_an_envelope_or_after_the_run_out_month() -> None:
    assert charts.cumulative_chart("laptop", MONTHS, [1] * 12, None, None, 11).forecast is None
    reached = charts.cumulative_chart("laptop", MONTHS, [5] * 12, 20, "2026-04", 11)
    assert reached.forecast is None


def test_bars_are_proportional_to_their_amounts() -> None:
    chart = charts.bar_chart([("a", 100), ("b", 50), ("c", 0)])
    assert [bar.width for bar in chart.bars] == [chart.bars[0].width,
                                                 chart.bars[0].width / 2, 0]


def test_last_month_with_data_in_paris() -> None:
    now = datetime(2026, 3, 31, 23, 30, tzinfo=UTC)  # already April in Paris
    assert last_month_index(2026, now) == 3
    assert last_month_index(2025, now) == 11
    assert last_month_index(2027, now) == -1
