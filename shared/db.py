"""Engines for the services' stores: a SQLite file by default, PostgreSQL through a URL."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Dialect, Engine, Table, TypeDecorator, event, func
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, create_engine

from shared.private_files import private_dir, touch_private


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    # hide_parameters: errors must not quote the row's values (personal data) into logs.
    return create_engine(
        url, pool_size=pool_size, max_overflow=5, pool_pre_ping=True, hide_parameters=True
    )


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _sqlite_engine(url: str) -> Engine:
    path = url.split("///", 1)[-1].partition("?")[0]
    if path and path != ":memory:":
        # Owner-only from the first byte; SQLite gives -wal and -shm the file's own mode.
        private_dir(Path(path).parent)
        touch_private(Path(path))
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True
    )

    # pysqlite's own transaction handling breaks SAVEPOINT and starts transactions lazily.
    # Take the write lock at BEGIN (IMMEDIATE) so that two processes sharing one file
    # serialise instead of failing on a lock upgrade.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: WAL is synced at each commit. NORMAL syncs it at checkpoints only: a power
        # loss could undo a committed batch whose outbox was already published, and the
        # batch decided again draws new random ids under the same event ids.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Deleted rows (erased personal data) are overwritten, not left in free pages.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def truncate_wal(engine: Engine, attempts: int = 20, pause_seconds: float = 0.25) -> bool:
    """SQLite: copies the WAL into the database and empties the file, so that no old frame
    (a row before its erasure, an outbox row before its deletion) stays on disk. Busy while
    a reader holds a snapshot: tried again. False when it never got through (or not SQLite)."""
    if engine.dialect.name != "sqlite":
        return False
    for attempt in range(attempts):
        connection = engine.raw_connection()  # no BEGIN: a checkpoint runs outside one
        try:
            busy, *_ = connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            connection.close()
        if not busy:
            return True
        if attempt + 1 < attempts:
            time.sleep(pause_seconds)
    return False


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend (SQLite keeps no offset: it is stored as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: give a time zone")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _insert(session: Session, table: Table) -> Any:
    dialect = session.get_bind().dialect.name
    return postgresql_insert(table) if dialect == "postgresql" else sqlite_insert(table)


def insert_ignore(session: Session, table: Table, values: dict[str, Any]) -> bool:
    """Inserts a row unless its key exists; True when this call inserted it (a row comes
    back: an INSERT's rowcount is not kept on PostgreSQL, where it read -1, i.e. True)."""
    statement = _insert(session, table).values(**values).on_conflict_do_nothing()
    statement = statement.returning(*table.primary_key.columns)
    return session.exec(statement).first() is not None  # type: ignore[call-overload]


def add_to(
    session: Session, table: Table, key: dict[str, Any], increments: dict[str, int]
) -> None:
    """Adds `increments` to a counter row, creating it: one atomic statement per row."""
    statement = _insert(session, table).values(**key, **increments)
    statement = statement.on_conflict_do_update(
        index_elements=list(key),
        set_={name: table.c[name] + statement.excluded[name] for name in increments},
    )
    session.exec(statement)  # type: ignore[call-overload]


def upsert_max(
    session: Session, table: Table, rows: list[dict[str, Any]], key: list[str], column: str
) -> None:
    """Inserts `rows`, or raises `column` of the existing ones to the new value where it is
    higher: one statement, and a value never goes down."""
    if not rows:
        return
    statement = _insert(session, table).values(rows)
    dialect = session.get_bind().dialect.name
    highest = func.greatest if dialect == "postgresql" else func.max  # SQLite's max(a, b)
    new = {column: highest(table.c[column], statement.excluded[column])}
    new.update({name: statement.excluded[name] for name in rows[0]
                if name not in key and name != column})
    session.exec(statement.on_conflict_do_update(index_elements=key, set_=new))  # type: ignore[call-overload]


def insert_ignore_many(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Inserts the rows whose key does not exist yet, in one statement (executemany); give
    them in key order, so that two transactions lock new keys in the same order."""
    if rows:
        session.exec(_insert(session, table).on_conflict_do_nothing(), params=rows)  # type: ignore[call-overload]


def add_to_many(
    session: Session, table: Table, rows: list[dict[str, Any]], key: list[str]
) -> None:
    """`add_to` for many counter rows in one statement (executemany): each row's columns
    outside `key` are added to the existing row's, or the row is created. Every row has the
    same columns; one key appears once; give them in key order (lock order)."""
    if not rows:
        return
    statement = _insert(session, table)
    counters = [name for name in rows[0] if name not in key]
    statement = statement.on_conflict_do_update(
        index_elements=key,
        set_={name: table.c[name] + statement.excluded[name] for name in counters},
    )
    session.exec(statement, params=rows)  # type: ignore[call-overload]


def set_many(session: Session, table: Table, rows: list[dict[str, Any]], key: list[str]) -> None:
    """Inserts the rows, or sets the existing ones' columns given in the rows (the others
    are left as they are), in one statement (executemany). Every row has the same columns;
    one key appears once; give them in key order (lock order)."""
    if not rows:
        return
    statement = _insert(session, table)
    statement = statement.on_conflict_do_update(
        index_elements=key,
        set_={name: statement.excluded[name] for name in rows[0] if name not in key},
    )
    session.exec(statement, params=rows)  # type: ignore[call-overload]
