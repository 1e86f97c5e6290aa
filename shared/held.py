"""Inputs held until the enrollment they need arrives (aid requests, exits), shared by the
aids and outcomes services: each has its own table of this shape."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import ValidationError
from sqlalchemy import func
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, delete, select

from shared.contract import Topic
from shared.db import UtcDateTime
from shared.logsafe import describe_error
from shared.messaging import (
    Inbound,
    NeedsIsolation,
    UnitOfWork,
    build_dead_letter,
    describe_validation_error,
)

log = logging.getLogger(__name__)

HELD_POSITION = -1  # a held input's letter names no partition or offset: it was held, not read


class HeldInput(SQLModel):
    """The columns of a held-input table (subclassed with `table=True`)."""

    id: int | None = Field(default=None, primary_key=True)
    trainee_id: str = Field(index=True, max_length=64)
    payload: str
    received_at: datetime = Field(index=True, sa_type=UtcDateTime)


Held = TypeVar("Held", bound=HeldInput)


class HeldQueue(Generic[Held]):
    def __init__(self, session: Session, model: type[Held]) -> None:
        self.session = session
        self.model = model

    def hold(self, trainee_id: str, payload: str) -> None:
        self.session.add(
            self.model(trainee_id=trainee_id, payload=payload, received_at=datetime.now(UTC))
        )

    def for_trainee(self, trainee_id: str) -> list[Held]:
        query = (
            select(self.model)
            .where(self.model.trainee_id == trainee_id)
            .order_by(col(self.model.id))
        )
        return list(self.session.exec(query).all())

    def received_before(self, moment: datetime, limit: int = 500) -> list[Held]:
        """The oldest expired ones; rows another instance is sweeping are skipped."""
        query = (
            select(self.model)
            .where(col(self.model.received_at) < moment)
            .order_by(col(self.model.id))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(self.session.exec(query).all())

    def release(self, held: Held) -> None:
        self.session.exec(delete(self.model).where(col(self.model.id) == held.id))

    def count(self) -> int:
        return self.session.exec(select(func.count()).select_from(self.model)).one()


def release_each(
    unit: UnitOfWork[Any],
    queue: HeldQueue[Held],
    held_rows: Sequence[Held],
    decide: Callable[[Held], None],
    source_topic: str,
) -> None:
    """Releases and decides each held input on its own, in a savepoint.

    One that cannot be decided (a payload the contract no longer reads, a value the store
    cannot hold, a bug) becomes a dead letter of its source topic and is released: it never
    blocks the others, nor the enrollment or the sweep that released it. A store failure or
    a lost race is raised: the whole batch (or sweep) is done again.
    """
    for held in held_rows:
        emitted = len(unit.emitted)
        pending = unit.batch.checkpoint() if unit.batch is not None else 0
        try:
            with unit.session.begin_nested():
                queue.release(held)
                decide(held)
        except (DataError, ValidationError) as error:
            _undecidable(unit, queue, held, source_topic, error, emitted, pending)
        except (SQLAlchemyError, NeedsIsolation):
            raise  # the whole batch is done again (record by record for NeedsIsolation)
        except Exception as error:  # a bug must not hold the others back
            _undecidable(unit, queue, held, source_topic, error, emitted, pending)


def _undecidable(
    unit: UnitOfWork[Any],
    queue: HeldQueue[Held],
    held: Held,
    source_topic: str,
    error: Exception,
    emitted: int,
    pending: int,
) -> None:
    del unit.emitted[emitted:]  # what the failed decision had queued
    if unit.batch is not None:
        unit.batch.discard_since(pending)
    reason = f"held input could not be decided: {type(error).__name__}"
    if isinstance(error, ValidationError):
        reason += f": {describe_validation_error(error)}"
    elif isinstance(error, DataError):
        reason += f": {describe_error(error)}"
    log.error("held %s row %s: %s", source_topic, held.id, reason)
    with unit.session.begin_nested():
        queue.release(held)
    inbound = Inbound(topic=source_topic, partition=HELD_POSITION, offset=HELD_POSITION,
                      key=held.trainee_id, value=held.payload.encode("utf-8"))
    unit.emit(Topic.DEADLETTER, build_dead_letter(unit.service, inbound, reason),
              key=held.trainee_id)
