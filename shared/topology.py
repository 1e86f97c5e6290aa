"""A service's topology, declared once: what it consumes (with the handler of each topic),
what it produces, its store, its consumer group, and whether and how it can be rebuilt.

Each service declares one `ServiceTopology` (in its `app.py`); the wiring, `/ops/pipeline`,
the CLI, the rebuild and the tests all derive from it. Adding an input topic is the
contract's model (`shared.contract.MODELS`) plus one line in the service's `consumes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, Table

from shared.contract import MODELS, Topic
from shared.messaging import BatchProcessor, Route, StoreFactory, UnitOfWork
from shared.settings import Settings

H = TypeVar("H")  # the service's handlers object
S = TypeVar("S")  # the service's store

# An unbound method of the handlers class: `AidHandlers.on_request`.
HandlerMethod = Callable[[H, UnitOfWork[S], Any], None]


@dataclass(frozen=True)
class Rebuild(Generic[H, S]):
    """How the store is rebuilt from the topics alone.

    `replays`: the topics read from their beginning, in this order, each with its handler
    (a replay learns what was decided, it decides nothing again). `finish`: what is done
    once every topic is read, in one transaction (returns a count for the report).
    """

    replays: Mapping[Topic, HandlerMethod[H, S]]
    finish: Callable[[H, UnitOfWork[S]], int]


@dataclass(frozen=True)
class ServiceTopology(Generic[H, S]):
    name: str
    description: str
    handlers: Callable[[Settings], H]  # builds the handlers from the settings
    store: StoreFactory[S]  # builds the store on a session (and a batch's scope)
    tables: Sequence[Table]
    consumes: Mapping[Topic, HandlerMethod[H, S]]
    # Besides dead letters, which every service writes.
    produces: Sequence[Topic]
    # Loads at once what a batch's handlers will read (see `BatchScope`).
    prepare: Callable[[H, S, list[Any]], Any] | None = None
    rebuild: Rebuild[H, S] | None = None
    # Internal topics the service writes and reads back itself, outside the contract:
    # compacted, kept forever, never tombstoned (the erasure journal a restore re-applies).
    journals: Sequence[str] = ()

    @property
    def group_id(self) -> str:
        return f"e2c-{self.name}"

    @property
    def inputs(self) -> tuple[Topic, ...]:
        return tuple(self.consumes)

    @property
    def outputs(self) -> tuple[Topic, ...]:
        return (*self.produces, Topic.DEADLETTER)

    def routes(self, handlers: H) -> dict[str, Route]:
        return _routes(self.consumes, handlers)

    def processor(self, engine: Engine, handlers: H) -> BatchProcessor:
        """The batch processor of the running service."""
        prepare = partial(self.prepare, handlers) if self.prepare is not None else None
        return BatchProcessor(self.name, engine, self.routes(handlers), self.store, prepare)

    def rebuild_processor(self, engine: Engine, handlers: H) -> BatchProcessor:
        """The batch processor of a rebuild: the replays' handlers, no batch preparation."""
        if self.rebuild is None:
            raise ValueError(f"the {self.name} service cannot be rebuilt from the topics")
        return BatchProcessor(self.name, engine, _routes(self.rebuild.replays, handlers),
                              self.store)


def _routes(consumes: Mapping[Topic, HandlerMethod[H, S]], handlers: H) -> dict[str, Route]:
    return {topic: Route(MODELS[topic], partial(method, handlers))  # type: ignore[arg-type]
            for topic, method in consumes.items()}
