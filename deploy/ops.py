"""Pipeline health on the command line: `e2c ops status` (every service at once, from
Kafka, Redis and each service's `GET /ops/pipeline`), dead-letter listings and their replay.

- Replay: the letter's `original` is published again, as it was, to its `source_topic` with
  the letter's key. The service then handles it like any message: if its cause is fixed it is
  decided, if not it becomes a new dead letter, and an `event_id` already processed has no
  effect at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from deploy.system import TOPOLOGIES
from shared.contract import ALL_TOPICS, Topic
from shared.kafka_access import KafkaAccess
from shared.ops import (
    DEAD_LETTER_SCAN_LIMIT,
    DEFAULT_TIMEOUT,
    REDIS_DOWN,
    SERVICES,
    DeadLetters,
    KafkaInspector,
    read_heartbeats,
)

log = logging.getLogger(__name__)

REPLAYABLE_TOPICS = frozenset(str(topic) for topic in ALL_TOPICS if topic != Topic.DEADLETTER)


async def consumer_lag(
    access: KafkaAccess, group: str, topics: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[dict[str, Any]]:
    """Lag per topic and partition of one consumer group (see KafkaInspector.lag)."""
    async with KafkaInspector(access, timeout) as inspector:
        return await inspector.lag(group, topics)


async def read_dead_letters(
    access: KafkaAccess, limit: int = 10, service: str | None = None, show_original: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> DeadLetters:
    """(count, the last `limit` letters) of the dead-letter topic."""
    async with KafkaInspector(access, timeout) as inspector:
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
    access: KafkaAccess, dead_letter_event_id: str, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Publishes the letter's `original` to its `source_topic` with the letter's key."""
    async with KafkaInspector(access, timeout) as inspector:
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
    producer = AIOKafkaProducer(**access.client_options(), acks="all",
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




async def heartbeats_from_url(
    url: str, services: Sequence[str] = SERVICES
) -> list[dict[str, Any]]:
    client = aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        return await read_heartbeats(client, services)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()




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
    access: KafkaAccess,
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

    async with KafkaInspector(access, timeout) as inspector, httpx.AsyncClient(
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
                known = sorted(set(topics) or set(TOPOLOGIES[name].inputs)) or None
                with contextlib.suppress(Exception):
                    lag = await inspector.lag(TOPOLOGIES[name].group_id, known)
            beat = beats.get(name, {"status": "down", "instances": []})
            mine = [letter for letter in scanned if letter.get("service") == name]
            status = "up" if answered and beat["status"] != "down" else "down"
            services.append({
                "service": name,
                "status": status,
                "http": "up" if answered else page,
                "heartbeat": beat["status"],
                "instances": beat["instances"],
                "group_id": TOPOLOGIES[name].group_id,
                "lag": lag,
                "lag_total": sum(row["lag"] for row in lag) if lag is not None else None,
                "outbox_backlog": page.get("outbox_backlog") if answered else None,
                "outbox_parked": (page.get("outbox_parked") or {}).get("count")
                if answered else None,
                "held": page.get("held") if answered else None,
                "last_processed_age_seconds":
                    page.get("last_processed_age_seconds") if answered else None,
                "dead_letters": len(mine) if kafka_state == "up" else None,
                "webhooks": page.get("webhooks") if answered else None,  # referrals only
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
    hooks = [(s["service"], s["webhooks"]) for s in status.services if s.get("webhooks")]
    for name, state in hooks:
        lines += ["", f"webhooks of {name}: {state['endpoints']} agencies, "
                  f"{state['pending']} pending ({state['due']} due), {state['parked']} parked"]
        for failure in state.get("last_errors") or []:
            lines.append(f"  {failure['last_attempt_at'] or '-'}  delivery {failure['id']}  "
                         f"{failure['agency_id']}  {failure['state']}  "
                         f"try {failure['attempts']}  {failure['last_error']}")
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
