"""Real infrastructure for the tests: Kafka, Redis, PostgreSQL and the services as processes.

Each of Kafka, Redis and PostgreSQL comes, in order, from the environment
(`KAFKA_BOOTSTRAP_SERVERS`, `REDIS_URL`, `E2C_TEST_POSTGRES_URL`), else from testcontainers
when a Docker engine answers, else from the project's own local runners. A part that cannot
be had fails the run: nothing is skipped for a missing broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer

from deploy import kafka_security
from deploy.harness import free_port
from deploy.local_kafka import LocalKafka
from deploy.system import producer_of
from deploy.writers import Writers, writer_accesses
from shared.contract import ALL_TOPICS, Topic
from shared.kafka_access import KafkaAccess
from shared.settings import PROJECT_ROOT, Settings
from tests.events import enrollment_decided

TEST_DATA = PROJECT_ROOT / "var" / "test"


def docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def secured_kafka() -> Iterator[LocalKafka]:
    """The project's own broker, as `e2c stack up` runs it: SASL/SCRAM only, ACLs, every
    role's principal and every topic made by the stack's provisioning. (Not testcontainers'
    Kafka: what is tested is the broker configuration the project ships.)"""
    broker = LocalKafka(TEST_DATA, port=free_port(), controller_port=free_port())
    broker.purge()
    broker.start()
    try:
        kafka_security.provision(broker, Settings().topic_partitions)
        yield broker
    finally:
        broker.stop()


def publisher_accesses(kafka: LocalKafka) -> dict[str, KafkaAccess]:
    """Topic -> the principal allowed to write it: the outside world's roles, and for a
    service's outputs the service itself (tests stand in for a service upstream)."""
    accesses = writer_accesses(kafka)
    for topic in ALL_TOPICS:
        producer = producer_of(topic) or "referrals"  # dead letters: any service writes them
        accesses.setdefault(str(topic), kafka_security.access(kafka, producer))
    return accesses


# The Redis servers started here, by URL: a test may stop and restart them (Redis-down tests).
LOCAL_REDIS: dict[str, Any] = {}


def controllable_redis(url: str) -> Any | None:
    """The LocalRedis serving `url` when this module started it; None for a Redis given by
    REDIS_URL or run by testcontainers (those cannot be stopped and restarted in place)."""
    return LOCAL_REDIS.get(url)


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
    elif docker_answers():
        from testcontainers.community.redis import RedisContainer  # type: ignore[import-not-found]

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
    else:
        from deploy.local_redis import LocalRedis, ensure_installed

        ensure_installed()
        server = LocalRedis(TEST_DATA, port=free_port())
        server.start()
        LOCAL_REDIS[server.url] = server
        try:
            yield server.url
        finally:
            LOCAL_REDIS.pop(server.url, None)
            server.stop()


@contextlib.contextmanager
def postgres_admin_url() -> Iterator[Callable[[str], str]]:
    """Yields a function that creates a fresh database and returns its SQLAlchemy URL."""
    if os.environ.get("E2C_TEST_POSTGRES_URL"):
        yield _database_factory(os.environ["E2C_TEST_POSTGRES_URL"])
    elif docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver="psycopg") as container:
            yield _database_factory(container.get_connection_url())
    else:
        from deploy.local_postgres import ClusterNeedsPurge, LocalPostgres, ensure_installed

        ensure_installed()
        # Throwaway databases: the fast, non-durable settings are allowed here only.
        server = LocalPostgres(TEST_DATA, port=free_port(), unsafe_fast_for_tests=True)
        try:
            server.start()
        except ClusterNeedsPurge:  # a test cluster of an older version: nothing to keep
            server.purge()
            server.start()
        try:
            yield _database_factory(server.url("postgres"))
        finally:
            server.stop()


def _database_factory(admin_url: str) -> Callable[[str], str]:
    from sqlalchemy import create_engine, text

    base, _, _ = admin_url.rpartition("/")

    def create(name: str) -> str:
        engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return f"{base}/{name}"

    return create


class TopicWatcher:
    """Reads output topics from the beginning in the background and finds messages in them."""

    def __init__(self, reader: KafkaAccess, topics: list[str]) -> None:
        self.reader = reader
        self.topics = topics
        self.messages: list[tuple[str, str | None, dict[str, Any] | None, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *self.topics,
            **self.reader.client_options(),
            group_id=None,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Ends the watching, whatever state its fetches are in.

        A synchronous test that runs longer than the client's request timeout (a whole
        `e2c stack up`) leaves the session's event loop still: the fetch in flight then
        times out, and the task and the consumer end with aiokafka's errors or a
        CancelledError. None of that is a test failure once the watching is over.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            key = record.key.decode() if record.key is not None else None
            try:
                body = json.loads(record.value) if record.value is not None else None
            except ValueError:
                body = None
            self.messages.append((record.topic, key, body, record.value))
            self._changed.set()

    def find(self, topic: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            body
            for t, _key, body, _raw in self.messages
            if t == topic and body is not None
            and all(body.get(name) == value for name, value in fields.items())
        ]

    def keys(self, topic: str, **fields: Any) -> list[str | None]:
        return [
            key
            for t, key, body, _raw in self.messages
            if t == topic and body is not None
            and all(body.get(name) == value for name, value in fields.items())
        ]

    async def wait_for(
        self, topic: str, count: int = 1, timeout: float = 30, **fields: Any
    ) -> list[dict[str, Any]]:
        """Waits until at least `count` messages of `topic` match `fields`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = self.find(topic, **fields)
            if len(found) >= count:
                return found
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"{len(found)}/{count} on {topic} matching {fields}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))


class Publisher:
    """Sends any topic of the contract, each as the principal allowed to write it."""

    def __init__(self, kafka: LocalKafka) -> None:
        self.kafka = kafka
        self._producer: Writers | None = None

    async def start(self) -> None:
        self._producer = Writers(publisher_accesses(self.kafka), linger_ms=2)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def send(
        self,
        topic: str,
        value: bytes | dict[str, Any],
        key: str | None,
        partition: int | None = None,
    ) -> None:
        assert self._producer is not None
        raw = value if isinstance(value, bytes) else json.dumps(value).encode("utf-8")
        await self._producer.producer(topic).send_and_wait(
            topic,
            raw,
            key=key.encode("utf-8") if key is not None else None,
            partition=partition,
        )


async def learn_trainee(publisher: Publisher, trainee_id: str | None = None, **fields: Any) -> str:
    """Publishes the enrollment decision the referrals service would publish (of a new
    trainee unless `trainee_id`; `fields` as for `enrollment_decided`)."""
    trainee_id = trainee_id or uuid.uuid4().hex
    event = enrollment_decided(trainee_id, **fields)
    await publisher.send(Topic.ENROLLMENTS_DECIDED, event, trainee_id)
    return trainee_id


async def poll(check: Any, timeout: float) -> Any:
    """Polls the async `check` until it returns something truthy (TimeoutError after)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("never happened")
        await asyncio.sleep(0.2)
