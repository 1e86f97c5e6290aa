"""The Kafka side of the plumbing: topics, the batch subscriber and the outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Union

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, for_code
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage
from pydantic import BaseModel
from sqlalchemy import Engine, text
from sqlmodel import Session

from shared.contract import Topic
from shared.db import is_postgresql
from shared.erasure import ErasureBound
from shared.kafka_access import KafkaAccess
from shared.logsafe import describe_error
from shared.messaging import (
    TOMBSTONE_PAYLOAD,
    BatchProcessor,
    Inbound,
    delete_outbox,
    outbox_backlog,
    park_outbox,
    pending_outbox_rows,
    stored_offsets,
)
from shared.observability import ServiceMetrics
from shared.settings import Settings

log = logging.getLogger(__name__)

OUTBOX_LOCK_KEY = 0x0E2C_0B0C  # the advisory lock of the outbox relay (one store per service)
Row = tuple[int, str, str | None, str]


# One limit for a record everywhere: the producers' `max_request_size`, the broker's
# `message.max.bytes` and each topic's `max.message.bytes` (a record batch of one record,
# its header included). A dead letter (512 KiB at most) and its key fit in it.
MAX_MESSAGE_BYTES = 1024 * 1024

# The topics are the system of record the views are rebuilt from: they are kept forever,
# but for the two that may hold personal data (`topic_config`).
TOPIC_CONFIG = {"retention.ms": "-1", "max.message.bytes": str(MAX_MESSAGE_BYTES)}


# An internal journal (`ServiceTopology.journals`): the latest record of each key, forever.
JOURNAL_CONFIG = {**TOPIC_CONFIG, "cleanup.policy": "compact"}


# Replicas of each partition: three on a cluster of three brokers or more, so that a write
# acknowledged by two of them (producers use acks=all) survives the loss of any one broker.
MAX_REPLICATION_FACTOR = 3


def replication_factor_for(brokers: int) -> int:
    return max(1, min(MAX_REPLICATION_FACTOR, brokers))


def min_insync_replicas(replication_factor: int) -> int:
    """Two of three replicas must have a write before it is acknowledged; with fewer
    replicas one is enough (else losing a broker of two would stop every write)."""
    return 2 if replication_factor >= MAX_REPLICATION_FACTOR else 1


def replication_config(replication_factor: int) -> dict[str, str]:
    """The topic-level settings that follow the replication factor (none for one replica:
    the broker's default of one applies)."""
    if replication_factor <= 1:
        return {}
    return {"min.insync.replicas": str(min_insync_replicas(replication_factor))}


def topic_config(
    topic: str, bound: ErasureBound, journals: Collection[str] = ()
) -> dict[str, str]:
    """A topic's settings: the submitted referrals are compacted (an erasure's tombstone
    removes the person's record) and the dead letters expire, both within the bound; the
    `journals` are compacted and kept."""
    if topic in journals:
        return JOURNAL_CONFIG
    if topic == Topic.REFERRALS_SUBMITTED:
        return {**TOPIC_CONFIG, **bound.compacted_topic_config()}
    if topic == Topic.DEADLETTER:
        return {**TOPIC_CONFIG, **bound.dead_letter_topic_config()}
    return TOPIC_CONFIG


async def ensure_topics(
    admin_access: KafkaAccess,
    topics: Sequence[str],
    partitions: int,
    bound: ErasureBound | None = None,
    journals: Collection[str] = (),
    replication_factor: int | None = None,
) -> None:
    """Create the missing topics and give the existing ones our settings where they differ
    (topics made by an older version, or a bound changed since). Only the admin may: the
    stack does it, never a service, and the broker creates no topic on a first write.

    `replication_factor` None: `replication_factor_for` the brokers the cluster has now. A
    topic keeps the replication factor it was created with."""
    bound = bound or ErasureBound(Settings().erasure_max_days)
    admin = AIOKafkaAdminClient(**admin_access.client_options())
    await admin.start()
    try:
        if replication_factor is None:
            cluster = await admin.describe_cluster()
            replication_factor = replication_factor_for(len(cluster["brokers"]))
        replicated = replication_config(replication_factor)
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            new = [NewTopic(t, num_partitions=partitions,
                            replication_factor=replication_factor,
                            topic_configs={**topic_config(t, bound, journals), **replicated})
                   for t in missing]
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        await _align_topic_configs(admin, [t for t in topics if t in existing], bound,
                                   journals, replicated)
    finally:
        await admin.close()


async def _align_topic_configs(
    admin: AIOKafkaAdminClient, topics: Sequence[str], bound: ErasureBound,
    journals: Collection[str], replicated: dict[str, str],
) -> None:
    """Sets again the whole configuration of each topic that differs (AlterConfigs sets
    the given keys and resets the others: each topic's whole set is given)."""
    if not topics:
        return
    resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
    stale = []
    for response in await admin.describe_configs(resources):
        for _code, _message, _type, name, entries, *_ in response.resources:
            values = {entry[0]: entry[1] for entry in entries}
            wanted = {**topic_config(name, bound, journals), **replicated}
            if any(values.get(key) != value for key, value in wanted.items()):
                stale.append(name)
    if stale:
        log.info("topic settings set again on %s", ", ".join(stale))
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic,
                            {**topic_config(topic, bound, journals), **replicated})
             for topic in stale]
        )


