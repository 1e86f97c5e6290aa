"""The stores' migrations (`shared/migrations.py`, `services/<name>/migrations/`), on SQLite
and on PostgreSQL: a store at an older revision keeps every row, a store made by
`create_all` before the migrations is recognised, a newer store is refused, and the models
and the migrations agree (a model changed without its revision fails here)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError

from deploy.system import TOPOLOGIES
from shared.db import make_engine
from shared.migrations import (
    StoreTooNew,
    alembic_config,
    head_revision,
    legacy_revision,
    migrate_store,
    reset_store,
    service_metadata,
)
from shared.settings import PROJECT_ROOT
from tests.tokens import write_tokens_file

AIDS = TOPOLOGIES["aids"]
INT32_MAX = 2**31 - 1
BEYOND_32_BITS = 2**40 + 7


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = make_engine(store_url)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade_to(engine: Engine, service: str, revision: str) -> None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(service, connection), revision)


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def money_columns() -> set[tuple[str, str]]:
    """The models' 64-bit columns (what 0002 must have widened), read from the models."""
    return {(table.name, column.name) for table in AIDS.tables for column in table.columns
            if isinstance(column.type, BigInteger)}


def declared_types(engine: Engine, columns: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    inspector = inspect(engine)
    found = {}
    for table, name in columns:
        types = {column["name"]: column["type"] for column in inspector.get_columns(table)}
        found[(table, name)] = types[name]
    return found


def value_for(table: Table, column: Any, row: int) -> Any:
    """Row `row`'s value of a column, by its reflected type: integers near the 32-bit
    limit (keys small and distinct), text naming the column."""
    kind = column.type
    if isinstance(kind, Integer):
        return row + 1 if column.primary_key else INT32_MAX - row
    if isinstance(kind, Boolean):
        return row % 2 == 0
    if isinstance(kind, DateTime):
        return datetime(2024, 3, 1 + row, 12, 30, 15, 123456)
    if isinstance(kind, Date):
        return date(2024, 3, 1 + row)
    if isinstance(kind, String):
        limit = kind.length or 100
        return f"{table.name}.{column.name}.{row}"[-limit:]
    raise AssertionError(f"no value for {table.name}.{column.name} ({kind})")


def fill_every_table(engine: Engine, rows: int = 3) -> int:
    """Rows in every table of the store (besides the revision mark); returns how many."""
    written = 0
    with engine.begin() as connection:
        metadata = MetaData()
        metadata.reflect(connection)
        for table in metadata.sorted_tables:
            if table.name == "alembic_version":
                continue
            values = [{column.name: value_for(table, column, row) for column in table.columns}
                      for row in range(rows)]
            connection.execute(table.insert(), values)
            written += len(values)
    return written


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (besides the revision mark), in key order."""
    with engine.connect() as connection:
        metadata = MetaData()
        metadata.reflect(connection)
        return {
            table.name: [tuple(row) for row in connection.execute(
                select(table).order_by(*table.primary_key.columns))]
            for table in metadata.sorted_tables if table.name != "alembic_version"
        }


# Tables that revisions after the first add: no store made before the migrations has them.
ADDED_SINCE_0001 = {"consumer_offset", "referral_erasure"}


def tables_of(service: str) -> set[str]:
    return {table.name for table in service_metadata(TOPOLOGIES[service].tables).sorted_tables}


def assert_rows_kept(after: dict[str, list[tuple[Any, ...]]],
                     before: dict[str, list[tuple[Any, ...]]]) -> None:
    """Every row of `before` is in `after`, and the tables new since then are empty."""
    assert {name: after[name] for name in before} == before
    assert all(not after[name] for name in set(after) - set(before))


def test_a_store_at_0001_upgrades_to_64_bit_money_and_keeps_every_row(engine: Engine) -> None:
    upgrade_to(engine, "aids", "0001")
    assert all(not isinstance(kind, BigInteger)
               for kind in declared_types(engine, money_columns()).values())
    written = fill_every_table(engine)
    before = snapshot(engine)
    assert set(before) == tables_of("aids") - ADDED_SINCE_0001
    assert sum(len(rows) for rows in before.values()) == written

    assert migrate_store(engine, "aids") == head_revision("aids") == revision_of(engine)

    assert_rows_kept(snapshot(engine), before)
    assert all(isinstance(kind, BigInteger)
               for kind in declared_types(engine, money_columns()).values())
    with engine.begin() as connection:
        connection.execute(text("UPDATE aid_ledger SET amount_cents = :big WHERE id = 1"),
                           {"big": BEYOND_32_BITS})
        stored = connection.execute(text("SELECT amount_cents FROM aid_ledger WHERE id = 1"))
        assert stored.scalar_one() == BEYOND_32_BITS


def legacy_metadata(money_bits: int) -> MetaData:
    """The aids schema as `create_all` made it before the migrations: money 32-bit before
    the 64-bit change, 64-bit after it."""
    metadata = MetaData()
    for table in service_metadata(AIDS.tables).sorted_tables:
        if table.name not in ADDED_SINCE_0001:
            table.to_metadata(metadata)
    if money_bits == 32:
        for table, name in money_columns():
            metadata.tables[table].c[name].type = Integer()
    return metadata


@pytest.mark.parametrize(("money_bits", "matches"), [(32, "0001"), (64, "0002")])
def test_a_store_made_before_the_migrations_is_recognised_and_upgraded(
    engine: Engine, money_bits: int, matches: str
) -> None:
    legacy_metadata(money_bits).create_all(engine)
    written = fill_every_table(engine)
    before = snapshot(engine)
    assert revision_of(engine) is None
    with engine.connect() as connection:
        assert legacy_revision(connection, "aids") == matches

    assert migrate_store(engine, "aids") == head_revision("aids") == revision_of(engine)

    after = snapshot(engine)
    assert_rows_kept(after, before)
    assert sum(len(rows) for rows in after.values()) == written
    assert all(isinstance(kind, BigInteger)
               for kind in declared_types(engine, money_columns()).values())


def test_a_referrals_store_made_before_the_migrations_is_stamped(engine: Engine) -> None:
    from sqlmodel import SQLModel

    from shared.messaging import PLUMBING_TABLES

    tables = [table for table in [*PLUMBING_TABLES, *TOPOLOGIES["referrals"].tables]
              if table.name not in ADDED_SINCE_0001]
    SQLModel.metadata.create_all(engine, tables=tables)  # its triggers come with it
    with engine.connect() as connection:
        assert legacy_revision(connection, "referrals") == "0001"
    assert migrate_store(engine, "referrals") == head_revision("referrals") == revision_of(engine)
    assert_models_agree(engine, "referrals")


def test_a_store_newer_than_the_code_is_refused_naming_its_revision(engine: Engine) -> None:
    migrate_store(engine, "aids")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))

    with pytest.raises(StoreTooNew) as refused:
        migrate_store(engine, "aids")
    assert "revision 0099" in str(refused.value)
    assert head_revision("aids") in str(refused.value)
    assert revision_of(engine) == "0099"  # untouched


def test_a_service_on_a_newer_store_exits_saying_why(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    migrate_store(engine, "aids")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    env = {**os.environ, "E2C_DATA_DIR": str(tmp_path / "var"),
           "E2C_TOKENS_FILE": str(write_tokens_file(tmp_path / "tokens.json")),
           "AIDS_DATABASE_URL": store_url}

    started = subprocess.run([sys.executable, "-m", "services.aids"], env=env,
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)

    assert started.returncode == 1
    assert "cannot start: the aids store is at revision 0099" in started.stderr
    assert "Traceback" not in started.stderr


def assert_models_agree(engine: Engine, service: str) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, service_metadata(TOPOLOGIES[service].tables))
    assert differences == []


@pytest.mark.parametrize("service", list(TOPOLOGIES))
def test_the_models_and_the_migrations_agree(engine: Engine, service: str) -> None:
    """A model changed without its revision (or a revision without its model) fails here:
    `make migration SERVICE=... MESSAGE=...` writes the missing revision."""
    migrate_store(engine, service)
    assert_models_agree(engine, service)


def test_the_audit_is_append_only_after_the_migrations(engine: Engine) -> None:
    migrate_store(engine, "referrals")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO access_audit (at, action, role, detail) "
            "VALUES (:at, 'export', 'admin', '[]')"), {"at": datetime.now(UTC)})
    refused = ["UPDATE access_audit SET role = 'ops'", "DELETE FROM access_audit"]
    if engine.dialect.name == "postgresql":
        refused.append("TRUNCATE access_audit")
    for statement in refused:
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM access_audit")).scalar_one() == 1


def test_instances_starting_at_once_migrate_once(store_url: str) -> None:
    engines = [make_engine(store_url) for _ in range(3)]
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def start(engine: Engine) -> None:
        barrier.wait()
        try:
            results.append(migrate_store(engine, "aids"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        assert results == [head_revision("aids")] * len(engines)
        with engines[0].connect() as connection:
            marks = connection.execute(text("SELECT version_num FROM alembic_version"))
            assert marks.scalars().all() == [head_revision("aids")]
    finally:
        for engine in engines:
            engine.dispose()


def test_a_reset_store_is_empty_and_at_the_newest_revision(engine: Engine) -> None:
    migrate_store(engine, "outcomes")
    fill_every_table(engine)
    assert reset_store(engine, "outcomes", TOPOLOGIES["outcomes"].tables) == head_revision(
        "outcomes") == revision_of(engine)
    assert all(rows == [] for rows in snapshot(engine).values())
    assert_models_agree(engine, "outcomes")


def revision_files(service: str) -> list[str]:
    """The revision numbers a service's versions folder holds, oldest first."""
    folder = PROJECT_ROOT / "services" / service / "migrations" / "versions"
    return sorted(path.name[:4] for path in folder.glob("[0-9][0-9][0-9][0-9]_*.py"))


def e2c_db(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "e2c"), "db", *args], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


