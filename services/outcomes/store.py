"""The outcomes store: its own view of trainees, referrals and aids, built from the topics,
plus the exits it holds while their enrollment is not known yet."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Date,
    Index,
    RowMapping,
    Select,
    Table,
    and_,
    bindparam,
    insert,
    or_,
    text,
    update,
)
from sqlalchemy import select as core_select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Field, Session, SQLModel, col, select

from shared.contract import AgencyKind, AidKind, Outcome
from shared.db import UtcDateTime, add_to, add_to_many, insert_ignore
from shared.held import HeldInput, HeldQueue
from shared.messaging import NeedsIsolation, Store

from . import domain

PARIS = ZoneInfo("Europe/Paris")


def now() -> datetime:
    return datetime.now(UTC)


def paris_date(moment: datetime) -> date:
    """The day a moment falls on for the schools (Europe/Paris), whatever its offset."""
    return moment.astimezone(PARIS).date()


class TraineeView(SQLModel, table=True):
    __tablename__ = "outcome_trainee"

    trainee_id: str = Field(primary_key=True, max_length=64)
    referral_id: str = Field(index=True, max_length=64)
    school_id: str = Field(max_length=100)
    enrolled_on: date
    agency_kind: str = Field(max_length=32)
    age_at_entry: int
    rqth: bool
    qpv_resident: bool
    has_work_experience: bool
    exited_on: date | None = None
    outcome: str | None = Field(default=None, max_length=40)
    category: str | None = Field(default=None, max_length=16)
    satisfied: bool | None = None

    def as_domain(self) -> domain.Enrolled:
        return domain.Enrolled(
            trainee_id=self.trainee_id,
            school_id=self.school_id,
            enrolled_on=self.enrolled_on,
            agency_kind=AgencyKind(self.agency_kind),
            age_at_entry=self.age_at_entry,
            rqth=self.rqth,
            qpv_resident=self.qpv_resident,
            has_work_experience=self.has_work_experience,
            exited_on=self.exited_on,
            outcome=Outcome(self.outcome) if self.outcome else None,
            satisfied=self.satisfied,
        )


class TraineeCopy(SimpleNamespace):
    """A trainee's row as a batch reads and changes it: a plain copy of its columns, whatever
    they are (the ORM's instrumented attributes cost more than the rest of a decision)."""

    trainee_id: str
    school_id: str
    exited_on: date | None
    outcome: str | None
    category: str | None
    satisfied: bool | None

    def as_domain(self) -> domain.Enrolled:
        return TraineeView.as_domain(self)  # type: ignore[arg-type]


Trainee = TraineeView | TraineeCopy
# What an exit changes on its trainee's row.
EXIT_COLUMNS = ("exited_on", "outcome", "category", "satisfied")
REFERRAL_COLUMNS = ("status", "trainee_id", "accepted_at")


class ReferralView(SQLModel, table=True):
    """A referral as the funnel follows it, from referrals.decided."""

    __tablename__ = "outcome_referral"

    referral_id: str = Field(primary_key=True, max_length=64)
    agency_id: str = Field(index=True, max_length=200)
    school_id: str = Field(max_length=100)
    received_at: datetime = Field(sa_type=UtcDateTime)
    status: str = Field(max_length=32)
    accepted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    trainee_id: str | None = Field(default=None, max_length=64)


class TraineeAid(SQLModel, table=True):
    __tablename__ = "outcome_trainee_aid"

    trainee_id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=16)
    grants: int = 0


class ExitSubmission(SQLModel, table=True):
    """Every exit submitted, kept for its satisfaction answer (exits.decided has none)."""

    __tablename__ = "outcome_exit_submission"

    event_id: str = Field(primary_key=True, max_length=36)
    trainee_id: str = Field(max_length=64)
    payload: str
    decided: bool = False


class HeldExit(HeldInput, table=True):
    __tablename__ = "outcome_held_exit"


TABLES = tuple(
    model.__table__  # type: ignore[attr-defined]
    for model in (TraineeView, ReferralView, TraineeAid, ExitSubmission, HeldExit)
)


