"""Exactly-once effects over at-least-once Kafka: inbox, outbox, dead letters, batch processing.

A consumed batch is handled in ONE database transaction that holds the state changes, the
processed event ids (inbox) and the events to publish (outbox, dead letters included).
The Kafka offsets are committed only after that transaction commits; a relay publishes
the outbox afterwards. A crash at any point either loses the whole transaction (the batch
is read again) or finds the event ids already recorded (the redelivery has no effect).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import BigInteger, Engine, Table, delete, func, insert
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, select

from shared.contract import DeadLetter, Topic, event_key, new_event_fields
from shared.db import UtcDateTime, upsert_max
from shared.logsafe import describe_error

log = logging.getLogger(__name__)

DEAD_LETTER_NAMESPACE = uuid.UUID("5b7c2f0e-0d6a-4f43-9a0e-e2c0de1e77e5")
# The namespace of the ids derived for output events (see `output_event_id`).
OUTPUT_NAMESPACE = uuid.UUID("0f1d6c4e-8a3b-5e27-9c41-e2c0ca05e1d5")
MAX_ERROR_CHARS = 2000
MAX_DEAD_LETTER_BYTES = 512 * 1024  # (1.1) a letter never exceeds it: its original is cut


class InboxEvent(SQLModel, table=True):
    """An input already handled: its `event_id`, or a dead-letter key for unreadable input."""

    __tablename__ = "inbox_event"

    key: str = Field(primary_key=True, max_length=200)
    topic: str = Field(max_length=200)
    processed_at: datetime = Field(sa_type=UtcDateTime)


# The payload of an outbox row that is published as a tombstone (a null value): no event is
# an empty string, and old stores keep their NOT NULL payload column.
TOMBSTONE_PAYLOAD = ""


class OutboxMessage(SQLModel, table=True):
    """An event committed with the state change that caused it, waiting to be published
    (`TOMBSTONE_PAYLOAD`: a record with a null value)."""

    __tablename__ = "outbox_message"

    id: int | None = Field(default=None, primary_key=True)
    topic: str = Field(max_length=200)
    key: str | None = Field(default=None)  # a dead letter keeps its original's key, any length
    payload: str
    created_at: datetime = Field(sa_type=UtcDateTime)


class ParkedMessage(SQLModel, table=True):
    """An outbox row the broker refused for good (too large, not allowed...): set aside so
    that the rows behind it go out, and kept for operations to see (`/ops/pipeline`)."""

    __tablename__ = "outbox_parked"

    id: int = Field(primary_key=True)  # the outbox row's id
    topic: str = Field(max_length=200)
    key: str | None = Field(default=None)
    payload: str
    created_at: datetime = Field(sa_type=UtcDateTime)
    error: str
    parked_at: datetime = Field(sa_type=UtcDateTime)


class TombstoneSent(SQLModel, table=True):
    """(1.1) A tombstone written for erasure, kept while it is younger than the erasure
    bound so that it is published again (see `shared.erasure`). Append-only; no personal
    data (a topic and a key)."""

    __tablename__ = "tombstone_sent"

    id: int | None = Field(default=None, primary_key=True)
    topic: str = Field(max_length=200)
    key: str
    at: datetime = Field(sa_type=UtcDateTime, index=True)


class ConsumerOffset(SQLModel, table=True):
    """The next offset to read of a consumed partition, written in the transaction of the
    batch that read up to it: the consumer starts from here (see `shared.kafka`), so that
    a store restored from a backup reads again exactly what it had not stored."""

    __tablename__ = "consumer_offset"

    topic: str = Field(primary_key=True, max_length=200)
    partition: int = Field(primary_key=True)
    next_offset: int = Field(sa_type=BigInteger)
    updated_at: datetime = Field(sa_type=UtcDateTime)


PLUMBING_TABLES = (InboxEvent.__table__, OutboxMessage.__table__, ParkedMessage.__table__,
                   TombstoneSent.__table__, ConsumerOffset.__table__)
# The topics compacted for erasure: a dead letter of one of them also removes its original.
ERASABLE_TOPICS = frozenset({Topic.REFERRALS_SUBMITTED.value})


@dataclass(frozen=True)
class Inbound:
    """One consumed Kafka record, as the processor needs it (`value` None: a tombstone)."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None

    @cached_property
    def dead_letter_key(self) -> str:
        """The inbox key of this record when it has no readable `event_id`.

        Its position alone is not enough: a topic deleted and created again starts its
        offsets anew, and a valid record at a position an old dead letter had must be read.
        """
        digest = hashlib.sha256()
        digest.update(b"\x01" + self.key.encode() if self.key is not None else b"\x00")
        digest.update(self.value or b"")
        return f"dl:{self.topic}:{self.partition}:{self.offset}:{digest.hexdigest()[:16]}"

    @property
    def is_tombstone(self) -> bool:
        """(1.1) A null value (erasure) is not an input: neither answered nor dead-lettered."""
        return self.value is None


