"""Aid rules of the contract (stage 3), every reason code and boundary. Pure: no I/O."""

from __future__ import annotations

import json
from datetime import date

import pytest

from services.aids.domain import (
    AidDecision,
    AidRequest,
    Envelope,
    Granted,
    Trainee,
    days_in,
    decide,
    months_touched,
    overlaps,
    request_refusal,
    run_out_month,
)
from shared.aid_rules import AidRules, load_rules
from shared.contract import AidKind, AidReason, AidStatus

# €7 a meal from 2024-01-01, childcare capped at €300 a month: the shipped configuration.
RULES = AidRules(meal_rates=((date(2024, 1, 1), 700),), childcare_monthly_cap_cents=30000)
# The same with a revaluation to €7.50 on 2026-01-01.
REVALUED = AidRules(
    meal_rates=((date(2024, 1, 1), 700), (date(2026, 1, 1), 750)),
    childcare_monthly_cap_cents=30000,
)
# A scheme that already ran in 2023, for the meals count of a non-leap February.
SINCE_2020 = AidRules(
    meal_rates=((date(2020, 1, 1), 650), (date(2024, 1, 1), 700)),
    childcare_monthly_cap_cents=30000,
)

TRAINEE = Trainee(school_id="toulouse", enrolled_on=date(2024, 1, 15))
NOTHING_GRANTED = Granted()
NO_LIMIT = Envelope(envelope_cents=None, committed_cents=0)

LAPTOP_VALUE = 45000


def meals(
    quantity: int = 20,
    start: date = date(2024, 2, 1),
    end: date = date(2024, 2, 29),
    amount_cents: int | None = None,
) -> AidRequest:
    return AidRequest(AidKind.MEALS, quantity, amount_cents, start, end)


def laptop(
    amount_cents: int | None = LAPTOP_VALUE,
    day: date = date(2024, 3, 4),
    quantity: int = 1,
    end: date | None = None,
) -> AidRequest:
    return AidRequest(AidKind.LAPTOP, quantity, amount_cents, day, end or day)


def childcare(
    amount_cents: int | None = 30000,
    start: date = date(2024, 3, 1),
    end: date = date(2024, 3, 31),
    quantity: int = 1,
) -> AidRequest:
    return AidRequest(AidKind.CHILDCARE, quantity, amount_cents, start, end)


def decision(
    request: AidRequest,
    trainee: Trainee = TRAINEE,
    granted: Granted = NOTHING_GRANTED,
    envelope: Envelope = NO_LIMIT,
    rules: AidRules = RULES,
) -> AidDecision:
    return decide(request, trainee, granted, envelope, rules)


def refusal(
    request: AidRequest,
    trainee: Trainee = TRAINEE,
    granted: Granted = NOTHING_GRANTED,
    envelope: Envelope = NO_LIMIT,
    rules: AidRules = RULES,
) -> AidReason | None:
    """The reason `decide` gives, None when it grants; checks the decision is consistent."""
    result = decision(request, trainee, granted, envelope, rules)
    if result.granted:
        assert result.status is AidStatus.GRANTED
        assert result.reason is None
        assert result.amount_cents is not None
        return None
    assert result.status is AidStatus.REJECTED
    assert result.reason is not None
    assert result.amount_cents is None
    return result.reason


# --- Calendar helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        (date(2024, 3, 4), date(2024, 3, 4), 1),
        (date(2024, 3, 4), date(2024, 3, 5), 2),
        (date(2024, 2, 1), date(2024, 2, 29), 29),  # leap year
        (date(2023, 2, 1), date(2023, 2, 28), 28),
        (date(2000, 2, 1), date(2000, 2, 29), 29),  # divisible by 400: leap
        (date(2100, 2, 1), date(2100, 2, 28), 28),  # divisible by 100 only: not leap
        (date(2024, 1, 1), date(2024, 12, 31), 366),
        (date(2023, 1, 1), date(2023, 12, 31), 365),
        (date(2024, 12, 31), date(2025, 1, 1), 2),
    ],
)
def test_days_in_counts_both_ends(start: date, end: date, days: int) -> None:
    assert days_in(start, end) == days


