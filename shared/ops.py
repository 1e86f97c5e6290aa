"""Pipeline health for operations: consumer lag, dead letters (and their replay), heartbeats.

Everything here reads the broker and Redis directly, so it works whether the services answer
or not: `e2c ops status` and each service's `GET /ops/pipeline` are built from it.

- Lag: the group's committed offsets (`AIOKafkaAdminClient.list_consumer_group_offsets`)
  against the end offsets read by a group-less consumer; a partition the group never
  committed counts from 0 (lag = end).
- Dead letters: read from `e2c.deadletter.v1` itself. Listings leave out the `original`
  (it may hold personal data) unless asked for.
- Replay: the letter's `original` is published again, as it was, to its `source_topic` with
  the letter's key. The service then handles it like any message: if its cause is fixed it is
  decided, if not it becomes a new dead letter, and an `event_id` already processed has no
  effect at all.
- Heartbeats: `e2c:heartbeat:<service>:<instance>` keys with a short expiry; a service without
  a live key is down; with Redis unreachable it is "unknown (redis down)".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.contract import ALL_TOPICS, Topic
from shared.settings import SERVICE_PORTS

log = logging.getLogger(__name__)

SERVICES = tuple(SERVICE_PORTS)
HEARTBEAT_PREFIX = "e2c:heartbeat:"
REDIS_DOWN = "unknown (redis down)"
DEFAULT_TIMEOUT = 5.0
# A service's own dead-letter count scans at most this many of the newest letters per
# partition; the dead-letter topic is meant to stay small (its letters get fixed and replayed).
DEAD_LETTER_SCAN_LIMIT = 100_000
REPLAYABLE_TOPICS = frozenset(str(topic) for topic in ALL_TOPICS if topic != Topic.DEADLETTER)
# What each service's consumer group reads (the contract's flow). The aggregated view uses it
# for a service that does not answer; one that answers reports its own topics.
SERVICE_INPUTS: dict[str, tuple[str, ...]] = {
    "referrals": (Topic.REFERRALS_SUBMITTED, Topic.DEROGATIONS_SUBMITTED,
                  Topic.ENROLLMENTS_SUBMITTED, Topic.EXITS_DECIDED),
    "aids": (Topic.AIDS_REQUESTED, Topic.BUDGETS_SUBMITTED, Topic.ENROLLMENTS_DECIDED,
             Topic.EXITS_DECIDED),
    "outcomes": (Topic.EXITS_SUBMITTED, Topic.REFERRALS_DECIDED, Topic.ENROLLMENTS_DECIDED,
                 Topic.AIDS_DECIDED),
}
LISTED_FIELDS = ("event_id", "occurred_at", "service", "source_topic", "partition", "offset",
                 "error", "original_bytes", "original_truncated")


def heartbeat_key(service: str, instance: str) -> str:
    return f"{HEARTBEAT_PREFIX}{service}:{instance}"


def group_id(service: str) -> str:
    return f"e2c-{service}"


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

    def __init__(self, bootstrap: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.bootstrap = bootstrap
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
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=timeout_ms,
                client_id="e2c-ops",
            )
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=timeout_ms,
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


# --- the functions operations call -----------------------------------------------------------


async def consumer_lag(
    bootstrap: str, group: str, topics: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[dict[str, Any]]:
    """Lag per topic and partition of one consumer group (see KafkaInspector.lag)."""
    async with KafkaInspector(bootstrap, timeout) as inspector:
        return await inspector.lag(group, topics)


async def read_dead_letters(
    bootstrap: str, limit: int = 10, service: str | None = None, show_original: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> DeadLetters:
    """(count, the last `limit` letters) of the dead-letter topic."""
    async with KafkaInspector(bootstrap, timeout) as inspector:
        return await inspector.dead_letters(limit, service, show_original)


def original_bytes(body: dict[str, Any]) -> bytes | None:
    """A letter's whole original value (text or base64), None when cut or absent."""
    if body.get("original_truncated"):
        return None
    if isinstance(body.get("original"), str):
        return str(body["original"]).encode("utf-8")
    if isinstance(body.get("original_base64"), str):
        with contextlib.suppress(ValueError):
            return base64.b64decode(body["original_base64"], validate=True)
    return None