S = TypeVar("S")


class NeedsIsolation(Exception):
    """Raised on the batch's fast path by work it cannot do there: the batch is rolled back
    and handled again record by record (see `BatchScope`)."""


class BatchScope:
    """The batch's fast path, as handlers and stores see it: one named mechanism.

    A consumed batch is first handled in one transaction without savepoints (fast):
    - `cache` holds what the service's `prepare` loaded at once for the whole batch, so that
      handlers query nothing;
    - `insert` collects append-only rows (history, rows created by the batch) that are
      written in bulk when the batch ends. Until then they are not in the database: a
      store hands them out as read-only snapshots, and a handler that must change one asks
      the store, which calls `write_pending` first and reads the real row.
    - `on_write` registers a store's flush: work the store keeps in memory during the batch
      (running totals, rows it changes many times) and writes in a few grouped statements
      when the pending rows are written. A flush empties what it wrote: it may run again
      later in the same batch.
    If a handler raises (or asks for `NeedsIsolation`), the batch is rolled back and handled
    again with `isolated` True: each record in its own savepoint, no cache, rows written at
    once. Stores built outside a batch (HTTP, sweeps, commands) get no scope at all.
    """

    def __init__(self, session: Session, isolated: bool, cache: Any = None) -> None:
        self.session = session
        self.isolated = isolated
        self.cache = cache
        self._pending: list[tuple[Table, dict[str, Any]]] = []
        self._flushes: list[Callable[[], None]] = []

    @property
    def deferring(self) -> bool:
        """Whether a store may keep work for the end of the batch now: on the fast path and
        outside any savepoint (a savepoint rolled back could not take memory back with it)."""
        return not self.isolated and not self.session.in_nested_transaction()

    def on_write(self, flush: Callable[[], None]) -> None:
        if self.isolated:
            raise ValueError("nothing is deferred on the savepoint path")
        if flush not in self._flushes:
            self._flushes.append(flush)

    def insert(self, table: Table, row: dict[str, Any]) -> None:
        if self.isolated:
            self.session.exec(insert(table), params=[row])  # type: ignore[call-overload]
        else:
            self._pending.append((table, row))

    def checkpoint(self) -> int:
        """A mark to `discard_since` when the work after it is undone (a savepoint)."""
        return len(self._pending)

    def discard_since(self, mark: int) -> None:
        del self._pending[mark:]

    def write_pending(self) -> None:
        """Writes the collected rows now, table by table in the order they came, then runs
        the stores' flushes."""
        if not self._pending and not self._flushes:
            return
        if self.session.in_nested_transaction():
            # A savepoint rolled back later would take earlier records' rows with it.
            raise NeedsIsolation("pending rows written inside a savepoint")
        by_table: dict[Table, list[dict[str, Any]]] = {}
        for table, row in self._pending:
            by_table.setdefault(table, []).append(row)
        for table, rows in by_table.items():
            self.session.exec(insert(table), params=rows)  # type: ignore[call-overload]
        self._pending.clear()
        for flush in self._flushes:
            flush()