@dataclass
class OutcomeBatch:
    """What a batch's handlers read, loaded at once (`OutcomeStore.load_batch`), and what
    they change, kept here until the batch's rows are written (`write`).

    Rows are plain copies, not attached to the session: trainees and referrals by id (None:
    known to be absent), submissions by event id (their `decided` flag), and the trainees
    that have held exits. A row created by the batch is in `new_*` until written; a row
    that existed and changed is in `changed_*`. An entry is dropped when a write goes to
    the database directly (inside a savepoint): the next read loads it again.
    """

    session: Session
    trainees: dict[str, Trainee | None] = field(default_factory=dict)
    referrals: dict[str, ReferralView | None] = field(default_factory=dict)
    submissions: dict[str, bool | None] = field(default_factory=dict)
    with_held: set[str] = field(default_factory=set)
    new_trainees: set[str] = field(default_factory=set)
    changed_trainees: set[str] = field(default_factory=set)
    new_referrals: set[str] = field(default_factory=set)
    changed_referrals: set[str] = field(default_factory=set)
    new_submissions: dict[str, dict[str, Any]] = field(default_factory=dict)
    decided: set[str] = field(default_factory=set)  # existing submissions now decided
    aid_grants: dict[tuple[str, str], int] = field(default_factory=dict)

    def write(self) -> None:
        """The batch's changes in a few grouped statements (a `BatchScope.on_write` flush)."""
        self._write_rows(TraineeView, self.trainees, self.new_trainees, self.changed_trainees,
                         EXIT_COLUMNS)
        self._write_rows(ReferralView, self.referrals, self.new_referrals,
                         self.changed_referrals, REFERRAL_COLUMNS)
        submissions = ExitSubmission.__table__  # type: ignore[attr-defined]
        if self.new_submissions:
            self.session.exec(insert(submissions),  # type: ignore[call-overload]
                              params=list(self.new_submissions.values()))
            for event_id, row in self.new_submissions.items():
                self.submissions[event_id] = row["decided"]
            self.new_submissions.clear()
        update_rows(self.session, submissions, "event_id",
                    [{"event_id": event_id, "decided": True} for event_id in sorted(self.decided)])
        self.decided.clear()
        add_to_many(
            self.session, TraineeAid.__table__,  # type: ignore[arg-type]
            [{"trainee_id": trainee, "kind": kind, "grants": grants}
             for (trainee, kind), grants in sorted(self.aid_grants.items())],
            ["trainee_id", "kind"])
        self.aid_grants.clear()

    def _write_rows(self, model: Any, rows: dict[str, Any], new: set[str],
                    changed: set[str], changing: tuple[str, ...]) -> None:
        """Inserts the `new` rows whole; sets the `changing` columns of the `changed` ones."""
        table = model.__table__
        [key] = [column.name for column in table.primary_key.columns]
        if new:
            names = [column.name for column in table.columns]
            self.session.exec(insert(table),  # type: ignore[call-overload]
                              params=[_values(rows[name], names) for name in sorted(new)])
        update_rows(self.session, table, key,
                    [_values(rows[name], (key, *changing)) for name in sorted(changed - new)])
        new.clear()
        changed.clear()


def _values(row: Any, names: Sequence[str]) -> dict[str, Any]:
    """The row's values of `names`; a column a copy does not hold (one added to the table
    later) is left to the table's default rather than failing the batch's write."""
    return {name: getattr(row, name) for name in names if hasattr(row, name)}


def update_rows(session: Session, table: Table, key: str, rows: list[dict[str, Any]]) -> None:
    """Sets each row's values on the row of the same `key`: one statement, many parameters."""
    if not rows:
        return
    statement = update(table).where(table.c[key] == bindparam(f"b_{key}")).values(
        {name: bindparam(f"b_{name}") for name in rows[0] if name != key})
    session.connection().execute(
        statement, [{f"b_{name}": value for name, value in row.items()} for row in rows])


def follow_referral(view: ReferralView, status: str, trainee_id: str | None,
                    at: datetime) -> None:
    """The referral as a new decision leaves it: its status, its trainee once known, the
    moment it was first accepted."""
    view.status = status
    view.trainee_id = trainee_id or view.trainee_id
    if status == "accepted" and view.accepted_at is None:
        view.accepted_at = at


