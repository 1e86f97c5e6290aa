"""Wiring of the outcomes service, and its rebuild from the topics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import Engine
from sqlmodel import Session, SQLModel, delete

from shared.contract import ExitDecided, Topic
from shared.db import make_engine
from shared.kafka import to_inbound
from shared.messaging import PLUMBING_TABLES, BatchProcessor, OutboxMessage, Unit
from shared.service import PeriodicJob, ServiceApp, ServiceContext, ServiceSpec, build_app
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


def sweep_held_exits(handlers: OutcomeHandlers, ctx: ServiceContext) -> int:
    """Refuses `unknown_trainee` the exits whose enrollment never came within the hold."""
    with Session(ctx.engine) as session:
        swept = handlers.sweep(Unit(session), timedelta(seconds=ctx.settings.hold_seconds))
        session.commit()
    return swept


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    handlers = OutcomeHandlers()
    spec = ServiceSpec(
        name=SERVICE,
        routes=handlers.routes(),
        outputs={Topic.EXITS_DECIDED: ExitDecided},
        tables=TABLES,
        http_routes=api.routes,
        periodic=[
            PeriodicJob(
                "held-exits-sweep",
                settings.hold_sweep_seconds,
                lambda ctx: sweep_held_exits(handlers, ctx),
            )
        ],
        description="Exits, outcome categories, yearly indicators and the referral funnel.",
        held_count=lambda session: OutcomeStore(session).held_count(),
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
    their submissions, so nothing is decided again and nothing is published. Submissions
    that had no decision yet are held again. The consumer group then resumes where the
    rebuild stopped reading.
    """
    engine = make_engine(settings.database_url(SERVICE))
    try:
        tables = [*PLUMBING_TABLES, *TABLES]
        SQLModel.metadata.drop_all(engine, tables=tables)
        SQLModel.metadata.create_all(engine, tables=tables)
        ends = asyncio.run(_end_offsets(settings.kafka_bootstrap_servers))
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


async def _end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in REBUILD_ORDER
            for p in sorted(consumer.partitions_for_topic(topic) or set())
        ]
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
    """Submissions never answered (held, or in flight) are held again; nothing is sent."""
    with Session(engine) as session:
        store = OutcomeStore(session)
        pending = store.undecided_submissions()
        for submission in pending:
            store.hold(submission.trainee_id, submission.payload)
        session.exec(delete(OutboxMessage))  # a rebuild publishes nothing
        session.commit()
        return len(pending)


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
