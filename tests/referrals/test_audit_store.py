"""The access trail in the referrals store, on SQLite and on PostgreSQL: erasures append a
row naming who erased, the database itself refuses to change or delete a row, and the
trail is read by referral, by moment and page by page, oldest first."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, select

from services.referrals.app import TOPOLOGY
from services.referrals.handlers import erase_due
from services.referrals.store import (
    OPERATOR,
    SYSTEM,
    TABLES,
    Actor,
    AuditAction,
    AuditEntry,
    ReferralStore,
)
from shared.contract import Topic
from tests import plumbing
from tests.events import referral
from tests.plumbing import engine_fixture, inbound, store_engine

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)
processor = partial(plumbing.processor, TOPOLOGY)
record = partial(inbound, Topic.REFERRALS_SUBMITTED)
PARTNER = Actor("partner", "ml-toulouse")


def decided(engine: Engine, *events: dict[str, object]) -> list[str]:
    processor(engine).process([record(event, i) for i, event in enumerate(events)])
    return [str(event["referral_id"]) for event in events]


def trail(engine: Engine) -> list[AuditEntry]:
    with Session(engine) as session:
        return list(session.exec(select(AuditEntry).order_by(AuditEntry.id)).all())


def erase(engine: Engine, referral_id: str, actor: Actor | None = None) -> bool:
    with Session(engine) as session:
        store = ReferralStore(session)
        row = store.get(referral_id)
        assert row is not None
        done = store.erase(row, "erasure_request", actor) if actor else store.erase(
            row, "retention")
        session.commit()
        return done


def test_an_erasure_appends_one_row_naming_who_erased(engine: Engine) -> None:
    first, second, third = decided(engine, referral(), referral(), referral())

    assert erase(engine, first, PARTNER) and erase(engine, second, OPERATOR)
    assert erase(engine, third)  # as retention does: the service itself
    assert not erase(engine, first, PARTNER)  # already erased: nothing more to record

    rows = [(e.action, e.role, e.agency_id, e.referral_id, e.detail_codes)
            for e in trail(engine)]
    assert rows == [
        ("erasure", "partner", "ml-toulouse", first, ["erasure_request"]),
        ("erasure", "operator", None, second, ["erasure_request"]),
        ("erasure", "system", None, third, ["retention"]),
    ]
    assert all(e.at.tzinfo is not None for e in trail(engine))


def test_retention_erasures_are_recorded_as_the_system(engine: Engine) -> None:
    rejected, live = decided(engine, referral(candidate={"in_school": True}), referral())
    with Session(engine) as session:
        erased = erase_due(ReferralStore(session), 24, datetime.now(UTC) + timedelta(days=800))
        session.commit()

    assert erased == 1
    assert [(e.referral_id, e.role, e.detail_codes) for e in trail(engine)] == [
        (rejected, SYSTEM.role, ["retention"])
    ]
    assert live not in {e.referral_id for e in trail(engine)}


def test_a_row_holds_no_personal_data(engine: Engine) -> None:
    event = referral(candidate={"email": "x.audit@example.org", "phone": "+33611111111"})
    [referral_id] = decided(engine, event)
    erase(engine, referral_id, PARTNER)
    with Session(engine) as session:
        ReferralStore(session).audit(PARTNER, AuditAction.READ_PERSONAL_DATA, [referral_id])
        session.commit()

    dumped = repr([entry.model_dump() for entry in trail(engine)])
    candidate = event["candidate"]
    for value in (candidate["first_name"], candidate["last_name"], candidate["birth_date"],
                  "x.audit@example.org", "+33611111111"):
        assert str(value) not in dumped


@pytest.mark.parametrize("statement", [
    "UPDATE access_audit SET role = 'admin'",
    "UPDATE access_audit SET detail = '[]' WHERE id = 1",
    "DELETE FROM access_audit",
    "DELETE FROM access_audit WHERE id = 1",
])
def test_the_database_refuses_to_change_or_delete_a_row(engine: Engine, statement: str) -> None:
    with Session(engine) as session:
        ReferralStore(session).audit(PARTNER, AuditAction.READ_REFERRAL, ["R-1"])
        session.commit()
    before = [entry.model_dump() for entry in trail(engine)]

    with Session(engine) as session, pytest.raises(DBAPIError, match="append-only"):
        session.exec(text(statement))  # type: ignore[call-overload]
        session.commit()

    assert [entry.model_dump() for entry in trail(engine)] == before


def test_the_orm_cannot_delete_a_row_either(engine: Engine) -> None:
    with Session(engine) as session:
        ReferralStore(session).audit(PARTNER, AuditAction.READ_REFERRAL, ["R-1"])
        session.commit()

    with Session(engine) as session, pytest.raises(DBAPIError, match="append-only"):
        row = session.exec(select(AuditEntry)).one()
        session.delete(row)
        session.commit()

    assert len(trail(engine)) == 1


def test_postgresql_refuses_truncate(postgres_database: Callable[[str], str]) -> None:
    """PostgreSQL only: SQLite has no TRUNCATE (its DELETE is refused above)."""
    with store_engine(postgres_database("e2c_store_test"), TABLES) as engine, \
            Session(engine) as session:
        ReferralStore(session).audit(PARTNER, AuditAction.READ_REFERRAL, ["R-1"])
        session.commit()

        with Session(engine) as truncating, pytest.raises(DBAPIError, match="append-only"):
            truncating.exec(text("TRUNCATE access_audit"))  # type: ignore[call-overload]
            truncating.commit()

        assert len(trail(engine)) == 1


def test_the_trail_is_read_by_referral_by_moment_and_by_page(engine: Engine) -> None:
    with Session(engine) as session:
        store = ReferralStore(session)
        store.audit(PARTNER, AuditAction.LIST_REFERRALS, ["A", "B", "A"])
        store.audit(Actor("ops"), AuditAction.SHOW_DEAD_LETTER_ORIGINAL, [None],
                    ["source_topic=other"])
        session.commit()
    written = trail(engine)
    middle = written[2].at
    with Session(engine) as session:
        store = ReferralStore(session)
        latest = datetime.now(UTC) + timedelta(seconds=1)
        later_rows = [e for e in written if e.at >= middle]

        everything = store.audit_page(None, None, 1, 100)
        of_a = store.audit_page("A", None, 1, 100)
        first_page, second_page = (store.audit_page(None, None, p, 3) for p in (1, 2))
        since_middle = store.audit_page(None, middle, 1, 100)
        none_later = store.audit_page(None, latest, 1, 100)

    assert [e.id for e in everything.items] == [e.id for e in written]
    assert everything.total == 4
    assert [e.referral_id for e in of_a.items] == ["A", "A"] and of_a.total == 2
    assert [e.id for e in first_page.items + second_page.items] == [e.id for e in written]
    assert (len(first_page.items), first_page.total, len(second_page.items)) == (3, 4, 1)
    assert [e.id for e in since_middle.items] == [e.id for e in later_rows]
    assert (none_later.items, none_later.total) == ([], 0)
