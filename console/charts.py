"""Charts as server-rendered SVG geometry (no script, no CDN): the template draws what these
pure functions compute, and the same numbers go in the table beside each chart."""

from __future__ import annotations

from dataclasses import dataclass, field

from console import formats

WIDTH, HEIGHT = 640, 280
LEFT, RIGHT, TOP, BOTTOM = 110, 16, 16, 40
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
TICKS = 4


@dataclass
class Tick:
    y: float
    label: str


@dataclass
class MonthAxis:
    x: float
    label: str


@dataclass
class Segment:
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class CumulativeChart:
    """One kind's cumulative spending by month, its envelope and the run-out forecast."""

    kind: str
    values: list[int]  # cumulative cents, month by month
    points: str
    ticks: list[Tick]
    months: list[MonthAxis]
    envelope_y: float | None = None
    forecast: Segment | None = None
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    plot_right: int = WIDTH - RIGHT
    plot_bottom: int = HEIGHT - BOTTOM


@dataclass
class Bar:
    label: str
    cents: int
    y: float
    width: float
    text: str


@dataclass
class BarChart:
    bars: list[Bar]
    width: int = WIDTH
    height: int = 0
    left: int = 150
    bar_height: int = 22
    rows: list[str] = field(default_factory=list)


def cumulative(monthly: list[int]) -> list[int]:
    running, out = 0, []
    for value in monthly:
        running += value
        out.append(running)
    return out


def _x(index: int) -> float:
    return LEFT + PLOT_W * index / 11


def _y(cents: int, top: int) -> float:
    return TOP + PLOT_H * (1 - cents / top) if top else TOP + PLOT_H


def cumulative_chart(kind: str, months: list[str], monthly: list[int],
                     envelope: int | None, runs_out: str | None,
                     last_month: int) -> CumulativeChart:
    """`monthly` cents of `kind` over the twelve `months`; the forecast goes from the
    spending at `last_month` (index of the last month with data, -1 for none) to the
    envelope at the run-out month."""
    values = cumulative(monthly)
    top = max([*values, envelope or 0, 1])
    top = _round_up(top * 21 // 20)
    chart = CumulativeChart(
        kind=kind,
        values=values,
        points=" ".join(f"{_x(i):.1f},{_y(v, top):.1f}" for i, v in enumerate(values)),
        ticks=[Tick(_y(top * n // TICKS, top), formats.euros(top * n // TICKS))
               for n in range(TICKS + 1)],
        months=[MonthAxis(_x(i), formats.short_month(m)) for i, m in enumerate(months)],
    )
    if envelope is not None:
        chart.envelope_y = _y(envelope, top)
    if envelope is not None and runs_out in months and last_month >= 0:
        end = months.index(runs_out)
        if end > last_month:
            chart.forecast = Segment(_x(last_month), _y(values[last_month], top),
                                     _x(end), _y(envelope, top))
    return chart


def bar_chart(amounts: list[tuple[str, int]]) -> BarChart:
    """Horizontal bars of (label, cents)."""
    chart = BarChart(bars=[])
    top = max([cents for _, cents in amounts] + [1])
    span = chart.width - chart.left - 120
    for row, (label, cents) in enumerate(amounts):
        chart.bars.append(Bar(label, cents, row * (chart.bar_height + 8),
                              span * cents / top, formats.euros(cents)))
    chart.height = max(1, len(amounts)) * (chart.bar_height + 8)
    return chart


def _round_up(value: int) -> int:
    """`value` rounded up to a round axis top (1, 2 or 5 times a power of ten)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10
