"""The aids store: trainees as aids sees them, held requests, decisions, the immutable
ledger, budget envelopes and the pre-aggregated totals the finance report reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import BigInteger
from sqlmodel import Field, SQLModel, col, select

from shared.contract import AidKind
from shared.db import UtcDateTime, add_to, insert_ignore
from shared.held import HeldInput, HeldQueue
from shared.messaging import Store

from . import domain


def now() -> datetime:
    return datetime.now(UTC)


class AidTrainee(SQLModel, table=True):
    """Learnt from enrollments.decided (school, date) and exits.decided (exit date)."""

    __tablename__ = "aid_trainee"

    trainee_id: str = Field(primary_key=True, max_length=64)
    school_id: str | None = Field(default=None, max_length=100)
    enrolled_on: date | None = None
    exited_on: date | None = None

    def as_domain(self) -> domain.Trainee | None:
        if self.enrolled_on is None or self.school_id is None:
            return None
        return domain.Trainee(self.school_id, self.enrolled_on, self.exited_on)


class HeldRequest(HeldInput, table=True):
    """A request that arrived before its trainee's enrollment, waiting to be decided."""

    __tablename__ = "aid_held_request"


class AidRequestRecord(SQLModel, table=True):
    """The decision taken on each request_id, to answer a re-sent request the same way."""

    __tablename__ = "aid_request"

    request_id: str = Field(primary_key=True, max_length=200)
    request_event_id: str = Field(max_length=36)
    trainee_id: str = Field(index=True, max_length=64)
    school_id: str | None = Field(default=None, max_length=100)
    kind: str = Field(max_length=16)
    status: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=40)
    quantity: int = Field(sa_type=BigInteger)
    amount_cents: int | None = Field(default=None, sa_type=BigInteger)
    period_start: date
    period_end: date
    decided_at: datetime = Field(sa_type=UtcDateTime)


class LedgerLine(SQLModel, table=True):
    """One grant, never edited: a correction is a new line pointing at the one it corrects."""

    __tablename__ = "aid_ledger"

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(index=True, max_length=200)
    request_event_id: str = Field(max_length=36)
    trainee_id: str = Field(index=True, max_length=64)
    school_id: str = Field(max_length=100)
    kind: str = Field(max_length=16)
    quantity: int = Field(sa_type=BigInteger)
    rate_cents: int | None = None
    amount_cents: int = Field(sa_type=BigInteger)
    period_start: date
    period_end: date
    year: int = Field(index=True)
    month: int
    granted_at: datetime = Field(sa_type=UtcDateTime)
    correction_of: int | None = None


class BudgetEnvelope(SQLModel, table=True):
    __tablename__ = "aid_budget"

    year: int = Field(primary_key=True)
    kind: str = Field(primary_key=True, max_length=16)
    envelope_cents: int = Field(sa_type=BigInteger)
    set_at: datetime = Field(sa_type=UtcDateTime)


class KindYearTotal(SQLModel, table=True):
    """Per kind and year of period_start: counts and the committed amount. Its row is locked
    while a grant is decided, so that no two instances can both take the last euros."""

    __tablename__ = "aid_total_kind_year"

    year: int = Field(primary_key=True)
    kind: str = Field(primary_key=True, max_length=16)
    granted: int = 0
    rejected: int = 0
    quantity: int = Field(default=0, sa_type=BigInteger)
    amount_cents: int = Field(default=0, sa_type=BigInteger)
    trainees: int = 0  # childcare: distinct trainees granted in the year


class SchoolYearTotal(SQLModel, table=True):
    __tablename__ = "aid_total_school_year"

    year: int = Field(primary_key=True)
    school_id: str = Field(primary_key=True, max_length=100)
    kind: str = Field(primary_key=True, max_length=16)
    amount_cents: int = Field(default=0, sa_type=BigInteger)


class MonthTotal(SQLModel, table=True):
    __tablename__ = "aid_total_month"

    year: int = Field(primary_key=True)
    month: int = Field(primary_key=True)
    kind: str = Field(primary_key=True, max_length=16)
    amount_cents: int = Field(default=0, sa_type=BigInteger)


class ChildcareTrainee(SQLModel, table=True):
    __tablename__ = "aid_childcare_trainee"

    year: int = Field(primary_key=True)
    trainee_id: str = Field(primary_key=True, max_length=64)


TABLES = tuple(
    model.__table__  # type: ignore[attr-defined]
    for model in (
        AidTrainee, HeldRequest, AidRequestRecord, LedgerLine, BudgetEnvelope,
        KindYearTotal, SchoolYearTotal, MonthTotal, ChildcareTrainee,
    )
)


@dataclass(frozen=True)
class YearTotals:
    """Everything the finance report of one year needs, read from the aggregates."""

    by_kind: dict[str, KindYearTotal]
    by_school: dict[str, dict[str, int]]
    by_month: dict[int, dict[str, int]]
    envelopes: dict[str, int]


