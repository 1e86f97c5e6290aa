"""What a running service serves operations: consumer lag, dead letters, heartbeats, and
its `GET /ops/pipeline` (the command line's side is `deploy/ops.py`).

Everything here reads the broker and Redis directly, so it works whether the services answer
or not.

- Lag: the group's committed offsets (`AIOKafkaAdminClient.list_consumer_group_offsets`)
  against the end offsets read by a group-less consumer; a partition the group never
  committed counts from 0 (lag = end).
- Dead letters: read from `e2c.deadletter.v1` itself. Listings leave out the `original`
  (it may hold personal data) unless asked for.
- Heartbeats: `e2c:heartbeat:<service>:<instance>` keys with a short expiry; a service without
  a live key is down; with Redis unreachable it is "unknown (redis down)".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import anyio
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from starlette.requests import Request

from shared.contract import Topic
from shared.http import Role, allow, app_context, problems
from shared.kafka_access import KafkaAccess
from shared.logsafe import describe_error
from shared.messaging import outbox_backlog, parked_messages, unit_of_work
from shared.params import ASCII_DIGITS, Expected
from shared.settings import SERVICE_PORTS

if TYPE_CHECKING:
    from shared.service import ServiceContext

log = logging.getLogger(__name__)

SERVICES = tuple(SERVICE_PORTS)
HEARTBEAT_PREFIX = "e2c:heartbeat:"
REDIS_DOWN = "unknown (redis down)"
DEFAULT_TIMEOUT = 5.0
# A service's own dead-letter count scans at most this many of the newest letters per
# partition; the dead-letter topic is meant to stay small (its letters get fixed and replayed).
DEAD_LETTER_SCAN_LIMIT = 100_000
HEARTBEAT_SECONDS = 5
HEARTBEAT_TTL_SECONDS = 15
OPS_METRICS_SECONDS = 10  # consumer lag and held requests for Prometheus
OPS_TIMEOUT_SECONDS = 3.0  # each part of GET /ops/pipeline
LISTED_FIELDS = ("event_id", "occurred_at", "service", "source_topic", "partition", "offset",
                 "error", "original_bytes", "original_truncated")


def heartbeat_key(service: str, instance: str) -> str:
    return f"{HEARTBEAT_PREFIX}{service}:{instance}"


class DeadLetters(NamedTuple):
    count: int
    last: list[dict[str, Any]]


@dataclass
class _Letter:
    """One record of the dead-letter topic, parsed."""

    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    body: dict[str, Any] | None

    @property
    def event_id(self) -> str | None:
        return str(self.body.get("event_id")) if self.body else None

    @property
    def service(self) -> str | None:
        return self.body.get("service") if self.body else None

    def listing(self, show_original: bool = False) -> dict[str, Any]:
        entry: dict[str, Any] = {"dlt_partition": self.partition, "dlt_offset": self.offset}
        if self.body is None:
            entry.update({"event_id": None, "error": "unreadable dead letter (not a JSON object)"})
            return entry
        entry.update({name: self.body.get(name) for name in LISTED_FIELDS})
        if show_original:
            entry["key"] = self.key.decode("utf-8", errors="replace") if self.key else None
            entry["original"] = self.body.get("original")
            entry["original_base64"] = self.body.get("original_base64")
        return entry


class KafkaInspector:
    """A group-less consumer and an admin client, opened on first use, reused afterwards.

    Calls are serialised (the consumer's assignment is shared); a failed call closes the
    clients so that the next one reconnects.
    """

    def __init__(self, access: KafkaAccess, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.access = access
        self.timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> KafkaInspector:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        consumer, admin = self._consumer, self._admin
        self._consumer = self._admin = None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._consumer is None or self._admin is None:
            timeout_ms = int(self.timeout * 1000)
            consumer = AIOKafkaConsumer(
                **self.access.client_options(),
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=timeout_ms,
                client_id="e2c-ops",
            )
            admin = AIOKafkaAdminClient(
                **self.access.client_options(), request_timeout_ms=timeout_ms,
                client_id="e2c-ops",
            )
            try:
                await consumer.start()
                await admin.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                with contextlib.suppress(Exception):
                    await admin.close()
                raise
            self._consumer, self._admin = consumer, admin
        return self._consumer, self._admin

    async def _guarded(self, work: Any) -> Any:
        async with self._lock:
            try:
                return await asyncio.wait_for(work(), timeout=self.timeout * 2)
            except BaseException:
                await self.close()
                raise

    # --- lag ------------------------------------------------------------------------------

    async def lag(self, group: str, topics: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per topic and partition: committed offset, end offset and lag = end − committed.

        `topics` None: the partitions the group has committed offsets for. A partition the
        group never committed shows `committed: None` and lag = end.
        """
        async def work() -> list[dict[str, Any]]:
            consumer, admin = await self._clients()
            if topics is None:
                committed = await admin.list_consumer_group_offsets(group)
                partitions = sorted(committed)
            else:
                partitions = await self._partitions(admin, topics)
                if not partitions:
                    return []
                committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            if not partitions:
                return []
            ends = await consumer.end_offsets(partitions)
            rows = []
            for tp in sorted(partitions):
                meta = committed.get(tp)
                offset = meta.offset if meta is not None and meta.offset >= 0 else None
                end = ends[tp]
                rows.append({"topic": tp.topic, "partition": tp.partition,
                             "committed": offset, "end": end,
                             "lag": max(end - (offset or 0), 0)})
            return rows

        result: list[dict[str, Any]] = await self._guarded(work)
        return result

    @staticmethod
    async def _partitions(
        admin: AIOKafkaAdminClient, topics: Iterable[str]
    ) -> list[TopicPartition]:
        described = await admin.describe_topics(list(topics))
        partitions = []
        for topic in described:
            if topic.get("error_code"):
                continue  # an unknown topic has no partitions, hence no lag
            for partition in topic.get("partitions", []):
                partitions.append(TopicPartition(topic["topic"], partition["partition"]))
        return sorted(partitions)

    # --- dead letters ---------------------------------------------------------------------

    async def dead_letters(
        self, limit: int = 10, service: str | None = None, show_original: bool = False
    ) -> DeadLetters:
        """The number of dead letters and the last `limit` of them, newest last.

        Without `service`: count = every letter the topic holds (end − beginning offsets).
        With it: only that service's letters (among the newest DEAD_LETTER_SCAN_LIMIT of
        each partition).
        """
        async def work() -> DeadLetters:
            consumer, admin = await self._clients()
            partitions = await self._partitions(admin, [Topic.DEADLETTER])
            if not partitions:
                return DeadLetters(0, [])
            begins = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
            window = limit if service is None else DEAD_LETTER_SCAN_LIMIT
            starts = {tp: max(begins[tp], ends[tp] - window) for tp in partitions}
            letters = await self._read(consumer, starts, ends)
            if service is None:
                count = sum(ends[tp] - begins[tp] for tp in partitions)
            else:
                letters = [letter for letter in letters if letter.service == service]
                count = len(letters)
            letters.sort(key=lambda letter: (letter.timestamp, letter.partition, letter.offset))
            newest = letters[-limit:] if limit > 0 else []
            return DeadLetters(count, [letter.listing(show_original) for letter in newest])

        result: DeadLetters = await self._guarded(work)
        return result

    async def find_dead_letter(self, event_id: str) -> _Letter | None:
        """The dead letter with this `event_id` (the newest copy if it was written twice)."""
        async def work() -> _Letter | None:
            consumer, admin = await self._clients()
            partitions = await self._partitions(admin, [Topic.DEADLETTER])
            if not partitions:
                return None
            begins = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
            found = [
                letter for letter in await self._read(consumer, begins, ends)
                if letter.event_id == event_id
            ]
            return max(found, key=lambda letter: letter.timestamp) if found else None

        # Reading the whole topic may take longer than one status call.
        async with self._lock:
            try:
                return await asyncio.wait_for(work(), timeout=max(self.timeout * 6, 30))
            except BaseException:
                await self.close()
                raise

    @staticmethod
    async def _read(
        consumer: AIOKafkaConsumer,
        starts: dict[TopicPartition, int],
        ends: dict[TopicPartition, int],
    ) -> list[_Letter]:
        wanted = [tp for tp in starts if starts[tp] < ends[tp]]
        if not wanted:
            return []
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, starts[tp])
        letters: list[_Letter] = []
        remaining = set(wanted)
        try:
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
                for tp, records in batches.items():
                    for record in records:
                        if record.offset < ends[tp]:
                            letters.append(_Letter(record.partition, record.offset,
                                                   record.timestamp, record.key,
                                                   _parse(record.value)))
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            consumer.assign([])
        return letters


