"""Inputs held until the enrollment they need arrives (aid requests, exits), shared by the
aids and outcomes services: each has its own table of this shape."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Generic, TypeVar

from sqlalchemy import func
from sqlmodel import Field, Session, SQLModel, col, delete, select

from shared.db import UtcDateTime


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
