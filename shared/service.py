"""Wiring shared by the three services: store, broker, consumer, relay, cache and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import redis.asyncio as aioredis
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.specification import AsyncAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from sqlalchemy import Engine, Table, text
from sqlmodel import Session, SQLModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.routing import Route as HttpRoute
from starlette.types import Receive, Scope, Send

from shared.contract import ALL_TOPICS
from shared.db import make_engine
from shared.docs import docs_routes
from shared.http import (
    Authorizer,
    Role,
    TokensFileError,
    bounded_int,
    health_routes,
    json_app,
    load_tokens,
)
from shared.kafka import BatchConsumer, OutboxRelay, ensure_topics
from shared.logsafe import describe_error
from shared.messaging import (
    PLUMBING_TABLES,
    BatchProcessor,
    Prepare,
    Route,
    Unit,
    outbox_backlog,
    parked_messages,
)
from shared.observability import ServiceMetrics, configure_logging
from shared.ops import SERVICES, KafkaInspector, heartbeat_key, read_heartbeats
from shared.private_files import private_dir, restrict_umask
from shared.settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5
HEARTBEAT_TTL_SECONDS = 15
OPS_METRICS_SECONDS = 10  # consumer lag and held requests for Prometheus
OPS_TIMEOUT_SECONDS = 3.0  # each part of GET /ops/pipeline


@dataclass(frozen=True)
class PeriodicJob:
    """Work a service does on a timer (retention, sweeps), in a worker thread."""

    name: str
    interval_seconds: float
    run: Callable[[ServiceContext], object]


def hold_sweep(name: str, sweep: Callable[[Unit, timedelta], int], every: float) -> PeriodicJob:
    """The job that decides the inputs held longer than the hold (`E2C_HOLD_SECONDS`)."""

    def run(ctx: ServiceContext) -> int:
        with Session(ctx.engine) as session:
            unit = Unit(session, service=ctx.spec.name)
            swept = sweep(unit, timedelta(seconds=ctx.settings.hold_seconds))
            session.commit()
        return swept

    return PeriodicJob(name, every, run)


@dataclass
class ServiceSpec:
    """What makes one service different from the others."""

    name: str
    routes: dict[str, Route]
    outputs: dict[str, type[BaseModel]]
    tables: Sequence[Table]
    http_routes: Callable[[ServiceContext], list[BaseRoute]] | None = None
    periodic: Sequence[PeriodicJob] = ()
    description: str = ""
    # Requests the service holds (waiting for an enrollment); None: it holds nothing.
    held_count: Callable[[Session], int] | None = None
    # Loads in one go what a batch's handlers will read (see BatchProcessor).
    prepare: Prepare | None = None


@dataclass
class ServiceContext:
    """The running service's resources, handed to its HTTP routes."""

    spec: ServiceSpec
    settings: Settings
    engine: Engine
    broker: KafkaBroker
    registry: CollectorRegistry
    metrics: ServiceMetrics
    auth: Authorizer
    consumer: BatchConsumer
    relay: OutboxRelay
    instance_id: str
    redis: aioredis.Redis = field(init=False)
    inspector: KafkaInspector = field(init=False)

    def __post_init__(self) -> None:
        self.redis = aioredis.from_url(
            self.settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self.inspector = KafkaInspector(
            self.settings.kafka_bootstrap_servers, timeout=OPS_TIMEOUT_SECONDS
        )

    @property
    def group_id(self) -> str:
        return f"e2c-{self.spec.name}"


def create_schema(engine: Engine, tables: Sequence[Table]) -> None:
    SQLModel.metadata.create_all(engine, tables=[*PLUMBING_TABLES, *tables])


def build_context(spec: ServiceSpec, settings: Settings) -> ServiceContext:
    auth = Authorizer(load_tokens(settings.tokens_file))  # first: a bad file stops here
    if settings.data_dir.exists():
        private_dir(settings.data_dir)
    engine = make_engine(settings.database_url(spec.name))
    create_schema(engine, spec.tables)
    registry = CollectorRegistry()
    metrics = ServiceMetrics(spec.name, registry)
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"e2c-{spec.name}",
        apply_types=False,  # the BatchConsumer validates each record itself
        middlewares=(KafkaPrometheusMiddleware(registry=registry, app_name=f"e2c_{spec.name}"),),
    )
    relay = OutboxRelay(engine, settings.kafka_bootstrap_servers, metrics)
    processor = BatchProcessor(spec.name, engine, spec.routes, spec.prepare)
    consumer = BatchConsumer(processor, metrics, relay.wake)
    instance_id = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
    return ServiceContext(
        spec=spec,
        settings=settings,
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
    for topic, model in ctx.spec.outputs.items():
        ctx.broker.publisher(topic, schema=model, title=f"{topic}:out")


class ServiceApp:
    """ASGI entry: faststream runs the lifespan (broker and background work), Starlette
    every HTTP route, the AsyncAPI document included."""

    def __init__(self, stream: AsgiFastStream, http: Starlette, ctx: ServiceContext) -> None:
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
    configure_logging(spec.name, settings.log_level)
    ctx = build_context(spec, settings)
    ctx.metrics.watch_topics(list(spec.routes))
    if spec.routes:
        ctx.consumer.subscribe(
            ctx.broker,
            list(spec.routes),
            ctx.group_id,
            settings.consumer_batch_size,
            [route.model for route in spec.routes.values()],
        )
    _document_outputs(ctx)
    tasks: list[asyncio.Task[None]] = []

    async def create_topics() -> None:
        await ensure_topics(settings.kafka_bootstrap_servers, ALL_TOPICS, settings.topic_partitions)

    async def start_background() -> None:
        await ctx.relay.start()
        tasks.append(asyncio.create_task(_heartbeat(ctx), name="heartbeat"))
        tasks.append(asyncio.create_task(_ops_metrics(ctx), name="ops-metrics"))
        for job in spec.periodic:
            tasks.append(asyncio.create_task(_every(ctx, job), name=job.name))
        log.info("%s ready (instance %s)", spec.name, ctx.instance_id)

    async def stop_background() -> None:
        for task in tasks:
            task.cancel()
        await ctx.relay.stop()
        await ctx.inspector.close()
        with contextlib.suppress(Exception):  # a clean stop shows as down at once
            await ctx.redis.delete(heartbeat_key(spec.name, ctx.instance_id))
        with contextlib.suppress(Exception):
            await ctx.redis.aclose()

    specification = AsyncAPI(
        ctx.broker, title=f"e2c {spec.name}", version="1", description=spec.description
    )
    stream = AsgiFastStream(  # no asyncapi_path: its page needs a CDN and shows the broker
        ctx.broker,
        specification=specification,
        on_startup=[create_topics],
        after_startup=[start_background],
        on_shutdown=[stop_background],
    )
    routes: list[BaseRoute] = list(health_routes(_readiness_checks(ctx), ctx.registry))
    routes.append(HttpRoute("/ops/pipeline", _pipeline_endpoint(ctx)))
    routes.extend(docs_routes(specification, ctx.auth))
    if spec.http_routes is not None:
        routes.extend(spec.http_routes(ctx))
    http = json_app(routes)
    return ServiceApp(stream, http, ctx)


def _readiness_checks(ctx: ServiceContext) -> dict[str, Any]:
    async def broker() -> None:
        if not await ctx.broker.ping(timeout=2.0):
            raise ConnectionError("broker does not answer")

    async def store() -> None:
        def select_one() -> None:
            with ctx.engine.connect() as connection:
                connection.execute(text("SELECT 1"))

        await anyio.to_thread.run_sync(select_one)

    async def cache() -> None:
        await ctx.redis.ping()

    return {"broker": broker, "store": store, "cache": cache}


async def _heartbeat(ctx: ServiceContext) -> None:
    """Tells operations this instance is alive; Redis being away only degrades readiness.

    Nothing the service decides goes through Redis: while it is away the consumer goes on,
    the heartbeat is retried every few seconds and is back as soon as Redis is.
    """
    key = heartbeat_key(ctx.spec.name, ctx.instance_id)
    writing = True
    while True:
        beat = {"service": ctx.spec.name, "instance": ctx.instance_id, "at": time.time(),
                "last_processed_at": ctx.consumer.last_processed_at}
        try:
            await ctx.redis.set(key, json.dumps(beat), ex=HEARTBEAT_TTL_SECONDS)
            if not writing:
                log.info("heartbeat written again: Redis is back")
            writing = True
        except asyncio.CancelledError:
            raise
        except Exception as error:
            ctx.metrics.heartbeat_failures.labels(ctx.spec.name).inc()
            if writing:
                log.warning("heartbeat not written (Redis: %s); the service carries on",
                            type(error).__name__)
            writing = False
        await asyncio.sleep(HEARTBEAT_SECONDS)


def _held(ctx: ServiceContext) -> int | None:
    if ctx.spec.held_count is None:
        return None
    with Session(ctx.engine) as session:
        return ctx.spec.held_count(session)


def _backlog(ctx: ServiceContext) -> int:
    with Session(ctx.engine) as session:
        return outbox_backlog(session)


def _parked(ctx: ServiceContext, limit: int) -> dict[str, Any]:
    with Session(ctx.engine) as session:
        count, last = parked_messages(session, limit)
    return {"count": count, "last": last}


async def _ops_metrics(ctx: ServiceContext) -> None:
    """Refreshes the consumer lag and held-requests gauges; failures are only logged."""
    while True:
        if ctx.spec.routes:
            try:
                ctx.metrics.set_lag(await ctx.inspector.lag(ctx.group_id, list(ctx.spec.routes)))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("consumer lag not refreshed: %s", type(error).__name__)
        if ctx.spec.held_count is not None:
            try:
                held = await anyio.to_thread.run_sync(_held, ctx)
                ctx.metrics.held_requests.labels(ctx.spec.name).set(held or 0)
            except Exception as error:
                log.debug("held requests not counted: %s", describe_error(error))
        await asyncio.sleep(OPS_METRICS_SECONDS)


async def pipeline_state(ctx: ServiceContext, dead_letter_limit: int = 10) -> dict[str, Any]:
    """This instance's view of its pipeline; a part that fails is null, named in `errors`."""
    errors: dict[str, str] = {}

    async def part(name: str, work: Any, timeout: float = OPS_TIMEOUT_SECONDS * 2) -> Any:
        try:
            return await asyncio.wait_for(work, timeout=timeout)
        except Exception as error:
            errors[name] = type(error).__name__
            return None

    lag, backlog, parked, held, letters, beats = await asyncio.gather(
        part("lag", ctx.inspector.lag(ctx.group_id, list(ctx.spec.routes))),
        part("outbox_backlog", anyio.to_thread.run_sync(_backlog, ctx)),
        part("outbox_parked", anyio.to_thread.run_sync(_parked, ctx, dead_letter_limit)),
        part("held", anyio.to_thread.run_sync(_held, ctx)),
        part("dead_letters", ctx.inspector.dead_letters(dead_letter_limit, ctx.spec.name),
             timeout=OPS_TIMEOUT_SECONDS * 4),
        part("heartbeats", read_heartbeats(ctx.redis, SERVICES)),
    )
    if lag is not None:
        ctx.metrics.set_lag(lag)
    processed = ctx.consumer.last_processed_at
    return {
        "service": ctx.spec.name,
        "instance": ctx.instance_id,
        "group_id": ctx.group_id,
        "lag": lag,
        "lag_total": sum(row["lag"] for row in lag) if lag is not None else None,
        "outbox_backlog": backlog,
        "outbox_parked": parked,
        "held": held,
        "last_processed_age_seconds":
            round(time.time() - processed, 1) if processed is not None else None,
        "dead_letters": {"count": letters.count, "last": letters.last}
        if letters is not None else None,
        "heartbeats": beats,
        "errors": errors,
    }


def _pipeline_endpoint(ctx: ServiceContext) -> Callable[[Request], Any]:
    async def pipeline(request: Request) -> Response:
        ctx.auth.require(request, Role.OPS)
        limit = bounded_int(request.query_params.get("limit", "10"), 0, 1000)
        if limit is None:
            return JSONResponse({"detail": "limit must be an integer from 0 to 1000"}, 400)
        return JSONResponse(await pipeline_state(ctx, limit))

    return pipeline


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
    bad tokens file (the message names the problem, never a token), then `run`."""
    restrict_umask()
    try:
        app = create_app()
    except TokensFileError as error:
        sys.exit(f"cannot start: {error}")
    run(app)


def run(app: ServiceApp) -> None:
    """Serves the app with uvicorn on the service's configured host and port."""
    import uvicorn

    settings = app.ctx.settings
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port(app.ctx.spec.name),
        log_level="warning",
        lifespan="on",
    )