class OutcomeStore(Store):
    """On the batch's fast path the store reads what the batch loaded at once
    (`OutcomeBatch`) and keeps its changes for the batch's grouped writes; everywhere else
    (HTTP, sweeps, the rebuild, the savepoint path, a held exit's savepoint) it reads and
    writes at once."""

    @property
    def deferred(self) -> OutcomeBatch | None:
        """The batch's state while changes may wait for the batch's write: never inside a
        savepoint, whose rollback could not take memory back with it."""
        if self.batch is None or not self.batch.deferring:
            return None
        cache: OutcomeBatch | None = self.batch.cache
        return cache

    @property
    def _cache(self) -> OutcomeBatch | None:
        cache: OutcomeBatch | None = self.batch.cache if self.batch is not None else None
        return cache

    def load_batch(
        self, trainee_ids: set[str], referral_ids: set[str], submission_ids: set[str],
        enrolling: set[str],
    ) -> OutcomeBatch:
        """A few queries for the whole batch (its `prepare`): the trainees it reads, locked
        (PostgreSQL) in their ids' order, the referrals it changes, locked too, the exit
        submissions it already knows and which of the enrolling trainees have held exits."""
        cache = OutcomeBatch(self.session)
        cache.trainees = dict.fromkeys(trainee_ids)
        cache.trainees.update(self._load(TraineeView, trainee_ids))
        cache.referrals = dict.fromkeys(referral_ids)
        cache.referrals.update(self._load(ReferralView, referral_ids))
        cache.submissions = dict.fromkeys(submission_ids)
        if submission_ids:
            known = select(ExitSubmission.event_id, ExitSubmission.decided).where(
                col(ExitSubmission.event_id).in_(submission_ids))
            cache.submissions.update(dict(self.session.exec(known).all()))  # type: ignore[arg-type]
        if enrolling:
            held = select(HeldExit.trainee_id).where(
                col(HeldExit.trainee_id).in_(enrolling)).distinct()
            cache.with_held = set(self.session.exec(held).all())
        if self.batch is not None:
            self.batch.on_write(cache.write)
        return cache

    def _load(self, model: Any, ids: set[str]) -> dict[str, Any]:
        """Copies of the rows of `ids`, locked in their order (not in the session)."""
        if not ids:
            return {}
        table = model.__table__
        [key] = list(table.primary_key.columns)
        query = core_select(table).where(key.in_(ids)).order_by(key).with_for_update()
        copy = TraineeCopy if model is TraineeView else model
        return {row[key.name]: copy(**row) for row in self.session.exec(query).mappings()}

    def _cached(self, model: Any, rows: dict[str, Any], key: str) -> Any:
        if key not in rows:  # not foreseen by `prepare`, or dropped after a direct write
            rows[key] = self._load(model, {key}).get(key)
        return rows[key]

    # --- trainees ---------------------------------------------------------------------------

    def trainee(self, trainee_id: str, for_update: bool = False) -> Trainee | None:
        """The trainee; on the fast path a copy the batch writes back (`record_exit`)."""
        cache = self.deferred
        if cache is not None:
            found: Trainee | None = self._cached(TraineeView, cache.trainees, trainee_id)
            return found
        return self.session.get(TraineeView, trainee_id, with_for_update=for_update,
                                populate_existing=self._cache is not None)

    def add_trainee(self, columns: dict[str, Any]) -> None:
        """A trainee enrolled (`columns`: its row); one already known stays as it is."""
        trainee_id = columns["trainee_id"]
        cache = self.deferred
        if cache is not None:
            if self._cached(TraineeView, cache.trainees, trainee_id) is None:
                cache.trainees[trainee_id] = TraineeCopy(**columns)
                cache.new_trainees.add(trainee_id)
            return
        if self.session.get(TraineeView, trainee_id) is None:
            self.session.add(TraineeView(**columns))

    def record_exit(
        self, trainee: Trainee, exited_on: date, outcome: Outcome, satisfied: bool | None
    ) -> None:
        trainee.exited_on, trainee.outcome = exited_on, outcome.value
        trainee.category = domain.category_of(outcome).value
        trainee.satisfied = satisfied
        cache = self.deferred
        if cache is not None:
            cache.changed_trainees.add(trainee.trainee_id)
            return
        assert isinstance(trainee, TraineeView), "a copy is only handed out to be deferred"
        self.session.add(trainee)
        self._forget(lambda c: c.trainees, trainee.trainee_id)

    def _forget(self, rows: Callable[[OutcomeBatch], dict[str, Any]], key: str) -> None:
        """A row written at once (in a savepoint) is read from the database again by the
        rest of the batch; the batch's own changes were written before (`held_exits`)."""
        cache = self._cache
        if cache is None:
            return
        if key in cache.new_trainees | cache.changed_trainees | cache.new_referrals \
                | cache.changed_referrals | set(cache.new_submissions) | cache.decided:
            raise NeedsIsolation(f"{key} changed by the batch and at once")
        rows(cache).pop(key, None)

    # --- referrals --------------------------------------------------------------------------

    def learn_referral(
        self, referral_id: str, agency_id: str, school_id: str, status: str,
        trainee_id: str | None, at: datetime,
    ) -> None:
        cache = self.deferred
        if cache is not None:
            view = self._cached(ReferralView, cache.referrals, referral_id)
            if view is None:
                view = ReferralView(referral_id=referral_id, agency_id=agency_id,
                                    school_id=school_id, received_at=at, status=status)
                cache.referrals[referral_id] = view
                cache.new_referrals.add(referral_id)
            cache.changed_referrals.add(referral_id)
            follow_referral(view, status, trainee_id, at)
            return
        insert_ignore(self.session, ReferralView.__table__, {  # type: ignore[arg-type]
            "referral_id": referral_id, "agency_id": agency_id, "school_id": school_id,
            "received_at": at, "status": status,
        })
        view = self.session.get(ReferralView, referral_id, with_for_update=True,
                                populate_existing=self._cache is not None)
        assert view is not None
        follow_referral(view, status, trainee_id, at)
        self.session.add(view)
        self._forget(lambda c: c.referrals, referral_id)

    # --- aids -------------------------------------------------------------------------------

    def count_aid(self, trainee_id: str, kind: AidKind) -> None:
        cache = self.deferred
        if cache is not None:
            key = (trainee_id, kind.value)
            cache.aid_grants[key] = cache.aid_grants.get(key, 0) + 1
            return
        add_to(self.session, TraineeAid.__table__,  # type: ignore[arg-type]
               {"trainee_id": trainee_id, "kind": kind.value}, {"grants": 1})

    # --- exit submissions -------------------------------------------------------------------

    def remember_submission(self, event_id: str, trainee_id: str, payload: str) -> None:
        cache = self.deferred
        if cache is not None:
            if self._known_submission(cache, event_id) is None:
                cache.new_submissions[event_id] = {
                    "event_id": event_id, "trainee_id": trainee_id, "payload": payload,
                    "decided": False}
                cache.submissions[event_id] = False
            return
        insert_ignore(self.session, ExitSubmission.__table__,  # type: ignore[arg-type]
                      {"event_id": event_id, "trainee_id": trainee_id, "payload": payload})

    def _known_submission(self, cache: OutcomeBatch, event_id: str) -> bool | None:
        """Whether the submission is decided; None when it is not stored."""
        if event_id not in cache.submissions:
            found = select(ExitSubmission.decided).where(ExitSubmission.event_id == event_id)
            cache.submissions[event_id] = self.session.exec(found).first()
        return cache.submissions[event_id]

    def submission(self, event_id: str) -> ExitSubmission | None:
        return self.session.get(ExitSubmission, event_id)

    def mark_decided(self, event_id: str) -> None:
        cache = self.deferred
        if cache is not None:
            if event_id in cache.new_submissions:
                cache.new_submissions[event_id]["decided"] = True
            elif self._known_submission(cache, event_id) is not None:
                cache.decided.add(event_id)
            if cache.submissions.get(event_id) is not None:
                cache.submissions[event_id] = True
            return
        submission = self.session.get(ExitSubmission, event_id,
                                      populate_existing=self._cache is not None)
        if submission is not None:
            submission.decided = True
            self.session.add(submission)
        self._forget(lambda c: c.submissions, event_id)

    def undecided_submissions(self) -> list[ExitSubmission]:
        query = select(ExitSubmission).where(col(ExitSubmission.decided).is_(False))
        return list(self.session.exec(query).all())

    # --- held exits -----------------------------------------------------------------------

    @property
    def held(self) -> HeldQueue[HeldExit]:
        return HeldQueue(self.session, HeldExit)

    def hold_exit(self, trainee_id: str, payload: str) -> None:
        """Keeps an exit until its trainee's enrollment arrives (or the sweep refuses it)."""
        cache = self.deferred
        if cache is not None:
            assert self.batch is not None
            self.batch.insert(HeldExit.__table__, {  # type: ignore[arg-type]
                "trainee_id": trainee_id, "payload": payload, "received_at": now()})
            cache.with_held.add(trainee_id)
            return
        self.held.hold(trainee_id, payload)

    def held_exits(self, trainee_id: str) -> list[HeldExit]:
        """The trainee's held exits, to decide each in its savepoint: on the fast path the
        batch's rows are written first, so that the savepoints read and change real rows."""
        cache = self.deferred
        if cache is not None:
            if trainee_id not in cache.with_held:
                return []
            cache.with_held.discard(trainee_id)
            assert self.batch is not None
            self.batch.write_pending()
        return self.held.for_trainee(trainee_id)

    # --- what the reports read ------------------------------------------------------------
    # The full reads (`all_trainees`, `aided`, `referrals`) cost the whole history; the
    # `*_of_year` reads below fetch only the rows that can count for one year, through the
    # indexes of `REPORT_INDEXES` (revision 0003).

    def all_trainees(self) -> list[domain.Enrolled]:
        query = select(TraineeView).order_by(col(TraineeView.trainee_id))
        return [row.as_domain() for row in self.session.exec(query).all()]

    def aided(self) -> dict[AidKind, set[str]]:
        found: dict[AidKind, set[str]] = {}
        for row in self.session.exec(select(TraineeAid)).all():
            found.setdefault(AidKind(row.kind), set()).add(row.trainee_id)
        return found

    def referrals(self) -> list[domain.Referred]:
        trainees = {t.trainee_id: t for t in self.session.exec(select(TraineeView)).all()}
        followed = []
        query = select(ReferralView).order_by(col(ReferralView.referral_id))
        for referral in self.session.exec(query).all():
            trainee = trainees.get(referral.trainee_id or "")
            enrolled = trainee is not None and trainee.referral_id == referral.referral_id
            followed.append(domain.Referred(
                referral_id=referral.referral_id,
                agency_id=referral.agency_id,
                school_id=referral.school_id,
                received_on=paris_date(referral.received_at),
                accepted_on=paris_date(referral.accepted_at) if referral.accepted_at else None,
                enrolled_on=trainee.enrolled_on if enrolled and trainee else None,
                exited_on=trainee.exited_on if enrolled and trainee else None,
                solution=(domain.is_solution(trainee.category)
                          if enrolled and trainee and trainee.category else None),
            ))
        return followed

    def _rows(self, query: Select[Any]) -> Sequence[RowMapping]:
        """All the rows at once, as mappings (Core: no ORM object built per row)."""
        return self.session.connection().execute(query).mappings().all()

    def trainees_of_year(self, year: int) -> list[domain.Enrolled]:
        """Every trainee accompanied, entered or exited in `year` (`domain.accompanied_in`,
        `entered_in`, `exited_in`), and no trainee that none of them counts."""
        start, end = _year_span(year)
        trainee = _TRAINEE.c
        query = core_select(_TRAINEE).where(or_(
            trainee.exited_on.between(start, end),
            and_(trainee.exited_on.is_(None), trainee.enrolled_on <= end),
            # there on 31 December: by the exit index (enrolled_on read from it), never by the
            # enrollment index (every earlier trainee), which SQLite's planner may prefer
            and_(trainee.exited_on > end, _not_indexed(trainee.enrolled_on) <= end),
            trainee.enrolled_on.between(start, end),
        ))
        return [_enrolled(row) for row in self._rows(query)]

    def exits_of_year(self, year: int) -> list[domain.Enrolled]:
        """The trainees who exited in `year` (`domain.exited_in`)."""
        query = core_select(_TRAINEE).where(_TRAINEE.c.exited_on.between(*_year_span(year)))
        return [_enrolled(row) for row in self._rows(query)]

    def aided_exits_of_year(self, year: int) -> dict[AidKind, set[str]]:
        """`aided` for the trainees who exited in `year` only (a join, no other aid read)."""
        aid = TraineeAid.__table__  # type: ignore[attr-defined]
        query = (
            core_select(aid.c.trainee_id, aid.c.kind)
            .join(_TRAINEE, _TRAINEE.c.trainee_id == aid.c.trainee_id)
            .where(_TRAINEE.c.exited_on.between(*_year_span(year)))
        )
        found: dict[AidKind, set[str]] = {}
        for trainee_id, kind in self.session.connection().execute(query):
            found.setdefault(AidKind(kind), set()).add(trainee_id)
        return found

    def school_ids(self) -> list[str]:
        """Every school a trainee was ever enrolled at, one index seek per school (a loose
        index scan: SELECT DISTINCT would read the whole index on both backends)."""
        return list(self.session.connection().execute(text(_SCHOOL_IDS)).scalars())

    def referrals_of_year(self, year: int, agency_id: str | None = None) -> list[domain.Referred]:
        """`referrals` received in `year` (in Europe/Paris), only `agency_id`'s when given.
        The SQL bounds are a day wider than the Paris year (a safe superset); the exact cut is
        `domain.funnel_report`'s, on the Paris date."""
        referral = ReferralView.__table__  # type: ignore[attr-defined]
        received = referral.c.received_at
        query = (
            core_select(referral, _TRAINEE.c.referral_id.label("enrolled_referral_id"),
                        _TRAINEE.c.enrolled_on, _TRAINEE.c.exited_on, _TRAINEE.c.category)
            .outerjoin(_TRAINEE, _TRAINEE.c.trainee_id == referral.c.trainee_id)
            .where(received >= datetime(year - 1, 12, 31, tzinfo=UTC),
                   received < datetime(year + 1, 1, 2, tzinfo=UTC))
            .order_by(referral.c.referral_id)
        )
        if agency_id is not None:
            query = query.where(referral.c.agency_id == agency_id)
        return [_followed(row) for row in self._rows(query)]