@pytest.mark.parametrize(
    ("start", "end", "months"),
    [
        (date(2024, 3, 4), date(2024, 3, 4), 1),
        (date(2024, 3, 1), date(2024, 3, 31), 1),
        (date(2024, 1, 31), date(2024, 2, 1), 2),  # two days, two months
        (date(2024, 1, 1), date(2024, 2, 29), 2),
        (date(2024, 1, 15), date(2024, 3, 15), 3),
        (date(2024, 1, 1), date(2024, 12, 31), 12),
        (date(2024, 12, 31), date(2025, 1, 1), 2),  # across the new year
        (date(2024, 11, 15), date(2025, 2, 15), 4),
        (date(2024, 1, 1), date(2025, 12, 31), 24),
    ],
)
def test_months_touched_counts_calendar_months(start: date, end: date, months: int) -> None:
    assert months_touched(start, end) == months


FEBRUARY = (date(2024, 2, 1), date(2024, 2, 29))


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        ((date(2024, 2, 29), date(2024, 3, 15)), True),  # shares the last day
        ((date(2024, 1, 15), date(2024, 2, 1)), True),  # shares the first day
        ((date(2024, 2, 10), date(2024, 2, 12)), True),  # inside
        ((date(2024, 1, 1), date(2024, 3, 31)), True),  # around
        (FEBRUARY, True),  # the same period
        ((date(2024, 3, 1), date(2024, 3, 31)), False),  # adjacent after
        ((date(2024, 1, 1), date(2024, 1, 31)), False),  # adjacent before
        ((date(2024, 5, 1), date(2024, 5, 31)), False),
    ],
)
def test_overlaps_is_inclusive_and_symmetric(other: tuple[date, date], expected: bool) -> None:
    assert overlaps(FEBRUARY, other) is expected
    assert overlaps(other, FEBRUARY) is expected


# --- Configuration -------------------------------------------------------------------------


def test_shipped_rules_are_seven_euros_from_2024_and_a_300_euro_cap() -> None:
    rules = load_rules()
    assert rules.meal_rates == ((date(2024, 1, 1), 700),)
    assert rules.childcare_monthly_cap_cents == 30000
    assert rules.meal_rate_on(date(2024, 1, 1)) == 700
    assert rules.meal_rate_on(date(2023, 12, 31)) is None


def test_load_rules_reads_a_given_file_and_sorts_the_rates(tmp_path) -> None:
    path = tmp_path / "rates.json"
    path.write_text(
        json.dumps(
            {
                "meal_rates": [
                    {"from": "2026-01-01", "cents": 750},
                    {"from": "2024-01-01", "cents": 700},
                ],
                "childcare_monthly_cap_cents": 25000,
            }
        ),
        encoding="utf-8",
    )
    rules = load_rules(path)
    assert rules == AidRules(((date(2024, 1, 1), 700), (date(2026, 1, 1), 750)), 25000)


@pytest.mark.parametrize(
    ("day", "rate"),
    [
        (date(2023, 12, 31), None),  # before the first rate: outside the scheme
        (date(2024, 1, 1), 700),
        (date(2025, 12, 31), 700),
        (date(2026, 1, 1), 750),
        (date(2030, 6, 1), 750),
    ],
)
def test_meal_rate_on_is_the_latest_rate_in_force(day: date, rate: int | None) -> None:
    assert REVALUED.meal_rate_on(day) == rate


def test_a_request_counts_in_the_year_of_its_period_start() -> None:
    assert meals(quantity=3, start=date(2024, 12, 30), end=date(2025, 1, 2)).year == 2024


# --- request_refusal: what the request alone says -----------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        meals(),
        meals(quantity=1, start=date(2024, 1, 1), end=date(2024, 1, 1)),
        laptop(),
        laptop(amount_cents=1),
        childcare(),
        childcare(amount_cents=1, start=date(2024, 1, 1), end=date(2024, 12, 31)),
    ],
    ids=lambda r: f"{r.kind}-{r.quantity}-{r.amount_cents}",
)
def test_a_well_formed_request_passes(request_: AidRequest) -> None:
    assert request_refusal(request_, RULES) is None


