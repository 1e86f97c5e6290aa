"""The local Redis and PostgreSQL runners start real servers, answer, and stop cleanly."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from deploy.local_postgres import LocalPostgres
from deploy.local_postgres import ensure_installed as ensure_postgres
from deploy.local_redis import LocalRedis, redis_answers
from deploy.local_redis import ensure_installed as ensure_redis

pytestmark = pytest.mark.infra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def local_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    ensure_redis()
    server = LocalRedis(tmp_path, port=free_port())
    yield server
    server.stop()


@pytest.fixture
def local_postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    ensure_postgres()
    server = LocalPostgres(tmp_path, port=free_port())
    yield server
    server.purge()


def test_redis_starts_answers_and_stops(local_redis: LocalRedis) -> None:
    local_redis.start()

    assert local_redis.is_running()
    assert redis_answers(local_redis.url)
    client = redis.Redis.from_url(local_redis.url)
    client.set("greeting", "bonjour")
    assert client.get("greeting") == b"bonjour"
    client.close()

    local_redis.stop()
    assert not local_redis.is_running()
    assert not redis_answers(local_redis.url)


def test_redis_start_is_idempotent(local_redis: LocalRedis) -> None:
    local_redis.start()
    pid = local_redis.pid

    local_redis.start()

    assert local_redis.pid == pid


def test_redis_refuses_a_port_served_by_another_redis(
    local_redis: LocalRedis, tmp_path: Path
) -> None:
    local_redis.start()
    other = LocalRedis(tmp_path / "other", port=local_redis.port)

    with pytest.raises(RuntimeError, match="not started here"):
        other.start()


def test_redis_answers_is_false_without_a_server() -> None:
    assert not redis_answers(f"redis://127.0.0.1:{free_port()}/0")


def test_postgres_starts_creates_databases_and_stops(local_postgres: LocalPostgres) -> None:
    local_postgres.start()
    assert local_postgres.is_running()
    assert local_postgres.answers()

    local_postgres.create_database("referrals_test")
    local_postgres.create_database("referrals_test")

    with psycopg.connect(local_postgres.dsn("referrals_test")) as connection:
        encoding = connection.execute("SHOW server_encoding").fetchone()
    assert encoding == ("UTF8",)
    assert local_postgres.url("referrals_test") == (
        f"postgresql+psycopg://postgres@127.0.0.1:{local_postgres.port}/referrals_test"
    )

    local_postgres.stop()
    assert not local_postgres.is_running()
    assert not local_postgres.answers()


def test_postgres_keeps_databases_across_restarts(local_postgres: LocalPostgres) -> None:
    local_postgres.start()
    local_postgres.create_database("kept")
    local_postgres.stop()

    local_postgres.start()

    with psycopg.connect(local_postgres.dsn("kept")) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_postgres_url_works_with_sqlalchemy(local_postgres: LocalPostgres) -> None:
    from sqlalchemy import create_engine, text

    local_postgres.start()
    local_postgres.create_database("aids_test")

    engine = create_engine(local_postgres.url("aids_test"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT current_database()")).scalar() == "aids_test"
    engine.dispose()
