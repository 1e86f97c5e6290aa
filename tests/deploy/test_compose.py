"""The docker-compose stack and the image: checked by `docker-compose config` (no engine needed).

Debian's `docker-compose` (1.29) parses, validates and normalises the file without a Docker
engine: an unknown service in `depends_on`, a bad key or a wrong type make it fail. CI installs
it (`apt-get install docker-compose`); a missing binary fails these tests rather than skipping.

Safe defaults: the secrets come from the operator (no default, `config` fails without them),
published ports are on loopback unless E2C_PUBLISH_ADDRESS says otherwise, images are pinned,
Kafka's log is on a volume, every service restarts unless stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.http import TokensFileError, load_tokens
from shared.kafka import MAX_MESSAGE_BYTES
from shared.private_files import write_private
from shared.settings import PROJECT_ROOT, SERVICE_PORTS

REPO_ROOT = PROJECT_ROOT
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
INFRA_SERVICES = ("kafka", "redis", "postgres")
APP_SERVICES = tuple(SERVICE_PORTS)  # referrals, aids, outcomes
# What the operator must give: no default exists for any of them.
REQUIRED = {
    "E2C_TOKENS_FILE": "/srv/e2c/tokens.json",
    "POSTGRES_PASSWORD": "pg-password-from-the-operator-0123456789",
    "REDIS_PASSWORD": "redis-password-from-the-operator-0123456789",
}
# Exact releases (PostgreSQL numbers them major.minor since 10), never a moving tag.
PINNED_IMAGES = {
    "kafka": r"apache/kafka:4\.1\.1",
    "redis": r"redis:7\.\d+\.\d+",
    "postgres": r"postgres:15\.\d+",
}


def _compose(
    *args: str, compose_file: Path = COMPOSE_FILE, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose not found on PATH: install it (Debian: apt-get install docker-compose)"
            " so that docker-compose.yml is validated"
        )
    # Only what is given here: a developer's own E2C_* or passwords must not leak in.
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [binary, "-f", str(compose_file), *args],
        cwd=compose_file.parent,
        env={**base, **(REQUIRED if env is None else env)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _config(env: dict[str, str]) -> dict[str, list[str]]:
    """`docker-compose config` with `env`, split at the top level: key -> its lines."""
    result = _compose("config", env=env)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    top = _blocks(result.stdout.splitlines(), 0)
    assert "services" in top, result.stdout
    return top


def _environment(lines: list[str]) -> dict[str, str]:
    return dict(line.strip().split(": ", 1) for line in lines if ": " in line)


def _items(lines: list[str]) -> list[str]:
    return [line.strip().removeprefix("- ") for line in lines]


def _blocks(lines: list[str], indent: int) -> dict[str, list[str]]:
    """Split normalised YAML lines into the mappings at `indent`: key -> its nested lines.

    `docker-compose config` writes block style, with a list's items at its key's indentation.
    """
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    prefix = " " * indent
    for line in lines:
        if not line.strip():
            continue
        nested = line.startswith(prefix + " ") or line.startswith(prefix + "- ")
        if nested:
            if current is not None:
                current.append(line)
        elif line.startswith(prefix) and line.rstrip().endswith(":"):
            current = blocks.setdefault(line.strip()[:-1], [])
        else:
            current = None
    return blocks


@pytest.fixture(scope="module")
def normalised() -> dict[str, list[str]]:
    """`docker-compose config` output, split into services: name -> its lines."""
    return _blocks(_config(REQUIRED)["services"], 2)


def test_config_lists_the_six_services() -> None:
    result = _compose("config", "--services")
    assert result.returncode == 0, f"docker-compose config --services failed:\n{result.stderr}"
    assert set(result.stdout.split()) == {*INFRA_SERVICES, *APP_SERVICES}


def test_app_services_wait_for_healthy_infra(normalised: dict[str, list[str]]) -> None:
    for name in APP_SERVICES:
        depends_on = _blocks(normalised[name], 4).get("depends_on")
        assert depends_on is not None, f"{name} has no depends_on"
        conditions = {
            dep: [line.strip() for line in body] for dep, body in _blocks(depends_on, 6).items()
        }
        assert set(conditions) == set(INFRA_SERVICES), f"{name}: depends_on {sorted(conditions)}"
        for dep, body in conditions.items():
            assert body == ["condition: service_healthy"], f"{name} -> {dep}: {body}"


def test_infra_services_have_healthchecks(normalised: dict[str, list[str]]) -> None:
    for name in (*INFRA_SERVICES, *APP_SERVICES):
        assert "healthcheck" in _blocks(normalised[name], 4), f"{name} has no healthcheck"


def test_app_services_run_their_module_with_their_settings(
    normalised: dict[str, list[str]],
) -> None:
    for name, port in SERVICE_PORTS.items():
        keys = _blocks(normalised[name], 4)
        assert "build" in keys, f"{name} is not built from deploy/Dockerfile"
        build = " ".join(line.strip() for line in keys["build"])
        assert "dockerfile: deploy/Dockerfile" in build
        assert [line.strip() for line in keys["command"]] == [f"- services.{name}"]
        env = _environment(keys["environment"])
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["REDIS_URL"] == f"redis://:{REQUIRED['REDIS_PASSWORD']}@redis:6379/0"
        assert env["E2C_TOKENS_FILE"] == "/run/secrets/e2c_tokens"
        assert _items(keys["secrets"]) == ["source: e2c_tokens"]
        assert "E2C_DATA_DIR" in env
        assert env[f"{name.upper()}_DATABASE_URL"] == (
            f"postgresql+psycopg://postgres:{REQUIRED['POSTGRES_PASSWORD']}"
            f"@postgres:5432/{name}"
        )
        assert _items(keys["ports"]) == [f"127.0.0.1:{port}:{port}/tcp"]
        healthcheck = " ".join(line.strip() for line in keys["healthcheck"])
        assert f"http://localhost:{port}/health/ready" in healthcheck


def test_config_rejects_an_unknown_dependency(tmp_path: Path) -> None:
    """Guards the guard: `config` really validates depends_on without an engine."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n"
        "  app:\n"
        "    image: python:3.11-slim\n"
        "    depends_on:\n"
        "      nosuchservice:\n"
        "        condition: service_healthy\n"
    )
    assert _compose("config", compose_file=broken).returncode != 0


