"""The docker-compose stack and the image: checked by `docker-compose config` (no engine needed).

Debian's `docker-compose` (1.29) parses, validates and normalises the file without a Docker
engine: an unknown service in `depends_on`, a bad key or a wrong type make it fail. CI installs
it (`apt-get install docker-compose`); a missing binary fails these tests rather than skipping.

Safe defaults: the secrets come from the operator (no default, `config` fails without them),
published ports are on loopback unless E2C_PUBLISH_ADDRESS (E2C_KAFKA_PUBLISH_ADDRESS for the
broker) says otherwise, images are pinned, Kafka's log is on a volume, every service restarts
unless stopped. The broker is checked against deploy/local_kafka.py: SASL on every listener
(SCRAM-SHA-512 for clients), ACLs with nothing allowed by default, no auto-created topics, its
admin's SCRAM user written at format time; `kafka-setup` makes the roles' users before any
service starts, and each service connects as its own role.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy import kafka_setup
from deploy.local_kafka import ADMIN_PRINCIPAL, security_settings, server_settings
from shared.http import TokensFileError, load_tokens
from shared.kafka import MAX_MESSAGE_BYTES
from shared.private_files import write_private
from shared.settings import PROJECT_ROOT, SERVICE_PORTS

REPO_ROOT = PROJECT_ROOT
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
INFRA_SERVICES = ("kafka", "redis", "postgres")
APP_SERVICES = tuple(SERVICE_PORTS)  # referrals, aids, outcomes
SETUP_SERVICE = "kafka-setup"  # one shot: the broker's users, ACLs and topics
CONSOLE_SERVICE = "console"  # pages over the services' HTTP APIs
# What the operator must give: no default exists for any of them.
REQUIRED = {
    "E2C_TOKENS_FILE": "/srv/e2c/tokens.json",
    "POSTGRES_PASSWORD": "pg-password-from-the-operator-0123456789",
    "REDIS_PASSWORD": "redis-password-from-the-operator-0123456789",
    "KAFKA_ADMIN_PASSWORD": "kafka-admin-password-from-the-operator-0123456789",
    **{f"KAFKA_{name.upper()}_PASSWORD": f"kafka-{name}-password-from-the-operator-0123456789"
       for name in APP_SERVICES},
}
# The other roles' passwords: unset (empty), that role has no user on the broker.
OPTIONAL_KAFKA_PASSWORDS = {
    f"KAFKA_{role.upper()}_PASSWORD": role for role in kafka_setup.OPTIONAL_ROLES
}
# What the apache/kafka image leaves out when it turns KAFKA_* into server properties.
IMAGE_EXCLUDED = {
    "KAFKA_VERSION", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS",
    "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_LOG4J_ROOT_LOGLEVEL",
    "KAFKA_LOG4J_LOGGERS", "KAFKA_TOOLS_LOG4J_LOGLEVEL", "KAFKA_JMX_HOSTNAME",
}
ADMIN_CLIENT_FILE = "/opt/kafka/config/e2c-admin.properties"
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
    """An `environment` block as a dict, its values unquoted (`config` folds a long value over
    several lines, the next ones indented deeper)."""
    entries: list[str] = []
    indent: int | None = None
    for line in lines:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth > indent and entries:
            entries[-1] += " " + line.strip()
        else:
            entries.append(line.strip())
    pairs = (entry.split(": ", 1) for entry in entries if ": " in entry)
    return {key: _scalar(value) for key, value in pairs}


def _scalar(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    return value


def _server_properties(env: dict[str, str]) -> dict[str, str]:
    """The server properties the apache/kafka image derives from KAFKA_* variables
    (kafka.docker.KafkaDockerWrapper): lower case, `_` -> `.`, `___` -> `-`, `__` -> `_`."""
    properties = {}
    for name, value in env.items():
        if name.startswith("KAFKA_") and name not in IMAGE_EXCLUDED:
            key = name.removeprefix("KAFKA_").lower().replace("_", ".")
            properties[key.replace("...", "-").replace("..", "_")] = value
    return properties


def _kafka_script() -> str:
    """The kafka service's start script as the container gets it (`$$` is compose's `$`)."""
    text = COMPOSE_FILE.read_text()
    block = r"^    command:\n      - bash\n      - -euc\n      - \|\n((?:        .*\n|\n)+)"
    match = re.search(block, text, re.MULTILINE)
    assert match, "the kafka service's command is no longer `bash -euc` with a literal block"
    script = "".join(line[8:] + "\n" for line in match.group(1).splitlines())
    # A single `$` would be interpolated by compose from the host's environment.
    assert "$" not in script.replace("$$", ""), "a `$` in the kafka script is not doubled"
    return script.replace("$$", "$")


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


def test_config_lists_the_eight_services() -> None:
    result = _compose("config", "--services")
    assert result.returncode == 0, f"docker-compose config --services failed:\n{result.stderr}"
    assert set(result.stdout.split()) == {*INFRA_SERVICES, SETUP_SERVICE, *APP_SERVICES,
                                          CONSOLE_SERVICE}


def test_the_console_reads_the_services_by_name_and_is_published_on_loopback(
    normalised: dict[str, list[str]],
) -> None:
    """The services' image, `python -m console`, each service's API by its compose name;
    no secret, store or broker of its own; started once the services are healthy."""
    keys = _blocks(normalised[CONSOLE_SERVICE], 4)
    assert "dockerfile: deploy/Dockerfile" in " ".join(line.strip() for line in keys["build"])
    assert [line.strip() for line in keys["command"]] == ["- console"]
    env = _environment(keys["environment"])
    assert {name: env[f"{name.upper()}_URL"] for name in SERVICE_PORTS} == {
        name: f"http://{name}:{port}" for name, port in SERVICE_PORTS.items()}
    assert (env["E2C_HOST"], env["CONSOLE_PORT"]) == ("0.0.0.0", "8000")
    assert env["E2C_CONSOLE_SECURE_COOKIE"] == "false"
    assert not [name for name in env if "KAFKA" in name or "DATABASE" in name
                or name in ("REDIS_URL", "E2C_TOKENS_FILE")]
    assert "secrets" not in keys and "volumes" not in keys
    assert _items(keys["ports"]) == ["127.0.0.1:8000:8000/tcp"]
    assert _conditions(normalised[CONSOLE_SERVICE]) == {
        name: ["condition: service_healthy"] for name in SERVICE_PORTS}
    assert "http://localhost:8000/health" in " ".join(keys["healthcheck"])
    assert "restart: unless-stopped" in [line.strip() for line in normalised[CONSOLE_SERVICE]]


def test_the_image_holds_the_console() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY console /src/console$", text, re.MULTILINE)
    assert re.search(r"^EXPOSE .*\b8000\b", text, re.MULTILINE)


def _conditions(service: list[str]) -> dict[str, list[str]]:
    depends_on = _blocks(service, 4).get("depends_on")
    assert depends_on is not None, "no depends_on"
    return {dep: [line.strip() for line in body]
            for dep, body in _blocks(depends_on, 6).items()}


def test_app_services_wait_for_healthy_infra_and_the_broker_setup(
    normalised: dict[str, list[str]],
) -> None:
    for name in APP_SERVICES:
        conditions = _conditions(normalised[name])
        assert set(conditions) == {*INFRA_SERVICES, SETUP_SERVICE}, (
            f"{name}: depends_on {sorted(conditions)}")
        for dep, body in conditions.items():
            wanted = ("service_completed_successfully" if dep == SETUP_SERVICE
                      else "service_healthy")
            assert body == [f"condition: {wanted}"], f"{name} -> {dep}: {body}"
    assert _conditions(normalised[SETUP_SERVICE]) == {"kafka": ["condition: service_healthy"]}


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
        # its own role on the broker, its own password (no default, see REQUIRED)
        assert env["E2C_KAFKA_USERNAME"] == name
        assert env["E2C_KAFKA_PASSWORD"] == REQUIRED[f"KAFKA_{name.upper()}_PASSWORD"]
        assert "E2C_KAFKA_SECURITY_PROTOCOL" not in env  # SASL_PLAINTEXT, Settings' default
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
    # the one-shot setup runs at each `up` and is done: restarting it would block nothing
    setup = [line.strip() for line in normalised[SETUP_SERVICE]]
    assert "restart: 'no'" in setup or 'restart: "no"' in setup, setup


def _kafka_env(env: dict[str, str] | None = None) -> dict[str, str]:
    services = _blocks(_config(REQUIRED if env is None else env)["services"], 2)
    return _environment(_blocks(services["kafka"], 4)["environment"])


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
    assert "EXTERNAL:SASL_PLAINTEXT" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    # No TLS on it: loopback unless E2C_KAFKA_PUBLISH_ADDRESS says otherwise, whatever the
    # services' E2C_PUBLISH_ADDRESS is.
    assert _items(kafka["ports"]) == ["127.0.0.1:19092:9094/tcp"]
    # the producers' limit (`config` quotes a string that looks like a number)
    assert env["KAFKA_MESSAGE_MAX_BYTES"] == str(MAX_MESSAGE_BYTES)
    referrals = _blocks(services["referrals"], 4)
    assert _items(referrals["ports"]) == ["0.0.0.0:8001:8001/tcp"]


def test_the_external_listener_is_published_and_advertised_as_the_operator_says() -> None:
    config = _config({**REQUIRED, "E2C_KAFKA_PUBLISH_ADDRESS": "192.0.2.10",
                      "E2C_KAFKA_ADVERTISED_HOST": "kafka.e2c.example", "E2C_KAFKA_PORT": "29092"})
    services = _blocks(config["services"], 2)
    kafka = _blocks(services["kafka"], 4)
    env = _environment(kafka["environment"])

    assert _items(kafka["ports"]) == ["192.0.2.10:29092:9094/tcp"]
    assert env["KAFKA_ADVERTISED_LISTENERS"].split(",") == [
        "CLIENTS://kafka:9092", "EXTERNAL://kafka.e2c.example:29092"]
    # what `kafka-setup partner-add` tells a partner
    setup = _environment(_blocks(services[SETUP_SERVICE], 4)["environment"])
    assert setup[kafka_setup.EXTERNAL_BOOTSTRAP] == "kafka.e2c.example:29092"


def test_kafka_takes_only_sasl_clients_with_acls_as_the_local_broker_does() -> None:
    env = _kafka_env()
    properties = _server_properties(env)
    password = REQUIRED["KAFKA_ADMIN_PASSWORD"]

    listeners = {item.split("://")[0] for item in properties["listeners"].split(",")}
    protocols = dict(item.split(":") for item in properties["listener.security.protocol.map"]
                     .split(","))
    assert listeners == {"CLIENTS", "CONTROLLER", "EXTERNAL"}
    assert protocols == dict.fromkeys(listeners, "SASL_PLAINTEXT"), protocols
    for listener in listeners:  # each SASL listener has its login settings
        name = listener.lower()
        mechanism = properties[f"listener.name.{name}.sasl.enabled.mechanisms"]
        assert f"listener.name.{name}.{mechanism.lower()}.sasl.jaas.config" in properties
    assert properties["listener.name.external.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    # The same security settings as deploy/local_kafka.py, the EXTERNAL listener besides.
    for key, value in security_settings(password).items():
        if key == "listener.security.protocol.map":
            assert set(str(value).split(",")) <= set(properties[key].split(","))
        else:
            assert properties[key] == str(value), key
    local = server_settings(9092, 9093, Path("/var/lib/kafka/data"), password)
    for key in ("auto.create.topics.enable", "message.max.bytes", "inter.broker.listener.name",
                "controller.listener.names"):
        assert properties[key] == str(local[key]), key
    assert properties["super.users"] == f"User:{ADMIN_PRINCIPAL}"
    # no anonymous path: no PLAINTEXT listener, nor any way to set one through KAFKA_OPTS
    assert "KAFKA_OPTS" not in env
    everything = _compose("config").stdout
    assert "PLAINTEXT://" not in everything and ":PLAINTEXT" not in everything


def test_the_image_mapping_in_the_start_script_is_the_images(tmp_path: Path) -> None:
    """The script formats the storage from the properties it derives itself: they must be the
    ones the image derives (from the same variables), else the format and the broker differ."""
    script = _kafka_script()
    loop = re.search(r"^for name in .*?^done", script, re.MULTILINE | re.DOTALL)
    assert loop, script
    env = {**_kafka_env(), "KAFKA_OPTS": "-Dnot.a.property=1", "KAFKA_HEAP_OPTS": "-Xmx1g"}
    result = subprocess.run(["bash", "-euc", loop.group(0)], env=env, capture_output=True,
                            text=True, check=True, timeout=30)
    derived = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert derived == _server_properties(env)
    assert "listener.name.clients.scram-sha-512.sasl.jaas.config" in derived


def test_the_admin_scram_user_is_written_at_format_and_the_healthcheck_authenticates(
    normalised: dict[str, list[str]],
) -> None:
    script = _kafka_script()
    env = _kafka_env()
    assert env["E2C_KAFKA_ADMIN_PASSWORD"] == REQUIRED["KAFKA_ADMIN_PASSWORD"]
    assert script.startswith("umask 077\n")  # the log and the admin's client file: 0600
    assert ('--add-scram "SCRAM-SHA-512=[name=admin,password=$E2C_KAFKA_ADMIN_PASSWORD]"'
            in script)
    assert "kafka-storage.sh format --ignore-formatted" in script
    assert script.rstrip().endswith("exec /etc/kafka/docker/run")
    # the healthcheck connects as the admin, with the client settings the script writes
    assert f"> {ADMIN_CLIENT_FILE}" in script
    for setting in ("security.protocol=SASL_PLAINTEXT", "sasl.mechanism=SCRAM-SHA-512",
                    "ScramLoginModule required username=\\\"admin\\\""):
        assert setting in script, setting
    healthcheck = " ".join(line.strip() for line in _blocks(normalised["kafka"], 4)["healthcheck"])
    assert f"--command-config {ADMIN_CLIENT_FILE}" in healthcheck


def test_the_setup_provisions_every_role_as_admin(normalised: dict[str, list[str]]) -> None:
    setup = _blocks(normalised[SETUP_SERVICE], 4)
    assert "build" in setup
    assert _items(setup["command"]) == ["deploy.kafka_setup", "provision"]
    env = _environment(setup["environment"])
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["E2C_KAFKA_USERNAME"] == ADMIN_PRINCIPAL
    assert env["E2C_KAFKA_PASSWORD"] == REQUIRED["KAFKA_ADMIN_PASSWORD"]
    # each role's variable as deploy/kafka_setup.py reads it; the optional ones empty
    roles = (*kafka_setup.REQUIRED_ROLES, *kafka_setup.OPTIONAL_ROLES)
    passwords = {key: value for key, value in env.items()
                 if key.startswith(kafka_setup.PASSWORD_PREFIX)}
    assert set(passwords) == {kafka_setup.password_variable(role) for role in roles}
    for name in APP_SERVICES:
        assert passwords[kafka_setup.password_variable(name)] == (
            REQUIRED[f"KAFKA_{name.upper()}_PASSWORD"])
    for role in kafka_setup.OPTIONAL_ROLES:
        assert passwords[kafka_setup.password_variable(role)] == ""
    # what the operator gives passes the setup's own checks
    given = kafka_setup.role_passwords(passwords)
    assert {role for role, value in given.items() if value} == set(APP_SERVICES)


def test_an_optional_role_gets_the_password_the_operator_sets() -> None:
    config = _config({**REQUIRED, "KAFKA_OPS_PASSWORD": "kafka-ops-password-0123456789abcdef"})
    setup = _environment(_blocks(_blocks(config["services"], 2)[SETUP_SERVICE], 4)["environment"])
    assert setup[kafka_setup.password_variable("ops")] == "kafka-ops-password-0123456789abcdef"


def test_no_secret_has_a_default() -> None:
    """Every password is required (`:?`), but those of the optional roles, which default to
    nothing (no such user); no variable anywhere defaults to a password."""
    text = COMPOSE_FILE.read_text()
    references = re.findall(r"\$\{(\w+)(?::?([?-]))?([^}]*)\}", text)
    passwords = [ref for ref in references if "PASSWORD" in ref[0] or "TOKENS" in ref[0]]
    assert {name for name, _, _ in passwords} == {*REQUIRED, *OPTIONAL_KAFKA_PASSWORDS}
    for name, kind, rest in passwords:
        if name in OPTIONAL_KAFKA_PASSWORDS:
            assert (kind, rest) == ("-", ""), f"{name} has a default"
        else:
            assert kind == "?" and rest.startswith(f"set {name}"), f"{name} is not required"
