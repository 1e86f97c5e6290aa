"""(1.1) Erasure's copies, on SQLite and on PostgreSQL: every erasure writes a tombstone of
the referral in its own transaction, a dead-lettered submission gets one too, young
tombstones are written again and old ones forgotten; the bound's delays fit in the bound;
the broker gets the topic settings, also on a topic made before them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

import shared.kafka
from deploy.local_kafka import LocalKafka
from services.referrals.app import TOPOLOGY
from services.referrals.store import TABLES, ReferralStore
from shared.contract import Topic
from shared.erasure import ErasureBound
from shared.kafka import ensure_topics, topic_partitions
from shared.kafka import topic_config as real_topic_config
from shared.messaging import TombstoneSent, republish_tombstones
from tests import plumbing
from tests.events import referral
from tests.infra import poll
from tests.plumbing import engine_fixture, inbound, outbox, tombstones
from tests.shared.test_relay import topic_config

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)
processor = partial(plumbing.processor, TOPOLOGY)
record = partial(inbound, Topic.REFERRALS_SUBMITTED)
SUBMITTED = str(Topic.REFERRALS_SUBMITTED)


def erase(engine: Engine, referral_id: str) -> bool:
    with Session(engine) as session:
        store = ReferralStore(session)
        row = store.get(referral_id)
        assert row is not None
        done = store.erase(row, "erasure_request")
        session.commit()
    return done


def test_an_erasure_writes_one_tombstone_of_the_referral(engine: Engine) -> None:
    event = referral()
    processor(engine).process([record(event, 0)])
    assert tombstones(engine) == []

    assert erase(engine, event["referral_id"]) is True
    assert erase(engine, event["referral_id"]) is False  # already done: nothing more

    assert tombstones(engine) == [(SUBMITTED, event["referral_id"])]
    with Session(engine) as session:
        sent = session.exec(select(TombstoneSent)).all()
    assert [(row.topic, row.key) for row in sent] == [(SUBMITTED, event["referral_id"])]


def test_an_erasure_rolled_back_leaves_no_tombstone(engine: Engine) -> None:
    event = referral()
    processor(engine).process([record(event, 0)])
    with Session(engine) as session:
        store = ReferralStore(session)
        row = store.get(event["referral_id"])
        assert row is not None and store.erase(row, "erasure_request")
        session.rollback()
    assert tombstones(engine) == []


@pytest.mark.parametrize("value", [b'{"referral_id": "x", "candidate": {}}', b"{not json"])
def test_a_dead_lettered_submission_is_tombstoned_by_its_key(engine: Engine,
                                                             value: bytes) -> None:
    processor(engine).process([record(value, 0), record(referral(), 1)])

    assert [row.topic for row in outbox(engine)] == [Topic.DEADLETTER, Topic.REFERRALS_DECIDED]
    assert tombstones(engine) == [(SUBMITTED, "k")]  # `inbound`'s key


def test_young_tombstones_are_written_again_and_old_ones_forgotten(engine: Engine) -> None:
    events = [referral() for _ in range(3)]
    processor(engine).process([record(e, i) for i, e in enumerate(events)])
    for event in events:
        erase(engine, event["referral_id"])
    with Session(engine) as session:  # the first erasure is older than the bound
        first = session.exec(select(TombstoneSent).where(
            TombstoneSent.key == events[0]["referral_id"])).one()
        first.at = datetime.now(UTC) - timedelta(days=8)
        session.add(first)
        session.commit()

    with Session(engine) as session:
        again = republish_tombstones(session, datetime.now(UTC) - timedelta(days=7))
        session.commit()

    young = {e["referral_id"] for e in events[1:]}
    assert again == 2
    written = tombstones(engine)
    assert len(written) == 3 + 2 and set(written[3:]) == {(SUBMITTED, k) for k in young}
    with Session(engine) as session:
        assert {row.key for row in session.exec(select(TombstoneSent))} == young


@pytest.mark.parametrize("days", [7, 1, 0.0005, 0.00001])
def test_every_delay_of_an_erasure_fits_in_the_bound(days: float) -> None:
    bound = ErasureBound(days)
    compacted = bound.compacted_topic_config()
    roll = int(compacted["segment.ms"]) + bound.republish_seconds * 1000
    cleaned = max(roll, int(compacted["max.compaction.lag.ms"])) + bound.cleaner_backoff_ms
    assert cleaned + int(compacted["file.delete.delay.ms"]) < bound.total_ms
    letters = bound.dead_letter_topic_config()
    expired = int(letters["segment.ms"]) + int(letters["retention.ms"])
    broker = bound.broker_settings()
    first_check = max(broker["log.initial.task.delay.ms"],
                      broker["log.retention.check.interval.ms"])
    assert expired + first_check + int(letters["file.delete.delay.ms"]) < bound.total_ms


async def test_provisioning_sets_the_bound_on_topics_made_before_it(
    kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted, letters = (f"e2c.test.erasure.{uuid.uuid4().hex[:8]}" for _ in range(2))
    access = kafka.admin_access()
    await ensure_topics(access, [submitted, letters], partitions=1)  # plain topics
    await topic_partitions(access, [submitted, letters])  # known to the broker
    bound = ErasureBound(0.001)

    # The session's real topics serve other tests: these two stand in for them.
    names = {submitted: Topic.REFERRALS_SUBMITTED, letters: Topic.DEADLETTER}
    monkeypatch.setattr(shared.kafka, "topic_config",
                        lambda topic, b, journals=(): real_topic_config(
                            names.get(topic, topic), b, journals))
    await ensure_topics(access, [submitted, letters], partitions=1, bound=bound)

    async def applied() -> tuple[dict[str, str], dict[str, str]] | None:
        # The broker applies the controller's change a moment after the answer.
        found = await topic_config(kafka, submitted), await topic_config(kafka, letters)
        return found if found[0].get("cleanup.policy") == "compact" else None

    compacted, expiring = await poll(applied, timeout=10)
    assert compacted["max.compaction.lag.ms"] == str(bound.segment_ms)
    assert compacted["retention.ms"] == "-1"
    assert expiring["cleanup.policy"] == "delete"
    assert expiring["retention.ms"] == str(bound.dead_letter_retention_ms)
