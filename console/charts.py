"""Charts as server-rendered SVG geometry (no script, no CDN): the template draws what these
pure functions compute, and the same numbers go in the table beside each chart."""

from __future__ import annotations

from dataclasses import dataclass, field

from console import formats

WIDTH, HEIGHT = 640, 280
LEFT, RIGHT, TOP, BOTTOM = 110, 16, 16, 40
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
TICKS = 4
LABEL_CHAR_WIDTH = 9  # room per character of a 15-unit label (DejaVu Sans is about 8.5)


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
    """Horizontal bars of (label, cents), the labels written left of the bars."""
    longest = max([len(label) for label, _ in amounts] + [0])
    chart = BarChart(bars=[], left=max(150, LABEL_CHAR_WIDTH * longest + 12))
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


# --- Indicators: stacked shares and paired bars (this year beside the year before) --------

SMALL_WIDTH = 420  # indicator charts sit two abreast on a laptop and alone on a phone
YEAR_LEFT = 56  # room for the year written before each bar


@dataclass
class StackPart:
    key: str
    label: str
    count: int
    x: float
    width: float
    text: str  # its share of the row, `43 %`


@dataclass
class StackRow:
    label: str  # the year
    total: int
    y: float
    parts: list[StackPart]


@dataclass
class StackedBars:
    """One bar per row, cut into its parts' shares of the row's total."""

    rows: list[StackRow]
    legend: list[tuple[str, str, float, float]]  # key, label, x, y
    width: int = SMALL_WIDTH
    height: int = 0
    left: int = YEAR_LEFT
    bar_height: int = 30


def stacked_bars(rows: list[tuple[str, list[tuple[str, str, int]]]]) -> StackedBars:
    """`rows` of (label, [(key, label, count), ...]): each bar spans the full width, each
    part its share of the row's total; a row with no total has no parts."""
    chart = StackedBars(rows=[], legend=[])
    span = chart.width - chart.left - RIGHT
    for index, (label, parts) in enumerate(rows):
        total = sum(count for _, _, count in parts)
        row = StackRow(label, total, index * (chart.bar_height + 12), [])
        x = float(chart.left)
        for key, part_label, count in parts:
            width = span * count / total if total else 0.0
            row.parts.append(StackPart(key, part_label, count, x, width,
                                       formats.percent(count, total)))
            x += width
        chart.rows.append(row)
    top = len(rows) * (chart.bar_height + 12) + 6
    names = [(key, label) for key, label, _ in rows[0][1]] if rows else []
    half = (chart.width - chart.left) / 2
    chart.legend = [(key, label, chart.left + half * (n % 2), top + 22 * (n // 2))
                    for n, (key, label) in enumerate(names)]
    chart.height = top + 22 * ((len(names) + 1) // 2)
    return chart


@dataclass
class PairedBar:
    series: str  # the year
    count: int
    of: int | None  # None: the bar is a count; else the share count/of, in percent
    y: float
    width: float
    text: str


@dataclass
class BarGroup:
    key: str
    label: str
    y: float  # of the label, written above the group's bars
    bars: list[PairedBar]


@dataclass
class PairedBarChart:
    """Per item, its label on a line, then one bar per series (this year, the one before)."""

    groups: list[BarGroup]
    width: int = SMALL_WIDTH
    height: int = 0
    left: int = YEAR_LEFT
    bar_height: int = 18
    label_height: int = 22


def _share(count: int, of: int | None) -> float:
    if of is None:
        return float(count)
    return 100 * count / of if of else 0.0


def paired_bars(items: list[tuple[str, str, list[tuple[str, int, int | None, str]]]],
                percent_scale: bool = False) -> PairedBarChart:
    """`items` of (key, label, [(series, count, of, text), ...]). Bars of counts are
    proportional to the largest count; shares (`of` given) to 100 % when `percent_scale`."""
    chart = PairedBarChart(groups=[])
    values = [_share(count, of) for _, _, bars in items for _, count, of, _ in bars]
    top = 100.0 if percent_scale else max([*values, 1.0])
    span = chart.width - chart.left - 90  # room for the value written after the bar
    y = 0.0
    for key, label, bars in items:
        group = BarGroup(key, label, y + 16, [])
        y += chart.label_height
        for series, count, of, text in bars:
            group.bars.append(PairedBar(series, count, of, y,
                                        span * _share(count, of) / top, text))
            y += chart.bar_height + 4
        chart.groups.append(group)
        y += 8
    chart.height = max(1, int(y))
    return chart
