"""Wiring shared by the three services: store, broker, consumer, relay, HTTP, timers.

A service is its topology (`shared.topology.ServiceTopology`) plus what it serves over HTTP
(the `APIRouter` of its `api.py`) and does on a timer (`ServiceSpec`). Its HTTP app
(`http_app`) also serves what every service does: `shared.health`, `shared.ops`'s
`/ops/pipeline` and `shared.docs`'s documents. A route reaches the running service's
resources through the `Context` dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.specification import AsyncAPI
from faststream.specification.base import SpecificationFactory
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from starlette.types import Receive, Scope, Send

from shared import docs, health, ops
from shared.contract import MODELS
from shared.db import make_engine
from shared.http import (
    Authorizer,
    TokensFileError,
    app_context,
    json_app,
    load_tokens,
)
from shared.kafka import BatchConsumer, OutboxRelay, topic_partitions
from shared.logsafe import describe_error
from shared.messaging import UnitOfWork, unit_of_work
from shared.migrations import StoreTooNew, migrate_store
from shared.observability import ServiceMetrics, configure_logging
from shared.ops import (
    OPS_TIMEOUT_SECONDS,
    KafkaInspector,
    heartbeat,
    heartbeat_key,
    refresh_ops_metrics,
)
from shared.private_files import private_dir, restrict_umask
from shared.ratelimit import RateLimiter
from shared.schools import school_ids
from shared.settings import Settings
from shared.topology import ServiceTopology

log = logging.getLogger(__name__)
TOPICS_WAIT_SECONDS = 60.0  # a service started with the stack waits for its topics
# Allocations between two young collections (CPython's default: 700). A batch keeps tens
# of thousands of objects alive while it is handled: with the default each of them is
# traversed and promoted several times, then again by the full collections they trigger.
GC_YOUNG_THRESHOLD = 50_000


@dataclass(frozen=True)
class PeriodicJob:
    """Work a service does on a timer (retention, sweeps), in a worker thread."""

    name: str
    interval_seconds: float
    run: Callable[[ServiceContext], object]


@dataclass(frozen=True)
class HeldInputs:
    """Inputs the store holds until the enrollment they need arrives (its `held` queue),
    decided by `sweep` (the handlers' method) once held longer than `E2C_HOLD_SECONDS`."""

    sweep_name: str
    sweep: Callable[[Any, UnitOfWork[Any], timedelta], int]

    def job(self, every: float) -> PeriodicJob:
        def run(ctx: ServiceContext) -> int:
            with unit_of_work(ctx.engine, ctx.topology.store, ctx.name) as uow:
                hold = timedelta(seconds=ctx.settings.hold_seconds)
                return self.sweep(ctx.handlers, uow, hold)

        return PeriodicJob(self.sweep_name, every, run)

    @staticmethod
    def count(store: Any) -> int:
        return int(store.held.count())


@dataclass(frozen=True)
class BackgroundTask:
    """Work a service runs as an asyncio task while it runs (the webhook deliveries of
    referrals): started after the broker, cancelled and awaited at the stop."""

    name: str
    run: Callable[[ServiceContext], Awaitable[None]]


@dataclass
class ServiceSpec:
    """A service: its topology, and what it serves over HTTP and does on a timer."""

    topology: ServiceTopology[Any, Any]
    router: APIRouter | None = None  # its own HTTP routes (`api.router`)
    periodic: Sequence[PeriodicJob] = ()
    held: HeldInputs | None = None  # None: the service holds nothing
    background: Sequence[BackgroundTask] = ()
    # Parts of its own that `/ops/pipeline` shows: name -> work(ctx, limit), run in a thread.
    ops_parts: Mapping[str, Callable[[ServiceContext, int], Any]] = field(default_factory=dict)


@dataclass
class ServiceContext:
    """The running service's resources, handed to its HTTP routes and timers."""

    spec: ServiceSpec
    settings: Settings
    handlers: Any
    engine: Engine
    broker: KafkaBroker
    registry: CollectorRegistry
    metrics: ServiceMetrics
    auth: Authorizer
    consumer: BatchConsumer
    relay: OutboxRelay
    instance_id: str
    redis: aioredis.Redis = field(init=False)
    limiter: RateLimiter = field(init=False)  # each bearer token's requests (HTTP)
    inspector: KafkaInspector = field(init=False)
    specification: SpecificationFactory | None = None  # its AsyncAPI document

    def __post_init__(self) -> None:
        self.redis = aioredis.from_url(
            self.settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self.limiter = RateLimiter(self.redis, self.settings.rate_limit_per_second,
                                   self.settings.rate_limit_burst)
        self.inspector = KafkaInspector(
            self.settings.kafka_access(), timeout=OPS_TIMEOUT_SECONDS
        )

    @property
    def topology(self) -> ServiceTopology[Any, Any]:
        return self.spec.topology

    @property
    def name(self) -> str:
        return self.spec.topology.name

    @property
    def group_id(self) -> str:
        return self.spec.topology.group_id


def build_context(spec: ServiceSpec, settings: Settings) -> ServiceContext:
    auth = Authorizer(load_tokens(settings.tokens_file), settings.tokens_file)  # first
    school_ids(settings.schools_file)  # the reports' registry: a bad file stops here too
    if settings.data_dir.exists():
        private_dir(settings.data_dir)
    topology = spec.topology
    engine = make_engine(settings.database_url(topology.name))
    migrate_store(engine, topology.name)  # or StoreTooNew: a newer release's store
    registry = CollectorRegistry()
    metrics = ServiceMetrics(topology.name, registry)
    handlers = topology.handlers(settings)
    access = settings.kafka_access()
    broker = KafkaBroker(
        access.bootstrap_servers(),  # faststream takes a string as one address
        security=access.faststream_security(),
        client_id=topology.group_id,
        acks="all",  # whatever it publishes survives the loss of a broker (min ISR 2 of 3)
        apply_types=False,  # the BatchConsumer validates each record itself
        middlewares=(KafkaPrometheusMiddleware(registry=registry,
                                               app_name=f"e2c_{topology.name}"),),
    )
    relay = OutboxRelay(engine, access, metrics)
    consumer = BatchConsumer(topology.processor(engine, handlers), metrics, relay.wake)
    instance_id = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
    return ServiceContext(
        spec=spec,
        settings=settings,
        handlers=handlers,
        engine=engine,
        broker=broker,
        registry=registry,
        metrics=metrics,
        auth=auth,
        consumer=consumer,
        relay=relay,
        instance_id=instance_id,
    )


def _document_outputs(ctx: ServiceContext) -> None:
    """Publishers only describe the outputs in the AsyncAPI document; the relay sends."""
    for topic in ctx.topology.outputs:
        ctx.broker.publisher(topic, schema=MODELS[topic], title=f"{topic}:out")


# A route's access to the running service: `async def route(ctx: Context, ...)`.
Context = Annotated[ServiceContext, Depends(app_context)]


def http_app(topology: ServiceTopology[Any, Any], router: APIRouter | None) -> FastAPI:
    """A service's HTTP app: health and metrics, `/ops/pipeline`, its documents, and its own
    routes. Needs no resources: `build_app` hands it the running service's context
    (`app.state.context`), and `deploy/contract_docs.py` writes its OpenAPI document."""
    routers = [health.router, ops.router, docs.router, *([router] if router else [])]
    return json_app(routers, title=f"e2c {topology.name}", description=topology.description)


class ServiceApp:
    """ASGI entry: faststream runs the lifespan (broker and background work), FastAPI
    every HTTP route, the documents included."""

    def __init__(self, stream: AsgiFastStream, http: FastAPI, ctx: ServiceContext) -> None:
        self.stream = stream
        self.http = http
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.stream(scope, receive, send)  # type: ignore[arg-type]
            return
        await self.http(scope, receive, send)


def build_app(spec: ServiceSpec, settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    topology = spec.topology
    configure_logging(topology.name, settings.log_level)
    ctx = build_context(spec, settings)
    ctx.metrics.watch_topics(list(topology.inputs))
    if topology.inputs:
        ctx.consumer.subscribe(
            ctx.broker,
            list(topology.inputs),
            ctx.group_id,
            settings.consumer_batch_size,
            [MODELS[topic] for topic in topology.inputs],
        )
    _document_outputs(ctx)
    tasks: list[asyncio.Task[None]] = []
    own_tasks: list[asyncio.Task[None]] = []

    async def await_topics() -> None:
        """The stack creates the topics (as the broker's admin): a service only waits."""
        await topic_partitions(ctx.settings.kafka_access(), [*topology.inputs,
                                                             *topology.outputs,
                                                             *topology.journals],
                               wait_seconds=TOPICS_WAIT_SECONDS)

    async def start_background() -> None:
        await ctx.relay.start()
        tasks.append(asyncio.create_task(heartbeat(ctx), name="heartbeat"))
        tasks.append(asyncio.create_task(refresh_ops_metrics(ctx), name="ops-metrics"))
        jobs = list(spec.periodic)
        if spec.held is not None:
            jobs.append(spec.held.job(settings.hold_sweep_seconds))
        for job in jobs:
            tasks.append(asyncio.create_task(_every(ctx, job), name=job.name))
        for task in spec.background:
            own_tasks.append(asyncio.create_task(task.run(ctx), name=task.name))
        log.info("%s ready (instance %s)", topology.name, ctx.instance_id)

    async def stop_background() -> None:
        for task in tasks + own_tasks:
            task.cancel()
        await asyncio.gather(*own_tasks, return_exceptions=True)  # they close their clients
        await ctx.relay.stop()
        await ctx.inspector.close()
        with contextlib.suppress(Exception):  # a clean stop shows as down at once
            await ctx.redis.delete(heartbeat_key(topology.name, ctx.instance_id))
        with contextlib.suppress(Exception):
            await ctx.redis.aclose()

    specification = AsyncAPI(
        ctx.broker, title=f"e2c {topology.name}", version="1",
        description=topology.description,
    )
    stream = AsgiFastStream(  # no asyncapi_path: its page needs a CDN and shows the broker
        ctx.broker,
        specification=specification,
        on_startup=[await_topics],
        after_startup=[start_background],
        on_shutdown=[stop_background],
    )
    ctx.specification = specification
    http = http_app(topology, spec.router)
    http.state.context = ctx
    return ServiceApp(stream, http, ctx)


async def _every(ctx: ServiceContext, job: PeriodicJob) -> None:
    while True:
        await asyncio.sleep(job.interval_seconds)
        try:
            result = await anyio.to_thread.run_sync(job.run, ctx)
            ctx.relay.wake()  # what the job committed to the outbox goes out now
            log.info("%s done: %s", job.name, result)
        except Exception as error:
            log.error("%s failed, next try in %ss: %s", job.name, job.interval_seconds,
                      describe_error(error))


def main(create_app: Callable[[], ServiceApp]) -> None:
    """A service's process: owner-only files from the start, a clear refusal to start on a
    bad tokens file (the message names the problem, never a token) or on a store newer than
    the code (the message names both revisions), then `run`."""
    restrict_umask()
    try:
        app = create_app()
    except (TokensFileError, StoreTooNew) as error:
        sys.exit(f"cannot start: {error}")
    tune_garbage_collector()
    run(app)


def tune_garbage_collector() -> None:
    """Moves what start-up built (modules, classes, the app) out of the collector's sight,
    so that a full collection traverses only what the running service made, and collects
    the young objects less often (they mostly die by reference counting before)."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def run(app: ServiceApp) -> None:
    """Serves the app with uvicorn on the service's configured host and port."""
    import uvicorn

    settings = app.ctx.settings
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port(app.ctx.name),
        log_level="warning",
        lifespan="on",
    )