# --- the reports' indexes and rows (revision 0003) ------------------------------------------

_TRAINEE = TraineeView.__table__  # type: ignore[attr-defined]
_REFERRAL = ReferralView.__table__  # type: ignore[attr-defined]

REPORT_INDEXES = (
    # exits of a year (a range), the never exited enrolled by its end (NULL, then a range),
    # those still there on its 31 December (a range, enrolled_on read from the index)
    Index("ix_outcome_trainee_exited_on_enrolled_on",
          _TRAINEE.c.exited_on, _TRAINEE.c.enrolled_on),
    Index("ix_outcome_trainee_enrolled_on", _TRAINEE.c.enrolled_on),  # entries of a year
    Index("ix_outcome_trainee_school_id", _TRAINEE.c.school_id),  # `school_ids`
    Index("ix_outcome_referral_received_at", _REFERRAL.c.received_at),  # the network's funnel
    Index("ix_outcome_referral_agency_id_received_at",  # a partner's funnel
          _REFERRAL.c.agency_id, _REFERRAL.c.received_at),
)

_SCHOOL_IDS = """
WITH RECURSIVE school(id) AS (
    SELECT MIN(school_id) FROM outcome_trainee
    UNION ALL
    SELECT (SELECT MIN(school_id) FROM outcome_trainee WHERE school_id > school.id)
    FROM school WHERE school.id IS NOT NULL
)
SELECT id FROM school WHERE id IS NOT NULL
"""