@pytest.mark.parametrize(
    "request_",
    [
        meals(start=date(2024, 3, 1), end=date(2024, 2, 29)),
        laptop(day=date(2024, 3, 5), end=date(2024, 3, 4)),
        laptop(day=date(2024, 3, 4), end=date(2024, 3, 5)),  # a laptop: one handover day
        childcare(start=date(2024, 4, 1), end=date(2024, 3, 31)),
        meals(quantity=1, start=date(2023, 12, 31), end=date(2023, 12, 31)),  # before €7
        meals(quantity=5, start=date(2023, 12, 31), end=date(2024, 1, 4)),
    ],
    ids=[
        "meals-end-before-start",
        "laptop-end-before-start",
        "laptop-over-two-days",
        "childcare-end-before-start",
        "meals-before-first-rate",
        "meals-starting-before-first-rate",
    ],
)
def test_invalid_period(request_: AidRequest) -> None:
    assert request_refusal(request_, RULES) is AidReason.INVALID_PERIOD
    assert refusal(request_) is AidReason.INVALID_PERIOD


@pytest.mark.parametrize(
    "request_",
    [
        meals(quantity=0),
        meals(quantity=-1),
        laptop(quantity=0),
        laptop(quantity=-1),
        laptop(quantity=2),
        childcare(quantity=0),
        childcare(quantity=-3),
        childcare(quantity=2),
    ],
    ids=lambda r: f"{r.kind}-{r.quantity}",
)
def test_invalid_quantity(request_: AidRequest) -> None:
    assert request_refusal(request_, RULES) is AidReason.INVALID_QUANTITY
    assert refusal(request_) is AidReason.INVALID_QUANTITY


@pytest.mark.parametrize(
    "request_",
    [
        meals(amount_cents=0),  # the service computes it: even 0 is refused
        meals(amount_cents=14000),
        meals(amount_cents=-1),
        laptop(amount_cents=None),
        laptop(amount_cents=0),
        laptop(amount_cents=-1),
        childcare(amount_cents=None),
        childcare(amount_cents=0),
        childcare(amount_cents=-30000),
    ],
    ids=lambda r: f"{r.kind}-{r.amount_cents}",
)
def test_invalid_amount(request_: AidRequest) -> None:
    assert request_refusal(request_, RULES) is AidReason.INVALID_AMOUNT
    assert refusal(request_) is AidReason.INVALID_AMOUNT


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        # invalid_period beats invalid_quantity and invalid_amount
        (
            meals(quantity=0, amount_cents=5, start=date(2024, 3, 1), end=date(2024, 2, 1)),
            AidReason.INVALID_PERIOD,
        ),
        (
            meals(quantity=0, amount_cents=5, start=date(2023, 12, 1), end=date(2023, 12, 2)),
            AidReason.INVALID_PERIOD,
        ),
        (
            laptop(quantity=2, amount_cents=None, day=date(2024, 3, 4), end=date(2024, 3, 6)),
            AidReason.INVALID_PERIOD,
        ),
        (
            childcare(quantity=0, amount_cents=0, start=date(2024, 4, 1), end=date(2024, 3, 1)),
            AidReason.INVALID_PERIOD,
        ),
        # invalid_quantity beats invalid_amount
        (meals(quantity=0, amount_cents=700), AidReason.INVALID_QUANTITY),
        (laptop(quantity=2, amount_cents=0), AidReason.INVALID_QUANTITY),
        (childcare(quantity=-1, amount_cents=None), AidReason.INVALID_QUANTITY),
    ],
    ids=[
        "period-over-meals-quantity-amount",
        "period-before-rate-over-quantity-amount",
        "period-over-laptop-quantity-amount",
        "period-over-childcare-quantity-amount",
        "quantity-over-meals-amount",
        "quantity-over-laptop-amount",
        "quantity-over-childcare-amount",
    ],
)
def test_request_rules_give_the_first_reason(request_: AidRequest, reason: AidReason) -> None:
    assert request_refusal(request_, RULES) is reason


# --- decide: grants and amounts ------------------------------------------------------------


