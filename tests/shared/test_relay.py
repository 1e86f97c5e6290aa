"""The outbox relay through the real broker, on SQLite and PostgreSQL: a row the broker
refuses for good is parked, and the rows behind it are published; one record limit for the
producers, the broker and the topics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlmodel import Session

from deploy.local_kafka import LocalKafka, server_settings
from shared.kafka import MAX_MESSAGE_BYTES, OutboxRelay, ensure_topics
from shared.messaging import outbox_backlog, parked_messages, write_outbox
from shared.observability import ServiceMetrics
from tests.plumbing import engine_fixture

pytestmark = pytest.mark.infra

engine = engine_fixture([])  # the plumbing's tables only


async def new_topic(kafka: LocalKafka, **config: str) -> str:
    name = f"e2c.test.relay.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(**kafka.admin_access().client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
    finally:
        await admin.close()
    return name


def fill_outbox(engine: Engine, topic: str, payloads: list[str]) -> None:
    now = datetime.now(UTC)
    with Session(engine) as session:
        write_outbox(session, [{"topic": topic, "key": "k", "payload": payload,
                                "created_at": now} for payload in payloads])
        session.commit()


@pytest.fixture
async def relay(engine: Engine, kafka: LocalKafka) -> AsyncIterator[OutboxRelay]:
    metrics = ServiceMetrics("relay-test", CollectorRegistry())
    running = OutboxRelay(engine, kafka.admin_access(), metrics, poll_seconds=0.1)
    await running.start()
    yield running
    await running.stop()


async def read(kafka: LocalKafka, topic: str, count: int, timeout: float = 30) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, **kafka.admin_access().client_options(), group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while len(values) < count:
                batch = await consumer.getmany(timeout_ms=500)
                values += [record.value for records in batch.values() for record in records]
    finally:
        await consumer.stop()
    return values


async def wait_settled(engine: Engine, parked: int, timeout: float = 30) -> list[dict]:
    """Waits until the outbox is empty and `parked` rows are set aside."""
    async with asyncio.timeout(timeout):
        while True:
            with Session(engine) as session:
                backlog = outbox_backlog(session)
                count, last = parked_messages(session, 10)
            if backlog == 0 and count >= parked:
                return last
            await asyncio.sleep(0.05)


async def test_a_row_over_the_producer_limit_is_parked_and_the_next_go_out(
    engine: Engine, kafka: LocalKafka, relay: OutboxRelay
) -> None:
    topic = await new_topic(kafka, **{"max.message.bytes": str(MAX_MESSAGE_BYTES)})
    fill_outbox(engine, topic, ['{"n": 1}', "x" * (MAX_MESSAGE_BYTES + 1), '{"n": 2}'])
    relay.wake()

    assert await read(kafka, topic, 2) == [b'{"n": 1}', b'{"n": 2}']
    [parked] = await wait_settled(engine, parked=1)
    assert parked["topic"] == topic
    assert parked["error"].startswith("MessageSizeTooLargeError")
    assert parked["bytes"] == MAX_MESSAGE_BYTES + 1
    assert "payload" not in parked  # may hold personal data


async def test_a_row_the_broker_refuses_is_tried_alone_then_parked(
    engine: Engine, kafka: LocalKafka, relay: OutboxRelay
) -> None:
    topic = await new_topic(kafka, **{"max.message.bytes": "2000"})
    fill_outbox(engine, topic, ['{"n": 1}', "y" * 5000, '{"n": 2}', '{"n": 3}'])
    relay.wake()

    values = await read(kafka, topic, 3)
    [parked] = await wait_settled(engine, parked=1)
    assert sorted(values) == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert parked["bytes"] == 5000


async def topic_config(kafka: LocalKafka, topic: str) -> dict[str, str]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(**kafka.admin_access().client_options())
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [(_code, _message, _type, _name, entries, *_)] = response.resources
    return {entry[0]: entry[1] for entry in entries}


async def test_one_record_limit_for_producer_broker_and_topics(
    kafka: LocalKafka, engine: Engine
) -> None:
    old = await new_topic(kafka)  # made before the limit was set: the broker's default
    fresh = f"e2c.test.limits.{uuid.uuid4().hex[:10]}"

    await ensure_topics(kafka.admin_access(), [old, fresh], partitions=1)

    for topic in (old, fresh):
        config = await topic_config(kafka, topic)
        assert config["max.message.bytes"] == str(MAX_MESSAGE_BYTES)
        assert config["retention.ms"] == "-1"
    settings = server_settings(9092, 9093, Path("/tmp"), "unused")
    assert settings["message.max.bytes"] == MAX_MESSAGE_BYTES
    relay = OutboxRelay(engine, kafka.admin_access(), ServiceMetrics("x", CollectorRegistry()))
    assert relay._new_producer()._max_request_size == MAX_MESSAGE_BYTES