class AidStore(Store):
    # --- trainees and held requests -------------------------------------------------------

    def trainee(self, trainee_id: str, for_update: bool = False) -> AidTrainee | None:
        return self.session.get(AidTrainee, trainee_id, with_for_update=for_update)

    def learn_enrollment(self, trainee_id: str, school_id: str, enrolled_on: date) -> None:
        insert_ignore(self.session, AidTrainee.__table__, {"trainee_id": trainee_id})  # type: ignore[arg-type]
        trainee = self.trainee(trainee_id, for_update=True)
        assert trainee is not None
        trainee.school_id, trainee.enrolled_on = school_id, enrolled_on
        self.session.add(trainee)

    def learn_exit(self, trainee_id: str, exited_on: date) -> None:
        insert_ignore(self.session, AidTrainee.__table__, {"trainee_id": trainee_id})  # type: ignore[arg-type]
        trainee = self.trainee(trainee_id, for_update=True)
        assert trainee is not None
        trainee.exited_on = exited_on
        self.session.add(trainee)

    @property
    def held(self) -> HeldQueue[HeldRequest]:
        return HeldQueue(self.session, HeldRequest)

    # --- decisions and grants -------------------------------------------------------------

    def decision(self, request_id: str) -> AidRequestRecord | None:
        return self.session.get(AidRequestRecord, request_id)

    def granted_to(self, trainee_id: str) -> domain.Granted:
        query = select(LedgerLine.kind, LedgerLine.period_start, LedgerLine.period_end).where(
            LedgerLine.trainee_id == trainee_id, col(LedgerLine.correction_of).is_(None)
        )
        rows = self.session.exec(query).all()
        return domain.Granted(
            has_laptop=any(kind == AidKind.LAPTOP for kind, _, _ in rows),
            meal_periods=tuple((s, e) for kind, s, e in rows if kind == AidKind.MEALS),
        )

    def lock_envelope(self, year: int, kind: AidKind) -> domain.Envelope:
        """Locks the kind's committed total for the year until the transaction ends."""
        insert_ignore(self.session, KindYearTotal.__table__, {"year": year, "kind": kind.value})  # type: ignore[arg-type]
        query = select(KindYearTotal).where(
            KindYearTotal.year == year, KindYearTotal.kind == kind.value
        ).with_for_update()
        total = self.session.exec(query).one()
        budget = self.session.get(BudgetEnvelope, (year, kind.value))
        return domain.Envelope(budget.envelope_cents if budget else None, total.amount_cents)

    def record_decision(self, record: AidRequestRecord) -> None:
        self.session.add(record)
        if record.status == "rejected":
            add_to(self.session, KindYearTotal.__table__,  # type: ignore[arg-type]
                   {"year": record.period_start.year, "kind": record.kind}, {"rejected": 1})

    def add_grant(self, line: LedgerLine) -> None:
        """The ledger line and every aggregate it feeds, in the caller's transaction."""
        self.session.add(line)
        year, kind = line.year, line.kind
        new_childcare_trainee = kind == AidKind.CHILDCARE and insert_ignore(
            self.session, ChildcareTrainee.__table__,  # type: ignore[arg-type]
            {"year": year, "trainee_id": line.trainee_id},
        )
        add_to(self.session, KindYearTotal.__table__, {"year": year, "kind": kind},  # type: ignore[arg-type]
               {"granted": 1, "quantity": line.quantity, "amount_cents": line.amount_cents,
                "trainees": int(new_childcare_trainee)})
        add_to(self.session, SchoolYearTotal.__table__,  # type: ignore[arg-type]
               {"year": year, "school_id": line.school_id, "kind": kind},
               {"amount_cents": line.amount_cents})
        add_to(self.session, MonthTotal.__table__,  # type: ignore[arg-type]
               {"year": year, "month": line.month, "kind": kind},
               {"amount_cents": line.amount_cents})

    # --- budgets and reports --------------------------------------------------------------

    def set_envelope(self, year: int, kind: AidKind, envelope_cents: int) -> None:
        budget = self.session.get(BudgetEnvelope, (year, kind.value))
        if budget is None:
            budget = BudgetEnvelope(year=year, kind=kind.value, envelope_cents=envelope_cents,
                                    set_at=now())
        budget.envelope_cents, budget.set_at = envelope_cents, now()
        self.session.add(budget)

    def year_totals(self, year: int) -> YearTotals:
        kinds = self.session.exec(select(KindYearTotal).where(KindYearTotal.year == year)).all()
        schools: dict[str, dict[str, int]] = {}
        for row in self.session.exec(
            select(SchoolYearTotal).where(SchoolYearTotal.year == year)
        ).all():
            schools.setdefault(row.school_id, {})[row.kind] = row.amount_cents
        months: dict[int, dict[str, int]] = {}
        for month_row in self.session.exec(select(MonthTotal).where(MonthTotal.year == year)).all():
            months.setdefault(month_row.month, {})[month_row.kind] = month_row.amount_cents
        envelopes = {
            budget.kind: budget.envelope_cents
            for budget in self.session.exec(
                select(BudgetEnvelope).where(BudgetEnvelope.year == year)
            ).all()
        }
        return YearTotals({row.kind: row for row in kinds}, schools, months, envelopes)

    def ledger_lines(self, year: int, chunk: int = 5000) -> Iterator[LedgerLine]:
        """The year's ledger in order, read in chunks (it may hold millions of lines)."""
        last_id = 0
        while True:
            query = (
                select(LedgerLine)
                .where(LedgerLine.year == year, col(LedgerLine.id) > last_id)
                .order_by(col(LedgerLine.id))
                .limit(chunk)
            )
            lines = list(self.session.exec(query).all())
            if not lines:
                return
            yield from lines
            last_id = lines[-1].id or last_id