class ReplayError(Exception):
    """The letter cannot be replayed (unknown id, no original, or an unexpected topic)."""


async def replay_dead_letter(
    bootstrap: str, dead_letter_event_id: str, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Publishes the letter's `original` to its `source_topic` with the letter's key."""
    async with KafkaInspector(bootstrap, timeout) as inspector:
        letter = await inspector.find_dead_letter(dead_letter_event_id)
    if letter is None or letter.body is None:
        raise ReplayError(f"no dead letter {dead_letter_event_id} in {Topic.DEADLETTER}")
    source = letter.body.get("source_topic")
    if source not in REPLAYABLE_TOPICS:
        raise ReplayError(f"dead letter {dead_letter_event_id}: source topic {source!r} is "
                          "not a topic of the contract")
    original = original_bytes(letter.body)
    if original is None:
        raise ReplayError(f"dead letter {dead_letter_event_id} holds no whole original "
                          "message (none, or cut to fit the dead letter)")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, client_id="e2c-ops-replay",
                                request_timeout_ms=int(timeout * 1000))
    await producer.start()
    try:
        sent = await producer.send_and_wait(source, original, key=letter.key)
    finally:
        await producer.stop()
    log.info("dead letter %s replayed to %s[%s]@%s", dead_letter_event_id, source,
             sent.partition, sent.offset)
    return {"event_id": dead_letter_event_id, "source_topic": source,
            "partition": sent.partition, "offset": sent.offset,
            "key": letter.key.decode("utf-8", errors="replace") if letter.key else None}


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


async def heartbeats_from_url(
    url: str, services: Sequence[str] = SERVICES
) -> list[dict[str, Any]]:
    client = aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        return await read_heartbeats(client, services)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _age(now: float, at: object) -> float | None:
    return round(max(now - at, 0.0), 1) if isinstance(at, int | float) else None


# --- the aggregated view (e2c ops status) ----------------------------------------------------


@dataclass
class PipelineStatus:
    at: float
    kafka: str
    redis: str
    services: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return (self.kafka == "up" and self.redis == "up"
                and all(service["status"] == "up" for service in self.services))

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "healthy": self.healthy, "kafka": self.kafka,
                "redis": self.redis, "services": self.services,
                "dead_letters": self.dead_letters}


async def collect_status(
    bootstrap: str,
    redis_url: str,
    service_urls: dict[str, str],
    token: str | None,
    limit: int = 5,
    timeout: float = 3.0,
) -> PipelineStatus:
    """The pipeline of every service, from Kafka, Redis and their `GET /ops/pipeline`."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def fetch(client: httpx.AsyncClient, url: str) -> dict[str, Any] | str:
        try:
            response = await client.get(f"{url}/ops/pipeline", headers=headers)
        except httpx.HTTPError as error:
            return f"down: {type(error).__name__}"
        if response.status_code != 200:
            return f"down: HTTP {response.status_code}"
        body: dict[str, Any] = response.json()
        return body

    async with KafkaInspector(bootstrap, timeout) as inspector, httpx.AsyncClient(
        timeout=timeout
    ) as client:
        answers = await asyncio.gather(*(fetch(client, url) for url in service_urls.values()))
        pages = dict(zip(service_urls, answers, strict=True))
        beats = {beat["service"]: beat
                 for beat in await heartbeats_from_url(redis_url, list(service_urls))}
        redis_state = "down" if any(b["status"] == REDIS_DOWN for b in beats.values()) else "up"
        kafka_state = "up"
        letters: DeadLetters | None = None
        scanned: list[dict[str, Any]] = []
        try:
            everything = await inspector.dead_letters(DEAD_LETTER_SCAN_LIMIT)
            scanned = everything.last
            letters = DeadLetters(everything.count, scanned[-limit:] if limit > 0 else [])
        except Exception as error:
            kafka_state = f"down: {type(error).__name__}"
        services = []
        for name in service_urls:
            page = pages[name]
            answered = isinstance(page, dict)
            lag: list[dict[str, Any]] | None = None
            if kafka_state == "up":
                topics = [row["topic"] for row in page.get("lag") or []] if answered else []
                known = sorted(set(topics) or set(SERVICE_INPUTS.get(name, ()))) or None
                with contextlib.suppress(Exception):
                    lag = await inspector.lag(group_id(name), known)
            beat = beats.get(name, {"status": "down", "instances": []})
            mine = [letter for letter in scanned if letter.get("service") == name]
            status = "up" if answered and beat["status"] != "down" else "down"
            services.append({
                "service": name,
                "status": status,
                "http": "up" if answered else page,
                "heartbeat": beat["status"],
                "instances": beat["instances"],
                "group_id": group_id(name),
                "lag": lag,
                "lag_total": sum(row["lag"] for row in lag) if lag is not None else None,
                "outbox_backlog": page.get("outbox_backlog") if answered else None,
                "outbox_parked": (page.get("outbox_parked") or {}).get("count")
                if answered else None,
                "held": page.get("held") if answered else None,
                "last_processed_age_seconds":
                    page.get("last_processed_age_seconds") if answered else None,
                "dead_letters": len(mine) if kafka_state == "up" else None,
            })
    return PipelineStatus(
        at=time.time(),
        kafka=kafka_state,
        redis=redis_state,
        services=services,
        dead_letters={"count": letters.count, "last": letters.last} if letters else {},
    )


def render_status(status: PipelineStatus) -> str:
    """The compact table `e2c ops status` prints."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.at))
    lines = [f"e2c pipeline at {stamp}   kafka {status.kafka}   redis {status.redis}", ""]
    header = (f"{'SERVICE':<10} {'STATUS':<6} {'HEARTBEAT':<21} {'LAG':>6} {'OUTBOX':>6} "
              f"{'PARKED':>6} {'HELD':>5} {'LAST EVENT':>10} {'DEAD':>5}")
    lines.append(header)
    for service in status.services:
        beat = service["heartbeat"]
        if beat == "up":
            beat = f"up ({len(service['instances'])} inst.)"
        lines.append(
            f"{service['service']:<10} {service['status']:<6} {beat:<21} "
            f"{_cell(service['lag_total']):>6} {_cell(service['outbox_backlog']):>6} "
            f"{_cell(service.get('outbox_parked')):>6} {_cell(service['held']):>5} "
            f"{_seconds(service['last_processed_age_seconds']):>10} "
            f"{_cell(service['dead_letters']):>5}"
        )
    lagging = [
        (service["group_id"], row)
        for service in status.services for row in service["lag"] or [] if row["lag"] > 0
    ]
    if lagging:
        lines += ["", "lag by partition:"]
        for group, row in lagging:
            lines.append(f"  {group:<14} {row['topic']}[{row['partition']}]  committed "
                         f"{_cell(row['committed'])}  end {row['end']}  lag {row['lag']}")
    down = [s for s in status.services if s["status"] != "up"]
    if down:
        lines += ["", "down:"]
    for service in down:
        lines.append(f"  {service['service']:<10} http {service['http']}, "
                     f"heartbeat {service['heartbeat']}")
    letters = status.dead_letters
    if letters:
        lines += ["", f"dead letters: {letters['count']} in {Topic.DEADLETTER}"
                  + (f", the last {len(letters['last'])}:" if letters["last"] else "")]
        for letter in letters["last"]:
            lines.append("  " + format_letter(letter))
    return "\n".join(lines) + "\n"


def format_letter(letter: dict[str, Any]) -> str:
    error = str(letter.get("error") or "").splitlines()[0][:100] if letter.get("error") else ""
    where = f"{letter.get('source_topic')}[{letter.get('partition')}]@{letter.get('offset')}"
    return (f"{letter.get('occurred_at') or '-'}  {letter.get('event_id')}  "
            f"{letter.get('service') or '-'}  {where}  {error}")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.0f}h"
