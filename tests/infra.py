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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.settings import PROJECT_ROOT

TEST_DATA = PROJECT_ROOT / "var" / "test"
SERVICES = ("referrals", "aids", "outcomes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif docker_answers():
        from testcontainers.community.kafka import KafkaContainer  # type: ignore[import-not-found]

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
    else:
        from deploy.local_kafka import LocalKafka

        broker = LocalKafka(TEST_DATA, port=free_port(), controller_port=free_port())
        broker.purge()
        broker.start()
        try:
            yield broker.bootstrap
        finally:
            broker.stop()


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
        try:
            yield server.url
        finally:
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
        from deploy.local_postgres import LocalPostgres, ensure_installed

        ensure_installed()
        server = LocalPostgres(TEST_DATA, port=free_port())
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


@dataclass
class ServiceProcess:
    """One service run as `python -m services.<name>`, as in production."""

    name: str
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None, timeout: float = 60) -> None:
        env = {**self.env, **(extra_env or {})}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self.process = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample over the series matching `labels`."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


@dataclass
class Stack:
    bootstrap: str
    redis_url: str
    data_dir: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def service_env(self, name: str, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            REDIS_URL=self.redis_url,
            E2C_DATA_DIR=str(self.data_dir),
            E2C_TOKENS_FILE=str(self.data_dir / "tokens.json"),
            E2C_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            **{f"{name.upper()}_PORT": str(port)},
        )
        return env

    def add(
        self, name: str, instance: str = "", extra_env: dict[str, str] | None = None
    ) -> ServiceProcess:
        """One instance of a service; several instances of one service share its store."""
        port = free_port()
        label = f"{name}{instance}"
        env = {**self.service_env(name, port), "E2C_INSTANCE_ID": label, **(extra_env or {})}
        service = ServiceProcess(name, env, port, self.data_dir / f"{label}.log")
        self.services[label] = service
        return service

    def stop_all(self) -> None:
        for service in self.services.values():
            service.stop()


class TopicWatcher:
    """Reads output topics from the beginning in the background and finds messages in them."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.messages: list[tuple[str, str | None, dict[str, Any] | None, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            key = record.key.decode() if record.key is not None else None
            try:
                body = json.loads(record.value)
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
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=2)
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
        await self._producer.send_and_wait(
            topic,
            raw,
            key=key.encode("utf-8") if key is not None else None,
            partition=partition,
        )
