"""Builders for the tests that drive a service's batch processing without a broker: its
store, its processor, the records fed to it and what it left in its outbox."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Table
from sqlmodel import Session, SQLModel, col, select

from shared.db import make_engine
from shared.messaging import (
    PLUMBING_TABLES,
    TOMBSTONE_PAYLOAD,
    BatchProcessor,
    BatchResult,
    Inbound,
    OutboxMessage,
    Route,
)
from shared.migrations import migrate_store
from shared.settings import Settings
from shared.topology import ServiceTopology

# A record's value: a payload written as JSON, or bytes sent as they are.
Value = dict[str, Any] | bytes

_offsets = itertools.count()


@contextmanager
def store_engine(url: str, tables: Sequence[Table]) -> Iterator[Engine]:
    """An engine on the store at `url` with its schema (the plumbing's tables and `tables`),
    disposed of at the end: a service's tables come from its migrations, as it runs them;
    the plumbing's alone (no service's store) from `create_all`."""
    engine = make_engine(url)
    service = _service_of(tables)
    if service is None:
        SQLModel.metadata.create_all(engine, tables=[*PLUMBING_TABLES, *tables])
    else:
        migrate_store(engine, service)
    try:
        yield engine
    finally:
        engine.dispose()


def _service_of(tables: Sequence[Table]) -> str | None:
    from deploy.system import TOPOLOGIES

    if not tables:
        return None
    for name, topology in TOPOLOGIES.items():
        if list(topology.tables) == list(tables):
            return name
    raise ValueError("tables of no service: give a service's TABLES, or none")


def engine_fixture(tables: Sequence[Table], *, sqlite_only: bool = False) -> Any:
    """A test module's `engine` fixture (`engine = engine_fixture(TABLES)`): a fresh store
    with `tables`, on SQLite then on PostgreSQL (the `store_url` fixture), or on a SQLite
    file only (`sqlite_only`, for the tests of a service's routes and reports)."""
    if sqlite_only:

        @pytest.fixture
        def engine(tmp_path: Path) -> Iterator[Engine]:
            with store_engine(f"sqlite:///{tmp_path / 'store.db'}", tables) as created:
                yield created

    else:

        @pytest.fixture
        def engine(store_url: str) -> Iterator[Engine]:
            with store_engine(store_url, tables) as created:
                yield created

    return engine


def processor(
    topology: ServiceTopology[Any, Any],
    engine: Engine,
    routes: dict[str, Route] | None = None,
    handlers: Any = None,
    prepared: bool = True,
) -> BatchProcessor:
    """The service's processor as deployed (its handlers from default settings); `routes`
    replaces its routes, `prepared` False leaves out its batch loading."""
    handlers = handlers if handlers is not None else topology.handlers(Settings())
    built = topology.processor(engine, handlers)
    if routes is not None:
        built.routes = routes
    if not prepared:
        built.prepare = None
    return built


def inbound(topic: str, value: Value | None, offset: int | None = None) -> Inbound:
    """A record of `topic` on partition 0 with the key "k" (`value` None: a tombstone), at
    `offset`, else at a position no other record of the run has."""
    raw = json.dumps(value).encode() if isinstance(value, dict) else value
    return Inbound(topic, 0, next(_offsets) if offset is None else offset, "k", raw)


def feed(
    topology: ServiceTopology[Any, Any],
    engine: Engine,
    *records: tuple[str, Value],
    handlers: Any = None,
    rebuild: bool = False,
) -> BatchResult:
    """Runs the service's processor on `records` (topic, value) in one batch: the live one
    (see `processor`), or with `rebuild` the one of a rebuild from the topics."""
    if rebuild:
        handlers = handlers if handlers is not None else topology.handlers(Settings())
        built = topology.rebuild_processor(engine, handlers)
    else:
        built = processor(topology, engine, handlers=handlers)
    return built.process([inbound(topic, value) for topic, value in records])


def pending_outbox(session: Session, limit: int = 10_000) -> list[OutboxMessage]:
    """The outbox rows not yet published, oldest first."""
    query = select(OutboxMessage).order_by(col(OutboxMessage.id)).limit(limit)
    return list(session.exec(query).all())


def outbox(engine: Engine) -> list[OutboxMessage]:
    """The events in the outbox of the store not yet published, oldest first (the erasure
    tombstones apart: `tombstones`)."""
    with Session(engine) as session:
        return [row for row in pending_outbox(session) if row.payload != TOMBSTONE_PAYLOAD]


def tombstones(engine: Engine) -> list[tuple[str, str | None]]:
    """(topic, key) of the tombstones in the outbox not yet published, oldest first."""
    with Session(engine) as session:
        return [(row.topic, row.key) for row in pending_outbox(session)
                if row.payload == TOMBSTONE_PAYLOAD]


def published(engine: Engine, topic: str) -> list[dict[str, Any]]:
    """The payloads waiting in the outbox for `topic`, oldest first."""
    return [json.loads(row.payload) for row in outbox(engine) if row.topic == topic]