async def partition_leaders(access: KafkaAccess, topic: str) -> dict[int, int]:
    """Partition -> the node id of its leader, as the cluster's metadata says now (-1 for a
    partition with no leader, e.g. while one is elected)."""
    admin = AIOKafkaAdminClient(**access.client_options())
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for found in described:
        if found.get("error_code"):
            # e.g. unknown topic: a node that has not yet caught up with its creation
            raise for_code(found["error_code"])(topic)
        return {p["partition"]: p["leader"] for p in found.get("partitions", [])}
    raise RuntimeError(f"{topic}: not described by the broker")


async def topic_partitions(
    access: KafkaAccess, topics: Sequence[str], wait_seconds: float = 10
) -> list[TopicPartition]:
    """Every partition of `topics`, as the broker describes them (a new topic may take a
    moment to have its partitions and leaders)."""
    admin = AIOKafkaAdminClient(**access.client_options())
    await admin.start()
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            described = await admin.describe_topics(list(topics))
            found = {
                topic["topic"]: [p["partition"] for p in topic.get("partitions", [])]
                for topic in described
                if not topic.get("error_code")
            }
            if all(found.get(t) for t in topics) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    missing = [topic for topic in topics if not found.get(topic)]
    if missing:
        raise RuntimeError(f"no partitions known for {', '.join(missing)} (topics are "
                           "created by the stack, `e2c stack up`, as the broker's admin)")
    return [TopicPartition(topic, p) for topic in topics for p in sorted(found[topic])]


def _keep_undecoded(_message: Any) -> None:
    """The processor decodes and validates each record itself (bad ones become dead letters)."""
    return None


class SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    """On every assignment (the first one at start included), moves each assigned partition
    to the next offset its store recorded (`consumer_offset`), before anything is fetched.

    The store's offsets are the truth: a store restored from a backup reads again what it
    had not stored, even if the group's committed offset is further. A partition the store
    never read from starts at its beginning, not at the group's committed offset: a store
    restored from a backup taken before its first record of a partition has stored none of
    it (and the inbox makes a record read again, in a store made before this, harmless)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.consumer: Callable[[], AIOKafkaConsumer | None] = lambda: None
        self.sought: dict[TopicPartition, int] = {}  # the last seeks, for tests and logs

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self.consumer()
        if consumer is None or not assigned:
            return
        # Read without yielding to the loop (a short query, once per assignment): the
        # fetcher would meanwhile hand out records from the committed offset.
        stored = self._read()
        for tp in sorted(assigned):
            # Never read: offset 0, without a round trip (which would yield); a log whose
            # start was deleted answers out of range, and `auto_offset_reset` (earliest)
            # moves to its first record.
            offset = stored.get((tp.topic, tp.partition), 0)
            consumer.seek(tp, offset)
            self.sought[tp] = offset
        log.info("assigned %d partitions, %d moved to the store's offsets", len(assigned),
                 sum(1 for tp in assigned if (tp.topic, tp.partition) in stored))

    def _read(self) -> dict[tuple[str, int], int]:
        with Session(self.engine) as session:
            return stored_offsets(session)


class BatchConsumer:
    """Subscribes one consumer group to the service's input topics, a batch at a time.

    Each batch's transaction records the next offsets to read, and the consumer starts
    from them on every assignment (`SeekToStoredOffsets`). Offsets are also committed to
    Kafka by hand (AckPolicy.MANUAL, for lag reporting) only after the batch's transaction
    committed. When the store fails, the batch is rewound (nack seeks back on every
    partition) and read again after a backoff: nothing is skipped, nothing loops hot.

    `after_db_commit`, None unless a test sets it (`deploy.faults`), runs between a batch's
    transaction commit and its offset commit: the place to inject a crash.
    """

    def __init__(
        self,
        processor: BatchProcessor,
        metrics: ServiceMetrics,
        on_committed: Callable[[], None],
        after_db_commit: Callable[[], None] | None = None,
    ) -> None:
        self.processor = processor
        self.metrics = metrics
        self.on_committed = on_committed
        self.after_db_commit = after_db_commit
        self.failures = 0
        self.last_processed_at: float | None = None
        self.listener = SeekToStoredOffsets(processor.engine)

    def subscribe(
        self,
        broker: KafkaBroker,
        topics: Sequence[str],
        group_id: str,
        batch_size: int,
        models: Sequence[type[BaseModel]],
    ) -> None:
        """Registers the batch handler; `models` only document the payloads (AsyncAPI).

        The broker must be built with `apply_types=False`: the records are decoded and
        validated here, one by one, so that an unreadable one becomes a dead letter
        instead of failing the whole batch before our code runs.
        """
        async def on_batch(body: Any) -> None:
            await self.consume(broker.context.get_local("message"))

        payload = list[Union[tuple(models)]]  # type: ignore[valid-type]  # noqa: UP007
        on_batch.__annotations__ = {"body": payload, "return": None}
        subscriber = broker.subscriber(
            *topics,
            group_id=group_id,
            batch=True,
            max_records=batch_size,
            batch_timeout_ms=100,
            ack_policy=AckPolicy.MANUAL,
            auto_offset_reset="earliest",
            listener=self.listener,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            decoder=_keep_undecoded,
            title=f"{self.processor.service}:inputs",  # the document shows no group id
            description=f"Inputs of {self.processor.service}; unreadable ones go to the DLT.",
        )
        subscriber(on_batch)
        # The client is built when the subscriber starts: the listener looks it up then.
        self.listener.consumer = lambda: getattr(subscriber, "consumer", None)

    async def consume(self, msg: KafkaMessage) -> None:
        raw = msg.raw_message
        records = raw if isinstance(raw, tuple | list) else (raw,)
        inbound = [to_inbound(record) for record in records]
        started = time.perf_counter()
        try:
            result = await anyio.to_thread.run_sync(self.processor.process, inbound)
        except Exception as error:
            self.failures += 1
            self.metrics.batch_failures.labels(self.processor.service).inc()
            log.error("batch of %d rolled back, read again: %s", len(inbound),
                      describe_error(error))
            await asyncio.sleep(min(0.2 * 2**self.failures, 10.0))
            await msg.nack()
            return
        self.failures = 0
        self.last_processed_at = time.time()
        self.metrics.mark_processed(self.last_processed_at)
        self.metrics.record_batch(result, time.perf_counter() - started, len(inbound))
        if self.after_db_commit is not None:
            self.after_db_commit()
        await msg.ack()
        self.on_committed()


def to_inbound(record: Any) -> Inbound:
    key = record.key.decode("utf-8", errors="replace") if record.key is not None else None
    return Inbound(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        value=record.value,
    )


def _raise_if_transient(error: BaseException) -> None:
    """A failure that may pass (broker away, leader moving) fails the whole round."""
    if not isinstance(error, KafkaError) or isinstance(error, KafkaTimeoutError):
        raise error
    if getattr(error, "retriable", False):
        raise error


def _refusal(error: KafkaError) -> str:
    return f"{type(error).__name__}: {str(error)[:300]}"


class OutboxRelay:
    """Publishes committed outbox rows in order, then deletes them.

    Woken after each committed batch, and polling besides, so that rows left by a crash
    (or written by another instance) go out too. A publish that fails leaves the rows in
    place for the next round: at-least-once, and consumers drop repeats by `event_id`.
    """

    def __init__(
        self,
        engine: Engine,
        access: KafkaAccess,
        metrics: ServiceMetrics,
        batch_size: int = 1000,
        poll_seconds: float = 0.5,
    ) -> None:
        self.engine = engine
        self.access = access
        self.metrics = metrics
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **self.access.client_options(),
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=512 * 1024,
            max_request_size=MAX_MESSAGE_BYTES,
        )

    async def start(self) -> None:
        self._producer = self._new_producer()
        await self._producer.start()
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            await self._producer.stop()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
            self._wake.clear()
            try:
                await self.drain()
                failures = 0
            except Exception as error:
                failures += 1
                self.metrics.relay_failures.labels(self.metrics.service).inc()
                log.error("outbox relay round failed: %s", describe_error(error))
                await asyncio.sleep(min(0.2 * 2**failures, 10.0))

    async def drain(self) -> int:
        """Publishes the outbox until it is empty, or until another instance holds it.

        A row the broker refuses for good (too large, not allowed) is parked, not retried:
        the rows behind it go out. A transient failure (broker away) fails the round.
        """
        published = 0
        while True:
            claim = await anyio.to_thread.run_sync(self._claim)
            if claim is None:
                break
            session, rows = claim
            try:
                if not rows:
                    break
                refused = await self._publish(rows)
                await anyio.to_thread.run_sync(self._settle, session, rows, refused)
                published += len(rows) - len(refused)
            finally:
                await anyio.to_thread.run_sync(session.close)
        backlog = await anyio.to_thread.run_sync(self._backlog)
        self.metrics.outbox_backlog.labels(self.metrics.service).set(backlog)
        return published

    async def _publish(self, rows: list[Row]) -> dict[int, str]:
        """Sends the rows; returns those refused for good (id -> error)."""
        refused: dict[int, str] = {}
        sent: list[tuple[Row, asyncio.Future[Any]]] = []
        for row in rows:
            try:
                sent.append((row, await self._send(row)))
            except KafkaError as error:  # refused before sending (size)
                refused[row[0]] = _refusal(error)
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        failed = []
        for (row, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                _raise_if_transient(result)
                failed.append(row)
        if failed:
            # A refused batch leaves the idempotent producer's sequence behind the broker's
            # (the next batches fail too): a new producer tries each failed row alone.
            await self._restart_producer()
            for row in failed:
                error = await self._send_alone(row)
                if error is not None:
                    refused[row[0]] = error
                    await self._restart_producer()
        self._count_published(rows, refused)
        return refused

    async def _restart_producer(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        self._producer = self._new_producer()
        await self._producer.start()

    async def _send(self, row: Row) -> asyncio.Future[Any]:
        assert self._producer is not None
        _id, topic, key, payload = row
        try:
            return await self._producer.send(
                topic,
                value=None if payload == TOMBSTONE_PAYLOAD else payload.encode("utf-8"),
                key=key.encode("utf-8") if key is not None else None,
            )
        except KafkaError as error:
            _raise_if_transient(error)
            raise

    async def _send_alone(self, row: Row) -> str | None:
        """The broker's final refusal of this one row, or None once it is published."""
        try:
            await (await self._send(row))
        except KafkaError as error:
            _raise_if_transient(error)
            return _refusal(error)
        return None

    def _count_published(self, rows: list[Row], refused: dict[int, str]) -> None:
        counts: dict[str, int] = {}
        for row_id, topic, _key, _payload in rows:
            if row_id not in refused:
                counts[topic] = counts.get(topic, 0) + 1
        for topic, count in counts.items():
            self.metrics.record_published(topic, count)
        for row_id, error in refused.items():
            self.metrics.outbox_parked.labels(self.metrics.service).inc()
            log.error("outbox row %s refused by the broker for good, parked: %s", row_id, error)

    def _claim(self) -> tuple[Session, list[Row]] | None:
        """Opens the round's transaction and reads the oldest rows in it.

        On PostgreSQL only one instance of a service relays at a time (a transaction-scoped
        advisory lock held while the rows are published, then deleted), so the outbox
        leaves in commit order and no row is published twice by two instances.
        """
        session = Session(self.engine)
        if not is_postgresql(self.engine):
            # SQLite: holding its single write lock while publishing would stall the
            # consumer; the read ends at once (instances sharing one file may then publish
            # a row twice, with its event_id: consumers drop the repeat).
            rows = pending_outbox_rows(session, self.batch_size)
            session.commit()
            return session, rows
        lock = text("SELECT pg_try_advisory_xact_lock(:key)")
        if not session.exec(lock, params={"key": OUTBOX_LOCK_KEY}).one()[0]:  # type: ignore[call-overload]
            session.close()
            return None
        return session, pending_outbox_rows(session, self.batch_size)

    @staticmethod
    def _settle(session: Session, rows: list[Row], refused: dict[int, str]) -> None:
        """Deletes the published rows and parks the refused ones, in the round's transaction."""
        published = [row_id for row_id, *_ in rows if row_id not in refused]
        if published:
            delete_outbox(session, published)
        if refused:
            park_outbox(session, refused)
        session.commit()

    def _backlog(self) -> int:
        with Session(self.engine) as session:
            return outbox_backlog(session)
