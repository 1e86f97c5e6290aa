"""The simulation's plan reads the services' own configuration: the school registry and the
aid rate table. Without a broker: the plan of 2021 and of 2024 only uses schools open that
year, prices meals from the table, and its ground truth is what the aids rules decide.
Through the real pipeline: a small 2021 year checks out to the unit."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from deploy.harness import ServiceProcesses
from deploy.simulation.command import simulate
from deploy.simulation.plan import Aid, YearNotSimulable, YearPlan, plan_year
from deploy.simulation.run import Endpoints, Progress, Simulation
from services.aids import domain
from shared.aid_rules import AidRules, load_rules
from shared.contract import AidKind, AidReason, AidStatus
from shared.schools import load_schools
from shared.settings import Settings
from tests import tokens

SHIPPED = Settings(schools_file=None, aid_rules_file=None)  # the files shipped with the code
SCHOOLS = load_schools()
RULES = load_rules()


def schools_of(plan: YearPlan) -> Counter[str]:
    """Where the plan sends people: trainees, refusals, dropped and duplicate referrals."""
    return Counter(r.person.school_id for r in [*plan.referrals, *plan.duplicates]
                   if "unknown_school" not in r.expected_reasons)


def decided_by_the_service(
    plan: YearPlan, rules: AidRules
) -> list[tuple[Aid, domain.AidDecision]]:
    """Every planned aid request put through the aids rules, in the order it is published
    (a trainee's requests in order; exits come after every aid): (aid, the rules' decision)."""
    committed = Counter[AidKind]()
    decisions = []
    for trainee in plan.trainees:
        known = domain.Trainee(trainee.referral.person.school_id, trainee.enrolled_on)
        has_laptop, meal_periods = False, []
        for aid in trainee.aids:
            request = domain.AidRequest(aid.kind, aid.quantity, aid.amount_cents,
                                        aid.period_start, aid.period_end)
            envelope = domain.Envelope(plan.envelopes[aid.kind], committed[aid.kind])
            decision = domain.decide(request, known, domain.Granted(has_laptop, meal_periods),
                                     envelope, rules)
            if decision.granted:
                assert decision.amount_cents is not None
                committed[aid.kind] += decision.amount_cents
                has_laptop = has_laptop or aid.kind is AidKind.LAPTOP
                if aid.kind is AidKind.MEALS:
                    meal_periods.append((aid.period_start, aid.period_end))
            decisions.append((aid, decision))
    return decisions


# --- the plan, without a broker ------------------------------------------------------------


@pytest.mark.parametrize("year", [2021, 2024])
def test_no_one_is_sent_to_a_school_not_open_yet(year: int) -> None:
    plan = plan_year(year, 400, seed=7, settings=SHIPPED)

    used = schools_of(plan)
    assert all(SCHOOLS[school].opened <= year for school in used)
    assert set(used) == {s.id for s in SCHOOLS.values() if s.opened <= year}  # and all of them
    if year == 2021:
        assert "castres" not in used and "montauban" not in used  # 2023, 2024
    else:
        assert used["montauban"] > 0
    unknown = [r for r in plan.referrals if "unknown_school" in r.expected_reasons]
    assert unknown and all(r.person.school_id not in SCHOOLS for r in unknown)


@pytest.mark.parametrize("year", [2021, 2024])
def test_meals_are_priced_from_the_rate_table_and_none_planned_before_it(year: int) -> None:
    plan = plan_year(year, 400, seed=7, settings=SHIPPED)
    meals = [a for t in plan.trainees for a in t.aids if a.kind is AidKind.MEALS]
    granted = [a for a in meals if a.expected_reason is None]

    for aid in granted:
        assert aid.period_start >= date(2024, 1, 1)
        assert aid.meal_rate_cents == RULES.meal_rate_on(aid.period_start) == 700
        assert aid.granted_cents == aid.quantity * 700
    early = [a for a in meals if a.expected_reason == "invalid_period"]
    assert all(RULES.meal_rate_on(a.period_start) is None for a in early)
    finance = plan.expected_finance()["by_kind"]["meals"]
    if year == 2021:  # the scheme starts in 2024: a few ask, every one is refused
        assert not granted and early
        assert finance == {"granted": 0, "rejected": len(early), "quantity": 0,
                           "amount_cents": 0}
    else:
        assert len(granted) > 1000 and not early
        assert finance["amount_cents"] == 700 * finance["quantity"] > 0


@pytest.mark.parametrize("year", [2021, 2024])
def test_the_ground_truth_is_what_the_aids_rules_decide(year: int) -> None:
    plan = plan_year(year, 400, seed=7, settings=SHIPPED)
    decisions = decided_by_the_service(plan, RULES)

    for aid, decision in decisions:
        if aid.expected_reason is None:
            assert decision.status is AidStatus.GRANTED, (aid, decision)
            assert decision.amount_cents == aid.granted_cents, (aid, decision)
        else:
            assert decision.reason == AidReason(aid.expected_reason), (aid, decision)
    finance = plan.expected_finance()
    for kind in AidKind:
        amounts = [d.amount_cents or 0 for a, d in decisions if a.kind is kind and d.granted]
        by_kind = finance["by_kind"][kind.value]
        assert by_kind["amount_cents"] == sum(amounts)
        assert by_kind["granted"] == len(amounts)
        assert sum(m[kind.value] for m in finance["by_month"].values()) == sum(amounts)
        assert sum(s[kind.value] for s in finance["by_school"].values()) == sum(amounts)
        assert finance["budgets"][kind.value]["committed_cents"] <= plan.envelopes[kind]
    assert set(finance["by_school"]) <= {s.id for s in SCHOOLS.values() if s.opened <= year}
    outcomes = plan.expected_outcomes()
    assert set(outcomes["by_school"]) <= {s.id for s in SCHOOLS.values() if s.opened <= year}


def test_the_plan_reads_the_files_the_settings_point_the_services_to(tmp_path: Path) -> None:
    """E2C_AID_RULES_FILE with a mid-year revaluation and another cap, E2C_SCHOOLS_FILE with
    two sites: the plan follows both, and the aids rules still agree with it."""
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({
        "meal_rates": [{"from": "2021-03-15", "cents": 650}, {"from": "2021-07-01", "cents": 725}],
        "childcare_monthly_cap_cents": 25000,
    }), encoding="utf-8")
    schools = tmp_path / "schools.json"
    schools.write_text(json.dumps({"schools": [
        {"id": "albi", "name": "E2C Albi", "opened": 2020},
        {"id": "rodez", "name": "E2C Rodez", "opened": 2022},
    ]}), encoding="utf-8")
    settings = Settings(schools_file=schools, aid_rules_file=rates)
    rules = load_rules(rates)

    plan = plan_year(2021, 300, seed=3, settings=settings)

    assert set(schools_of(plan)) == {"albi"}
    meals = [a for t in plan.trainees for a in t.aids if a.kind is AidKind.MEALS]
    granted = [a for a in meals if a.expected_reason is None]
    assert {a.meal_rate_cents for a in granted} == {650, 725}
    assert all(a.period_start >= date(2021, 3, 15) for a in granted)
    assert all(a.meal_rate_cents == (650 if a.period_start < date(2021, 7, 1) else 725)
               for a in granted)
    childcare = [a for t in plan.trainees for a in t.aids if a.kind is AidKind.CHILDCARE]
    assert max(a.amount_cents or 0 for a in childcare if a.expected_reason is None) <= 25000
    assert {a.amount_cents for a in childcare if a.expected_reason} == {25001}
    for aid, decision in decided_by_the_service(plan, rules):
        expected = aid.granted_cents if aid.expected_reason is None else None
        assert (decision.amount_cents if decision.granted else None) == expected, aid
        assert decision.reason == (AidReason(aid.expected_reason) if aid.expected_reason
                                   else None), aid


def test_a_year_before_any_school_opened_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(YearNotSimulable, match="first opened in 2004"):
        plan_year(2003, 50, seed=1, settings=SHIPPED)
    empty = tmp_path / "schools.json"
    empty.write_text('{"schools": []}', encoding="utf-8")
    with pytest.raises(YearNotSimulable, match="empty"):
        plan_year(2024, 50, seed=1, settings=Settings(schools_file=empty))

    # The command says so and exits 2 before it looks for a stack (none runs here).
    assert simulate(2003, 50, 1, 0, 10, settings=SHIPPED) == 2
    error = capsys.readouterr().err
    assert "cannot simulate 2003" in error and "first opened in 2004" in error


# --- through the real pipeline -------------------------------------------------------------


@pytest.mark.infra
async def test_a_small_2021_year_checks_out_through_the_pipeline(stack: ServiceProcesses) -> None:
    """2021: no meal scheme yet, Castres and Montauban not open. The plan reads the files
    of the test stack's services (the same environment) and they report exactly what it
    expects."""
    plan = plan_year(2021, 40, seed=7, settings=Settings())
    early_meals = [a for t in plan.trainees for a in t.aids if a.expected_reason
                   == "invalid_period"]
    assert early_meals  # this seed has meals asked before the scheme: the rule is exercised
    endpoints = Endpoints.of(stack.kafka, stack.services["aids"].url,
                             stack.services["outcomes"].url, tokens.ADMIN)

    outcome = await Simulation(plan, endpoints, progress=Progress(live=False),
                               timeout=120).run()

    assert outcome.differences == []
    meals = outcome.finance_delta["by_kind"]["meals"]
    assert meals["rejected"] == len(early_meals) and meals["granted"] == 0
    by_school = outcome.outcomes_delta["by_school"]
    assert all(by_school.get(school, {}).get("entries", 0) == 0
               for school in ("castres", "montauban"))
