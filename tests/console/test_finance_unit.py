"""The finance page builder names the schools from the registry (pure: no stack)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from console.finance import KINDS, finance_page

MONTHS = [f"2026-{m:02d}" for m in range(1, 13)]


def report(by_school: dict[str, dict[str, int]]) -> dict[str, Any]:
    zero = {kind: 0 for kind in KINDS}
    return {
        "year": 2026,
        "by_kind": {kind: {"amount_cents": 0} for kind in KINDS},
        "by_school": by_school,
        "by_month": {month: dict(zero) for month in MONTHS},
        "budgets": {kind: {"envelope_cents": None, "committed_cents": 0,
                           "remaining_cents": None, "runs_out_month": None}
                    for kind in KINDS},
    }


def test_schools_are_shown_by_name_and_an_unknown_id_as_itself() -> None:
    page = finance_page(
        report({"nimes": {"laptop": 100, "meals": 20, "childcare": 3},
                "new-site": {"laptop": 0, "meals": 700, "childcare": 0}}),
        datetime(2026, 12, 1, tzinfo=UTC),
        {"nimes": "E2C Nîmes", "toulouse": "E2C Toulouse"},
    )
    assert page.by_school == [("nimes", "E2C Nîmes", 123), ("new-site", "new-site", 700)]
    assert [(bar.label, bar.cents) for bar in page.by_school_chart.bars] == [
        ("E2C Nîmes", 123), ("new-site", 700)]


def test_the_bars_leave_room_for_the_longest_school_name() -> None:
    names = {"onet-le-chateau": "E2C Onet-le-Château", "ales": "E2C Alès"}
    page = finance_page(report({school: {"laptop": 1, "meals": 0, "childcare": 0}
                                for school in names}),
                        datetime(2026, 12, 1, tzinfo=UTC), names)
    assert page.by_school_chart.left >= 8.5 * len("E2C Onet-le-Château")
    assert page.by_kind_chart.left == 150  # short labels keep the usual margin
