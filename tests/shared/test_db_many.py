"""The grouped writes of `shared.db` (one statement for many rows) on SQLite and PostgreSQL,
on the aids store's tables."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import Engine, Table, select
from sqlmodel import Session

from services.aids.store import KIND_TOTAL, TABLES, TRAINEE
from shared.db import add_to_many, insert_ignore_many, set_many
from tests.plumbing import engine_fixture

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)


def rows(engine: Engine, table: Table) -> list[tuple[Any, ...]]:
    with Session(engine) as session:
        query = select(*table.c).order_by(*table.primary_key.columns)
        return [tuple(row) for row in session.exec(query).all()]  # type: ignore[call-overload]


def counters(year: int, kind: str, granted: int, amount: int) -> dict[str, Any]:
    return {"year": year, "kind": kind, "granted": granted, "rejected": 0, "quantity": granted,
            "amount_cents": amount, "trainees": 0}


def test_add_to_many_adds_to_the_rows_there_and_creates_the_others(engine: Engine) -> None:
    with Session(engine) as session:
        add_to_many(session, KIND_TOTAL, [counters(2024, "meals", 1, 700)], ["year", "kind"])
        session.commit()
    with Session(engine) as session:
        add_to_many(session, KIND_TOTAL, [counters(2024, "laptop", 1, 40000),
                                          counters(2024, "meals", 2, 2100)], ["year", "kind"])
        add_to_many(session, KIND_TOTAL, [], ["year", "kind"])  # nothing to write
        session.commit()

    assert rows(engine, KIND_TOTAL) == [(2024, "laptop", 1, 0, 1, 40000, 0),
                                        (2024, "meals", 3, 0, 3, 2800, 0)]


def test_set_many_sets_the_given_columns_only(engine: Engine) -> None:
    with Session(engine) as session:
        set_many(session, TRAINEE, [
            {"trainee_id": "a", "school_id": "nimes", "enrolled_on": date(2024, 1, 8)},
            {"trainee_id": "b", "school_id": "ales", "enrolled_on": date(2024, 2, 1)},
        ], ["trainee_id"])
        session.commit()
    with Session(engine) as session:
        set_many(session, TRAINEE, [{"trainee_id": "a", "exited_on": date(2024, 6, 30)},
                                    {"trainee_id": "c", "exited_on": date(2024, 7, 1)}],
                 ["trainee_id"])
        session.commit()

    assert rows(engine, TRAINEE) == [("a", "nimes", date(2024, 1, 8), date(2024, 6, 30)),
                                     ("b", "ales", date(2024, 2, 1), None),
                                     ("c", None, None, date(2024, 7, 1))]


def test_insert_ignore_many_keeps_the_rows_there(engine: Engine) -> None:
    with Session(engine) as session:
        set_many(session, TRAINEE, [{"trainee_id": "a", "school_id": "nimes"}], ["trainee_id"])
        insert_ignore_many(session, TRAINEE, [{"trainee_id": "a"}, {"trainee_id": "b"}])
        session.commit()

    assert rows(engine, TRAINEE) == [("a", "nimes", None, None), ("b", None, None, None)]
