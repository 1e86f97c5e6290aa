"""The outcomes store: its own view of trainees, referrals and aids, built from the topics,
plus the exits it holds while their enrollment is not known yet."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Date, Index, RowMapping, Select, and_, or_, text
from sqlalchemy import select as core_select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Field, SQLModel, col, select

from shared.contract import AgencyKind, AidKind, Outcome
from shared.db import UtcDateTime, add_to, insert_ignore
from shared.held import HeldInput, HeldQueue
from shared.messaging import Store

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


class OutcomeStore(Store):
    def trainee(self, trainee_id: str, for_update: bool = False) -> TraineeView | None:
        return self.session.get(TraineeView, trainee_id, with_for_update=for_update)

    def add_trainee(self, trainee: TraineeView) -> None:
        if self.session.get(TraineeView, trainee.trainee_id) is None:
            self.session.add(trainee)

    def record_exit(
        self, trainee: TraineeView, exited_on: date, outcome: Outcome, satisfied: bool | None
    ) -> None:
        trainee.exited_on, trainee.outcome = exited_on, outcome.value
        trainee.category = domain.category_of(outcome).value
        trainee.satisfied = satisfied
        self.session.add(trainee)

    def learn_referral(
        self, referral_id: str, agency_id: str, school_id: str, status: str,
        trainee_id: str | None, at: datetime,
    ) -> None:
        insert_ignore(self.session, ReferralView.__table__, {  # type: ignore[arg-type]
            "referral_id": referral_id, "agency_id": agency_id, "school_id": school_id,
            "received_at": at, "status": status,
        })
        view = self.session.get(ReferralView, referral_id, with_for_update=True)
        assert view is not None
        view.status = status
        view.trainee_id = trainee_id or view.trainee_id
        if status == "accepted" and view.accepted_at is None:
            view.accepted_at = at
        self.session.add(view)

    def count_aid(self, trainee_id: str, kind: AidKind) -> None:
        add_to(self.session, TraineeAid.__table__,  # type: ignore[arg-type]
               {"trainee_id": trainee_id, "kind": kind.value}, {"grants": 1})

    def remember_submission(self, event_id: str, trainee_id: str, payload: str) -> None:
        insert_ignore(self.session, ExitSubmission.__table__,  # type: ignore[arg-type]
                      {"event_id": event_id, "trainee_id": trainee_id, "payload": payload})

    def submission(self, event_id: str) -> ExitSubmission | None:
        return self.session.get(ExitSubmission, event_id)

    def mark_decided(self, event_id: str) -> None:
        submission = self.submission(event_id)
        if submission is not None:
            submission.decided = True
            self.session.add(submission)

    def undecided_submissions(self) -> list[ExitSubmission]:
        query = select(ExitSubmission).where(col(ExitSubmission.decided).is_(False))
        return list(self.session.exec(query).all())

    # --- held exits -----------------------------------------------------------------------

    @property
    def held(self) -> HeldQueue[HeldExit]:
        return HeldQueue(self.session, HeldExit)

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
