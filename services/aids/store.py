"""The aids store: trainees as aids sees them, held requests, decisions, the immutable
ledger, budget envelopes and the pre-aggregated totals the finance report reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Select, insert, tuple_
from sqlmodel import Field, SQLModel, col, select

from shared.contract import AidKind
from shared.db import (
    UtcDateTime,
    add_to,
    add_to_many,
    insert_ignore,
    insert_ignore_many,
    set_many,
)
from shared.held import HeldInput, HeldQueue
from shared.messaging import BatchScope, NeedsIsolation, Store

from . import domain


def now() -> datetime:
    return datetime.now(UTC)


class AidTrainee(SQLModel, table=True):
    """Learnt from enrollments.decided (school, date) and exits.decided (exit date); read
    as a `TraineeRow`."""

    __tablename__ = "aid_trainee"

    trainee_id: str = Field(primary_key=True, max_length=64)
    school_id: str | None = Field(default=None, max_length=100)
    enrolled_on: date | None = None
    exited_on: date | None = None


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
(TRAINEE, HELD, DECISION, LEDGER, BUDGET, KIND_TOTAL, SCHOOL_TOTAL, MONTH_TOTAL,
 CHILDCARE) = TABLES
TRAINEE_READ = (TRAINEE.c.trainee_id, TRAINEE.c.school_id, TRAINEE.c.enrolled_on,
                TRAINEE.c.exited_on)


def _granted_query(which: ColumnElement[bool]) -> Select[Any]:
    """(trainee_id, kind, period_start, period_end) of the grants not corrected."""
    return select(LEDGER.c.trainee_id, LEDGER.c.kind, LEDGER.c.period_start,
                  LEDGER.c.period_end).where(which, LEDGER.c.correction_of.is_(None))


@dataclass(frozen=True)
class YearTotals:
    """Everything the finance report of one year needs, read from the aggregates."""

    by_kind: dict[str, KindYearTotal]
    by_school: dict[str, dict[str, int]]
    by_month: dict[int, dict[str, int]]
    envelopes: dict[str, int]


@dataclass(frozen=True)
class TraineeRow:
    """A row of `aid_trainee` as read (or as the batch has learnt it so far)."""

    school_id: str | None = None
    enrolled_on: date | None = None
    exited_on: date | None = None

    def as_domain(self) -> domain.Trainee | None:
        if self.enrolled_on is None or self.school_id is None:
            return None
        return domain.Trainee(self.school_id, self.enrolled_on, self.exited_on)


@dataclass(frozen=True)
class DecisionRow:
    """The decision taken on a request: a row of `aid_request`."""

    request_id: str
    request_event_id: str
    trainee_id: str
    school_id: str | None
    kind: str
    status: str
    reason: str | None
    quantity: int
    amount_cents: int | None
    period_start: date
    period_end: date
    decided_at: datetime

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"


@dataclass(frozen=True)
class GrantRow:
    """A grant: a row of `aid_ledger` (its id given by the store)."""

    request_id: str
    request_event_id: str
    trainee_id: str
    school_id: str
    kind: str
    quantity: int
    rate_cents: int | None
    amount_cents: int
    period_start: date
    period_end: date
    year: int
    month: int
    granted_at: datetime


@dataclass
class GrantedSoFar:
    """A trainee's grants the rules compare a request with, as the batch updates them."""

    has_laptop: bool = False
    meal_periods: list[tuple[date, date]] = field(default_factory=list)

    def add(self, kind: str, period: tuple[date, date]) -> None:
        if kind == AidKind.LAPTOP:
            self.has_laptop = True
        elif kind == AidKind.MEALS:
            self.meal_periods.append(period)

    def as_domain(self) -> domain.Granted:
        return domain.Granted(self.has_laptop, tuple(self.meal_periods))


@dataclass
class EnvelopeSoFar:
    """A (year, kind) whose committed total is locked for the batch, with the grants the
    batch added to it so far."""

    committed_cents: int


EnvelopeKey = tuple[int, str]  # (year, kind)


