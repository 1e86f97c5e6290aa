"""A service's store rebuilt from the topics alone, as its topology declares (`Rebuild`).

Every replayed topic is read from its beginning up to where it ended when the rebuild
started, in the declared order, by the replay's handlers (which learn what was decided and
decide nothing again); then the declared `finish` runs in one transaction. What the replay
wrote to the outbox is dropped (it was sent the first time); what `finish` emits is sent when
the service starts. The service's consumer group then resumes after what was read.
It refuses to run while events wait in the outbox, or when a topic lost its start.
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import Engine, inspect
from sqlmodel import Session, delete

from shared.db import make_engine
from shared.kafka import to_inbound, topic_partitions
from shared.kafka_access import KafkaAccess
from shared.messaging import (
    BatchProcessor,
    OutboxMessage,
    outbox_backlog,
    record_offsets,
    stored_offsets,
    unit_of_work,
)
from shared.migrations import reset_store
from shared.settings import Settings
from shared.topology import ServiceTopology


@dataclass
class RebuildResult:
    records: int
    held_again: int


def rebuild(topology: ServiceTopology[Any, Any], settings: Settings) -> RebuildResult:
    """Drops the service's store and rebuilds it from the topics (the service must be
    stopped)."""
    if topology.rebuild is None:
        raise ValueError(f"the {topology.name} service cannot be rebuilt from the topics")
    replayed = tuple(topology.rebuild.replays)
    handlers = topology.handlers(settings)
    engine = make_engine(settings.database_url(topology.name))
    try:
        _refuse_unsent_outbox(engine, topology)
        access = settings.kafka_access()
        ends = asyncio.run(_end_offsets(access, replayed))
        reset_store(engine, topology.name, topology.tables)
        processor = topology.rebuild_processor(engine, handlers)
        records = sum(asyncio.run(_replay(access, topic, ends, processor))
                      for topic in replayed)
        consumed = {tp: end for tp, end in ends.items() if tp.topic in topology.inputs}
        held = finish(topology, handlers, engine, consumed)
        asyncio.run(_commit_group_offsets(access, topology.group_id, consumed))
        return RebuildResult(records, held)
    finally:
        engine.dispose()


def finish(
    topology: ServiceTopology[Any, Any],
    handlers: Any,
    engine: Engine,
    consumed: dict[TopicPartition, int] | None = None,
) -> int:
    """The rebuild's last step, once every topic is replayed: what the replay wrote to the
    outbox is dropped (it was sent the first time), then the declared `finish` runs. The
    service's inputs are recorded as read up to `consumed`, where the replay ended (past
    its last record: a partition may end with records no longer there)."""
    assert topology.rebuild is not None
    with unit_of_work(engine, topology.store, topology.name) as uow:
        uow.session.exec(delete(OutboxMessage))  # type: ignore[call-overload]
        record_offsets(uow.session, {(tp.topic, tp.partition): end
                                     for tp, end in (consumed or {}).items()})
        return topology.rebuild.finish(handlers, uow)


CATCH_UP_BATCH = 500


def catch_up(
    topology: ServiceTopology[Any, Any], settings: Settings, commit_group: bool = True
) -> int:
    """What a store restored from a backup has not stored yet, decided in the order it was
    published (the service stopped); returns how many records were read.

    The running consumer reads its partitions side by side: a backlog of several topics
    would come in another order than the one it was first decided in (an enrollment before
    the derogation that accepted its referral), and a decision could change. Here the
    backlog of every input, from the store's offsets to where the inputs end now, is
    merged by the records' timestamps (each partition keeping its own order) and put
    through the service's own processor: the same decisions, under the same event ids
    (sent when the service starts, ignored by who has them). The store's offsets, and the
    group's for lag reporting (`commit_group`: the reader may use the group), end where
    the backlog ended."""
    engine = make_engine(settings.database_url(topology.name))
    try:
        with Session(engine) as session:
            stored = stored_offsets(session)
        access = settings.kafka_access()
        backlog, ends = asyncio.run(read_backlog(access, topology.inputs, stored))
        processor = topology.processor(engine, topology.handlers(settings))
        for start in range(0, len(backlog), CATCH_UP_BATCH):
            chunk = backlog[start:start + CATCH_UP_BATCH]
            processor.process([to_inbound(record) for record in chunk])
        with unit_of_work(engine, topology.store, topology.name) as uow:
            record_offsets(uow.session, {(tp.topic, tp.partition): end
                                         for tp, end in ends.items()})
        if commit_group:
            asyncio.run(_commit_group_offsets(access, topology.group_id, ends))
        return len(backlog)
    finally:
        engine.dispose()


async def read_backlog(
    access: KafkaAccess, topics: tuple[str, ...], stored: dict[tuple[str, int], int]
) -> tuple[list[ConsumerRecord], dict[TopicPartition, int]]:
    """Each partition's records from the store's offset (its beginning if the store never
    read it) to its end now, merged by timestamp; and those ends."""
    partitions = await topic_partitions(access, topics)
    consumer = AIOKafkaConsumer(**access.client_options(), group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        firsts = await consumer.beginning_offsets(partitions)
        read: dict[TopicPartition, list[ConsumerRecord]] = {tp: [] for tp in partitions}
        for tp in partitions:
            consumer.seek(tp, max(stored.get((tp.topic, tp.partition), 0), firsts[tp]))
        remaining = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=2000)
            for tp, records in batches.items():
                read[tp].extend(record for record in records if record.offset < ends[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        in_order = sorted(partitions, key=lambda tp: (topics.index(tp.topic), tp.partition))
        merged = heapq.merge(*(read[tp] for tp in in_order), key=lambda r: r.timestamp)
        return list(merged), dict(ends)
    finally:
        await consumer.stop()


def _refuse_unsent_outbox(engine: Engine, topology: ServiceTopology[Any, Any]) -> None:
    if not inspect(engine).has_table(OutboxMessage.__tablename__):
        return
    with unit_of_work(engine, topology.store) as uow:
        backlog = outbox_backlog(uow.session)
    if backlog:
        raise RuntimeError(f"{backlog} decisions are not published yet: start the service "
                           "until its outbox is empty, then rebuild")


async def _end_offsets(access: KafkaAccess, topics: tuple[str, ...]) -> dict[TopicPartition, int]:
    """Where each replayed partition ends; refuses when its beginning is gone (retention)."""
    consumer = AIOKafkaConsumer(**access.client_options(), group_id=None)
    await consumer.start()
    try:
        partitions = await topic_partitions(access, topics)
        starts = await consumer.beginning_offsets(partitions)
        lost = [f"{tp.topic}[{tp.partition}]" for tp, offset in starts.items() if offset > 0]
        if lost:
            raise RuntimeError(f"cannot rebuild: the start of {', '.join(lost)} was deleted")
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def _replay(
    access: KafkaAccess, topic: str, ends: dict[TopicPartition, int], processor: BatchProcessor
) -> int:
    partitions = [tp for tp in ends if tp.topic == topic and ends[tp] > 0]
    if not partitions:
        return 0
    consumer = AIOKafkaConsumer(**access.client_options(), group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records = 0
        remaining = set(partitions)
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=2000)
            batch = [
                record for tp, got in batches.items() for record in got
                if record.offset < ends[tp]
            ]
            if batch:
                await asyncio.to_thread(processor.process, [to_inbound(r) for r in batch])
                records += len(batch)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


async def _commit_group_offsets(
    access: KafkaAccess, group_id: str, ends: dict[TopicPartition, int]
) -> None:
    """The service's group resumes after what the rebuild read."""
    consumer = AIOKafkaConsumer(**access.client_options(), group_id=group_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in ends.items()})
    finally:
        await consumer.stop()
