"""The indicators page's content from the outcomes service's yearly reports (pure: no I/O).

The report holds counts only; every rate and mean shown here is the quotient of two of its
counts (`Measure`), and the previous year's report stands beside each figure with the
change. Where the previous year has no figure (no report, a year without anybody, or a
rate over zero) the page writes NONE, never a made-up number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from console import charts, formats
from shared.contract import AgencyKind, Outcome, OutcomeCategory
from shared.schools import School

NONE = "—"
Report = Mapping[str, Any]
Figures = list[tuple[str, str, "Measure"]]  # key, label, measure: one report's figures

CATEGORY_LABELS = {
    OutcomeCategory.TRAINING: "Formation qualifiante",
    OutcomeCategory.EMPLOYMENT: "Emploi durable",
    OutcomeCategory.DYNAMIC: "Sortie dynamique",
    OutcomeCategory.NONE: "Sans solution",
}
OUTCOME_LABELS = {
    Outcome.QUALIFYING_TRAINING: "Formation qualifiante",
    Outcome.DURABLE_EMPLOYMENT: "Emploi durable (CDI, CDD de 6 mois ou plus)",
    Outcome.SHORT_EMPLOYMENT: "Emploi de moins de 6 mois",
    Outcome.IAE: "Insertion par l'activité économique",
    Outcome.PRE_QUALIFYING_TRAINING: "Formation pré-qualifiante",
    Outcome.CIVIC_SERVICE: "Service civique",
    Outcome.NO_SOLUTION: "Sans solution",
    Outcome.DROPOUT: "Abandon",
    Outcome.OTHER: "Autre",
}
AGENCY_LABELS = {
    AgencyKind.MISSION_LOCALE: "Missions locales",
    AgencyKind.FRANCE_TRAVAIL: "France Travail",
    AgencyKind.MLDS: "MLDS",
    AgencyKind.SPONTANEOUS: "Candidatures spontanées",
    AgencyKind.OTHER: "Autres",
}
PROFILE_LABELS = {
    "minors": "Mineurs à l'entrée",
    "rqth": "Reconnus travailleurs handicapés (RQTH)",
    "qpv_resident": "Habitant un quartier prioritaire (QPV)",
    "no_work_experience": "Sans expérience professionnelle",
}
SCHOOL_LABELS = {
    "accompanied": "Accompagnés",
    "entries": "Entrées",
    "exits": "Sorties",
    "solutions": "Avec une solution",
}


@dataclass(frozen=True)
class Measure:
    """A count, or the quotient of two counts: a share in percent, or a mean."""

    count: int
    of: int | None = None  # None: a plain count
    mean: bool = False  # count/of is a mean (one decimal), not a share

    @property
    def value(self) -> Fraction | None:
        """The number compared between years; None for a quotient over zero."""
        if self.of is None:
            return Fraction(self.count)
        if self.of == 0:
            return None
        return Fraction(self.count, self.of) * (1 if self.mean else 100)

    @property
    def text(self) -> str:
        value = self.value
        if value is None:
            return NONE
        if self.of is None:
            return formats.integer(self.count)
        if self.mean:
            return f"{formats.decimal(value)}{formats.BEFORE_SIGN}ans"
        return formats.percent(self.count, self.of)

    @property
    def detail(self) -> str:
        """`12 sur 14`: the counts behind a share."""
        if not self.of or self.mean:
            return ""
        return f"{formats.integer(self.count)} sur {formats.integer(self.of)}"


def change(current: Measure, previous: Measure | None) -> str:
    """`+3`, `-2`, `+5 pts` (percentage points), `+0,4 an`, `=`; NONE without both."""
    now, before = current.value, previous.value if previous is not None else None
    if now is None or before is None:
        return NONE
    if current.of is None:
        difference = formats.half_up(now - before)
        text = formats.integer(int(difference))
    elif current.mean:
        difference = formats.half_up(now - before, 1)
        text = f"{formats.decimal(difference)}{formats.BEFORE_SIGN}an"
    else:
        difference = formats.half_up(now - before)
        points = "pt" if abs(difference) == 1 else "pts"
        text = f"{formats.integer(int(difference))}{formats.BEFORE_SIGN}{points}"
    if difference == 0:
        return "="
    return f"+{text}" if difference > 0 else text


@dataclass
class Row:
    key: str
    label: str
    current: Measure
    previous: Measure | None  # None: the previous year has no report or nobody in it
    sub: bool = False  # a part of the row above it (the solution's split)

    @property
    def previous_text(self) -> str:
        return self.previous.text if self.previous is not None else NONE

    @property
    def change(self) -> str:
        return change(self.current, self.previous)


@dataclass
class Section:
    key: str
    title: str
    rows: list[Row]


@dataclass
class SchoolCard:
    school: str
    name: str
    rows: list[Row]


@dataclass
class IndicatorsPage:
    year: int
    previous_year: int
    has_previous: bool
    empty: bool  # nobody accompanied, entering or leaving in the year
    headline: list[Row]
    sections: list[Section]
    outcomes: list[Row]  # the exits by outcome, detail of the solution's split
    schools: list[SchoolCard]
    pathway_chart: charts.PairedBarChart
    solution_chart: charts.StackedBars
    profile_chart: charts.PairedBarChart
    agency_chart: charts.PairedBarChart
    school_chart: charts.PairedBarChart

    def section(self, key: str) -> Section:
        return next(section for section in self.sections if section.key == key)


def has_anybody(report: Report) -> bool:
    return any(report[key] for key in ("accompanied", "entries", "exits"))


def pathway(report: Report) -> Figures:
    return [("accompanied", "Jeunes accompagnés", Measure(report["accompanied"])),
            ("entries", "Entrées", Measure(report["entries"])),
            ("exits", "Sorties", Measure(report["exits"]))]


def solutions(report: Report) -> Figures:
    exits, by_category = report["exits"], report["exits_by_category"]
    return [("solutions", "Sorties avec une solution", Measure(report["solutions"], exits)),
            *((category.value, CATEGORY_LABELS[category],
               Measure(by_category[category.value], exits))
              for category in OutcomeCategory)]


def satisfaction(report: Report) -> Figures:
    answers = report["satisfaction"]
    return [("satisfied", "Satisfaits (parmi les répondants)",
             Measure(answers["satisfied"], answers["answered"])),
            ("answered", "Ont répondu", Measure(answers["answered"], report["exits"]))]


def profile(report: Report) -> Figures:
    people, counts = report["accompanied"], report["profile"]
    return [("average_age", "Âge moyen à l'entrée",
             Measure(counts["age_at_entry_sum"], people, mean=True)),
            *((key, label, Measure(counts[key], people)) for key, label in PROFILE_LABELS.items())]


def agencies(report: Report) -> Figures:
    entries, by_kind = report["entries"], report["entries_by_agency_kind"]
    return [(kind.value, label, Measure(by_kind[kind.value], entries))
            for kind, label in AGENCY_LABELS.items()]


def outcomes(report: Report) -> Figures:
    exits, by_outcome = report["exits"], report["exits_by_outcome"]
    return [(outcome.value, label, Measure(by_outcome[outcome.value], exits))
            for outcome, label in OUTCOME_LABELS.items()]


def school_figures(counts: Mapping[str, int]) -> Figures:
    return [("accompanied", SCHOOL_LABELS["accompanied"], Measure(counts["accompanied"])),
            ("entries", SCHOOL_LABELS["entries"], Measure(counts["entries"])),
            ("exits", SCHOOL_LABELS["exits"], Measure(counts["exits"])),
            ("solutions", SCHOOL_LABELS["solutions"],
             Measure(counts["solutions"], counts["exits"]))]


def rows(current: Figures, previous: Figures | None, sub: frozenset[str] = frozenset()
         ) -> list[Row]:
    """This year's figures beside the same figures of the year before (matched by key)."""
    before = {key: measure for key, _, measure in previous or []}
    return [Row(key, label, measure, before.get(key) if previous is not None else None,
                key in sub)
            for key, label, measure in current]


