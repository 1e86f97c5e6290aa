"""Session fixtures: real Kafka, Redis and PostgreSQL, and the three services as processes."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from deploy.harness import ServiceProcesses
from deploy.kafka_security import OPS
from deploy.local_kafka import LocalKafka
from shared.contract import Topic
from tests.infra import (
    TEST_DATA,
    Publisher,
    TopicWatcher,
    postgres_admin_url,
    redis_url,
    secured_kafka,
)
from tests.tokens import write_tokens_file

WATCHED_TOPICS = [
    Topic.REFERRALS_DECIDED,
    Topic.ENROLLMENTS_DECIDED,
    Topic.AIDS_DECIDED,
    Topic.EXITS_DECIDED,
    Topic.DEADLETTER,
]


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    """The secured broker: `kafka_security.access(kafka, ROLE)` connects as a role."""
    with secured_kafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    with redis_url() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[Callable[[str], str]]:
    with postgres_admin_url() as create_database:
        yield create_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store: a SQLite file, then a PostgreSQL database (store tests run
    on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    create_database: Callable[[str], str] = request.getfixturevalue("postgres_database")
    return create_database("e2c_store_test")


@pytest.fixture(scope="session")
def stack(
    kafka: LocalKafka, redis_server: str, postgres_database: Callable[[str], str]
) -> Iterator[ServiceProcesses]:
    """The services as processes. Referrals and aids run two instances each in one consumer
    group on one PostgreSQL store, so that races between partitions are real; outcomes runs
    one on SQLite. Aid requests and exits are held 3 s (not 24 h) before `unknown_trainee`;
    webhook deliveries are tried again after 0.2 s, 0.4 s, 0.8 s and parked after 4 tries."""
    data_dir = TEST_DATA / "stack"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    write_tokens_file(data_dir / "tokens.json")
    running = ServiceProcesses(kafka, redis_server, data_dir)
    referrals = {
        "REFERRALS_DATABASE_URL": postgres_database("e2c_stack_referrals"),
        "E2C_WEBHOOK_BACKOFF_SECONDS": "0.2",
        "E2C_WEBHOOK_MAX_ATTEMPTS": "4",
        "E2C_WEBHOOK_TIMEOUT_SECONDS": "3",
        "E2C_WEBHOOK_LEASE_SECONDS": "6",
        "E2C_WEBHOOK_POLL_SECONDS": "0.3",
    }
    aids = {
        "AIDS_DATABASE_URL": postgres_database("e2c_stack_aids"),
        "E2C_HOLD_SECONDS": "3",
        "E2C_HOLD_SWEEP_SECONDS": "1",
    }
    try:
        for name, env in (("referrals", referrals), ("aids", aids)):
            running.add(name, extra_env=env).start()
            running.add(name, instance="-2", extra_env=env).start()
        running.add("outcomes", extra_env={"E2C_HOLD_SECONDS": "3",
                                           "E2C_HOLD_SWEEP_SECONDS": "1"}).start()
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="session")
async def watcher(stack: ServiceProcesses) -> AsyncIterator[TopicWatcher]:
    topic_watcher = TopicWatcher(stack.access(OPS), [str(t) for t in WATCHED_TOPICS])
    await topic_watcher.start()
    yield topic_watcher
    await topic_watcher.stop()


@pytest.fixture(scope="session")
async def publisher(stack: ServiceProcesses) -> AsyncIterator[Publisher]:
    sender = Publisher(stack.kafka)
    await sender.start()
    yield sender
    await sender.stop()
