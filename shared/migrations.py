"""Each service's store schema, versioned with Alembic: one history per service in
`services/<service>/migrations/` (its `env.py` calls `run_migrations` with the service's
tables), driven from code (no alembic.ini).

`migrate_store` is what a service (and every command that opens its store) runs first: an
empty store is built by the migrations, a store made by `create_all` before them is
recognised and stamped, an older one is upgraded, a newer one refused (`StoreTooNew`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, Table, inspect, text
from sqlmodel.sql.sqltypes import AutoString

from shared.db import UtcDateTime, make_engine
from shared.messaging import PLUMBING_TABLES
from shared.settings import PROJECT_ROOT

VERSION_TABLE = "alembic_version"


class StoreTooNew(RuntimeError):
    """The store is at a revision this code does not know: a newer release migrated it."""

    def __init__(self, service: str, revision: str, head: str) -> None:
        self.service, self.revision, self.head = service, revision, head
        super().__init__(
            f"the {service} store is at revision {revision}, unknown to this code (its "
            f"newest revision is {head}): run the release that made it, or restore a backup"
        )


@dataclass(frozen=True)
class StoreRevision:
    service: str
    current: str | None  # None: no schema yet
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def script_location(service: str) -> Path:
    return PROJECT_ROOT / "services" / service / "migrations"


def alembic_config(service: str, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location(service)))
    config.attributes["connection"] = connection
    return config


def scripts(service: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(service))


def head_revision(service: str) -> str:
    head = scripts(service).get_current_head()
    assert head is not None, f"{service} has no migration"
    return head


def history(service: str) -> list[Script]:
    """The service's revisions, oldest first."""
    return list(reversed(list(scripts(service).walk_revisions())))


def service_metadata(tables: Sequence[Table]) -> MetaData:
    """Exactly one service's tables (the plumbing's and its own), apart from the shared
    `SQLModel.metadata`, which holds every service's."""
    metadata = MetaData()
    for table in [*PLUMBING_TABLES, *tables]:
        table.to_metadata(metadata)
    return metadata


def run_migrations(tables: Sequence[Table]) -> None:
    """The body of a service's `env.py`: runs on the connection `migrate_store` (or
    `new_revision`) hands over, inside its transaction."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the migrations through shared.migrations (e2c db ...)")
    context.configure(
        connection=connection,
        target_metadata=service_metadata(tables),
        compare_type=True,
        render_as_batch=True,  # SQLite alters a column by copying its table
        render_item=_render_type,
    )
    with context.begin_transaction():
        context.run_migrations()


def _render_type(kind: str, item: object, _context: object) -> str | Literal[False]:
    """New revisions spell the models' own types in plain SQLAlchemy, so that a revision
    stays what it was when the models change."""
    if kind == "type" and isinstance(item, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    if kind == "type" and isinstance(item, AutoString):
        return f"sa.String(length={item.length})" if item.length else "sa.String()"
    return False


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def store_revision(engine: Engine, service: str) -> StoreRevision:
    with engine.connect() as connection:
        current = current_revision(connection)
    return StoreRevision(service, current, head_revision(service))


def migrate_store(engine: Engine, service: str) -> str:
    """Brings the store to the code's newest revision and returns it; refuses a store
    newer than the code (`StoreTooNew`). One transaction, one migrating instance at once."""
    directory = scripts(service)
    head = head_revision(service)
    known = {script.revision for script in directory.walk_revisions()}
    with engine.begin() as connection:
        _lock(connection, service)
        config = alembic_config(service, connection)
        current = current_revision(connection)
        if current is None and _has_tables(connection):
            current = legacy_revision(connection, service)
            command.stamp(config, current)
        if current is not None and current not in known:
            raise StoreTooNew(service, current, head)
        if current != head:
            command.upgrade(config, "head")
    return head


def legacy_revision(connection: Connection, service: str) -> str:
    """The revision a store made by `create_all` (before the migrations) matches: the first
    revision, then each next one that declares `legacy_applied(connection)` and finds its
    change already there. A revision without it is one no such store can have."""
    found = None
    for script in history(service):
        applies = getattr(script.module, "legacy_applied", None)
        if found is not None and (applies is None or not applies(connection)):
            break
        found = script.revision
    assert found is not None
    return found


def reset_store(engine: Engine, service: str, tables: Sequence[Table]) -> str:
    """Drops `tables` and the revision mark, then builds the store again at the newest
    revision (the outcomes rebuild)."""
    with engine.begin() as connection:
        _lock(connection, service)
        service_metadata(tables).drop_all(connection)
        connection.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    return migrate_store(engine, service)


def _has_tables(connection: Connection) -> bool:
    return any(name != VERSION_TABLE for name in inspect(connection).get_table_names())


def _lock(connection: Connection, service: str) -> None:
    """PostgreSQL: one instance migrates, the others wait, then find the store up to date.
    SQLite needs none: its transactions begin IMMEDIATE (the write lock)."""
    if connection.dialect.name == "postgresql":
        key = zlib.crc32(f"e2c-migrations-{service}".encode())
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def new_revision(service: str, message: str, scratch: Path) -> Script | None:
    """A developer's next revision, autogenerated against a scratch SQLite store at head:
    `make migration SERVICE=aids MESSAGE="..."`. Read and tidy it before committing."""
    engine = make_engine(f"sqlite:///{scratch}")
    try:
        migrate_store(engine, service)
        number = int(head_revision(service)) + 1
        with engine.begin() as connection:
            config = alembic_config(service, connection)
            made = command.revision(config, message=message, autogenerate=True,
                                    rev_id=f"{number:04d}")
    finally:
        engine.dispose()
    return made if isinstance(made, Script) else None
