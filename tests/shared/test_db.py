"""SQLite stores: durable commits (WAL synced at each commit)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from shared.db import make_engine

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
