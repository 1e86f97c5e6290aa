"""A page answers within a second with a year of data: a simulated network year published
through the session stack's broker (deploy/simulation: its plan is the ground truth), then
each console page of that year read by a signed-in client and timed.

A page is one line of PAGES: (its address, the token of a role that opens it)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import pytest

from console.formats import euros
from deploy.harness import ServiceProcesses
from deploy.simulation.plan import YearPlan, plan_year
from deploy.simulation.run import Endpoints, Progress, Simulation
from shared.settings import Settings
from tests import tokens
from tests.console.conftest import Console, signin

pytestmark = pytest.mark.infra

# Nobody else publishes 2020 into the session stack (the simulation's own test uses 2021,
# the console's other tests 2025 and 2011-2012). Meals start in 2024: this year's are refused.
YEAR = 2020
TRAINEES = 1000  # the network's year, as `make run` simulates it
SECOND = 1.0

PAGES: tuple[tuple[str, str], ...] = (
    (f"/finance?year={YEAR}", tokens.FINANCE),
    (f"/indicators?year={YEAR}", tokens.OUTCOMES),
    (f"/partners/mission-locale-1?year={YEAR}", tokens.ADMIN),  # an agency of the plan
    ("/operations", tokens.OPS),
)


@dataclass
class SimulatedYear:
    plan: YearPlan
    seconds: float  # publishing and every answer


@pytest.fixture(scope="module")
async def simulated_year(stack: ServiceProcesses) -> SimulatedYear:
    plan = plan_year(YEAR, TRAINEES, seed=2020, settings=Settings())
    endpoints = Endpoints.of(stack.kafka, stack.services["aids"].url,
                             stack.services["outcomes"].url, tokens.ADMIN)
    outcome = await Simulation(plan, endpoints, progress=Progress(live=False),
                               timeout=120).run()
    # The services report what the plan decided (every difference named if not).
    assert outcome.differences == [], "\n".join(outcome.differences)
    print(f"\n{YEAR}: {plan.input_count()} inputs published and answered in "
          f"{outcome.seconds:.1f} s")
    return SimulatedYear(plan, outcome.seconds)


@pytest.mark.parametrize(("url", "token"), PAGES, ids=[url for url, _ in PAGES])
def test_a_page_answers_within_a_second_with_a_year_of_data(
    console: Console, simulated_year: SimulatedYear, url: str, token: str
) -> None:
    client, answer = signin(console, token)
    try:
        assert answer.status_code == 303
        started = time.monotonic()
        page = client.get(url)
        seconds = time.monotonic() - started
    finally:
        client.close()

    assert page.status_code == 200, page.text[-500:]
    assert seconds < SECOND, f"{url}: {seconds:.2f} s with {TRAINEES} trainees"


def test_the_finance_page_timed_holds_the_simulated_year(
    console: Console, simulated_year: SimulatedYear
) -> None:
    """The page timed above is not a fast empty one: its total is the plan's."""
    expected = simulated_year.plan.expected_finance()["by_kind"]
    total = sum(kind["amount_cents"] for kind in expected.values())
    assert total > 0
    client, _ = signin(console, tokens.FINANCE)
    try:
        page = client.get("/finance", params={"year": YEAR})
    finally:
        client.close()
    shown = re.search(r'id="total"[^>]*>([^<]+)<', page.text)
    assert shown is not None and shown.group(1).strip() == euros(total)