def _parse(value: bytes | None) -> dict[str, Any] | None:
    try:
        body = json.loads(value or b"")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


# --- heartbeats ------------------------------------------------------------------------------


async def read_heartbeats(
    client: aioredis.Redis, services: Sequence[str] = SERVICES, now: float | None = None
) -> list[dict[str, Any]]:
    """Per service: `up` with its live instances, `down` without any, or REDIS_DOWN."""
    now = time.time() if now is None else now
    try:
        keys = [key async for key in client.scan_iter(match=f"{HEARTBEAT_PREFIX}*", count=200)]
        values = await client.mget(keys) if keys else []
    except Exception as error:
        log.debug("heartbeats not read: %s", type(error).__name__)
        return [{"service": name, "status": REDIS_DOWN, "instances": []} for name in services]
    instances: dict[str, list[dict[str, Any]]] = {name: [] for name in services}
    for key, value in zip(keys, values, strict=True):
        beat = _parse(value)
        if beat is None:
            continue
        name = str(beat.get("service") or _decode(key)[len(HEARTBEAT_PREFIX):].split(":")[0])
        processed = beat.get("last_processed_at")
        instances.setdefault(name, []).append({
            "instance": beat.get("instance"),
            "age_seconds": _age(now, beat.get("at")),
            "last_processed_age_seconds": _age(now, processed),
        })
    return [
        {"service": name, "status": "up" if found else "down",
         "instances": sorted(found, key=lambda entry: str(entry["instance"]))}
        for name, found in instances.items()
    ]


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _age(now: float, at: object) -> float | None:
    return round(max(now - at, 0.0), 1) if isinstance(at, int | float) else None


