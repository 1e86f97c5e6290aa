"""Through the real broker, on a broker of its own (the aids service's group is the one of
the session's stack): the consumer starts from the offsets its store recorded. A store put
back to an earlier copy reads again, and answers again under the same ids, exactly what it
had not stored; a group whose committed offsets went back reads nothing twice."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata

from deploy import kafka_security
from deploy.harness import Environment, ServiceProcess, ServiceProcesses
from deploy.kafka_security import ADMIN, OPS
from deploy.writers import TOOLS_AGENCY
from services.aids.app import TOPOLOGY as AIDS
from shared.contract import Topic
from shared.kafka import topic_partitions
from tests import tokens
from tests.events import aid_request
from tests.infra import TEST_DATA, Publisher, TopicWatcher, learn_trainee

pytestmark = pytest.mark.infra


@dataclass
class AidsAlone:
    env: Environment
    stack: ServiceProcesses
    aids: ServiceProcess
    publisher: Publisher
    watcher: TopicWatcher

    @property
    def store(self) -> Path:
        return self.stack.data_dir / "stores" / "aids.db"


@pytest.fixture
async def aids_alone() -> AsyncIterator[AidsAlone]:
    env = Environment(TEST_DATA / "offsets")
    stack = env.stack("stack")
    tokens.write_tokens_file(stack.data_dir / "tokens.json")
    try:
        await asyncio.to_thread(env.start)
        # The tools' partner made now: its new password reaches the broker while aids starts.
        await asyncio.to_thread(kafka_security.ensure_partner, env.kafka, TOOLS_AGENCY)
        aids = stack.add("aids")
        await asyncio.to_thread(aids.start)
        publisher = Publisher(env.kafka)
        watcher = TopicWatcher(stack.access(OPS), [Topic.AIDS_DECIDED])
        await publisher.start()
        await watcher.start()
        try:
            yield AidsAlone(env, stack, aids, publisher, watcher)
        finally:
            await watcher.stop()
            await publisher.stop()
    finally:
        stack.stop_all()
        env.stop()


async def request(setup: AidsAlone, trainee: str) -> dict[str, Any]:
    event = aid_request(trainee, "meals")
    await setup.publisher.send(Topic.AIDS_REQUESTED, event, key=trainee)
    return event


def answers(setup: AidsAlone, event: dict[str, Any]) -> list[dict[str, Any]]:
    return setup.watcher.find(Topic.AIDS_DECIDED, request_event_id=event["event_id"])


def consumed(setup: AidsAlone) -> dict[str, float]:
    """The records the running process read, by result (its own counter, since it started)."""
    return {result: setup.aids.metric("e2c_events_consumed_total", result=result)
            for result in ("handled", "duplicate")}


def copy_store(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy, write-ahead log included."""
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


async def rewind_the_group(setup: AidsAlone) -> None:
    """The group's committed offsets back to the start of every input partition."""
    access = kafka_security.access(setup.env.kafka, ADMIN)
    partitions = await topic_partitions(access, list(AIDS.inputs))
    consumer = AIOKafkaConsumer(**access.client_options(), group_id=AIDS.group_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in partitions})
    finally:
        await consumer.stop()


async def test_the_consumer_starts_from_its_stores_offsets(aids_alone: AidsAlone) -> None:
    setup = aids_alone
    trainee = await learn_trainee(setup.publisher)  # one key: one partition, in order
    stored = [await request(setup, trainee) for _ in range(3)]
    for event in stored:
        await setup.watcher.wait_for(Topic.AIDS_DECIDED, request_event_id=event["event_id"])
    await asyncio.to_thread(setup.aids.stop)
    backup = setup.store.with_name("aids-backup.db")
    copy_store(setup.store, backup)

    await asyncio.to_thread(setup.aids.start)
    lost = [await request(setup, trainee) for _ in range(4)]
    for event in lost:
        await setup.watcher.wait_for(Topic.AIDS_DECIDED, request_event_id=event["event_id"])
    first_answers = {e["event_id"]: answers(setup, e)[0] for e in lost}
    await asyncio.to_thread(setup.aids.stop)
    copy_store(backup, setup.store)  # the store as it was before `lost` (Kafka's commit after)

    await asyncio.to_thread(setup.aids.start)
    marker = await request(setup, trainee)
    await setup.watcher.wait_for(Topic.AIDS_DECIDED, request_event_id=marker["event_id"])

    assert consumed(setup) == {"handled": len(lost) + 1, "duplicate": 0}
    assert [len(answers(setup, e)) for e in stored] == [1, 1, 1]  # not read again
    for event in lost:  # read again and answered again: the same answer, the same id
        first, second = answers(setup, event)
        assert first == first_answers[event["event_id"]]
        assert {k: v for k, v in second.items() if k != "occurred_at"} == {
            k: v for k, v in first.items() if k != "occurred_at"}

    await asyncio.to_thread(setup.aids.stop)
    await rewind_the_group(setup)  # Kafka's commit behind the store: the store wins
    await asyncio.to_thread(setup.aids.start)
    last = await request(setup, trainee)
    await setup.watcher.wait_for(Topic.AIDS_DECIDED, request_event_id=last["event_id"])

    assert consumed(setup) == {"handled": 1, "duplicate": 0}  # nothing read twice
    counts = [len(answers(setup, e)) for e in [*stored, *lost, marker, last]]
    assert counts == [1, 1, 1, 2, 2, 2, 2, 1, 1]
    assert len(setup.watcher.find(Topic.AIDS_DECIDED)) == sum(counts)
