"""Wiring of the outcomes service, and its rebuild from the topics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import Engine, inspect
from sqlmodel import Session, SQLModel, delete

from shared.contract import ExitDecided, ExitSubmitted, Topic
from shared.db import make_engine
from shared.kafka import to_inbound, topic_partitions
from shared.messaging import (
    PLUMBING_TABLES,
    BatchProcessor,
    OutboxMessage,
    Unit,
    outbox_backlog,
)
from shared.service import ServiceApp, ServiceSpec, build_app, hold_sweep
from shared.settings import Settings

from . import api
from .handlers import OutcomeHandlers
from .store import TABLES, OutcomeStore

SERVICE = "outcomes"
GROUP_ID = f"e2c-{SERVICE}"
# The order of a rebuild: submissions first (their answers), then what the view is made of,
# trainees before the exits that need them.
REBUILD_ORDER = (
    Topic.EXITS_SUBMITTED,
    Topic.REFERRALS_DECIDED,
    Topic.ENROLLMENTS_DECIDED,
    Topic.AIDS_DECIDED,
    Topic.EXITS_DECIDED,
)


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    handlers = OutcomeHandlers()
    spec = ServiceSpec(
        name=SERVICE,
        routes=handlers.routes(),
        outputs={Topic.EXITS_DECIDED: ExitDecided},
        tables=TABLES,
        http_routes=api.routes,
        periodic=[hold_sweep("held-exits-sweep", handlers.sweep, settings.hold_sweep_seconds)],
        description="Exits, outcome categories, yearly indicators and the referral funnel.",
        held_count=lambda session: OutcomeStore(session).held.count(),
    )
    return build_app(spec, settings)


# --- rebuild ----------------------------------------------------------------------------------


@dataclass
class RebuildResult:
    records: int
    held_again: int


def rebuild(settings: Settings) -> RebuildResult:
    """Drops the store and rebuilds it from the topics alone (the service must be stopped).

    Every input topic is read from its beginning up to its end at the start of the rebuild;
    exits are taken as they were decided (exits.decided) with the satisfaction answers of
    their submissions, so nothing is decided again. Submissions that had no decision yet are
    decided now when their trainee is known (a first answer, published when the service
    starts), held again otherwise. The consumer group then resumes where the rebuild stopped.
    It refuses to run while decisions wait in the outbox, or when a topic lost its start.
    """
    engine = make_engine(settings.database_url(SERVICE))
    try:
        _refuse_unsent_outbox(engine)
        ends = asyncio.run(_end_offsets(settings.kafka_bootstrap_servers))
        tables = [*PLUMBING_TABLES, *TABLES]
        SQLModel.metadata.drop_all(engine, tables=tables)
        SQLModel.metadata.create_all(engine, tables=tables)
        processor = BatchProcessor(SERVICE, engine, OutcomeHandlers().rebuild_routes())
        records = 0
        for topic in REBUILD_ORDER:
            records += asyncio.run(_replay(settings.kafka_bootstrap_servers, topic, ends,
                                           processor))
        held = _hold_undecided(engine)
        asyncio.run(_commit_group_offsets(settings.kafka_bootstrap_servers, ends))
        return RebuildResult(records, held)
    finally:
        engine.dispose()


def _refuse_unsent_outbox(engine: Engine) -> None:
    inspector = inspect(engine)
    if not inspector.has_table(OutboxMessage.__tablename__):
        return
    with Session(engine) as session:
        backlog = outbox_backlog(session)
    if backlog:
        raise RuntimeError(f"{backlog} decisions are not published yet: start the service "
                           "until its outbox is empty, then rebuild")


async def _end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    """Where each input partition ends; refuses when its beginning is gone (retention)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = await topic_partitions(bootstrap, REBUILD_ORDER)
        starts = await consumer.beginning_offsets(partitions)
        lost = [f"{tp.topic}[{tp.partition}]" for tp, offset in starts.items() if offset > 0]
        if lost:
            raise RuntimeError(f"cannot rebuild: the start of {', '.join(lost)} was deleted")
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def _replay(
    bootstrap: str, topic: str, ends: dict[TopicPartition, int], processor: BatchProcessor
) -> int:
    partitions = [tp for tp in ends if tp.topic == topic and ends[tp] > 0]
    if not partitions:
        return 0
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
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


def _hold_undecided(engine: Engine) -> int:
    """Submissions never answered: decided now if their trainee is known, else held again.
    Nothing else the replay wrote to the outbox is sent (it was sent the first time)."""
    handlers = OutcomeHandlers()
    with Session(engine) as session:
        session.exec(delete(OutboxMessage))
        store = OutcomeStore(session)
        held = 0
        for submission in store.undecided_submissions():
            event = ExitSubmitted.model_validate_json(submission.payload)
            if store.trainee(event.trainee_id) is None:
                store.held.hold(submission.trainee_id, submission.payload)
                held += 1
            else:
                handlers.decide(Unit(session), store, event)
        session.commit()
        return held


async def _commit_group_offsets(bootstrap: str, ends: dict[TopicPartition, int]) -> None:
    """The service's group resumes after what the rebuild read."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP_ID,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        subscribed = {tp: end for tp, end in ends.items() if tp.topic != Topic.EXITS_DECIDED}
        consumer.assign(list(subscribed))
        await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in subscribed.items()})
    finally:
        await consumer.stop()