def test_dockerfile_runs_a_services_module() -> None:
    assert DOCKERFILE.is_file()
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim$", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["python", "-m"\]', text, re.MULTILINE)
    assert re.search(r'^CMD \["services\.\w+"\]', text, re.MULTILINE)
    assert re.search(r"^USER (?!root\b|0\b)\S+", text, re.MULTILINE)


def test_postgres_init_creates_a_database_per_service() -> None:
    sql = (REPO_ROOT / "deploy" / "postgres-init.sql").read_text()
    for name in APP_SERVICES:
        assert re.search(rf"^CREATE DATABASE {name};", sql, re.MULTILINE | re.IGNORECASE)


@pytest.mark.parametrize("variable", sorted(REQUIRED))
def test_config_fails_without_each_secret(variable: str) -> None:
    missing = {key: value for key, value in REQUIRED.items() if key != variable}

    result = _compose("config", env=missing)

    assert result.returncode != 0
    assert f"set {variable}" in result.stderr, result.stderr
    empty = _compose("config", env={**REQUIRED, variable: ""})
    assert empty.returncode != 0, f"{variable} accepted empty"


def test_the_tokens_file_is_the_operators_secret_and_no_example_is_mounted() -> None:
    result = _compose("config")
    assert "tokens.example.json" not in result.stdout
    secrets = _blocks(_config(REQUIRED)["secrets"], 2)
    assert _items(secrets["e2c_tokens"]) == [f"file: {REQUIRED['E2C_TOKENS_FILE']}"]


def test_the_example_tokens_file_only_documents_the_format(tmp_path: Path) -> None:
    examples = json.loads((REPO_ROOT / "deploy" / "tokens.example.json").read_text())
    assert examples and all(isinstance(k, str) and isinstance(v, str) for k, v in examples.items())
    copy = tmp_path / "tokens.json"
    write_private(copy, json.dumps(examples))
    with pytest.raises(TokensFileError, match="example value"):
        load_tokens(copy)


def test_infra_secrets_come_from_the_operator(normalised: dict[str, list[str]]) -> None:
    redis = _blocks(normalised["redis"], 4)
    assert _environment(redis["environment"]) == {"REDISCLI_AUTH": REQUIRED["REDIS_PASSWORD"]}
    assert "--requirepass" in " ".join(redis["command"])
    postgres = _environment(_blocks(normalised["postgres"], 4)["environment"])
    assert postgres["POSTGRES_PASSWORD"] == REQUIRED["POSTGRES_PASSWORD"]
    assert postgres["POSTGRES_INITDB_ARGS"] == "--auth=scram-sha-256"
    for name in ("redis", "postgres"):
        assert "ports" not in _blocks(normalised[name], 4), f"{name} is published"


def test_every_image_is_pinned_and_every_service_restarts(
    normalised: dict[str, list[str]],
) -> None:
    for name in (*INFRA_SERVICES, *APP_SERVICES):
        keys = _blocks(normalised[name], 4)
        lines = [line.strip() for line in normalised[name]]
        assert "restart: unless-stopped" in lines, f"{name} does not restart"
        if name in INFRA_SERVICES:
            [image] = [line.removeprefix("image: ") for line in lines if line.startswith("image:")]
            assert re.fullmatch(PINNED_IMAGES[name], image), f"{name}: {image}"
        else:
            assert "build" in keys


def test_kafka_keeps_its_log_on_a_volume_and_has_a_loopback_external_listener() -> None:
    config = _config({**REQUIRED, "E2C_PUBLISH_ADDRESS": "0.0.0.0", "E2C_KAFKA_PORT": "19092"})
    services = _blocks(config["services"], 2)
    kafka = _blocks(services["kafka"], 4)
    env = _environment(kafka["environment"])

    assert _items(kafka["volumes"]) == ["kafka-data:/var/lib/kafka/data:rw"]
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "kafka-data: {}" in _items(config["volumes"])
    assert "EXTERNAL://:9094" in env["KAFKA_LISTENERS"].split(",")
    assert "EXTERNAL://localhost:19092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "EXTERNAL:PLAINTEXT" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    # Kafka has no authentication: loopback only, even when the services are published wider.
    assert _items(kafka["ports"]) == ["127.0.0.1:19092:9094/tcp"]
    # the producers' limit (`config` quotes a string that looks like a number)
    assert env["KAFKA_MESSAGE_MAX_BYTES"].strip("'") == str(MAX_MESSAGE_BYTES)
    referrals = _blocks(services["referrals"], 4)
    assert _items(referrals["ports"]) == ["0.0.0.0:8001:8001/tcp"]