class Store:
    """A service's store: its queries on one session, and, while a consumed batch is handled,
    the batch's scope (see `BatchScope`). Each service's store extends it."""

    def __init__(self, session: Session, batch: BatchScope | None = None) -> None:
        self.session = session
        self.batch = batch


StoreFactory = Callable[[Session, BatchScope | None], S]


@dataclass
class UnitOfWork(Generic[S]):
    """One piece of work on a service's store: a handler's event, a sweep, a command.

    It carries the open session, the service's store on it (`store`), and the events the
    work emits. Emitted events go to the outbox in the session's transaction: at once
    outside a batch and on the savepoint path, in bulk when the batch ends on its fast path,
    so that a handler that fails there has emitted nothing.
    """

    session: Session
    store: S
    service: str = ""  # who writes the dead letters this unit emits
    inbound: Inbound | None = None  # the consumed record; None for a sweep or a command
    batch: BatchScope | None = None
    cause: str | None = None  # the `event_id` of the input handled; None outside a batch
    emitted: list[dict[str, Any]] = field(default_factory=list)
    _roles: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def batched(self) -> bool:
        """On the batch's fast path: emitted events wait for the batch's bulk write."""
        return self.batch is not None and not self.batch.isolated

    def emit(
        self,
        topic: str,
        event: BaseModel,
        key: str | None = None,
        cause: str | None = None,
        original: bool = False,
    ) -> BaseModel:
        """Queues `event` for `topic` and returns it as it is published: its `event_id`
        derived from its cause (`output_event_id`), so that deciding the same input again
        (a restored store reading it anew) publishes the same id, which consumers drop.

        The cause is `cause` if given, else the input the event answers (its
        `request_event_id`), else the input this unit handles. `original`: an event that
        answers nothing (an intake submission) keeps its own id. Dead letters are
        deterministic already (`build_dead_letter`)."""
        if not original and topic != Topic.DEADLETTER:
            event = self._with_derived_id(topic, event, cause)
        row = outbox_row(topic, event, key if key is not None else event_key(topic, event))
        self.emitted.append(row)
        if not self.batched:
            write_outbox(self.session, [row])
        return event

    def _with_derived_id(self, topic: str, event: BaseModel, cause: str | None) -> BaseModel:
        answered = getattr(event, "request_event_id", None)
        cause = cause or (str(answered) if answered is not None else None) or self.cause
        if cause is None:
            raise ValueError(f"an event for {topic} with no cause: pass `cause` (a job), or "
                             "`original` for an event that answers nothing")
        index = self._roles.get((cause, topic), 0)
        self._roles[(cause, topic)] = index + 1
        role = topic if index == 0 else f"{topic}#{index}"
        derived = output_event_id(self.service, cause, role)
        return event.model_copy(update={"event_id": derived})


def output_event_id(service: str, cause: str, role: str) -> uuid.UUID:
    """The `event_id` of the output `role` (its topic, and an index when one cause has
    several on a topic) of `service` caused by `cause` (an input's `event_id`, or a job's
    stable name for what it acts on)."""
    return uuid.uuid5(OUTPUT_NAMESPACE, f"{service}:{cause}:{role}")


@contextmanager
def unit_of_work(
    engine: Engine, store: StoreFactory[S], service: str = ""
) -> Iterator[UnitOfWork[S]]:
    """A transaction on the store outside the consumer (sweeps, retention, commands, HTTP):
    committed when the block ends, rolled back when it raises."""
    with Session(engine) as session:
        yield UnitOfWork(session, store(session, None), service=service)
        session.commit()


