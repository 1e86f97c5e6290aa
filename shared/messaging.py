"""Exactly-once effects over at-least-once Kafka: inbox, outbox, dead letters, batch processing.

A consumed batch is handled in ONE database transaction that holds the state changes, the
processed event ids (inbox) and the events to publish (outbox, dead letters included).
The Kafka offsets are committed only after that transaction commits; a relay publishes
the outbox afterwards. A crash at any point either loses the whole transaction (the batch
is read again) or finds the event ids already recorded (the redelivery has no effect).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, delete, func
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, select

from shared.contract import DeadLetter, Topic, event_key, new_event_fields
from shared.db import UtcDateTime
from shared.logsafe import describe_error

log = logging.getLogger(__name__)

DEAD_LETTER_NAMESPACE = uuid.UUID("5b7c2f0e-0d6a-4f43-9a0e-e2c0de1e77e5")
MAX_ERROR_CHARS = 2000


class InboxEvent(SQLModel, table=True):
    """An input already handled: its `event_id`, or a dead-letter key for unreadable input."""

    __tablename__ = "inbox_event"

    key: str = Field(primary_key=True, max_length=200)
    topic: str = Field(max_length=200)
    processed_at: datetime = Field(sa_type=UtcDateTime)


class OutboxMessage(SQLModel, table=True):
    """An event committed with the state change that caused it, waiting to be published."""

    __tablename__ = "outbox_message"

    id: int | None = Field(default=None, primary_key=True)
    topic: str = Field(max_length=200)
    key: str | None = Field(default=None, max_length=200)
    payload: str
    created_at: datetime = Field(sa_type=UtcDateTime)


PLUMBING_TABLES = (InboxEvent.__table__, OutboxMessage.__table__)


@dataclass(frozen=True)
class Inbound:
    """One consumed Kafka record, as the processor needs it."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes

    @property
    def dead_letter_key(self) -> str:
        return f"dl:{self.topic}:{self.partition}:{self.offset}"


@dataclass
class Unit:
    """What a handler gets for one event: the open session and a way to emit events."""

    session: Session
    inbound: Inbound | None = None  # None for work a timer started (sweeps)
    emitted: list[OutboxMessage] = field(default_factory=list)

    def emit(self, topic: str, event: BaseModel, key: str | None = None) -> None:
        message = OutboxMessage(
            topic=topic,
            key=key if key is not None else event_key(topic, event),
            payload=event.model_dump_json(),
            created_at=datetime.now(UTC),
        )
        self.session.add(message)
        self.emitted.append(message)


Handler = Callable[[Unit, BaseModel], None]


@dataclass(frozen=True)
class Route:
    model: type[BaseModel]
    handler: Handler


@dataclass
class BatchResult:
    handled: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    emitted: dict[str, int] = field(default_factory=dict)

    def count(self, bucket: dict[str, int], topic: str) -> None:
        bucket[topic] = bucket.get(topic, 0) + 1


@dataclass(frozen=True)
class _Decoded:
    inbound: Inbound
    event: BaseModel | None
    error: str | None

    @property
    def event_id(self) -> str | None:
        return str(self.event.event_id) if self.event is not None else None  # type: ignore[attr-defined]