@dataclass
class AidBatch:
    """What a batch's handlers read, loaded at once by `AidStore.load_batch` (the scope's
    cache), and what the batch adds to the aggregates, written by `AidStore.write_batch`.

    Each map is a read-through memo: a key absent is read from the store when asked (and
    kept), a key present is what the store holds plus what the batch did. Work done outside
    the fast path (a held request decided in its savepoint) writes at once and drops the
    keys it touched, so that they are read again."""

    trainees: dict[str, TraineeRow | None] = field(default_factory=dict)
    decisions: dict[str, DecisionRow | None] = field(default_factory=dict)
    granted: dict[str, GrantedSoFar] = field(default_factory=dict)
    envelopes: dict[EnvelopeKey, EnvelopeSoFar] = field(default_factory=dict)
    budgets: dict[EnvelopeKey, int | None] = field(default_factory=dict)
    childcare: dict[tuple[int, str], bool] = field(default_factory=dict)  # (year, trainee)
    held: dict[str, bool] = field(default_factory=dict)  # trainee -> may have held requests
    # Not written yet: learnt trainee columns, and the aggregates' increments.
    learnt: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_kind: dict[EnvelopeKey, dict[str, int]] = field(default_factory=dict)
    by_school: dict[tuple[int, str, str], int] = field(default_factory=dict)
    by_month: dict[tuple[int, int, str], int] = field(default_factory=dict)
    unwritten: bool = False  # rows or increments wait for `AidStore.write_batch`

    def forget(self, trainee_id: str | None = None, request_id: str | None = None,
               envelope: EnvelopeKey | None = None) -> None:
        """Drops what work done at once changed (read again when asked)."""
        if trainee_id is not None:
            self.trainees.pop(trainee_id, None)
            self.granted.pop(trainee_id, None)
            self.held.pop(trainee_id, None)
            if envelope is not None:
                self.childcare.pop((envelope[0], trainee_id), None)
        if request_id is not None:
            self.decisions.pop(request_id, None)
        if envelope is not None:
            self.envelopes.pop(envelope, None)
            self.budgets.pop(envelope, None)

    def count(self, key: EnvelopeKey, **increments: int) -> None:
        totals = self.by_kind.setdefault(key, dict.fromkeys(KIND_COUNTERS, 0))
        for name, value in increments.items():
            totals[name] += value


KIND_COUNTERS = ("granted", "rejected", "quantity", "amount_cents", "trainees")
TRAINEE_COLUMNS = ("school_id", "enrolled_on", "exited_on")


