"""The local Redis and PostgreSQL runners start real servers, answer, and stop cleanly;
the process helpers they share find, recognise and stop processes."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from deploy.harness import free_port
from deploy.local_postgres import ClusterNeedsPurge, LocalPostgres
from deploy.local_postgres import ensure_installed as ensure_postgres
from deploy.local_redis import LocalRedis, redis_answers
from deploy.local_redis import ensure_installed as ensure_redis
from deploy.processes import (
    DetachedProcess,
    command_contains,
    command_line,
    port_open,
    process_exists,
    read_pid,
    spawn,
    tail,
    terminate,
)

pytestmark = pytest.mark.infra


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


def test_redis_asks_for_its_password_and_keeps_it_across_restarts(
    local_redis: LocalRedis,
) -> None:
    local_redis.start()
    url = local_redis.url
    password = local_redis.password

    assert url == f"redis://:{password}@127.0.0.1:{local_redis.port}/0" and len(password) >= 32
    assert stat.S_IMODE(local_redis.password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(local_redis.config_file.stat().st_mode) == 0o600
    assert not redis_answers(f"redis://127.0.0.1:{local_redis.port}/0")
    assert not redis_answers(f"redis://:wrong-{password}@127.0.0.1:{local_redis.port}/0")
    with redis.Redis(port=local_redis.port) as anonymous, pytest.raises(redis.RedisError):
        anonymous.set("greeting", "bonjour")
    assert password not in " ".join(command_line(local_redis.pid or 0))
    assert password not in local_redis.log_file.read_text()

    local_redis.stop()
    local_redis.start()

    assert local_redis.url == url and redis_answers(url)


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
        f"postgresql+psycopg://postgres:{local_postgres.password}@127.0.0.1:"
        f"{local_postgres.port}/referrals_test"
    )

    local_postgres.stop()
    assert not local_postgres.is_running()
    assert not local_postgres.answers()


def settings_of(server: LocalPostgres, *names: str) -> list[str]:
    with psycopg.connect(server.dsn()) as connection:
        return [str(connection.execute(f"SHOW {name}").fetchone()[0]) for name in names]


DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")


def test_postgres_is_durable_by_default(local_postgres: LocalPostgres) -> None:
    local_postgres.start()

    assert settings_of(local_postgres, *DURABILITY) == ["on", "on", "on"]


def test_postgres_trades_durability_for_speed_only_when_told_it_is_for_tests(
    tmp_path: Path,
) -> None:
    server = LocalPostgres(tmp_path, port=free_port(), unsafe_fast_for_tests=True)
    try:
        server.start()
        assert settings_of(server, *DURABILITY) == ["off", "off", "off"]
    finally:
        server.purge()


def test_postgres_asks_for_a_password_kept_owner_only(local_postgres: LocalPostgres) -> None:
    local_postgres.start()
    password = local_postgres.password

    assert len(password) >= 32
    assert stat.S_IMODE(local_postgres.password_file.stat().st_mode) == 0o600
    assert f":{password}@" in local_postgres.dsn() and f":{password}@" in local_postgres.url()
    anonymous = f"postgresql://postgres@127.0.0.1:{local_postgres.port}/postgres"
    wrong = f"postgresql://postgres:not-{password}@127.0.0.1:{local_postgres.port}/postgres"
    for dsn in (anonymous, wrong):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(dsn, connect_timeout=5).close()
    hba = (local_postgres.pgdata / "pg_hba.conf").read_text()
    assert "scram-sha-256" in hba
    assert not any("trust" in line.split("#")[0].split() for line in hba.splitlines())
    assert password not in local_postgres.log_file.read_text()


def test_postgres_cluster_folder_is_private_and_found_again(
    local_postgres: LocalPostgres, tmp_path: Path
) -> None:
    local_postgres.start()
    local_postgres.create_database("kept")
    local_postgres.stop()
    root = local_postgres.cluster_root

    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    if os.geteuid() == 0:  # the postgres user's own folder, unguessable, recorded 0600
        assert root.parent == Path(tempfile.gettempdir()) and root.name != "e2c-postgres-"
        assert root.stat().st_uid == pwd.getpwnam("postgres").pw_uid
        assert local_postgres.location_file.read_text().strip() == str(root)
        assert stat.S_IMODE(local_postgres.location_file.stat().st_mode) == 0o600
    else:
        assert root == tmp_path / "postgres"
    again = LocalPostgres(tmp_path, port=free_port())  # the same data folder, another port
    again.start()
    try:
        assert again.cluster_root == root
        with psycopg.connect(again.dsn("kept")) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
    finally:
        assert again.purge() == root
    assert not root.exists()
    assert not local_postgres.location_file.exists() and not local_postgres.password_file.exists()


def test_a_cluster_without_password_auth_must_be_purged(local_postgres: LocalPostgres) -> None:
    local_postgres.start()
    local_postgres.stop()
    hba = local_postgres.pgdata / "pg_hba.conf"
    hba.write_text(hba.read_text() + "host all all 127.0.0.1/32 trust\n")

    with pytest.raises(ClusterNeedsPurge, match="purge"):
        local_postgres.start()

    local_postgres.purge()
    local_postgres.start()
    local_postgres.stop()
    local_postgres.password_file.unlink()
    with pytest.raises(ClusterNeedsPurge, match="no password file"):
        local_postgres.start()


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


def test_read_pid_takes_the_first_line(tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    assert read_pid(pid_file) is None
    pid_file.write_text("garbage\n")
    assert read_pid(pid_file) is None
    pid_file.write_text("4242\n/var/lib/postgresql\n1700000000\n")
    assert read_pid(pid_file) == 4242


def test_detached_process_is_found_by_pid_file_and_stopped(tmp_path: Path) -> None:
    marker = f"e2c-test-{tmp_path.name}"
    command = [sys.executable, "-c", "import time, sys; time.sleep(60)", marker]
    process = DetachedProcess(tmp_path / "sleeper.pid", lambda pid: command_contains(pid, marker))
    child = spawn(command, tmp_path, tmp_path / "sleeper.log", process.pid_file)

    assert process.alive(child)
    deadline = time.monotonic() + 5
    while process.pid is None and time.monotonic() < deadline:
        time.sleep(0.02)  # just after fork, /proc may show the child without its arguments
    assert process.pid == child.pid
    process.stop(timeout=5)

    assert not process_exists(child.pid)
    assert not process.pid_file.exists()
    assert process.pid is None


def test_a_stale_pid_naming_another_process_is_ignored(tmp_path: Path) -> None:
    process = DetachedProcess(tmp_path / "stale.pid", lambda pid: command_contains(pid, "no-such"))
    process.pid_file.write_text(str(os.getpid()))

    assert process.pid is None
    process.stop(timeout=1)  # must not signal the test runner

    assert not process.pid_file.exists()


def test_terminate_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    log_file = tmp_path / "stubborn.log"
    child = spawn([sys.executable, "-c", code], tmp_path, log_file, tmp_path / "stubborn.pid")
    deadline = time.monotonic() + 10
    while "ready" not in tail(log_file, 1) and time.monotonic() < deadline:
        time.sleep(0.05)

    terminate(child.pid, timeout=0.5)

    assert child.poll() is not None
    assert not process_exists(child.pid)


def test_port_open_tells_a_listening_port_from_a_free_one() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert port_open(server.getsockname()[1])
    assert not port_open(free_port())
