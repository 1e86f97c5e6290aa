"""Through the real broker: the backlog a restored store decides (`shared.rebuild.catch_up`)
is read from the store's offsets (a partition it never read: from its beginning) to where
each partition ends, and merged across topics by the records' timestamps, each partition
keeping its own order, whatever order the topics were written in."""

from __future__ import annotations

from uuid import uuid4

import pytest
from aiokafka import AIOKafkaProducer

from deploy.local_kafka import LocalKafka
from shared.kafka import ensure_topics
from shared.rebuild import read_backlog

pytestmark = pytest.mark.infra

BASE_MS = 1_700_000_000_000


async def test_the_backlog_starts_at_the_stored_offsets_and_follows_the_timestamps(
    kafka: LocalKafka,
) -> None:
    admin = kafka.admin_access()
    derogations, enrollments = (f"test.catchup.{uuid4().hex}.{name}"
                                for name in ("derogations", "enrollments"))
    await ensure_topics(admin, [derogations, enrollments], partitions=2)
    # Written topic after topic, later topic first: (topic, partition, moment in ms).
    writes = [(enrollments, 0, 30), (enrollments, 0, 50), (enrollments, 1, 10),
              (enrollments, 1, 60), (derogations, 0, 20), (derogations, 0, 40),
              (derogations, 1, 5), (derogations, 1, 70)]
    producer = AIOKafkaProducer(**admin.client_options())
    await producer.start()
    try:
        for topic, partition, moment in writes:
            await producer.send_and_wait(topic, f"{topic}@{moment}".encode(), key=b"k",
                                         partition=partition, timestamp_ms=BASE_MS + moment)
    finally:
        await producer.stop()
    stored = {(derogations, 1): 1}  # the store had read derogations[1]'s first record only

    backlog, ends = await read_backlog(admin, (derogations, enrollments), stored)

    kept = [(topic, partition, moment) for topic, partition, moment in writes
            if (topic, partition, moment) != (derogations, 1, 5)]
    expected = sorted(kept, key=lambda write: write[2])  # the moments are all distinct
    assert [(r.topic, r.partition, r.timestamp - BASE_MS) for r in backlog] == expected
    assert [r.value for r in backlog] == [f"{t}@{m}".encode() for t, _p, m in expected]
    assert {(tp.topic, tp.partition): end for tp, end in ends.items()} == {
        (derogations, 0): 2, (derogations, 1): 2, (enrollments, 0): 2, (enrollments, 1): 2}