class BatchProcessor:
    """Handles a batch of records in one transaction (called from a worker thread)."""

    def __init__(self, service: str, engine: Engine, routes: dict[str, Route]) -> None:
        self.service = service
        self.engine = engine
        self.routes = routes

    def process(self, records: Sequence[Inbound]) -> BatchResult:
        decoded = [self._decode(record) for record in records]
        result = BatchResult()
        with Session(self.engine) as session:
            done = self._already_processed(session, decoded)
            for item in decoded:
                self._process_one(session, item, done, result)
            session.commit()
        return result

    def _decode(self, inbound: Inbound) -> _Decoded:
        route = self.routes.get(inbound.topic)
        if route is None:
            return _Decoded(inbound, None, f"no handler for topic {inbound.topic}")
        try:
            return _Decoded(inbound, route.model.model_validate_json(inbound.value), None)
        except ValidationError as error:
            return _Decoded(inbound, None, describe_validation_error(error))

    @staticmethod
    def _already_processed(session: Session, decoded: Iterable[_Decoded]) -> set[str]:
        keys: set[str] = set()
        for item in decoded:
            keys.add(item.inbound.dead_letter_key)
            if item.event_id is not None:
                keys.add(item.event_id)
        found = session.exec(select(InboxEvent.key).where(col(InboxEvent.key).in_(keys)))
        return set(found.all())

    def _process_one(
        self, session: Session, item: _Decoded, done: set[str], result: BatchResult
    ) -> None:
        topic = item.inbound.topic
        if item.inbound.dead_letter_key in done or (item.event_id and item.event_id in done):
            result.count(result.duplicates, topic)
            return
        if item.event is None:
            self._dead_letter(session, item.inbound, item.error or "unreadable", done, result)
            return
        unit = Unit(session=session, inbound=item.inbound)
        try:
            with session.begin_nested():
                self.routes[topic].handler(unit, item.event)
        except DataError as error:  # a value the store cannot hold: retrying will not help
            reason = f"unstorable value: {describe_error(error)}"
            self._dead_letter(session, item.inbound, reason, done, result)
            return
        except SQLAlchemyError:
            raise  # the store failed or a race was lost: the whole batch is retried
        except Exception as error:  # a handler bug must not block the partition
            log.error("handler failed on %s[%s]@%s: %s", topic, item.inbound.partition,
                      item.inbound.offset, describe_error(error))
            reason = f"handler error: {type(error).__name__}: {error}"
            self._dead_letter(session, item.inbound, reason, done, result)
            return
        self._record(session, item.event_id or item.inbound.dead_letter_key, topic, done)
        result.count(result.handled, topic)
        for message in unit.emitted:
            result.count(result.emitted, message.topic)

    def _dead_letter(
        self, session: Session, inbound: Inbound, error: str, done: set[str], result: BatchResult
    ) -> None:
        letter = build_dead_letter(self.service, inbound, error)
        unit = Unit(session=session, inbound=inbound)
        unit.emit(Topic.DEADLETTER, letter, key=inbound.key)
        self._record(session, inbound.dead_letter_key, inbound.topic, done)
        result.count(result.dead_letters, inbound.topic)
        log.warning("dead letter from %s[%s]@%s: %s", inbound.topic, inbound.partition,
                    inbound.offset, error.splitlines()[0][:300])

    @staticmethod
    def _record(session: Session, key: str, topic: str, done: set[str]) -> None:
        session.add(InboxEvent(key=key, topic=topic, processed_at=datetime.now(UTC)))
        done.add(key)


def build_dead_letter(service: str, inbound: Inbound, error: str) -> DeadLetter:
    fields = new_event_fields()
    # Deterministic id: the same unreadable record, read again, is the same dead letter.
    fields["event_id"] = uuid.uuid5(
        DEAD_LETTER_NAMESPACE, f"{service}:{inbound.dead_letter_key}"
    )
    return DeadLetter(
        **fields,
        service=service,
        source_topic=inbound.topic,
        partition=inbound.partition,
        offset=inbound.offset,
        error=error[:MAX_ERROR_CHARS],
        original=inbound.value.decode("utf-8", errors="replace"),
    )


def describe_validation_error(error: ValidationError) -> str:
    """A readable reason that names fields but never echoes their values (personal data)."""
    parts = []
    for detail in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in detail["loc"]) or "message"
        parts.append(f"{location}: {detail['msg']}")
    return "invalid event: " + "; ".join(parts)


def pending_outbox(session: Session, limit: int) -> list[OutboxMessage]:
    query = select(OutboxMessage).order_by(col(OutboxMessage.id)).limit(limit)
    return list(session.exec(query).all())


def delete_outbox(session: Session, ids: Sequence[int]) -> None:
    session.exec(delete(OutboxMessage).where(col(OutboxMessage.id).in_(ids)))


def outbox_backlog(session: Session) -> int:
    return session.exec(select(func.count()).select_from(OutboxMessage)).one()