def test_meals_are_granted_at_quantity_times_the_rate() -> None:
    result = decision(meals(quantity=20))
    assert result.granted
    assert result.status is AidStatus.GRANTED
    assert result.reason is None
    assert result.amount_cents == 20 * 700
    assert result.rate_cents == 700


def test_meals_with_the_shipped_rules() -> None:
    result = decision(meals(quantity=20), rules=load_rules())
    assert (result.status, result.amount_cents, result.rate_cents) == (
        AidStatus.GRANTED,
        14000,
        700,
    )


def test_laptop_and_childcare_are_granted_at_their_amount_without_rate() -> None:
    for request_ in (laptop(amount_cents=45000), childcare(amount_cents=12345)):
        result = decision(request_)
        assert result.granted
        assert result.amount_cents == request_.amount_cents
        assert result.rate_cents is None


@pytest.mark.parametrize(
    ("start", "end", "quantity", "rate"),
    [
        (date(2025, 12, 31), date(2025, 12, 31), 1, 700),
        (date(2025, 12, 31), date(2026, 1, 5), 6, 700),  # starts before: old rate throughout
        (date(2026, 1, 1), date(2026, 1, 5), 5, 750),
        (date(2025, 12, 1), date(2025, 12, 31), 22, 700),
    ],
)
def test_meals_use_the_rate_in_force_on_period_start(
    start: date, end: date, quantity: int, rate: int
) -> None:
    result = decision(meals(quantity=quantity, start=start, end=end), rules=REVALUED)
    assert result.granted
    assert result.rate_cents == rate
    assert result.amount_cents == quantity * rate


def test_a_future_revaluation_never_changes_a_past_grant() -> None:
    request_ = meals(quantity=20, start=date(2025, 3, 1), end=date(2025, 3, 31))
    before = decision(request_, rules=RULES)
    after = decision(request_, rules=REVALUED)
    assert before.amount_cents == after.amount_cents == 14000
    assert before.rate_cents == after.rate_cents == 700


# --- decide: the trainee ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda start: meals(quantity=1, start=start, end=start),
        lambda start: laptop(day=start),
        lambda start: childcare(start=start, end=date(2024, 1, 31)),
    ],
    ids=["meals", "laptop", "childcare"],
)
def test_period_outside_enrollment(make) -> None:
    enrolled_on = TRAINEE.enrolled_on
    assert refusal(make(enrolled_on)) is None
    assert refusal(make(date(2024, 1, 14))) is AidReason.PERIOD_OUTSIDE_ENROLLMENT


def test_a_period_ending_after_enrollment_still_needs_to_start_within_it() -> None:
    request_ = meals(quantity=5, start=date(2024, 1, 10), end=date(2024, 1, 31))
    assert refusal(request_) is AidReason.PERIOD_OUTSIDE_ENROLLMENT


EXITED = Trainee(school_id="toulouse", enrolled_on=date(2024, 1, 15), exited_on=date(2024, 3, 15))


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (meals(quantity=10, start=date(2024, 3, 1), end=date(2024, 3, 15)), None),
        (meals(quantity=10, start=date(2024, 3, 1), end=date(2024, 3, 16)), "exited"),
        (meals(quantity=1, start=date(2024, 3, 20), end=date(2024, 3, 20)), "exited"),
        (laptop(day=date(2024, 3, 15)), None),
        (laptop(day=date(2024, 3, 16)), "exited"),
        (childcare(start=date(2024, 3, 1), end=date(2024, 3, 15)), None),
        (childcare(start=date(2024, 3, 1), end=date(2024, 3, 31)), "exited"),
    ],
    ids=[
        "meals-to-exit-day",
        "meals-past-exit-day",
        "meals-after-exit",
        "laptop-on-exit-day",
        "laptop-after-exit",
        "childcare-to-exit-day",
        "childcare-past-exit",
    ],
)
def test_trainee_exited(request_: AidRequest, reason: str | None) -> None:
    expected = AidReason.TRAINEE_EXITED if reason else None
    assert refusal(request_, trainee=EXITED) is expected
    # the same request without a known exit
    assert refusal(request_) is None