def shown_schools(report: Report, previous: Report | None,
                  registry: Mapping[str, School]) -> list[str]:
    """The report's schools open in the year (registry), and any other with figures, in the
    registry's order, then unknown ids."""
    def has_figures(school: str) -> bool:
        return any(any(r["by_school"].get(school, {}).values())
                   for r in (report, previous) if r is not None)

    year = report["year"]
    order = {school: n for n, school in enumerate(registry)}
    listed = [school for school in report["by_school"]
              if (school in registry and registry[school].opened <= year)
              or has_figures(school)]
    return sorted(listed, key=lambda school: (order.get(school, len(order)), school))


def school_cards(report: Report, previous: Report | None,
                 registry: Mapping[str, School]) -> list[SchoolCard]:
    cards = []
    for school in shown_schools(report, previous, registry):
        before = None
        if previous is not None and school in previous["by_school"]:
            before = school_figures(previous["by_school"][school])
        name = registry[school].name if school in registry else school
        cards.append(SchoolCard(school, name,
                                rows(school_figures(report["by_school"][school]), before)))
    return cards


def _bars(year: int, row: Row) -> list[tuple[str, int, int | None, str]]:
    bars = [(str(year), row.current.count, row.current.of, row.current.text)]
    if row.previous is not None:
        bars.append((str(year - 1), row.previous.count, row.previous.of, row.previous.text))
    return bars


