"""The docker-compose stack and the image: checked by `docker-compose config` (no engine needed).

Debian's `docker-compose` (1.29) parses, validates and normalises the file without a Docker
engine: an unknown service in `depends_on`, a bad key or a wrong type make it fail. CI installs
it (`apt-get install docker-compose`); a missing binary fails these tests rather than skipping.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.settings import SERVICE_PORTS

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
INFRA_SERVICES = ("kafka", "redis", "postgres")
APP_SERVICES = tuple(SERVICE_PORTS)  # referrals, aids, outcomes


def _compose(*args: str, compose_file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose not found on PATH: install it (Debian: apt-get install docker-compose)"
            " so that docker-compose.yml is validated"
        )
    return subprocess.run(
        [binary, "-f", str(compose_file), *args],
        cwd=compose_file.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


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
    result = _compose("config")
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    lines = result.stdout.splitlines()
    top = _blocks(lines, 0)
    assert "services" in top, result.stdout
    return _blocks(top["services"], 2)


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
        env = dict(line.strip().split(": ", 1) for line in keys["environment"] if ": " in line)
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["REDIS_URL"].startswith("redis://redis:6379/")
        assert env["E2C_TOKENS_FILE"] == "/run/e2c/tokens.json"
        assert "E2C_DATA_DIR" in env
        assert re.fullmatch(
            rf"postgresql\+psycopg://postgres:[^@]+@postgres:5432/{name}",
            env[f"{name.upper()}_DATABASE_URL"],
        )
        ports = " ".join(line.strip() for line in keys["ports"])
        assert f"published: {port}" in ports and f"target: {port}" in ports
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
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["python", "-m"\]', text, re.MULTILINE)
    assert re.search(r'^CMD \["services\.\w+"\]', text, re.MULTILINE)
    assert re.search(r"^USER (?!root\b|0\b)\S+", text, re.MULTILINE)


def test_mounted_files_exist_and_are_sane() -> None:
    tokens = json.loads((REPO_ROOT / "deploy" / "tokens.example.json").read_text())
    assert tokens and all(isinstance(k, str) and isinstance(v, str) for k, v in tokens.items())
    sql = (REPO_ROOT / "deploy" / "postgres-init.sql").read_text()
    for name in APP_SERVICES:
        assert re.search(rf"^CREATE DATABASE {name};", sql, re.MULTILINE | re.IGNORECASE)
