"""`e2c stack up --postgres`: the stack's PostgreSQL, a database per service, its status line,
and `down` / `down --purge`; the stack's Redis password; and a whole `e2c stack up` that
leaves nothing under its data folder readable by group or others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from deploy import cli
from deploy.harness import free_port
from deploy.local_postgres import ensure_installed as ensure_postgres
from deploy.stack import SERVICES, LocalStack
from shared.http import load_tokens
from shared.private_files import loose_bits
from shared.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.infra


def stack_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings on free ports, so nothing here meets a stack already running on the defaults."""
    ports = {
        "kafka_port": free_port(),
        "kafka_controller_port": free_port(),
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        **{f"{name}_port": free_port() for name in SERVICES},
        "console_port": free_port(),
        **{f"{name}_database_url": None for name in SERVICES},
    }
    return Settings(data_dir=data_dir, **{**ports, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def postgres_port(monkeypatch: pytest.MonkeyPatch) -> int:
    ensure_postgres()
    port = free_port()
    monkeypatch.setenv("E2C_POSTGRES_PORT", str(port))
    return port


@pytest.fixture
def stack(tmp_path: Path, postgres_port: int) -> Iterator[LocalStack]:
    local = LocalStack(stack_settings(tmp_path))
    local.run_dir.mkdir(parents=True)
    yield local
    local.down(purge=True, echo=False)


def status_of(stack: LocalStack) -> dict[str, dict[str, object]]:
    return {str(part["name"]): part for part in stack.status_dicts()}


def test_postgres_gets_a_database_per_service(stack: LocalStack, postgres_port: int) -> None:
    said: list[str] = []

    urls = stack._ensure_postgres(said.append)

    assert urls == {name: stack.postgres.url(name) for name in SERVICES}
    assert all(f":{postgres_port}/" in url for url in urls.values())
    for name in SERVICES:
        with psycopg.connect(stack.postgres.dsn(name)) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == (name,)
    assert stack.uses_postgres()
    assert said[-1].startswith(f"postgres   ready on 127.0.0.1:{postgres_port}")


def test_status_shows_postgres_only_when_it_is_part_of_the_stack(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "postgres" not in status_of(stack)
    assert not stack.postgres.has_cluster()

    stack._ensure_postgres(lambda _text: None)

    part = status_of(stack)["postgres"]
    assert part["health"] == "up"
    assert part["port"] == stack.postgres.port
    assert part["pid"] == stack.postgres.pid is not None
    # A later `e2c stack status` finds it through the run folder, whatever the environment says.
    monkeypatch.setenv("E2C_POSTGRES_PORT", str(free_port()))
    again = LocalStack(stack.settings)
    assert again.postgres.port == stack.postgres.port
    assert status_of(again)["postgres"]["health"] == "up"


def test_database_urls_already_set_are_kept(tmp_path: Path, postgres_port: int) -> None:
    given = f"sqlite:///{tmp_path / 'mine.db'}"
    stack = LocalStack(stack_settings(tmp_path, referrals_database_url=given))
    stack.run_dir.mkdir(parents=True)
    said: list[str] = []
    try:
        urls = stack._ensure_postgres(said.append)
    finally:
        stack.down(purge=True, echo=False)

    assert set(urls) == {"aids", "outcomes"}
    assert any("referrals keeps REFERRALS_DATABASE_URL" in line for line in said)
    assert not any(given in line for line in said)


def test_no_postgres_is_started_when_every_url_is_set(tmp_path: Path, postgres_port: int) -> None:
    urls = {f"{name}_database_url": f"sqlite:///{tmp_path / name}.db" for name in SERVICES}
    stack = LocalStack(stack_settings(tmp_path, **urls))
    stack.run_dir.mkdir(parents=True)

    assert stack._ensure_postgres(lambda _text: None) == {}
    assert not stack.uses_postgres()
    assert not stack.postgres.has_cluster()


def test_down_stops_postgres_and_purge_deletes_its_cluster(stack: LocalStack) -> None:
    stack._ensure_postgres(lambda _text: None)

    stack.down(echo=False)

    assert not stack.postgres.is_running()
    assert not stack.uses_postgres()
    assert "postgres" not in status_of(stack)
    assert stack.postgres.has_cluster()
    root = stack.postgres.cluster_root

    stack.down(purge=True, echo=False)

    assert not stack.postgres.has_cluster()
    assert not root.exists()


def use_stack_env(monkeypatch: pytest.MonkeyPatch, stack: LocalStack) -> None:
    """`e2c` commands run in this process see the stack under test."""
    settings = stack.settings
    monkeypatch.setenv("E2C_DATA_DIR", str(stack.data_dir))
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("E2C_KAFKA_PORT", str(settings.kafka_port))
    monkeypatch.setenv("E2C_KAFKA_CONTROLLER_PORT", str(settings.kafka_controller_port))
    for name in SERVICES:
        monkeypatch.setenv(f"{name.upper()}_PORT", str(settings.port(name)))
    monkeypatch.setenv("CONSOLE_PORT", str(settings.console_port))


def test_the_stacks_redis_has_a_password_that_is_never_shown(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    said: list[str] = []

    url = stack._ensure_redis(said.append)

    password = stack.redis.password
    assert url == stack.redis.url and f":{password}@" in url
    assert stack.cache_url() == url
    use_stack_env(monkeypatch, stack)
    capsys.readouterr()
    cli.main(["stack", "status", "--json"])
    status = {part["name"]: part for part in json.loads(capsys.readouterr().out)}
    assert status["redis"]["health"] == "up"
    cli.main(["stack", "status"])
    shown = [*said, json.dumps(status), capsys.readouterr().out]
    assert not any(password in text for text in shown)
    assert any("password in" in line for line in said)


def stack_up_env(data_dir: Path) -> dict[str, str]:
    """The environment of an `e2c` process driving a stack of its own on free ports."""
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("E2C_", "KAFKA_", "REDIS_")) and not key.endswith("_DATABASE_URL")
    }
    env.update(
        E2C_DATA_DIR=str(data_dir),
        E2C_KAFKA_PORT=str(free_port()),
        E2C_KAFKA_CONTROLLER_PORT=str(free_port()),
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        **{f"{name.upper()}_PORT": str(free_port()) for name in SERVICES},
        CONSOLE_PORT=str(free_port()),
    )
    return env


def e2c(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *argv], cwd=PROJECT_ROOT, env=env,
        capture_output=True, text=True, timeout=240, check=False,
    )


def console_signs_in(url: str, tokens_file: Path) -> tuple[int, httpx.Response]:
    """Signs in to the stack's console with the tokens file's admin token: the finance
    page's status and the operations page."""
    [admin_token] = load_tokens(tokens_file)
    with httpx.Client(base_url=url, timeout=30) as client:
        form = client.get("/signin").text
        csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        client.post("/signin", data={"token": admin_token, "csrf": csrf})
        return client.get("/finance").status_code, client.get("/operations")


def test_stack_up_leaves_nothing_readable_by_group_or_others(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)  # as an older version left it
    env = stack_up_env(data_dir)
    try:
        up = e2c(env, "stack", "up")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        status = e2c(env, "stack", "status")
        hint = e2c(env, "stack", "console")
        console_url = f"http://127.0.0.1:{env['CONSOLE_PORT']}"
        signed_in, operations = console_signs_in(console_url, data_dir / "tokens.json")
    finally:
        down = e2c(env, "stack", "down")
    assert down.returncode == 0, down.stderr[-3000:]
    assert f"console    ready on {console_url}" in up.stdout
    assert any(line.split()[0] == "console" and line.endswith("ready")
               for line in status.stdout.splitlines())
    assert console_url in hint.stdout and str(data_dir / "tokens.json") in hint.stdout
    assert signed_in == 200
    # The stack gave its console the ops Kafka access: the replay button is offered.
    assert operations.status_code == 200 and 'id="no-replay"' not in operations.text
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{console_url}/health", timeout=2)

    assert status.returncode == 0, status.stdout + status.stderr
    stores = sorted(path.name for path in (data_dir / "stores").iterdir())
    assert {"referrals.db", "aids.db", "outcomes.db"} <= set(stores)
    assert any((data_dir / "kafka" / "logs").rglob("*.log"))  # the broker's topic segments
    open_to_others = [
        str(path.relative_to(data_dir))
        for path in [data_dir, *data_dir.rglob("*")]
        if not path.is_symlink() and loose_bits(path)
    ]
    assert open_to_others == []
    [admin_token] = load_tokens(data_dir / "tokens.json")
    redis_password = (data_dir / "redis" / "password").read_text().strip()
    printed = up.stdout + up.stderr + status.stdout + status.stderr
    assert admin_token not in printed and redis_password not in printed


def test_a_restore_stops_the_stacks_service_and_starts_it_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    env = stack_up_env(data_dir)
    try:
        up = e2c(env, "stack", "up")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        backup = e2c(env, "backup", "aids", "--to", str(data_dir / "backups" / "now"))
        assert backup.returncode == 0, backup.stdout + backup.stderr
        restore = e2c(env, "restore", "aids", str(data_dir / "backups" / "now"))
        status = e2c(env, "stack", "status", "--json")
    finally:
        e2c(env, "stack", "down")
        refused = e2c(env, "restore", "aids", str(data_dir / "backups" / "now"))

    assert restore.returncode == 0, restore.stdout + restore.stderr
    said = restore.stdout.splitlines()
    assert said[0].split() == ["aids", "stopped"]
    assert said[-1].startswith("aids       ready again")
    health = {part["name"]: part["health"] for part in json.loads(status.stdout)}
    assert health["aids"] == "ready"
    assert (data_dir / "backups" / "now" / "aids.db").stat().st_mode & 0o777 == 0o600
    # The broker stopped: a clear refusal, no traceback.
    assert refused.returncode == 1
    assert "no broker answers" in refused.stderr and "Traceback" not in refused.stderr