def test_period_outside_enrollment_beats_trainee_exited() -> None:
    trainee = Trainee("toulouse", enrolled_on=date(2024, 3, 1), exited_on=date(2024, 3, 10))
    request_ = meals(quantity=5, start=date(2024, 2, 20), end=date(2024, 3, 20))
    assert refusal(request_, trainee=trainee) is AidReason.PERIOD_OUTSIDE_ENROLLMENT


# --- decide: laptop -----------------------------------------------------------------------


def test_one_laptop_per_trainee_ever() -> None:
    assert refusal(laptop()) is None
    had_one = Granted(has_laptop=True)
    assert refusal(laptop(), granted=had_one) is AidReason.LAPTOP_ALREADY_GRANTED
    assert (
        refusal(laptop(day=date(2027, 9, 1)), granted=had_one) is AidReason.LAPTOP_ALREADY_GRANTED
    )


def test_a_laptop_does_not_stop_other_aid() -> None:
    had_one = Granted(has_laptop=True)
    assert refusal(meals(), granted=had_one) is None
    assert refusal(childcare(), granted=had_one) is None


# --- decide: meals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "quantity", "allowed"),
    [
        (date(2024, 2, 1), date(2024, 2, 29), 29, True),  # leap February
        (date(2024, 2, 1), date(2024, 2, 29), 30, False),
        (date(2023, 2, 1), date(2023, 2, 28), 28, True),
        (date(2023, 2, 1), date(2023, 2, 28), 29, False),
        (date(2024, 3, 4), date(2024, 3, 4), 1, True),  # one day, one meal
        (date(2024, 3, 4), date(2024, 3, 4), 2, False),
        (date(2024, 12, 31), date(2025, 1, 1), 2, True),
        (date(2024, 12, 31), date(2025, 1, 1), 3, False),
        (date(2024, 2, 1), date(2025, 1, 31), 366, True),  # a year with 29 February
        (date(2024, 2, 1), date(2025, 1, 31), 367, False),
    ],
)
def test_at_most_one_meal_a_day(start: date, end: date, quantity: int, allowed: bool) -> None:
    trainee = Trainee("toulouse", enrolled_on=date(2023, 1, 2))
    expected = None if allowed else AidReason.TOO_MANY_MEALS
    request_ = meals(quantity=quantity, start=start, end=end)
    assert refusal(request_, trainee=trainee, rules=SINCE_2020) is expected


def test_meals_counted_against_2023_use_the_2023_rate() -> None:
    trainee = Trainee("toulouse", enrolled_on=date(2023, 1, 2))
    request_ = meals(quantity=28, start=date(2023, 2, 1), end=date(2023, 2, 28))
    result = decision(request_, trainee=trainee, rules=SINCE_2020)
    assert (result.amount_cents, result.rate_cents) == (28 * 650, 650)


GRANTED_FEBRUARY = Granted(meal_periods=(FEBRUARY,))


@pytest.mark.parametrize(
    ("start", "end", "overlapping"),
    [
        (date(2024, 2, 29), date(2024, 3, 15), True),  # touches on one day
        (date(2024, 1, 15), date(2024, 2, 1), True),
        (date(2024, 2, 10), date(2024, 2, 10), True),
        (date(2024, 1, 20), date(2024, 3, 10), True),
        (date(2024, 3, 1), date(2024, 3, 31), False),  # adjacent after
        (date(2024, 1, 15), date(2024, 1, 31), False),  # adjacent before
    ],
)
def test_meal_periods_never_overlap(start: date, end: date, overlapping: bool) -> None:
    expected = AidReason.OVERLAPPING_PERIOD if overlapping else None
    request_ = meals(quantity=1, start=start, end=end)
    assert refusal(request_, granted=GRANTED_FEBRUARY) is expected


def test_overlap_is_checked_against_every_granted_meal_period() -> None:
    granted = Granted(
        meal_periods=(
            (date(2024, 1, 15), date(2024, 1, 31)),
            FEBRUARY,
            (date(2024, 4, 1), date(2024, 4, 30)),
        )
    )
    assert (
        refusal(meals(quantity=1, start=date(2024, 3, 1), end=date(2024, 3, 31)), granted=granted)
        is None
    )
    assert (
        refusal(meals(quantity=1, start=date(2024, 3, 1), end=date(2024, 4, 1)), granted=granted)
        is AidReason.OVERLAPPING_PERIOD
    )


