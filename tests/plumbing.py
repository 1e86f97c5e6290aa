"""Builders for the tests that drive a service's batch processing without a broker."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from shared.messaging import BatchProcessor, OutboxMessage, Route
from shared.settings import Settings
from shared.topology import ServiceTopology


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


def pending_outbox(session: Session, limit: int = 10_000) -> list[OutboxMessage]:
    """The outbox rows not yet published, oldest first."""
    query = select(OutboxMessage).order_by(col(OutboxMessage.id)).limit(limit)
    return list(session.exec(query).all())