# --- what a running service does for operations ------------------------------------------


async def heartbeat(ctx: ServiceContext) -> None:
    """Tells operations this instance is alive; Redis being away only degrades readiness.

    Nothing the service decides goes through Redis: while it is away the consumer goes on,
    the heartbeat is retried every few seconds and is back as soon as Redis is.
    """
    key = heartbeat_key(ctx.name, ctx.instance_id)
    writing = True
    while True:
        beat = {"service": ctx.name, "instance": ctx.instance_id, "at": time.time(),
                "last_processed_at": ctx.consumer.last_processed_at}
        try:
            await ctx.redis.set(key, json.dumps(beat), ex=HEARTBEAT_TTL_SECONDS)
            if not writing:
                log.info("heartbeat written again: Redis is back")
            writing = True
        except asyncio.CancelledError:
            raise
        except Exception as error:
            ctx.metrics.heartbeat_failures.labels(ctx.name).inc()
            if writing:
                log.warning("heartbeat not written (Redis: %s); the service carries on",
                            type(error).__name__)
            writing = False
        await asyncio.sleep(HEARTBEAT_SECONDS)


def _held(ctx: ServiceContext) -> int | None:
    if ctx.spec.held is None:
        return None
    with unit_of_work(ctx.engine, ctx.topology.store) as uow:
        return ctx.spec.held.count(uow.store)


def _backlog(ctx: ServiceContext) -> int:
    with unit_of_work(ctx.engine, ctx.topology.store) as uow:
        return outbox_backlog(uow.session)


def _parked(ctx: ServiceContext, limit: int) -> dict[str, Any]:
    with unit_of_work(ctx.engine, ctx.topology.store) as uow:
        count, last = parked_messages(uow.session, limit)
    return {"count": count, "last": last}