class AidStore(Store):
    """On the batch's fast path the store reads what `load_batch` loaded (`AidBatch`),
    keeps the batch's decisions in it, and writes new rows in bulk (`BatchScope.insert`) and
    the aggregates as one grouped upsert per table (`write_batch`) when the batch ends.
    Everywhere else (no batch, the savepoint path, a held request decided in its savepoint)
    it reads and writes at once."""

    @property
    def cache(self) -> AidBatch | None:
        cache: AidBatch | None = self.batch.cache if self.batch is not None else None
        return cache

    def _deferring(self) -> AidBatch | None:
        """The batch's memo when work may wait for the end of the batch now."""
        cache = self.cache
        if cache is None or self.batch is None or not self.batch.deferring:
            return None
        return cache

    def _at_once(self) -> AidBatch | None:
        """Before work done at once: the batch's memo (None outside a batch), which must
        hold nothing unwritten, since what is read now comes from the store."""
        cache = self.cache
        if cache is not None and cache.unwritten:
            raise NeedsIsolation("the batch's rows are not written before a savepoint")
        return cache

    # --- the batch ------------------------------------------------------------------------

    def load_batch(
        self, trainee_ids: set[str], learnt: set[str], request_ids: set[str],
        held_for: set[str],
    ) -> AidBatch:
        """The first half of the batch's `prepare`: its trainees (those it learns created
        first), locked in id order so that two instances deciding for one trainee take
        turns; then the previous decisions of its requests, the grants of its trainees,
        and whether the trainees it enrolls have held requests."""
        assert self.batch is not None
        cache = AidBatch()
        self.batch.on_write(self.write_batch)
        insert_ignore_many(self.session, TRAINEE,
                           [{"trainee_id": trainee_id} for trainee_id in sorted(learnt)])
        cache.trainees = dict.fromkeys(trainee_ids)
        if trainee_ids:
            query = (select(*TRAINEE_READ).where(TRAINEE.c.trainee_id.in_(trainee_ids))
                     .order_by(TRAINEE.c.trainee_id).with_for_update())
            for trainee_id, *columns in self.session.exec(query).all():  # type: ignore[call-overload]
                cache.trainees[trainee_id] = TraineeRow(*columns)
        cache.decisions = dict.fromkeys(request_ids)
        if request_ids:
            query = select(*DECISION.c).where(DECISION.c.request_id.in_(request_ids))
            for row in self.session.exec(query).mappings():  # type: ignore[call-overload]
                cache.decisions[row["request_id"]] = DecisionRow(**row)
        cache.granted = {trainee_id: GrantedSoFar() for trainee_id in trainee_ids}
        if trainee_ids:
            for trainee_id, kind, start, end in self.session.exec(  # type: ignore[call-overload]
                _granted_query(LEDGER.c.trainee_id.in_(trainee_ids))
            ).all():
                cache.granted[trainee_id].add(kind, (start, end))
        cache.held = dict.fromkeys(held_for, False)
        if held_for:
            query = select(HELD.c.trainee_id).where(HELD.c.trainee_id.in_(held_for)).distinct()
            cache.held.update(dict.fromkeys(self.session.exec(query).all(), True))  # type: ignore[call-overload]
        return cache

    def load_envelopes(
        self, cache: AidBatch, keys: set[EnvelopeKey], childcare: set[tuple[int, str]]
    ) -> None:
        """The second half of `prepare`: the committed totals of the (year, kind) the batch
        decides on, locked once for the whole batch in key order (held to the commit, they
        make an overrun impossible with two instances), their budgets, and whether the
        batch's childcare trainees already count in their year."""
        if not keys:
            return
        ordered = sorted(keys)
        insert_ignore_many(self.session, KIND_TOTAL,
                           [{"year": year, "kind": kind} for year, kind in ordered])
        wanted = tuple_(KIND_TOTAL.c.year, KIND_TOTAL.c.kind).in_(ordered)
        query = (select(KIND_TOTAL.c.year, KIND_TOTAL.c.kind, KIND_TOTAL.c.amount_cents)
                 .where(wanted).order_by(KIND_TOTAL.c.year, KIND_TOTAL.c.kind)
                 .with_for_update())
        for year, kind, committed in self.session.exec(query).all():  # type: ignore[call-overload]
            cache.envelopes[(year, kind)] = EnvelopeSoFar(committed)
        cache.budgets.update(dict.fromkeys(keys))
        query = select(BUDGET.c.year, BUDGET.c.kind, BUDGET.c.envelope_cents).where(
            tuple_(BUDGET.c.year, BUDGET.c.kind).in_(ordered))
        for year, kind, envelope in self.session.exec(query).all():  # type: ignore[call-overload]
            cache.budgets[(year, kind)] = envelope
        # Read under the childcare totals' locks: no other instance adds to them meanwhile.
        childcare = {pair for pair in childcare if pair[0] in {y for y, _ in keys}}
        cache.childcare.update(dict.fromkeys(childcare, False))
        if childcare:
            query = select(CHILDCARE.c.year, CHILDCARE.c.trainee_id).where(
                tuple_(CHILDCARE.c.year, CHILDCARE.c.trainee_id).in_(sorted(childcare)))
            cache.childcare.update(dict.fromkeys(
                (tuple(pair) for pair in self.session.exec(query).all()), True))  # type: ignore[call-overload]

    def write_batch(self) -> None:
        """Writes what the batch learnt and added up (the scope's flush): one statement per
        table, rows in key order."""
        cache = self.cache
        if cache is None or not cache.unwritten:
            return
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for trainee_id, columns in sorted(cache.learnt.items()):
            by_columns.setdefault(tuple(columns), []).append(
                {"trainee_id": trainee_id, **columns})
        for rows in by_columns.values():
            set_many(self.session, TRAINEE, rows, ["trainee_id"])
        add_to_many(self.session, KIND_TOTAL, [
            {"year": year, "kind": kind, **counts}
            for (year, kind), counts in sorted(cache.by_kind.items())], ["year", "kind"])
        add_to_many(self.session, SCHOOL_TOTAL, [
            {"year": year, "school_id": school, "kind": kind, "amount_cents": amount}
            for (year, school, kind), amount in sorted(cache.by_school.items())],
            ["year", "school_id", "kind"])
        add_to_many(self.session, MONTH_TOTAL, [
            {"year": year, "month": month, "kind": kind, "amount_cents": amount}
            for (year, month, kind), amount in sorted(cache.by_month.items())],
            ["year", "month", "kind"])
        cache.learnt.clear()
        cache.by_kind.clear()
        cache.by_school.clear()
        cache.by_month.clear()
        cache.unwritten = False

    # --- trainees and held requests -------------------------------------------------------

    def trainee(self, trainee_id: str, for_update: bool = False) -> TraineeRow | None:
        """`for_update` locks the row until the transaction ends (the batch's trainees are
        locked by `load_batch`)."""
        cache = self._deferring()
        if cache is not None:
            if trainee_id not in cache.trainees:
                cache.trainees[trainee_id] = self._read_trainee(trainee_id, for_update)
            return cache.trainees[trainee_id]
        return self._read_trainee(trainee_id, for_update)

    def _read_trainee(self, trainee_id: str, for_update: bool) -> TraineeRow | None:
        query = select(*TRAINEE_READ).where(TRAINEE.c.trainee_id == trainee_id)
        row = self.session.exec(query.with_for_update() if for_update else query).first()  # type: ignore[call-overload]
        return TraineeRow(*row[1:]) if row is not None else None

    def learn_enrollment(self, trainee_id: str, school_id: str, enrolled_on: date) -> None:
        self._learn(trainee_id, {"school_id": school_id, "enrolled_on": enrolled_on})

    def learn_exit(self, trainee_id: str, exited_on: date) -> None:
        self._learn(trainee_id, {"exited_on": exited_on})

    def _learn(self, trainee_id: str, columns: dict[str, Any]) -> None:
        cache = self._deferring()
        if cache is not None:
            known = self.trainee(trainee_id) or TraineeRow()
            cache.trainees[trainee_id] = replace(known, **columns)
            learnt = cache.learnt.setdefault(trainee_id, {})
            learnt.update(columns)
            cache.learnt[trainee_id] = {name: learnt[name] for name in TRAINEE_COLUMNS
                                        if name in learnt}  # one column order per group
            cache.unwritten = True
            return
        cache = self._at_once()
        set_many(self.session, TRAINEE, [{"trainee_id": trainee_id, **columns}], ["trainee_id"])
        if cache is not None:
            cache.forget(trainee_id=trainee_id)

    @property
    def held(self) -> HeldQueue[HeldRequest]:
        return HeldQueue(self.session, HeldRequest)

    def hold(self, trainee_id: str, payload: str) -> None:
        self.held.hold(trainee_id, payload)
        cache = self._deferring()
        if cache is not None:
            cache.held[trainee_id] = True
        elif self.cache is not None:
            self.cache.forget(trainee_id=trainee_id)

    def held_for(self, trainee_id: str) -> list[HeldRequest]:
        """The trainee's held requests, oldest first. On the batch's fast path, when there
        are some, the batch's rows are written first: each is then decided in a savepoint
        (`release_each`), where the store reads and writes at once."""
        cache = self._deferring()
        if cache is not None:
            if not cache.held.get(trainee_id, True):
                return []
            assert self.batch is not None
            self.batch.write_pending()
        return self.held.for_trainee(trainee_id)

    # --- decisions and grants -------------------------------------------------------------

    def decision(self, request_id: str) -> DecisionRow | None:
        cache = self._deferring()
        if cache is not None:
            if request_id not in cache.decisions:
                cache.decisions[request_id] = self._read_decision(request_id)
            return cache.decisions[request_id]
        return self._read_decision(request_id)

    def _read_decision(self, request_id: str) -> DecisionRow | None:
        query = select(*DECISION.c).where(DECISION.c.request_id == request_id)
        row = self.session.exec(query).mappings().first()  # type: ignore[call-overload]
        return DecisionRow(**row) if row is not None else None

    def granted_to(self, trainee_id: str) -> domain.Granted:
        return self._granted(trainee_id).as_domain()

    def _granted(self, trainee_id: str) -> GrantedSoFar:
        cache = self._deferring()
        if cache is not None and trainee_id in cache.granted:
            return cache.granted[trainee_id]
        granted = GrantedSoFar()
        query = _granted_query(LEDGER.c.trainee_id == trainee_id)
        for _, kind, start, end in self.session.exec(query).all():  # type: ignore[call-overload]
            granted.add(kind, (start, end))
        if cache is not None:
            cache.granted[trainee_id] = granted
        return granted

    def lock_envelope(self, year: int, kind: AidKind) -> domain.Envelope:
        """Locks the kind's committed total for the year until the transaction ends (on the
        batch's fast path, `load_envelopes` locked it for the whole batch)."""
        key = (year, kind.value)
        cache = self._deferring()
        if cache is not None and key in cache.envelopes:
            return domain.Envelope(self._budget(cache, key), cache.envelopes[key].committed_cents)
        insert_ignore(self.session, KIND_TOTAL, {"year": year, "kind": kind.value})
        query = select(KIND_TOTAL.c.amount_cents).where(
            KIND_TOTAL.c.year == year, KIND_TOTAL.c.kind == kind.value).with_for_update()
        committed: int = self.session.exec(query).one()
        if cache is not None:
            cache.envelopes[key] = EnvelopeSoFar(committed)
            return domain.Envelope(self._budget(cache, key), committed)
        return domain.Envelope(self._read_budget(key), committed)

    def _budget(self, cache: AidBatch, key: EnvelopeKey) -> int | None:
        if key not in cache.budgets:
            cache.budgets[key] = self._read_budget(key)
        return cache.budgets[key]

    def _read_budget(self, key: EnvelopeKey) -> int | None:
        query = select(BUDGET.c.envelope_cents).where(
            BUDGET.c.year == key[0], BUDGET.c.kind == key[1])
        budget: int | None = self.session.exec(query).first()
        return budget

    def record_decision(self, record: DecisionRow) -> None:
        key = (record.period_start.year, record.kind)
        cache = self._deferring()
        if cache is not None and self.batch is not None:
            self.batch.insert(DECISION, vars(record))
            cache.decisions[record.request_id] = record
            if record.rejected:
                cache.count(key, rejected=1)
            cache.unwritten = True
            return
        cache = self._at_once()
        self.session.exec(insert(DECISION), params=[vars(record)])  # type: ignore[call-overload]
        if record.rejected:
            add_to(self.session, KIND_TOTAL, {"year": key[0], "kind": key[1]}, {"rejected": 1})
        if cache is not None:
            cache.forget(request_id=record.request_id, envelope=key)

    def add_grant(self, line: GrantRow) -> None:
        """The ledger line and every aggregate it feeds, in the caller's transaction."""
        key = (line.year, line.kind)
        cache = self._deferring()
        if cache is not None and self.batch is not None:
            self._add_grant_later(cache, self.batch, line, key)
            return
        cache = self._at_once()
        self.session.exec(insert(LEDGER), params=[vars(line)])  # type: ignore[call-overload]
        new_childcare_trainee = line.kind == AidKind.CHILDCARE and insert_ignore(
            self.session, CHILDCARE, {"year": line.year, "trainee_id": line.trainee_id})
        add_to(self.session, KIND_TOTAL, {"year": line.year, "kind": line.kind},
               {"granted": 1, "quantity": line.quantity, "amount_cents": line.amount_cents,
                "trainees": int(new_childcare_trainee)})
        add_to(self.session, SCHOOL_TOTAL,
               {"year": line.year, "school_id": line.school_id, "kind": line.kind},
               {"amount_cents": line.amount_cents})
        add_to(self.session, MONTH_TOTAL, {"year": line.year, "month": line.month,
                                           "kind": line.kind},
               {"amount_cents": line.amount_cents})
        if cache is not None:
            cache.forget(trainee_id=line.trainee_id, envelope=key)

    def _add_grant_later(
        self, cache: AidBatch, batch: BatchScope, line: GrantRow, key: EnvelopeKey
    ) -> None:
        if key not in cache.envelopes:  # never decided against: read under its lock
            self.lock_envelope(line.year, AidKind(line.kind))
        batch.insert(LEDGER, vars(line))
        self._granted(line.trainee_id).add(line.kind, (line.period_start, line.period_end))
        cache.envelopes[key].committed_cents += line.amount_cents
        new_childcare_trainee = line.kind == AidKind.CHILDCARE and not self._counts_in_childcare(
            cache, (line.year, line.trainee_id))
        if new_childcare_trainee:
            batch.insert(CHILDCARE, {"year": line.year, "trainee_id": line.trainee_id})
            cache.childcare[(line.year, line.trainee_id)] = True
        cache.count(key, granted=1, quantity=line.quantity, amount_cents=line.amount_cents,
                    trainees=int(new_childcare_trainee))
        school = (line.year, line.school_id, line.kind)
        cache.by_school[school] = cache.by_school.get(school, 0) + line.amount_cents
        month = (line.year, line.month, line.kind)
        cache.by_month[month] = cache.by_month.get(month, 0) + line.amount_cents
        cache.unwritten = True

    def _counts_in_childcare(self, cache: AidBatch, pair: tuple[int, str]) -> bool:
        if pair not in cache.childcare:
            query = select(CHILDCARE.c.year).where(
                CHILDCARE.c.year == pair[0], CHILDCARE.c.trainee_id == pair[1])
            cache.childcare[pair] = self.session.exec(query).first() is not None  # type: ignore[call-overload]
        return cache.childcare[pair]

    # --- budgets and reports --------------------------------------------------------------

    def set_envelope(self, year: int, kind: AidKind, envelope_cents: int) -> None:
        key = (year, kind.value)
        set_many(self.session, BUDGET, [{"year": year, "kind": kind.value,
                                         "envelope_cents": envelope_cents, "set_at": now()}],
                 ["year", "kind"])
        cache = self._deferring()
        if cache is not None:
            cache.budgets[key] = envelope_cents
        elif self.cache is not None:
            self.cache.forget(envelope=key)

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