class _not_indexed(FunctionElement[date]):
    """A column in a condition no index is chosen for: `+column` on SQLite (its planner's
    documented way to disqualify a term), the column itself on PostgreSQL (whose statistics
    choose well)."""

    type = Date()
    inherit_cache = True


@compiles(_not_indexed)
def _column_itself(element: _not_indexed, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(_not_indexed, "sqlite")
def _unary_plus(element: _not_indexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))


_AGENCY_KINDS = {kind.value: kind for kind in AgencyKind}  # cheaper than AgencyKind(value)
_OUTCOMES = {outcome.value: outcome for outcome in Outcome}


def _year_span(year: int) -> tuple[date, date]:
    return date(year, 1, 1), date(year, 12, 31)


def _enrolled(row: RowMapping) -> domain.Enrolled:
    """`TraineeView.as_domain` from a Core row (no ORM object built per row)."""
    outcome = row["outcome"]
    return domain.Enrolled(
        trainee_id=row["trainee_id"],
        school_id=row["school_id"],
        enrolled_on=row["enrolled_on"],
        agency_kind=_AGENCY_KINDS[row["agency_kind"]],
        age_at_entry=row["age_at_entry"],
        rqth=row["rqth"],
        qpv_resident=row["qpv_resident"],
        has_work_experience=row["has_work_experience"],
        exited_on=row["exited_on"],
        outcome=_OUTCOMES[outcome] if outcome else None,
        satisfied=row["satisfied"],
    )


def _followed(row: RowMapping) -> domain.Referred:
    """A referral with its trainee (`referrals`' rule: the trainee enrolled from it)."""
    enrolled = row["enrolled_referral_id"] == row["referral_id"]
    accepted_at, category = row["accepted_at"], row["category"]
    return domain.Referred(
        referral_id=row["referral_id"],
        agency_id=row["agency_id"],
        school_id=row["school_id"],
        received_on=paris_date(row["received_at"]),
        accepted_on=paris_date(accepted_at) if accepted_at else None,
        enrolled_on=row["enrolled_on"] if enrolled else None,
        exited_on=row["exited_on"] if enrolled else None,
        solution=domain.is_solution(category) if enrolled and category else None,
    )