async def refresh_ops_metrics(ctx: ServiceContext) -> None:
    """Refreshes the consumer lag and held-requests gauges; failures are only logged."""
    while True:
        if ctx.topology.inputs:
            try:
                ctx.metrics.set_lag(await ctx.inspector.lag(ctx.group_id, ctx.topology.inputs))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("consumer lag not refreshed: %s", type(error).__name__)
        if ctx.spec.held is not None:
            try:
                held = await anyio.to_thread.run_sync(_held, ctx)
                ctx.metrics.held_requests.labels(ctx.name).set(held or 0)
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

    own = ctx.spec.ops_parts
    lag, backlog, parked, held, letters, beats, *extra = await asyncio.gather(
        part("lag", ctx.inspector.lag(ctx.group_id, ctx.topology.inputs)),
        part("outbox_backlog", anyio.to_thread.run_sync(_backlog, ctx)),
        part("outbox_parked", anyio.to_thread.run_sync(_parked, ctx, dead_letter_limit)),
        part("held", anyio.to_thread.run_sync(_held, ctx)),
        part("dead_letters", ctx.inspector.dead_letters(dead_letter_limit, ctx.name),
             timeout=OPS_TIMEOUT_SECONDS * 4),
        part("heartbeats", read_heartbeats(ctx.redis, SERVICES)),
        *(part(name, anyio.to_thread.run_sync(work, ctx, dead_letter_limit))
          for name, work in own.items()),
    )
    if lag is not None:
        ctx.metrics.set_lag(lag)
    processed = ctx.consumer.last_processed_at
    return {
        "service": ctx.name,
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
        **dict(zip(own, extra, strict=True)),  # the service's own parts (referrals: webhooks)
        "errors": errors,
    }


# --- GET /ops/pipeline ----------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LagRow(_Answer):
    topic: str
    partition: int
    committed: int | None = Field(description="null: the group never committed it")
    end: int
    lag: int


class ParkedRow(_Answer):
    id: int
    topic: str
    bytes: int
    error: str
    created_at: str
    parked_at: str


class Parked(_Answer):
    count: int
    last: list[ParkedRow] = Field(description="the newest, without their payload")


class DeadLetterRow(_Answer):
    """A letter as listed, never its original message; the fields a letter does not hold
    (an unreadable one has only its place and `error`) are left out."""

    dlt_partition: int
    dlt_offset: int
    event_id: JsonValue = None
    occurred_at: JsonValue = None
    service: JsonValue = None
    source_topic: JsonValue = None
    partition: JsonValue = None
    offset: JsonValue = None
    error: JsonValue = None
    original_bytes: JsonValue = None
    original_truncated: JsonValue = None


class DeadLettersSeen(_Answer):
    count: int
    last: list[DeadLetterRow]


class InstanceBeat(_Answer):
    instance: JsonValue
    age_seconds: float | None
    last_processed_age_seconds: float | None


class ServiceBeat(_Answer):
    service: str
    status: str = Field(description=f"up, down or `{REDIS_DOWN}`")
    instances: list[InstanceBeat]


class Pipeline(_Answer):
    """This instance's view of its pipeline; a part that could not be read is null and
    named in `errors` (part -> error class). A service adds parts of its own (`ops_parts`:
    the referrals service's `webhooks`)."""

    model_config = ConfigDict(extra="allow")

    service: str
    instance: str
    group_id: str
    lag: list[LagRow] | None
    lag_total: int | None
    outbox_backlog: int | None
    outbox_parked: Parked | None
    held: int | None = Field(description="inputs waiting for their enrollment; null for a "
                             "service that holds nothing")
    last_processed_age_seconds: float | None
    dead_letters: DeadLettersSeen | None
    heartbeats: list[ServiceBeat] | None
    errors: dict[str, str]


router = APIRouter(tags=["operations"])

Limit = Annotated[
    int,
    Query(ge=0, le=1000, description="how many dead letters and parked rows to list"),
    ASCII_DIGITS,
    Expected(status=400, wording="{name} must be {expected}"),
]


@router.get(
    "/ops/pipeline",
    response_model=Pipeline,
    response_model_exclude_unset=True,
    dependencies=[allow(Role.OPS)],
    responses=problems(400, 401, 403),
)
async def pipeline(request: Request, limit: Limit = 10) -> Any:
    """Consumer lag, outbox, parked rows, held inputs, dead letters and every service's
    heartbeat, as this instance sees them."""
    ctx: ServiceContext = app_context(request)
    return await pipeline_state(ctx, limit)