def write_outbox(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.exec(insert(OutboxMessage.__table__), params=rows)  # type: ignore[call-overload,arg-type]


Handler = Callable[[UnitOfWork[Any], BaseModel], None]
Prepare = Callable[[Any, list[BaseModel]], Any]


@dataclass(frozen=True)
class Route:
    model: type[BaseModel]
    handler: Handler


# Where a batch's time goes (`BatchResult.seconds`): decoding its records; the inbox lookup
# and the service's `prepare`; the handlers; the bulk writes; the store's commit.
BATCH_STAGES = ("decode", "prepare", "handle", "write", "commit")


class StageClock:
    """Seconds per stage of one batch, elapsed and on the CPU of the thread that handles it
    (what other processes on the machine do not inflate): two clock reads per lap, a few
    laps per batch."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._last = time.perf_counter()
        self._last_cpu = time.thread_time()

    def lap(self, stage: str) -> None:
        """Adds the time since the previous lap to `stage`."""
        now, cpu = time.perf_counter(), time.thread_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + cpu - self._last_cpu
        self._last, self._last_cpu = now, cpu


@dataclass
class BatchResult:
    handled: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # tombstones
    emitted: dict[str, int] = field(default_factory=dict)
    # Stage -> seconds (`BATCH_STAGES`), both passes included when the batch was done again.
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # the same on the thread's CPU

    def count(self, bucket: dict[str, int], topic: str) -> None:
        bucket[topic] = bucket.get(topic, 0) + 1


@dataclass(frozen=True)
class _Decoded:
    inbound: Inbound
    event: BaseModel | None
    error: str | None
    event_id: str | None = field(init=False)  # as text: read several times per record

    def __post_init__(self) -> None:
        event_id = str(self.event.event_id) if self.event is not None else None  # type: ignore[attr-defined]
        object.__setattr__(self, "event_id", event_id)


class _HandlerFailed(Exception):
    """A handler raised on the fast path: the batch is done again, one savepoint a record."""


@dataclass
class _Pass:
    """One pass over a batch: its scope, and what it writes besides the handlers' changes.

    On the fast path the inbox and the outbox are written in bulk at the end, with the
    scope's pending rows; on the savepoint path (`isolated`) each record's rows are written
    inside its own savepoint, so that no row of one record can fail the others.
    """

    scope: BatchScope
    store: Any
    done: set[str]
    service: str
    offsets: Mapping[tuple[str, int], int]
    result: BatchResult = field(default_factory=BatchResult)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)

    @property
    def session(self) -> Session:
        return self.scope.session

    @property
    def isolated(self) -> bool:
        return self.scope.isolated

    def unit(self, item: _Decoded) -> UnitOfWork[Any]:
        return UnitOfWork(self.session, self.store, service=self.service,
                          inbound=item.inbound, batch=self.scope, cause=item.event_id)

    def record(self, key: str, topic: str) -> None:
        row = {"key": key, "topic": topic, "processed_at": datetime.now(UTC)}
        self.done.add(key)
        if self.isolated:
            self.session.exec(insert(InboxEvent.__table__), params=[row])  # type: ignore[call-overload,arg-type]
        else:
            self.inbox.append(row)

    def keep(self, unit: UnitOfWork[Any]) -> None:
        """What a handled record emitted, for the bulk write (fast path)."""
        for message in unit.emitted:
            self.result.count(self.result.emitted, message["topic"])
        if unit.batched:
            self.outbox.extend(unit.emitted)  # else already written in the record's savepoint

    def write(self) -> None:
        self.scope.write_pending()
        if self.inbox:
            self.session.exec(insert(InboxEvent.__table__), params=self.inbox)  # type: ignore[call-overload,arg-type]
        write_outbox(self.session, self.outbox)
        record_offsets(self.session, self.offsets)


class BatchProcessor:
    """Handles a batch of records in one transaction (called from a worker thread).

    The fast path runs every handler in the one transaction and writes the inbox and the
    outbox in bulk at the end (see `BatchScope`). When a handler fails, or the store refuses
    a value, the batch is rolled back and done again with a savepoint around each record, so
    that only the faulty record becomes a dead letter. A store failure (or a lost race) is
    raised: the caller reads the batch again.
    """

    def __init__(
        self,
        service: str,
        engine: Engine,
        routes: dict[str, Route],
        store: StoreFactory[Any],
        prepare: Prepare | None = None,
    ) -> None:
        """`store(session, scope)` builds the service's store for a pass; `prepare(store,
        events)` may load at once what the batch's handlers will read and return it as the
        scope's cache. The savepoint path goes without it."""
        self.service = service
        self.engine = engine
        self.routes = routes
        self.store = store
        self.prepare = prepare

    def process(self, records: Sequence[Inbound]) -> BatchResult:
        clock = StageClock()
        inputs = [record for record in records if not record.is_tombstone]
        decoded = [self._decode(record) for record in inputs]
        offsets = next_offsets(records)
        clock.lap("decode")
        try:
            result = self._pass(decoded, offsets, isolated=False, clock=clock)
        except (_HandlerFailed, DataError):
            clock.lap("handle")  # the pass rolled back
            result = self._pass(decoded, offsets, isolated=True, clock=clock)
        for record in records:
            if record.is_tombstone:
                result.count(result.skipped, record.topic)
        result.seconds, result.cpu_seconds = clock.seconds, clock.cpu_seconds
        return result

    def _pass(
        self, decoded: list[_Decoded], offsets: Mapping[tuple[str, int], int], isolated: bool,
        clock: StageClock | None = None,
    ) -> BatchResult:
        clock = clock or StageClock()
        with Session(self.engine) as session:
            scope = BatchScope(session, isolated)
            store = self.store(session, scope)
            done = self._already_processed(session, decoded)
            batch = _Pass(scope, store, done, self.service, offsets)
            if self.prepare is not None and not isolated:
                events = [item.event for item in decoded if item.event is not None]
                scope.cache = self.prepare(store, events)
            clock.lap("prepare")
            for item in decoded:
                self._process_one(batch, item)
            clock.lap("handle")
            batch.write()
            clock.lap("write")
            session.commit()
            clock.lap("commit")
        return batch.result

    def _decode(self, inbound: Inbound) -> _Decoded:
        route = self.routes.get(inbound.topic)
        if route is None:
            return _Decoded(inbound, None, f"no handler for topic {inbound.topic}")
        try:
            return _Decoded(inbound, route.model.model_validate_json(inbound.value or b""), None)
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

    def _process_one(self, batch: _Pass, item: _Decoded) -> None:
        topic = item.inbound.topic
        if item.inbound.dead_letter_key in batch.done or (
            item.event_id and item.event_id in batch.done
        ):
            batch.result.count(batch.result.duplicates, topic)
            return
        if item.event is None:
            self._dead_letter(batch, item.inbound, item.error or "unreadable")
            return
        unit = batch.unit(item)
        try:
            self._handle(batch, unit, item.event)
        except DataError as error:  # a value the store cannot hold: retrying will not help
            if not batch.isolated:
                raise
            self._dead_letter(batch, item.inbound, f"unstorable value: {describe_error(error)}")
            return
        except SQLAlchemyError:
            raise  # the store failed or a race was lost: the whole batch is retried
        except Exception as error:  # a handler bug must not block the partition
            if not batch.isolated:
                raise _HandlerFailed from error
            log.error("handler failed on %s[%s]@%s: %s", topic, item.inbound.partition,
                      item.inbound.offset, describe_error(error))
            reason = f"handler error: {type(error).__name__}: {error}"
            self._dead_letter(batch, item.inbound, reason)
            return
        batch.record(item.event_id or item.inbound.dead_letter_key, topic)
        batch.result.count(batch.result.handled, topic)
        batch.keep(unit)

    def _handle(self, batch: _Pass, unit: UnitOfWork[Any], event: BaseModel) -> None:
        assert unit.inbound is not None
        handler = self.routes[unit.inbound.topic].handler
        if not batch.isolated:
            handler(unit, event)
            return
        with batch.session.begin_nested():
            handler(unit, event)

    def _dead_letter(self, batch: _Pass, inbound: Inbound, error: str) -> None:
        letter = build_dead_letter(self.service, inbound, error)
        row = outbox_row(Topic.DEADLETTER, letter, inbound.key)
        if batch.isolated:
            write_dead_letter(batch.session, row)
        else:
            batch.outbox.append(row)
        if inbound.topic in ERASABLE_TOPICS and inbound.key is not None:
            # The original may hold personal data: its tombstone removes it from the topic.
            tomb, sent = tombstone_rows(inbound.topic, inbound.key)
            batch.scope.insert(TombstoneSent.__table__, sent)  # type: ignore[arg-type]
            if batch.isolated:
                write_outbox(batch.session, [tomb])
            else:
                batch.outbox.append(tomb)
        batch.record(inbound.dead_letter_key, inbound.topic)
        batch.result.count(batch.result.dead_letters, inbound.topic)
        log.warning("dead letter from %s[%s]@%s: %s", inbound.topic, inbound.partition,
                    inbound.offset, error.splitlines()[0][:300])


def next_offsets(records: Iterable[Inbound]) -> dict[tuple[str, int], int]:
    """Per (topic, partition) of `records`, the offset after the last one."""
    offsets: dict[tuple[str, int], int] = {}
    for record in records:
        position = (record.topic, record.partition)
        offsets[position] = max(offsets.get(position, 0), record.offset + 1)
    return offsets


def record_offsets(session: Session, offsets: Mapping[tuple[str, int], int]) -> None:
    """Records the next offsets to read, in the session's transaction; an offset already
    further stays (a batch read again after a rebalance never moves one back)."""
    moment = datetime.now(UTC)
    rows = [{"topic": topic, "partition": partition, "next_offset": offset,
             "updated_at": moment} for (topic, partition), offset in sorted(offsets.items())]
    upsert_max(session, ConsumerOffset.__table__, rows, ["topic", "partition"],  # type: ignore[arg-type]
               "next_offset")


def stored_offsets(session: Session) -> dict[tuple[str, int], int]:
    """The next offset to read of every partition the store has read from."""
    table = ConsumerOffset.__table__  # type: ignore[attr-defined]
    rows = session.exec(select(table.c.topic, table.c.partition, table.c.next_offset)).all()  # type: ignore[call-overload]
    return {(topic, partition): offset for topic, partition, offset in rows}


def write_dead_letter(session: Session, row: dict[str, Any]) -> None:
    """Writes a dead letter in its own savepoint; one the store refuses with its key (an
    old store's bounded key column) goes without the key rather than block the batch."""
    try:
        with session.begin_nested():
            write_outbox(session, [row])
    except DataError:
        with session.begin_nested():
            write_outbox(session, [{**row, "key": None}])


def outbox_row(topic: str, event: BaseModel, key: str | None) -> dict[str, Any]:
    return {
        "topic": topic,
        "key": key,
        "payload": event.model_dump_json(),
        "created_at": datetime.now(UTC),
    }


def tombstone_rows(topic: str, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The outbox row of a tombstone of `key` on `topic`, and its `TombstoneSent` row."""
    moment = datetime.now(UTC)
    outbox = {"topic": topic, "key": key, "payload": TOMBSTONE_PAYLOAD, "created_at": moment}
    return outbox, {"topic": topic, "key": key, "at": moment}


def write_tombstone(session: Session, topic: str, key: str) -> None:
    """(1.1) Erasure: a tombstone of `key` on `topic`, in the session's transaction."""
    outbox, sent = tombstone_rows(topic, key)
    write_outbox(session, [outbox])
    session.exec(insert(TombstoneSent.__table__), params=[sent])  # type: ignore[call-overload,arg-type]


def republish_tombstones(session: Session, since: datetime) -> int:
    """Writes again the tombstones written since `since` (each key once) and forgets the
    older ones: each publish appends to the key's partition, which rolls its segment and
    lets the cleaner remove the erased records on a quiet topic too."""
    table = TombstoneSent.__table__  # type: ignore[attr-defined]
    session.exec(delete(table).where(table.c.at < since))  # type: ignore[call-overload]
    young = session.exec(
        select(table.c.topic, table.c.key).where(table.c.at >= since).distinct()
    ).all()
    moment = datetime.now(UTC)
    write_outbox(session, [{"topic": topic, "key": key, "payload": TOMBSTONE_PAYLOAD,
                            "created_at": moment} for topic, key in young])
    return len(young)


def build_dead_letter(service: str, inbound: Inbound, error: str) -> DeadLetter:
    """The contract's dead letter for `inbound`, its original cut to fit 512 KiB."""
    fields = new_event_fields()
    # Deterministic id: the same unreadable record, read again, is the same dead letter.
    fields["event_id"] = uuid.uuid5(
        DEAD_LETTER_NAMESPACE, f"{service}:{inbound.dead_letter_key}"
    )
    value = inbound.value or b""
    base = DeadLetter(
        **fields,
        service=service,
        source_topic=inbound.topic,
        partition=inbound.partition,
        offset=inbound.offset,
        error=error[:MAX_ERROR_CHARS],
        original=None,
        original_bytes=len(value),
        original_sha256=hashlib.sha256(value).hexdigest(),
    )
    as_text = _utf8(value)

    def letter(kept: int) -> DeadLetter:
        return base.model_copy(update=_original_fields(value[:kept], as_text, kept < len(value)))

    whole = letter(len(value))
    if _size(whole) <= MAX_DEAD_LETTER_BYTES:
        return whole
    low, high = 0, len(value)  # the longest prefix that fits: low fits, high does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _size(letter(middle)) <= MAX_DEAD_LETTER_BYTES else (
            low, middle)
    return letter(low)


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _original_fields(kept: bytes, as_text: bool, truncated: bool) -> dict[str, Any]:
    if as_text:  # a cut may split a character: its incomplete tail is left out
        text = kept.decode("utf-8", errors="ignore")
        return {"original": text, "original_base64": None, "original_truncated": truncated}
    encoded = base64.b64encode(kept).decode("ascii")
    return {"original": None, "original_base64": encoded, "original_truncated": truncated}


def _size(letter: DeadLetter) -> int:
    return len(letter.model_dump_json().encode("utf-8"))


def describe_validation_error(error: ValidationError) -> str:
    """A readable reason that names fields but never echoes their values (personal data)."""
    parts = []
    for detail in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in detail["loc"]) or "message"
        parts.append(f"{location}: {detail['msg']}")
    return "invalid event: " + "; ".join(parts)


def pending_outbox_rows(session: Session, limit: int) -> list[tuple[int, str, str | None, str]]:
    """The oldest outbox rows as plain tuples (id, topic, key, payload): the relay's read."""
    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    query = (
        select(table.c.id, table.c.topic, table.c.key, table.c.payload)
        .order_by(table.c.id)
        .limit(limit)
    )
    return [tuple(row) for row in session.exec(query).all()]  # type: ignore[misc]


def delete_outbox(session: Session, ids: Sequence[int]) -> None:
    session.exec(delete(OutboxMessage).where(col(OutboxMessage.id).in_(ids)))


def outbox_backlog(session: Session) -> int:
    return session.exec(select(func.count()).select_from(OutboxMessage)).one()


def park_outbox(session: Session, refused: dict[int, str]) -> None:
    """Moves the refused rows (id -> the broker's error) from the outbox to the parked ones."""
    rows = session.exec(select(OutboxMessage).where(col(OutboxMessage.id).in_(refused))).all()
    moment = datetime.now(UTC)
    for row in rows:
        assert row.id is not None
        session.add(ParkedMessage(id=row.id, topic=row.topic, key=row.key, payload=row.payload,
                                  created_at=row.created_at, error=refused[row.id][:500],
                                  parked_at=moment))
    delete_outbox(session, list(refused))


def parked_messages(session: Session, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """How many rows are parked and the newest ones, without their payload (it may hold
    personal data)."""
    count = session.exec(select(func.count()).select_from(ParkedMessage)).one()
    query = select(ParkedMessage).order_by(col(ParkedMessage.parked_at).desc(),
                                          col(ParkedMessage.id).desc()).limit(limit)
    newest = [
        {"id": row.id, "topic": row.topic, "bytes": len(row.payload.encode("utf-8")),
         "error": row.error, "created_at": row.created_at.isoformat(),
         "parked_at": row.parked_at.isoformat()}
        for row in session.exec(query).all()
    ]
    return count, newest
