"""The partners page's builder, pure (no stack): funnel geometry, medians, referral rows,
history, and the formats it adds."""

from __future__ import annotations

from typing import Any

from console import formats
from console.partners import (
    STEPS,
    agencies_of,
    funnel_chart,
    is_agency_id,
    partners_page,
    referral_page,
)

NBSP = "\u00a0"


def counts(received: int, accepted: int, enrolled: int, exited: int, solution: int,
           medians: tuple[float | None, float | None, float | None] = (None, None, None)
           ) -> dict[str, Any]:
    return {"received": received, "accepted": accepted, "enrolled": enrolled,
            "exited": exited, "with_solution": solution,
            "median_days": dict(zip(("received_to_accepted", "accepted_to_enrolled",
                                     "enrolled_to_exited"), medians, strict=True))}


def summary(**fields: Any) -> dict[str, Any]:
    base = {"referral_id": "ML-1", "status": "accepted", "stage": "enrolled", "reasons": [],
            "trainee_id": "tr_1", "duplicate_of": None, "agency_id": "ml-x",
            "school_id": "toulouse", "referred_on": "2026-12-02", "enrolled_on": "2026-12-07",
            "exited_on": None, "erased": False}
    return {**base, **fields}


def test_the_funnel_bars_are_centred_and_as_wide_as_their_counts() -> None:
    chart = funnel_chart(counts(8, 6, 3, 2, 1))
    assert [s.step for s in chart.steps] == list(STEPS)
    assert [s.count for s in chart.steps] == [8, 6, 3, 2, 1]
    widest = chart.steps[0].width
    for step in chart.steps:
        assert abs(step.width - widest * step.count / 8) < 1e-9
        centre = step.x + step.width / 2
        assert abs(centre - (chart.steps[0].x + widest / 2)) < 1e-9
    assert [s.share for s in chart.steps] == [f"{p}{NBSP}%" for p in (100, 75, 38, 25, 13)]
    assert [s.y for s in chart.steps] == sorted(s.y for s in chart.steps)
    assert chart.height == chart.steps[-1].y + chart.bar_height


def test_an_empty_funnel_draws_no_bar_and_no_share() -> None:
    chart = funnel_chart(counts(0, 0, 0, 0, 0))
    assert all(s.width == 0 and s.share == "–" for s in chart.steps)


def test_the_page_takes_the_funnels_total_and_medians_as_the_service_gives_them() -> None:
    funnel = {"year": 2026, "steps": list(STEPS), "total": counts(3, 2, 2, 1, 1, (0.0, 6.5, None)),
              "by_agency": {"ml-x": counts(3, 2, 2, 1, 1, (0.0, 6.5, None))}, "by_school": {}}
    page = partners_page("ml-x", funnel, None)
    assert page.year == 2026 and page.listing is None
    assert [s.count for s in page.funnel.steps] == [3, 2, 2, 1, 1]
    assert [m.days for m in page.medians] == [0.0, 6.5, None]
    assert [m.text for m in page.medians] == [f"0{NBSP}jour", f"6,5{NBSP}jours", "–"]


def test_referral_rows_in_french_with_the_name_only_when_the_service_gives_it() -> None:
    answer = {"items": [
        summary(candidate={"first_name": "Inès", "last_name": "Martin", "birth_date": None,
                           "email": None, "phone": None}),
        summary(referral_id="ML-2", status="rejected", stage="rejected",
                reasons=["too_old", "in_school"], enrolled_on=None),
        summary(referral_id="ML-3", erased=True, candidate={
            "first_name": None, "last_name": None, "birth_date": None, "email": None,
            "phone": None}),
    ], "page": 2, "page_size": 3, "total": 9, "next_page": 3}
    listing = partners_page("ml-x", {"year": 2026, "total": counts(0, 0, 0, 0, 0)},
                            answer).listing
    assert listing is not None
    first, refused, erased = listing.rows
    assert (first.person, first.status_label, first.stage_label) == (
        "Inès Martin", "Acceptée", "Entrée en formation")
    assert (first.referred_on, first.enrolled_on, first.exited_on) == (
        "02/12/2026", "07/12/2026", "–")
    assert refused.person == "" and refused.reasons == ["au-delà de l'âge", "encore scolarisé·e"]
    assert erased.person == "données effacées"
    assert (listing.previous_page, listing.next_page, listing.total) == (1, 3, 9)


def test_a_referrals_history_in_paris_time_and_a_received_one_without_history() -> None:
    detail = summary(history=[
        {"kind": "referral", "status": "accepted", "reasons": [],
         "at": "2026-12-01T23:30:00Z", "request_event_id": "e1"},
        {"kind": "enrollment", "status": "enrolled", "reasons": [],
         "at": "2026-06-30T22:15:00+00:00", "request_event_id": "e2"},
    ])
    page = referral_page(detail)
    assert page.decided
    assert [(h.kind, h.status, h.at) for h in page.history] == [
        ("Orientation", "Acceptée", "02/12/2026 00:30:00"),
        ("Entrée en formation", "Entrée en formation", "01/07/2026 00:15:00")]
    received = referral_page({"referral_id": "ML-9", "status": "received",
                              "agency_id": "ml-x", "event_id": "e",
                              "received_at": "2026-12-01T10:00:00Z"})
    assert not received.decided and received.row.status_label == "Reçue, pas encore décidée"


def test_agencies_listed_with_their_received_counts() -> None:
    funnel = {"by_agency": {"ft-a": counts(4, 1, 0, 0, 0), "ml-b": counts(2, 2, 1, 0, 0)}}
    assert agencies_of(funnel) == [("ft-a", 4), ("ml-b", 2)]


def test_days_and_iso_days_in_french() -> None:
    assert formats.days(1.0) == f"1{NBSP}jour"
    assert formats.days(12.0) == f"12{NBSP}jours"
    assert formats.days(None) == "–"
    assert formats.iso_day("2026-12-02") == "02/12/2026"
    assert formats.iso_day(None) == "–"


def test_agency_ids_as_partner_roles_hold_them() -> None:
    assert all(is_agency_id(text) for text in ("ml-toulouse", "ft_31", "ml-béziers", "x" * 200))
    assert not any(is_agency_id(text) for text in ("", "a b", "a/b", "a\tb", "x" * 201,
                                                    "a\x00b"))
