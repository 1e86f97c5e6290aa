"""The inbox/outbox plumbing and the referrals store, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, select

from services.referrals.app import TOPOLOGY
from services.referrals.handlers import ReferralHandlers, erase_due
from services.referrals.store import TABLES, PersonClaim, Referral, ReferralStore
from shared.contract import MODELS, ReferralSubmitted, Topic
from shared.db import make_engine
from shared.messaging import (
    MAX_DEAD_LETTER_BYTES,
    BatchProcessor,
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
from shared.service import create_schema
from tests import plumbing
from tests.events import referral
from tests.plumbing import pending_outbox

pytestmark = pytest.mark.infra


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    store_engine = make_engine(store_url)
    create_schema(store_engine, TABLES)
    yield store_engine
    store_engine.dispose()


def processor(engine: Engine, routes: dict[str, Route] | None = None) -> BatchProcessor:
    """The referrals service's processor, with its batch loading (as deployed)."""
    return plumbing.processor(TOPOLOGY, engine, routes)


def record(
    value: dict[str, object] | bytes, offset: int, topic: str = Topic.REFERRALS_SUBMITTED
) -> Inbound:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Inbound(topic=topic, partition=0, offset=offset, key="k", value=raw)


def derogation_granted(referral: dict[str, Any]) -> dict[str, object]:
    return {"event_id": str(uuid.uuid4()), "occurred_at": "2024-03-05T10:00:00+01:00",
            "schema_version": 1, "referral_id": referral["referral_id"],
            "granted": True, "decided_by": "direction"}


def enrollment_of(referral: dict[str, Any]) -> dict[str, object]:
    return {"event_id": str(uuid.uuid4()), "occurred_at": "2024-03-06T10:00:00+01:00",
            "schema_version": 1, "referral_id": referral["referral_id"],
            "school_id": "toulouse", "enrolled_on": "2024-03-06"}


def outbox(engine: Engine) -> list[OutboxMessage]:
    with Session(engine) as session:
        return pending_outbox(session, 1000)


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


def test_personal_data_is_kept_only_in_the_referral_row(engine: Engine) -> None:
    event = referral()
    processor(engine).process([record(event, 0)])
    with Session(engine) as session:
        stored = session.get(Referral, event["referral_id"])
        assert stored is not None and stored.last_name == event["candidate"]["last_name"]
    assert all(event["candidate"]["last_name"] not in m.payload for m in outbox(engine))


def test_two_live_claims_of_one_person_cannot_both_commit(engine: Engine) -> None:
    """The race of two instances accepting one person at once: the store refuses the second
    claim (its batch then rolls back and, read again, finds the first: a duplicate)."""
    outcome: dict[str, BaseException | None] = {}

    def second_instance() -> None:
        try:
            with Session(engine) as session:
                session.add(PersonClaim(person_key="digest-of-one-person", referral_id="B"))
                session.commit()
            outcome["second"] = None
        except BaseException as error:
            outcome["second"] = error

    with Session(engine) as first:
        first.add(PersonClaim(person_key="digest-of-one-person", referral_id="A"))
        first.flush()  # holds the row (PostgreSQL) or the write lock (SQLite)
        racer = threading.Thread(target=second_instance)
        racer.start()
        racer.join(timeout=0.5)
        assert racer.is_alive()  # the second instance waits for the first transaction
        first.commit()
    racer.join(timeout=30)

    assert isinstance(outcome["second"], IntegrityError)
    with Session(engine) as session:
        claims = session.exec(select(PersonClaim)).all()
    assert [(c.person_key, c.referral_id) for c in claims] == [("digest-of-one-person", "A")]