def test_meal_periods_do_not_constrain_laptop_or_childcare() -> None:
    assert refusal(laptop(day=date(2024, 2, 10)), granted=GRANTED_FEBRUARY) is None
    assert (
        refusal(childcare(start=date(2024, 2, 1), end=date(2024, 2, 29)), granted=GRANTED_FEBRUARY)
        is None
    )


# --- decide: childcare --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "cap"),
    [
        (date(2024, 3, 1), date(2024, 3, 31), 30000),
        (date(2024, 3, 10), date(2024, 3, 10), 30000),
        (date(2024, 1, 31), date(2024, 2, 1), 60000),  # two days, two months
        (date(2024, 2, 15), date(2024, 4, 14), 90000),
        (date(2024, 1, 15), date(2024, 12, 31), 360000),
        (date(2024, 12, 1), date(2025, 1, 31), 60000),
    ],
)
def test_childcare_cap_is_the_monthly_cap_times_months_touched(
    start: date, end: date, cap: int
) -> None:
    assert refusal(childcare(amount_cents=cap, start=start, end=end)) is None
    assert (
        refusal(childcare(amount_cents=cap + 1, start=start, end=end))
        is AidReason.OVER_CHILDCARE_CAP
    )


def test_childcare_cap_is_configuration() -> None:
    rules = AidRules(RULES.meal_rates, childcare_monthly_cap_cents=25000)
    assert refusal(childcare(amount_cents=25000), rules=rules) is None
    assert refusal(childcare(amount_cents=25001), rules=rules) is AidReason.OVER_CHILDCARE_CAP


def test_the_childcare_cap_does_not_apply_to_a_laptop() -> None:
    assert refusal(laptop(amount_cents=100000)) is None


# --- decide: budgets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "amount"),
    [(meals(quantity=20), 14000), (laptop(amount_cents=45000), 45000), (childcare(), 30000)],
    ids=["meals", "laptop", "childcare"],
)
def test_a_grant_never_takes_the_committed_total_over_the_envelope(
    request_: AidRequest, amount: int
) -> None:
    envelope_cents = 1_000_000
    exactly = Envelope(envelope_cents, committed_cents=envelope_cents - amount)
    one_cent_over = Envelope(envelope_cents, committed_cents=envelope_cents - amount + 1)
    assert refusal(request_, envelope=exactly) is None
    assert decision(request_, envelope=exactly).amount_cents == amount
    assert refusal(request_, envelope=one_cent_over) is AidReason.BUDGET_EXHAUSTED


def test_an_envelope_exactly_the_amount_with_nothing_committed_is_enough() -> None:
    assert refusal(meals(quantity=20), envelope=Envelope(14000, 0)) is None
    assert refusal(meals(quantity=20), envelope=Envelope(13999, 0)) is AidReason.BUDGET_EXHAUSTED


def test_no_envelope_means_no_limit() -> None:
    assert refusal(laptop(), envelope=Envelope(None, committed_cents=10**12)) is None


@pytest.mark.parametrize(
    "request_",
    [meals(quantity=1, start=date(2024, 3, 4), end=date(2024, 3, 4)), laptop(amount_cents=1)],
    ids=["meals", "laptop"],
)
def test_an_envelope_of_zero_grants_nothing(request_: AidRequest) -> None:
    assert refusal(request_, envelope=Envelope(0, 0)) is AidReason.BUDGET_EXHAUSTED


def test_an_envelope_already_overrun_grants_nothing() -> None:
    assert refusal(laptop(), envelope=Envelope(100000, 120000)) is AidReason.BUDGET_EXHAUSTED


def test_envelope_allows() -> None:
    assert Envelope(None, 5).allows(10**9)
    assert Envelope(100, 40).allows(60)
    assert not Envelope(100, 40).allows(61)
    assert not Envelope(0, 0).allows(1)


