"""`e2c simulate`: a planned year through the running stack, checked against its plan."""

from __future__ import annotations

import asyncio
import sys

from deploy.simulation.plan import YearNotSimulable, plan_year
from deploy.simulation.run import Endpoints, Progress, Simulation, side_by_side
from shared.http import Role
from shared.schools import DEFAULT_SCHOOLS_FILE
from shared.settings import Settings


def stack_endpoints(settings: Settings) -> Endpoints:
    """The running stack's broker, services and a token allowed to read every report."""
    from deploy.cli import stack_tokens
    from deploy.stack import LocalStack

    stack = LocalStack(settings)
    return Endpoints.of(
        stack.kafka,
        aids_url=f"http://127.0.0.1:{settings.port('aids')}",
        outcomes_url=f"http://127.0.0.1:{settings.port('outcomes')}",
        token=admin_token(stack_tokens(settings)),
    )


def admin_token(tokens: dict[str, str]) -> str:
    for token, role in tokens.items():
        if role == Role.ADMIN:
            return token
    raise SystemExit("the tokens file has no admin token: the simulation reads every report")


def simulate(year: int, trainees: int, seed: int, rate: float, timeout: float,
             endpoints: Endpoints | None = None, settings: Settings | None = None) -> int:
    """Exit code 0 when every figure checks out, 1 on a difference, 2 for a year that cannot
    be simulated (told before the stack is touched)."""
    settings = settings or Settings()
    try:  # the registry and the rate table the services read (the same settings)
        plan = plan_year(year, trainees, seed, settings)
    except YearNotSimulable as error:
        registry = settings.schools_file or DEFAULT_SCHOOLS_FILE
        print(f"e2c simulate: {error} (registry: {registry})", file=sys.stderr)
        return 2
    endpoints = endpoints or stack_endpoints(settings)
    print(f"simulating {year}: {trainees} trainees, {plan.input_count()} inputs "
          f"(seed {seed}, rate {'unlimited' if rate <= 0 else f'{rate:g}/s'})")
    outcome = asyncio.run(
        Simulation(plan, endpoints, rate, Progress(sys.stderr.isatty()), timeout).run()
    )
    print(side_by_side(plan, outcome))
    rate_done = plan.input_count() / outcome.seconds if outcome.seconds else 0
    print(f"\n{plan.input_count()} inputs answered in {outcome.seconds:.1f}s "
          f"({rate_done:.0f} inputs/s end to end, phases included)")
    if outcome.differences:
        print(f"\nFAILED: {len(outcome.differences)} differences between the plan and the "
              "services' reports:", file=sys.stderr)
        for difference in outcome.differences[:50]:
            print(f"  {difference}", file=sys.stderr)
        return 1
    print("every figure the services report equals the simulation's own ground truth")
    return 0
