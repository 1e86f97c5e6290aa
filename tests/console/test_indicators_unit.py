"""The indicators page builder and its charts, pure (no stack): figures are quotients of the
report's counts, the year before stands beside each, schools are named."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from console import charts, formats
from console.indicators import NONE, Measure, change, indicators_page
from shared.schools import School

NBSP = "\u00a0"
REGISTRY = {
    "toulouse": School("toulouse", "E2C Toulouse", 2004),
    "nimes": School("nimes", "E2C Nîmes", 2008),
    "montauban": School("montauban", "E2C Montauban", 2024),
}


def report(year: int, **changes: Any) -> dict[str, Any]:
    """A report in the contract's shape: 10 accompanied, 6 entries, 8 exits at Toulouse
    and Nîmes (7 with a solution), `changes` replacing whole keys."""
    body: dict[str, Any] = {
        "year": year, "accompanied": 10, "entries": 6, "exits": 8,
        "exits_by_outcome": {"qualifying_training": 2, "durable_employment": 3,
                             "short_employment": 1, "iae": 0, "pre_qualifying_training": 0,
                             "civic_service": 1, "no_solution": 1, "dropout": 0, "other": 0},
        "exits_by_category": {"training": 2, "employment": 3, "dynamic": 2, "none": 1},
        "solutions": 7,
        "satisfaction": {"answered": 6, "satisfied": 5},
        "profile": {"age_at_entry_sum": 195, "minors": 2, "rqth": 1, "qpv_resident": 4,
                    "no_work_experience": 7},
        "entries_by_agency_kind": {"mission_locale": 3, "france_travail": 2, "mlds": 0,
                                   "spontaneous": 1, "other": 0},
        "by_school": {
            "montauban": {"accompanied": 0, "entries": 0, "exits": 0, "solutions": 0},
            "nimes": {"accompanied": 4, "entries": 2, "exits": 3, "solutions": 3},
            "toulouse": {"accompanied": 6, "entries": 4, "exits": 5, "solutions": 4},
        },
    }
    body.update(changes)
    return body


def nobody(year: int) -> dict[str, Any]:
    """The report of a year without anybody: every count zero."""
    def zero(value: Any) -> Any:
        return {key: zero(inner) for key, inner in value.items()} if isinstance(value, dict) \
            else 0
    return {**zero(report(year)), "year": year}


def row_of(rows: list[Any], key: str) -> Any:
    return next(row for row in rows if row.key == key)


# --- Measures and changes -----------------------------------------------------------------


def test_a_measure_is_a_count_a_share_or_a_mean_written_in_french() -> None:
    assert Measure(1234).text == "1\u202f234"
    assert Measure(7, 8).text == f"88{NBSP}%"
    assert Measure(7, 8).detail == "7 sur 8"
    assert Measure(195, 10, mean=True).text == f"19,5{NBSP}ans"
    assert Measure(3, 0).text == NONE and Measure(3, 0).value is None
    assert Measure(0, 0).detail == ""
    assert Measure(39, 2, mean=True).value == Fraction(39, 2)


@pytest.mark.parametrize(("current", "previous", "expected"), [
    (Measure(12), Measure(9), "+3"),
    (Measure(9), Measure(12), "-3"),
    (Measure(9), Measure(9), "="),
    (Measure(87, 100), Measure(82, 100), f"+5{NBSP}pts"),
    (Measure(81, 100), Measure(82, 100), f"-1{NBSP}pt"),
    (Measure(2, 3), Measure(1, 2), f"+17{NBSP}pts"),  # 66,7 - 50 = 16,7 points
    (Measure(1, 3), Measure(1, 3), "="),
    (Measure(199, 10, mean=True), Measure(195, 10, mean=True), f"+0,4{NBSP}an"),
    (Measure(5), None, NONE),
    (Measure(5, 10), Measure(1, 0), NONE),
    (Measure(1, 0), Measure(5, 10), NONE),
])
def test_the_change_against_the_year_before(current: Measure, previous: Measure | None,
                                            expected: str) -> None:
    assert change(current, previous) == expected


def test_halves_round_away_from_zero() -> None:
    assert formats.half_up(Fraction(5, 2)) == 3
    assert formats.half_up(Fraction(-5, 2)) == -3
    assert formats.decimal(Fraction(39, 2)) == "19,5"
    assert formats.decimal(Fraction(-1, 4)) == "-0,3"


# --- The page ------------------------------------------------------------------------------


def test_the_year_reads_as_the_seeds_table_beside_the_year_before() -> None:
    before = report(2023, accompanied=8, solutions=5,
                    exits_by_category={"training": 1, "employment": 2, "dynamic": 2, "none": 3})
    page = indicators_page(report(2024), before, REGISTRY)
    assert page.has_previous and not page.empty
    assert [row.key for row in page.headline] == [
        "accompanied", "entries", "exits", "solutions", "satisfied"]
    accompanied = row_of(page.section("pathway").rows, "accompanied")
    assert (accompanied.current.text, accompanied.previous_text, accompanied.change) == (
        "10", "8", "+2")
    solutions = page.section("solutions").rows
    assert [(row.key, row.current.text, row.sub) for row in solutions] == [
        ("solutions", f"88{NBSP}%", False),  # 7 of 8 exits
        ("training", f"25{NBSP}%", True),
        ("employment", f"38{NBSP}%", True),  # 3 of 8 = 37,5 %, half up
        ("dynamic", f"25{NBSP}%", True),
        ("none", f"13{NBSP}%", False),
    ]
    assert row_of(solutions, "solutions").previous_text == f"63{NBSP}%"  # 5 of 8
    assert row_of(solutions, "solutions").change == f"+25{NBSP}pts"
    satisfied = row_of(page.section("satisfaction").rows, "satisfied")
    assert (satisfied.current.count, satisfied.current.of) == (5, 6)
    profile = page.section("profile").rows
    assert row_of(profile, "average_age").current.text == f"19,5{NBSP}ans"
    assert row_of(profile, "average_age").previous_text == f"24,4{NBSP}ans"  # 195 / 8
    assert [(row.key, row.current.count, row.current.of) for row in profile[1:]] == [
        ("minors", 2, 10), ("rqth", 1, 10), ("qpv_resident", 4, 10),
        ("no_work_experience", 7, 10)]
    agencies = page.section("agencies").rows
    assert [(row.current.count, row.current.of) for row in agencies] == [
        (3, 6), (2, 6), (0, 6), (1, 6), (0, 6)]
    assert sum(row.current.count for row in page.outcomes) == 8


def test_without_a_year_before_its_column_is_empty_never_zero() -> None:
    for previous in (None, nobody(2023)):
        page = indicators_page(report(2024), previous, REGISTRY)
        assert not page.has_previous
        every_row = [row for section in page.sections for row in section.rows]
        every_row += page.outcomes + [row for card in page.schools for row in card.rows]
        assert all(row.previous is None for row in every_row)
        assert {row.previous_text for row in every_row} == {NONE}
        assert {row.change for row in every_row} == {NONE}
        assert all(len(group.bars) == 1 for group in page.pathway_chart.groups)
        assert [row.label for row in page.solution_chart.rows] == ["2024"]


def test_a_year_without_anybody_shows_dashes_for_its_rates() -> None:
    page = indicators_page(nobody(2024), report(2023), REGISTRY)
    assert page.empty and page.has_previous
    solutions = row_of(page.section("solutions").rows, "solutions")
    assert (solutions.current.text, solutions.previous_text, solutions.change) == (
        NONE, f"88{NBSP}%", NONE)
    assert row_of(page.section("pathway").rows, "exits").change == "-8"


def test_schools_by_name_open_or_with_figures_in_the_registrys_order() -> None:
    by_school = {
        "montauban": {"accompanied": 0, "entries": 0, "exits": 0, "solutions": 0},
        "nimes": {"accompanied": 4, "entries": 2, "exits": 3, "solutions": 3},
        "toulouse": {"accompanied": 6, "entries": 4, "exits": 5, "solutions": 4},
        "zz-new": {"accompanied": 1, "entries": 1, "exits": 0, "solutions": 0},
    }
    page = indicators_page(report(2012, by_school=by_school), report(2011), REGISTRY)
    # Montauban opened in 2024 and has nobody in 2012; an id not in the registry is shown
    # as itself since it has figures.
    assert [(card.school, card.name) for card in page.schools] == [
        ("toulouse", "E2C Toulouse"), ("nimes", "E2C Nîmes"), ("zz-new", "zz-new")]
    nimes = page.schools[1]
    assert [(row.key, row.current.text, row.previous_text) for row in nimes.rows] == [
        ("accompanied", "4", "4"), ("entries", "2", "2"), ("exits", "3", "3"),
        ("solutions", f"100{NBSP}%", f"100{NBSP}%")]
    assert page.schools[2].rows[0].previous is None  # not in the year before's report
    assert [(group.label, [bar.count for bar in group.bars])
            for group in page.school_chart.groups] == [
        ("E2C Toulouse", [6, 6]), ("E2C Nîmes", [4, 4]), ("zz-new", [1])]
    later = indicators_page(report(2024), report(2023), REGISTRY)
    assert [card.school for card in later.schools] == ["toulouse", "nimes", "montauban"]


def test_each_chart_holds_its_tables_numbers() -> None:
    page = indicators_page(report(2024), report(2023, entries=4), REGISTRY)
    for chart, rows in ((page.pathway_chart, page.section("pathway").rows),
                        (page.agency_chart, page.section("agencies").rows),
                        (page.profile_chart, page.section("profile").rows[1:])):
        assert [(group.key, [(bar.series, bar.count, bar.of) for bar in group.bars])
                for group in chart.groups] == [
            (row.key, [("2024", row.current.count, row.current.of),
                       ("2023", row.previous.count, row.previous.of)]) for row in rows]
    [current, previous] = page.solution_chart.rows
    categories = page.section("solutions").rows[1:]
    assert [(part.key, part.count) for part in current.parts] == [
        (row.key, row.current.count) for row in categories]
    assert [part.count for part in previous.parts] == [row.previous.count for row in categories]


# --- Chart geometry ---------------------------------------------------------------------


def test_stacked_parts_are_shares_of_the_full_bar() -> None:
    chart = charts.stacked_bars([("2024", [("a", "A", 1), ("b", "B", 3)]),
                                 ("2023", [("a", "A", 0), ("b", "B", 0)])])
    span = chart.width - chart.left - charts.RIGHT
    [full, empty] = chart.rows
    assert [part.width for part in full.parts] == [span / 4, 3 * span / 4]
    assert full.parts[1].x == chart.left + span / 4
    assert [part.text for part in full.parts] == [f"25{NBSP}%", f"75{NBSP}%"]
    assert empty.total == 0 and all(part.width == 0 for part in empty.parts)
    assert [key for key, *_ in chart.legend] == ["a", "b"]
    assert chart.height > empty.y + chart.bar_height


def test_paired_bars_scale_to_the_largest_count_or_to_a_hundred_percent() -> None:
    counts = charts.paired_bars([("x", "X", [("2024", 10, None, "10"), ("2023", 5, None, "5")])])
    [group] = counts.groups
    assert group.bars[1].width == group.bars[0].width / 2
    shares = charts.paired_bars([("x", "X", [("2024", 1, 2, "50 %"), ("2023", 1, 0, "—")])],
                                percent_scale=True)
    [group] = shares.groups
    assert group.bars[0].width == (shares.width - shares.left - 90) / 2
    assert group.bars[1].width == 0