def test_retention_erases_settled_and_exited_referrals_only(engine: Engine) -> None:
    rejected, live, exited = referral(candidate={"in_school": True}), referral(), referral()
    processor(engine).process([record(e, i) for i, e in enumerate((rejected, live, exited))])
    with Session(engine) as session:
        store = ReferralStore(session)
        leaver = store.get(exited["referral_id"])
        assert leaver is not None
        leaver.exited_on = date.today()
        session.commit()

    with Session(engine) as session:
        too_soon = erase_due(ReferralStore(session), 24, datetime.now(UTC))
        later = erase_due(
            ReferralStore(session), 24, datetime.now(UTC) + timedelta(days=25 * 31)
        )
        session.commit()

    assert (too_soon, later) == (0, 2)
    with Session(engine) as session:
        store = ReferralStore(session)
        kept = {e["referral_id"]: store.get(e["referral_id"]) for e in (rejected, live, exited)}
        still_followed = kept[live["referral_id"]]
        assert still_followed is not None
        assert still_followed.last_name == live["candidate"]["last_name"]
        for gone in (rejected, exited):
            row = kept[gone["referral_id"]]
            assert row is not None and row.last_name is None and row.birth_date is None
            assert row.status in ("rejected", "accepted")
            assert [h.kind for h in store.history(gone["referral_id"])][-1] == "erasure"


@pytest.mark.parametrize("prepared", [True, False])
def test_the_same_person_twice_in_one_batch_is_one_acceptance_and_one_duplicate(
    engine: Engine, prepared: bool
) -> None:
    """With the batch cache (the fast path) and without it (the savepoint path)."""
    person = {"last_name": referral()["candidate"]["last_name"]}
    first, second = referral(candidate=person), referral(candidate=person)
    handlers = ReferralHandlers(set(load_schools()))
    batch = plumbing.processor(TOPOLOGY, engine, handlers=handlers, prepared=prepared)

    batch.process([record(first, 0), record(second, 1)])

    statuses = [json.loads(m.payload)["status"] for m in outbox(engine)]
    assert statuses == ["accepted", "duplicate"]


def test_a_referral_changed_in_the_batch_that_created_it_is_still_right(engine: Engine) -> None:
    """The fast path writes new referrals in bulk and lets the batch read a frozen copy; a
    derogation and an enrollment of that referral in the same batch ask the store for the
    row to change (the batch's pending rows are written first): they apply as they would in
    separate batches."""
    pending = referral(candidate={"birth_date": "1997-01-02"})  # 27 on 2024-03-04
    derogation, enrollment = derogation_granted(pending), enrollment_of(pending)

    processor(engine).process([
        record(pending, 0),
        record(derogation, 1, Topic.DEROGATIONS_SUBMITTED),
        record(enrollment, 2, Topic.ENROLLMENTS_SUBMITTED),
    ])

    answers = [(m.topic, json.loads(m.payload)["status"]) for m in outbox(engine)]
    assert answers == [
        (Topic.REFERRALS_DECIDED, "pending_derogation"),
        (Topic.REFERRALS_DECIDED, "accepted"),
        (Topic.ENROLLMENTS_DECIDED, "enrolled"),
    ]
    with Session(engine) as session:
        stored = ReferralStore(session).get(pending["referral_id"])
        assert stored is not None
        assert (stored.status, str(stored.enrolled_on)) == ("accepted", "2024-03-06")
        kinds = [h.kind for h in ReferralStore(session).history(pending["referral_id"])]
    assert kinds == ["referral", "derogation", "enrollment"]


def test_a_change_to_a_referral_of_the_same_batch_stays_on_the_fast_path(
    engine: Engine,
) -> None:
    """The derogation and the enrollment of a referral created in their batch are each
    handled once: the batch is not rolled back and handled again record by record."""
    handlers = ReferralHandlers(set(load_schools()))
    calls: Counter[str] = Counter()

    def counted(method: Any) -> Any:
        def handle(unit: UnitOfWork[ReferralStore], event: Any) -> None:
            calls[method.__name__] += 1
            method(handlers, unit, event)
        return handle

    routes = {topic: Route(MODELS[topic], counted(method))
              for topic, method in TOPOLOGY.consumes.items()}
    pending = referral(candidate={"birth_date": "1997-01-02"})  # needs a derogation
    derogation, enrollment = derogation_granted(pending), enrollment_of(pending)

    result = processor(engine, routes).process([
        record(pending, 0),
        record(derogation, 1, Topic.DEROGATIONS_SUBMITTED),
        record(enrollment, 2, Topic.ENROLLMENTS_SUBMITTED),
    ])

    assert calls == {"on_referral": 1, "on_derogation": 1, "on_enrollment": 1}
    assert sum(result.handled.values()) == 3


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
