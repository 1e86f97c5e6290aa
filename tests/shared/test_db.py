"""SQLite stores: durable commits (WAL synced at each commit)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from shared.db import make_engine, read_only

SQLITE_FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def test_every_sqlite_connection_syncs_the_wal_at_each_commit(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with engine.connect() as connection:  # a transaction, as the stores use it
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA synchronous")).scalar() == SQLITE_FULL
        raw = [engine.raw_connection() for _ in range(3)]  # each a connection of its own
        try:
            for connection in raw:
                cursor = connection.cursor()
                assert cursor.execute("PRAGMA synchronous").fetchone() == (SQLITE_FULL,)
        finally:
            for connection in raw:
                connection.close()
    finally:
        engine.dispose()


def test_a_read_only_transaction_reads_what_is_committed_while_a_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (v TEXT)"))
            connection.execute(text("INSERT INTO t VALUES ('committed')"))
        with engine.begin() as writer:  # BEGIN IMMEDIATE: the store's single write lock
            writer.execute(text("INSERT INTO t VALUES ('not yet')"))
            with read_only(engine).connect() as reader:
                seen = reader.execute(text("SELECT v FROM t")).scalars().all()
            assert seen == ["committed"]
        with read_only(engine).connect() as reader:
            assert reader.execute(text("SELECT count(*) FROM t")).scalar() == 2
    finally:
        engine.dispose()


def test_read_only_leaves_other_databases_engines_as_they_are() -> None:
    engine = make_engine("postgresql+psycopg://user:secret@127.0.0.1:1/none")
    try:
        assert read_only(engine) is engine
    finally:
        engine.dispose()