def paired_chart(year: int, chart_rows: list[Row],
                 percent_scale: bool = False) -> charts.PairedBarChart:
    """Each row's figure of `year` as a bar, the year before's under it."""
    return charts.paired_bars([(row.key, row.label, _bars(year, row)) for row in chart_rows],
                              percent_scale=percent_scale)


def solution_chart(year: int, current: Report, previous: Report | None) -> charts.StackedBars:
    """The exits of `year` (and of the year before) split by category."""
    def split(report: Report) -> list[tuple[str, str, int]]:
        return [(category.value, label, report["exits_by_category"][category.value])
                for category, label in CATEGORY_LABELS.items()]

    bars = [(str(year), split(current))]
    if previous is not None:
        bars.append((str(year - 1), split(previous)))
    return charts.stacked_bars(bars)


def indicators_page(current: Report, previous: Report | None,
                    registry: Mapping[str, School]) -> IndicatorsPage:
    """The page of `current`'s year beside `previous` (the year before; None when the
    console could not ask for it, the same as a year without anybody)."""
    year = current["year"]
    before = previous if previous is not None and has_anybody(previous) else None

    def compared(figures: Callable[[Report], Figures],
                 sub: frozenset[str] = frozenset()) -> list[Row]:
        return rows(figures(current), figures(before) if before is not None else None, sub)

    solution_parts = frozenset(category.value for category in OutcomeCategory
                               if category is not OutcomeCategory.NONE)
    pathway_rows = compared(pathway)
    solution_rows = compared(solutions, solution_parts)
    satisfaction_rows = compared(satisfaction)
    profile_rows = compared(profile)
    agency_rows = compared(agencies)
    schools = school_cards(current, before, registry)
    return IndicatorsPage(
        year=year, previous_year=year - 1, has_previous=before is not None,
        empty=not has_anybody(current),
        headline=[*pathway_rows, solution_rows[0], satisfaction_rows[0]],
        sections=[
            Section("pathway", "Parcours", pathway_rows),
            Section("solutions", "Solutions à la sortie", solution_rows),
            Section("satisfaction", "Satisfaction à la sortie", satisfaction_rows),
            Section("profile", "Profil des jeunes accompagnés", profile_rows),
            Section("agencies", "Entrées par prescripteur", agency_rows),
        ],
        outcomes=compared(outcomes),
        schools=schools,
        pathway_chart=paired_chart(year, pathway_rows),
        solution_chart=solution_chart(year, current, before),
        # the mean age is in years, not a share: its figure stays in the table only
        profile_chart=paired_chart(year, profile_rows[1:], percent_scale=True),
        agency_chart=paired_chart(year, agency_rows),
        school_chart=paired_chart(year, [Row(card.school, card.name, card.rows[0].current,
                                             card.rows[0].previous) for card in schools]),
    )