def test_the_db_commands(engine: Engine, store_url: str, tmp_path: Path) -> None:
    upgrade_to(engine, "aids", "0001")
    env = {**os.environ, "E2C_DATA_DIR": str(tmp_path / "var"), "AIDS_DATABASE_URL": store_url}
    password = make_url(store_url).password

    current = e2c_db("current", "aids", env=env)
    assert current.returncode == 0, current.stderr
    head = head_revision("aids")
    assert current.stdout.split()[:6] == ["aids", "revision", "0001", "head", head, "upgrade"]

    upgraded = e2c_db("upgrade", "aids", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"0001 -> {head}" in upgraded.stdout
    assert revision_of(engine) == head
    assert "up to date" in e2c_db("current", "aids", env=env).stdout

    history = e2c_db("history", env=env)
    assert history.returncode == 0
    lines = [line.split()[0] for line in history.stdout.splitlines()]
    assert lines == [line for service in ("referrals", "aids", "outcomes")
                     for line in [f"{service}:", *revision_files(service)]]

    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    refused = e2c_db("upgrade", "aids", env=env)
    assert refused.returncode == 1
    assert "revision 0099" in refused.stderr
    outputs = current.stdout + upgraded.stdout + refused.stdout + refused.stderr
    assert password is None or password not in outputs

