"""The batch plumbing on SQLite and on PostgreSQL, driven by the referrals service's
processor: state, inbox and outbox in one transaction, redeliveries, rollbacks, the batch
scope, and (1.1) dead letters that never stall anything."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from functools import partial

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from services.referrals.app import TOPOLOGY
from services.referrals.handlers import ReferralHandlers
from services.referrals.store import TABLES, ReferralStore
from shared.contract import ReferralSubmitted, Topic
from shared.messaging import (
    MAX_DEAD_LETTER_BYTES,
    BatchScope,
    Inbound,
    InboxEvent,
    NeedsIsolation,
    OutboxMessage,
    Route,
    UnitOfWork,
    delete_outbox,
    outbox_backlog,
)
from shared.schools import load_schools
from tests import plumbing
from tests.events import referral
from tests.plumbing import engine_fixture, inbound, outbox, pending_outbox

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)
processor = partial(plumbing.processor, TOPOLOGY)  # the referrals service's, as deployed
record = partial(inbound, Topic.REFERRALS_SUBMITTED)


def test_a_batch_stores_state_inbox_and_outbox_together(engine: Engine) -> None:
    events = [referral(), referral(candidate={"in_school": True})]

    result = processor(engine).process([record(e, i) for i, e in enumerate(events)])

    assert result.handled == {Topic.REFERRALS_SUBMITTED: 2}
    with Session(engine) as session:
        stored = [ReferralStore(session).get(e["referral_id"]) for e in events]
        assert [r.status for r in stored if r] == ["accepted", "rejected"]
        assert len(ReferralStore(session).history(events[0]["referral_id"])) == 1
        inbox = set(session.exec(select(InboxEvent.key)).all())
    assert {e["event_id"] for e in events} <= inbox
    messages = outbox(engine)
    assert [m.topic for m in messages] == [Topic.REFERRALS_DECIDED] * 2
    assert [m.key for m in messages] == [e["referral_id"] for e in events]
    assert [json.loads(m.payload)["request_event_id"] for m in messages] == [
        e["event_id"] for e in events
    ]


def test_a_redelivered_batch_has_no_effect(engine: Engine) -> None:
    event = referral()
    batch = [record(event, 0), record(b"not json", 1)]
    processor(engine).process(batch)

    again = processor(engine).process(batch)

    assert again.duplicates == {Topic.REFERRALS_SUBMITTED: 2}
    assert again.handled == {}
    assert len(outbox(engine)) == 2  # one decision, one dead letter: nothing added


def test_the_same_event_twice_in_one_batch_is_handled_once(engine: Engine) -> None:
    event = referral()

    result = processor(engine).process([record(event, 0), record(event, 1)])

    assert result.handled == {Topic.REFERRALS_SUBMITTED: 1}
    assert result.duplicates == {Topic.REFERRALS_SUBMITTED: 1}
    assert len(outbox(engine)) == 1


def test_unreadable_input_becomes_a_dead_letter_in_the_outbox(engine: Engine) -> None:
    result = processor(engine).process([record(b"\xff\xfe garbage", 7)])

    assert result.dead_letters == {Topic.REFERRALS_SUBMITTED: 1}
    [message] = outbox(engine)
    letter = json.loads(message.payload)
    assert message.topic == Topic.DEADLETTER
    assert message.key == "k"
    assert letter["offset"] == 7
    assert letter["source_topic"] == Topic.REFERRALS_SUBMITTED
    assert letter["error"].startswith("invalid event")


def test_a_store_failure_rolls_back_the_whole_batch(engine: Engine) -> None:
    good = referral()
    handlers = ReferralHandlers(set(load_schools()))

    def failing(unit: UnitOfWork[ReferralStore], event: object) -> None:
        if unit.inbound.offset == 1:
            raise OperationalError("SELECT 1", {}, Exception("store went away"))
        handlers.on_referral(unit, event)  # type: ignore[arg-type]

    routes = {Topic.REFERRALS_SUBMITTED: Route(ReferralSubmitted, failing)}
    with pytest.raises(OperationalError):
        processor(engine, routes).process([record(good, 0), record(referral(), 1)])

    assert outbox(engine) == []
    with Session(engine) as session:
        assert ReferralStore(session).get(good["referral_id"]) is None
        assert session.exec(select(InboxEvent)).all() == []


def test_a_handler_bug_dead_letters_that_event_only(engine: Engine) -> None:
    handlers = ReferralHandlers(set(load_schools()))
    bad = referral()

    def buggy(unit: UnitOfWork[ReferralStore], event: object) -> None:
        handlers.on_referral(unit, event)  # type: ignore[arg-type]
        if unit.inbound.offset == 0:
            raise KeyError("bug after a write")

    routes = {Topic.REFERRALS_SUBMITTED: Route(ReferralSubmitted, buggy)}
    good = referral()
    result = processor(engine, routes).process([record(bad, 0), record(good, 1)])

    assert result.dead_letters == {Topic.REFERRALS_SUBMITTED: 1}
    assert result.handled == {Topic.REFERRALS_SUBMITTED: 1}
    with Session(engine) as session:
        assert ReferralStore(session).get(bad["referral_id"]) is None  # its writes rolled back
        assert ReferralStore(session).get(good["referral_id"]) is not None
    topics = [m.topic for m in outbox(engine)]
    assert topics == [Topic.DEADLETTER, Topic.REFERRALS_DECIDED]


def test_outbox_rows_are_deleted_once_published(engine: Engine) -> None:
    processor(engine).process([record(referral(), 0), record(referral(), 1)])
    with Session(engine) as session:
        rows = pending_outbox(session, 1)
        delete_outbox(session, [row.id for row in rows if row.id is not None])
        session.commit()
        assert outbox_backlog(session) == 1


def test_pending_rows_are_never_written_inside_a_savepoint(engine: Engine) -> None:
    """A savepoint rolled back later would take the earlier records' rows with it: the
    scope refuses, and the batch is handled again record by record."""
    with Session(engine) as session:
        scope = BatchScope(session, isolated=False)
        scope.insert(InboxEvent.__table__, {"key": "k", "topic": "t",  # type: ignore[arg-type]
                                            "processed_at": datetime.now(UTC)})
        with session.begin_nested(), pytest.raises(NeedsIsolation):
            scope.write_pending()
        scope.write_pending()
        assert session.exec(select(InboxEvent)).all()[0].key == "k"



def test_a_store_flush_runs_after_the_pending_rows_and_only_where_deferring_is_safe(
    engine: Engine,
) -> None:
    """A store's deferred work (`on_write`) is written with the pending rows, once per
    registration; it is refused on the savepoint path and not offered inside a savepoint."""
    seen: list[int] = []
    with Session(engine) as session:
        scope = BatchScope(session, isolated=False)
        assert scope.deferring

        def flush() -> None:  # sees the pending rows already written
            seen.append(len(session.exec(select(InboxEvent)).all()))

        scope.on_write(flush)
        scope.on_write(flush)
        scope.insert(InboxEvent.__table__, {"key": "k", "topic": "t",  # type: ignore[arg-type]
                                            "processed_at": datetime.now(UTC)})
        with session.begin_nested():
            assert not scope.deferring
        scope.write_pending()
        assert seen == [1]
        with Session(engine) as other, pytest.raises(ValueError):
            BatchScope(other, isolated=True).on_write(flush)

# --- (1.1) No message stalls anything -----------------------------------------------------


def letter_of(message: OutboxMessage) -> dict[str, object]:
    assert message.topic == Topic.DEADLETTER
    assert len(message.payload.encode("utf-8")) <= MAX_DEAD_LETTER_BYTES
    return json.loads(message.payload)


def test_bytes_that_are_not_utf8_are_kept_in_base64_and_cut_to_512_kib(engine: Engine) -> None:
    flood = b"\xff" * 900_000
    processor(engine).process([record(flood, 0)])

    letter = letter_of(*outbox(engine))
    assert letter["original"] is None
    kept = base64.b64decode(str(letter["original_base64"]))
    assert 0 < len(kept) < len(flood) and flood.startswith(kept)
    assert letter["original_truncated"] is True
    assert letter["original_bytes"] == 900_000
    assert letter["original_sha256"] == hashlib.sha256(flood).hexdigest()


def test_control_characters_are_kept_as_text_and_cut_to_512_kib(engine: Engine) -> None:
    flood = b"\x01" * 300_000  # valid UTF-8: six bytes each once escaped in JSON
    processor(engine).process([record(flood, 0)])

    letter = letter_of(*outbox(engine))
    kept = str(letter["original"]).encode("utf-8")
    assert letter["original_base64"] is None
    assert 0 < len(kept) < len(flood) and flood.startswith(kept)
    assert (letter["original_truncated"], letter["original_bytes"]) == (True, 300_000)


def test_a_cut_never_splits_a_character(engine: Engine) -> None:
    flood = "é".encode() * 400_000  # two bytes each: the cut may fall inside one
    processor(engine).process([record(flood, 0)])

    letter = letter_of(*outbox(engine))
    assert set(str(letter["original"])) == {"é"}
    assert letter["original_truncated"] is True


def test_an_original_that_fits_is_kept_whole(engine: Engine) -> None:
    brackets = b"[" * 200_000
    processor(engine).process([record(brackets, 0)])

    letter = letter_of(*outbox(engine))
    assert letter["original"] == brackets.decode()
    assert letter["original_truncated"] is False
    assert letter["original_sha256"] == hashlib.sha256(brackets).hexdigest()


def test_a_tombstone_is_neither_answered_nor_dead_lettered(engine: Engine) -> None:
    tombstone = Inbound(Topic.REFERRALS_SUBMITTED, 0, 3, "ML-1", None)
    result = processor(engine).process([tombstone, record(referral(), 4)])

    assert result.skipped == {Topic.REFERRALS_SUBMITTED: 1}
    assert result.dead_letters == {}
    assert [m.topic for m in outbox(engine)] == [Topic.REFERRALS_DECIDED]
    with Session(engine) as session:
        assert len(session.exec(select(InboxEvent)).all()) == 1


def test_a_dead_letter_does_not_swallow_another_record_at_its_position(engine: Engine) -> None:
    processor(engine).process([record(b"{not json", 5)])
    # The topic is deleted and created again: its offsets start anew.
    valid = referral()
    result = processor(engine).process([record(valid, 5)])

    assert result.handled == {Topic.REFERRALS_SUBMITTED: 1}
    again = processor(engine).process([record(b"{not json", 5)])
    assert again.duplicates == {Topic.REFERRALS_SUBMITTED: 1}


def test_a_dead_letter_keeps_a_key_of_any_length(engine: Engine) -> None:
    long_key = "K" * 5000
    processor(engine).process(
        [Inbound(Topic.REFERRALS_SUBMITTED, 0, 0, long_key, b"{not json"),
         record(referral(), 1)]
    )

    topics = {m.topic: m.key for m in outbox(engine)}
    assert topics[Topic.DEADLETTER] == long_key
    assert Topic.REFERRALS_DECIDED in topics