# --- decide: the first applicable reason --------------------------------------------------

EXITED_EARLY = Trainee("toulouse", enrolled_on=date(2024, 3, 1), exited_on=date(2024, 3, 10))
HAD_EVERYTHING = Granted(has_laptop=True, meal_periods=(FEBRUARY,))
EMPTY = Envelope(0, 0)


@pytest.mark.parametrize(
    ("request_", "trainee", "granted", "reason"),
    [
        # request rules come before anything about the trainee
        (
            meals(quantity=0, amount_cents=1, start=date(2024, 2, 10), end=date(2024, 2, 1)),
            EXITED_EARLY,
            HAD_EVERYTHING,
            AidReason.INVALID_PERIOD,
        ),
        (
            laptop(quantity=2, amount_cents=0, day=date(2024, 2, 1)),
            EXITED_EARLY,
            HAD_EVERYTHING,
            AidReason.INVALID_QUANTITY,
        ),
        (
            childcare(amount_cents=None, start=date(2024, 2, 1), end=date(2024, 3, 31)),
            EXITED_EARLY,
            HAD_EVERYTHING,
            AidReason.INVALID_AMOUNT,
        ),
        (
            meals(quantity=40, amount_cents=0, start=date(2024, 2, 1), end=date(2024, 3, 31)),
            EXITED_EARLY,
            HAD_EVERYTHING,
            AidReason.INVALID_AMOUNT,
        ),
        # period_outside_enrollment beats trainee_exited and the kind's rules
        (
            laptop(day=date(2024, 2, 28)),
            Trainee("toulouse", enrolled_on=date(2024, 3, 1), exited_on=date(2024, 2, 27)),
            HAD_EVERYTHING,
            AidReason.PERIOD_OUTSIDE_ENROLLMENT,
        ),
        (
            meals(quantity=60, start=date(2024, 2, 20), end=date(2024, 3, 20)),
            EXITED_EARLY,
            HAD_EVERYTHING,
            AidReason.PERIOD_OUTSIDE_ENROLLMENT,
        ),
        (
            childcare(amount_cents=90000, start=date(2024, 2, 20), end=date(2024, 3, 20)),
            EXITED_EARLY,
            NOTHING_GRANTED,
            AidReason.PERIOD_OUTSIDE_ENROLLMENT,
        ),
        # trainee_exited beats the kind's rules
        (
            laptop(day=date(2024, 3, 11)),
            EXITED_EARLY,
            HAD_EVERYTHING,
            AidReason.TRAINEE_EXITED,
        ),
        (
            meals(quantity=40, start=date(2024, 3, 1), end=date(2024, 3, 31)),
            EXITED_EARLY,
            Granted(meal_periods=((date(2024, 3, 5), date(2024, 3, 6)),)),
            AidReason.TRAINEE_EXITED,
        ),
        (
            childcare(amount_cents=90000, start=date(2024, 3, 1), end=date(2024, 3, 31)),
            EXITED_EARLY,
            NOTHING_GRANTED,
            AidReason.TRAINEE_EXITED,
        ),
        # too_many_meals beats overlapping_period
        (
            meals(quantity=30, start=date(2024, 2, 1), end=date(2024, 2, 29)),
            TRAINEE,
            HAD_EVERYTHING,
            AidReason.TOO_MANY_MEALS,
        ),
    ],
    ids=[
        "invalid_period-first",
        "invalid_quantity-before-trainee",
        "invalid_amount-before-trainee",
        "invalid_amount-before-too_many_meals",
        "outside-enrollment-over-exited-laptop",
        "outside-enrollment-over-exited-meals",
        "outside-enrollment-over-exited-childcare",
        "exited-over-laptop_already_granted",
        "exited-over-too_many_meals-overlap",
        "exited-over-childcare-cap",
        "too_many_meals-over-overlap",
    ],
)
def test_the_first_applicable_reason_is_given(
    request_: AidRequest, trainee: Trainee, granted: Granted, reason: AidReason
) -> None:
    # an empty envelope would refuse every one of them too: it comes last
    assert refusal(request_, trainee=trainee, granted=granted, envelope=EMPTY) is reason


