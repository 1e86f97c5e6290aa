"""Aid rules: what may be granted, for how much, against which envelope. No I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from shared.aid_rules import AidRules
from shared.contract import AidKind, AidReason, AidStatus


@dataclass(frozen=True)
class AidRequest:
    kind: AidKind
    quantity: int
    amount_cents: int | None
    period_start: date
    period_end: date

    @property
    def year(self) -> int:
        return self.period_start.year


@dataclass(frozen=True)
class Trainee:
    """What aids knows of a trainee: from enrollments.decided and exits.decided."""

    school_id: str
    enrolled_on: date
    exited_on: date | None = None


@dataclass(frozen=True)
class Granted:
    """A trainee's grants that the rules compare a new request with."""

    has_laptop: bool = False
    meal_periods: Sequence[tuple[date, date]] = field(default_factory=tuple)


@dataclass(frozen=True)
class Envelope:
    """One kind's budget for one year: None means no limit."""

    envelope_cents: int | None
    committed_cents: int

    def allows(self, amount_cents: int) -> bool:
        return self.envelope_cents is None or self.committed_cents + amount_cents <= (
            self.envelope_cents
        )


@dataclass(frozen=True)
class AidDecision:
    status: AidStatus
    reason: AidReason | None = None
    amount_cents: int | None = None
    rate_cents: int | None = None

    @property
    def granted(self) -> bool:
        return self.status is AidStatus.GRANTED


def refused(reason: AidReason) -> AidDecision:
    return AidDecision(AidStatus.REJECTED, reason)


def days_in(start: date, end: date) -> int:
    return (end - start).days + 1


def months_touched(start: date, end: date) -> int:
    """Calendar months the period touches: 31 Jan to 1 Feb touches two."""
    return (end.year - start.year) * 12 + end.month - start.month + 1


def overlaps(a: tuple[date, date], b: tuple[date, date]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def request_refusal(request: AidRequest, rules: AidRules) -> AidReason | None:
    """The rules that need nothing but the request itself (checked before the trainee)."""
    if request.period_start > request.period_end or (
        request.kind is AidKind.LAPTOP and request.period_start != request.period_end
    ):
        return AidReason.INVALID_PERIOD
    if request.kind is AidKind.MEALS and rules.meal_rate_on(request.period_start) is None:
        return AidReason.INVALID_PERIOD  # before the first rate: outside the scheme
    if request.quantity < 1 or (request.kind is not AidKind.MEALS and request.quantity != 1):
        return AidReason.INVALID_QUANTITY
    if request.kind is AidKind.MEALS:
        if request.amount_cents is not None:
            return AidReason.INVALID_AMOUNT  # the service computes the meals' amount
    elif request.amount_cents is None or request.amount_cents <= 0:
        return AidReason.INVALID_AMOUNT
    return None


def amount_of(request: AidRequest, rules: AidRules) -> tuple[int, int | None]:
    """(amount in cents, meal rate used) of a request that passed `request_refusal`."""
    if request.kind is AidKind.MEALS:
        rate = rules.meal_rate_on(request.period_start)
        assert rate is not None
        return request.quantity * rate, rate
    assert request.amount_cents is not None
    return request.amount_cents, None


def decide(
    request: AidRequest,
    trainee: Trainee,
    granted: Granted,
    envelope: Envelope,
    rules: AidRules,
) -> AidDecision:
    """The decision on a request of a known trainee; the first failing rule is the reason."""
    reason = request_refusal(request, rules) or _trainee_refusal(request, trainee, granted, rules)
    if reason is not None:
        return refused(reason)
    amount, rate = amount_of(request, rules)
    if not envelope.allows(amount):
        return refused(AidReason.BUDGET_EXHAUSTED)
    return AidDecision(AidStatus.GRANTED, amount_cents=amount, rate_cents=rate)


def _trainee_refusal(
    request: AidRequest, trainee: Trainee, granted: Granted, rules: AidRules
) -> AidReason | None:
    if request.period_start < trainee.enrolled_on:
        return AidReason.PERIOD_OUTSIDE_ENROLLMENT
    if trainee.exited_on is not None and request.period_end > trainee.exited_on:
        return AidReason.TRAINEE_EXITED
    if request.kind is AidKind.LAPTOP and granted.has_laptop:
        return AidReason.LAPTOP_ALREADY_GRANTED
    if request.kind is AidKind.MEALS:
        if request.quantity > days_in(request.period_start, request.period_end):
            return AidReason.TOO_MANY_MEALS
        period = (request.period_start, request.period_end)
        if any(overlaps(period, other) for other in granted.meal_periods):
            return AidReason.OVERLAPPING_PERIOD
    if request.kind is AidKind.CHILDCARE:
        cap = rules.childcare_monthly_cap_cents * months_touched(
            request.period_start, request.period_end
        )
        if request.amount_cents is not None and request.amount_cents > cap:
            return AidReason.OVER_CHILDCARE_CAP
    return None


def run_out_month(
    envelope_cents: int | None, committed_by_month: Sequence[int], year: int, today: date
) -> str | None:
    """The month ('YYYY-MM') the envelope runs out at the year's monthly burn rate so far.

    Already exceeded or reached: the month the cumulated grants reached it. Otherwise the
    current burn rate (committed / months elapsed) is projected; None when the envelope
    lasts the year, there is no envelope, or nothing was spent yet.
    """
    if envelope_cents is None:
        return None
    cumulated = 0
    for month, amount in enumerate(committed_by_month, start=1):
        cumulated += amount
        if cumulated >= envelope_cents and amount > 0:
            return f"{year}-{month:02d}"
    elapsed = 12 if year < today.year else (today.month if year == today.year else 0)
    committed = sum(committed_by_month)
    if elapsed == 0 or committed == 0:
        return None
    burn_per_month = committed / elapsed
    month = elapsed + math.ceil((envelope_cents - committed) / burn_per_month)
    return f"{year}-{month:02d}" if month <= 12 else None