@pytest.mark.parametrize(
    ("request_", "granted", "reason"),
    [
        (laptop(), Granted(has_laptop=True), AidReason.LAPTOP_ALREADY_GRANTED),
        (meals(quantity=30), NOTHING_GRANTED, AidReason.TOO_MANY_MEALS),
        (meals(quantity=1), GRANTED_FEBRUARY, AidReason.OVERLAPPING_PERIOD),
        (childcare(amount_cents=30001), NOTHING_GRANTED, AidReason.OVER_CHILDCARE_CAP),
    ],
    ids=["laptop", "too_many_meals", "overlap", "childcare-cap"],
)
def test_budget_exhausted_comes_after_every_other_rule(
    request_: AidRequest, granted: Granted, reason: AidReason
) -> None:
    assert refusal(request_, granted=granted, envelope=EMPTY) is reason
    assert refusal(request_, granted=granted, envelope=NO_LIMIT) is reason


# --- run_out_month ------------------------------------------------------------------------

TODAY = date(2024, 4, 15)


def by_month(*amounts: int) -> list[int]:
    """Committed cents for January, February, …, padded with zeros to twelve months."""
    return [*amounts, *([0] * (12 - len(amounts)))]


def test_no_envelope_never_runs_out() -> None:
    assert run_out_month(None, by_month(10**9), 2024, TODAY) is None


def test_nothing_spent_never_runs_out() -> None:
    assert run_out_month(1000, by_month(), 2024, TODAY) is None
    assert run_out_month(0, by_month(), 2024, TODAY) is None


@pytest.mark.parametrize(
    ("envelope", "committed", "month"),
    [
        (1000, by_month(400, 300, 300), "2024-03"),  # exactly reached in March
        (1000, by_month(400, 300, 301), "2024-03"),  # exceeded in March
        (1000, by_month(1000), "2024-01"),
        (1000, by_month(400, 700, 100), "2024-02"),  # the first month it was reached
        (1000, by_month(0, 0, 1000), "2024-03"),
        (0, by_month(0, 0, 0, 50), "2024-04"),
    ],
)
def test_an_envelope_already_reached_ran_out_that_month(
    envelope: int, committed: list[int], month: str
) -> None:
    assert run_out_month(envelope, committed, 2024, TODAY) == month


@pytest.mark.parametrize(
    ("envelope", "committed", "today", "month"),
    [
        # 400 in January–April: 100 a month, 600 left: six more months
        (1000, by_month(100, 100, 100, 100), TODAY, "2024-10"),
        (1000, by_month(400), TODAY, "2024-10"),  # the burn rate spreads over elapsed months
        # 87.5 a month: 787.5 at the end of September, 875 at the end of October
        (800, by_month(350), TODAY, "2024-10"),
        (1001, by_month(100, 100, 100, 100), TODAY, "2024-11"),
        (1200, by_month(100, 100, 100, 100), TODAY, "2024-12"),  # spent at the end of December
        (1201, by_month(100, 100, 100, 100), TODAY, None),  # lasts the year
        (10_000, by_month(100, 100, 100, 100), TODAY, None),
        (1000, by_month(100), date(2024, 1, 31), "2024-10"),  # January counts as one month
        (1000, by_month(100, 100, 100, 100, 100), date(2024, 5, 1), "2024-10"),
    ],
)
def test_the_burn_rate_so_far_is_projected(
    envelope: int, committed: list[int], today: date, month: str | None
) -> None:
    assert run_out_month(envelope, committed, 2024, today) == month


def test_a_past_year_burns_over_twelve_months() -> None:
    committed = by_month(100, 100, 100, 100, 100, 100)  # 600 spent, in the first half only
    # over 6 months it would have run out in October; over 12 it lasted the year
    assert run_out_month(1000, committed, 2023, TODAY) is None
    assert run_out_month(600, committed, 2023, TODAY) == "2023-06"


def test_a_future_year_is_not_projected() -> None:
    assert run_out_month(1000, by_month(100), 2025, TODAY) is None
    assert run_out_month(1000, by_month(), 2025, TODAY) is None
