"""The local stack: Kafka, Redis, the three services and the console as background
processes.

With `up(postgres=True)` a local PostgreSQL (port 5433, or E2C_POSTGRES_PORT) joins it and
holds the services' stores, one database each; `run/postgres.port` records that it is part
of the stack until `down`.

With `up(brokers=3)` Kafka is a cluster of three KRaft nodes (client ports E2C_KAFKA_PORT,
+2, +4; controllers on the next port of each), and with `up(instances=N)` each service runs
N instances (`<name>-2`... on its port +100, +200...) sharing its PostgreSQL store.
`run/brokers` and `run/instances` record both until `down`. The default stays one broker
and one instance of each service.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from deploy import kafka_security
from deploy.local_kafka import LocalBrokers, LocalKafka, LocalKafkaCluster, broker_answers
from deploy.local_postgres import LocalPostgres
from deploy.local_redis import LocalRedis, ensure_installed, redis_answers
from deploy.processes import DetachedProcess, command_contains, spawn
from shared.http import create_tokens_file, load_tokens
from shared.kafka_access import KafkaAccess
from shared.logsafe import redact_url
from shared.private_files import private_dir
from shared.settings import PROJECT_ROOT, SERVICE_PORTS, Settings

SERVICES = tuple(SERVICE_PORTS)
CONSOLE = "console"
SERVICE_STOP_TIMEOUT = 20.0
POSTGRES_PORT = 5433
INSTANCE_PORT_STEP = 100  # instance k of a service listens on its port + 100 (k - 1)
Say = Callable[[str], None]


class StackError(Exception):
    """A request the stack refuses as it stands (the message says what to do)."""


@dataclass
class PartStatus:
    name: str
    pid: int | None
    port: int | None
    health: str
    detail: str = ""


class LocalStack:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.data_dir = self.settings.data_dir.resolve()
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "logs"
        self.brokers_marker = self.run_dir / "brokers"
        self.instances_marker = self.run_dir / "instances"
        self.brokers = _recorded_count(self.brokers_marker)
        self.instances = _recorded_count(self.instances_marker)
        self.kafka: LocalBrokers = self._kafka_of(self.brokers)
        self.redis = LocalRedis(self.data_dir, _port_of(self.settings.redis_url, 6379))
        self.postgres_marker = self.run_dir / "postgres.port"
        self.postgres = LocalPostgres(self.data_dir, self._postgres_port())

    # --- up -------------------------------------------------------------------------------

    def up(
        self, echo: bool = True, postgres: bool = False, brokers: int | None = None,
        instances: int | None = None,
    ) -> None:
        """Start what is not running; with `postgres` (or when it already is part of the
        stack) the services keep their stores in the stack's PostgreSQL. `brokers` and
        `instances` (default: what the running stack has, else one) size Kafka and each
        service; several instances need PostgreSQL (StackError otherwise)."""
        say: Say = print if echo else _quiet
        self._size(brokers, instances, postgres)
        self._make_folders()
        tokens = self._ensure_tokens(say)  # first: a tokens file the services refuse stops here
        self._record_size()
        self._ensure_kafka(say)
        redis_url = self._ensure_redis(say)
        database_urls: dict[str, str] = {}
        if postgres or self.uses_postgres():
            database_urls = self._ensure_postgres(say)
        children = {
            (name, k): self._start_service(name, redis_url, tokens, database_urls.get(name), k)
            for name in SERVICES for k in range(1, self.instances + 1)
        }
        for (name, k), child in children.items():
            self._wait_ready(name, child, instance=k)
            say(f"{instance_label(name, k):<10} ready on "
                f"http://127.0.0.1:{self.instance_port(name, k)}")
        self._wait_console(self._start_console())
        say(f"console    ready on {self.console_url()}")

    def _size(self, brokers: int | None, instances: int | None, postgres: bool) -> None:
        """Checks and takes the wanted size; a running stack keeps its number of brokers."""
        if brokers is not None and brokers != self.brokers:
            if self.kafka.is_running():
                raise StackError(f"the stack runs {self.brokers} broker(s): `e2c stack down` "
                                 f"first to start {brokers}")
            if brokers < 1:
                raise StackError("--brokers: 1 or more")
            self.brokers = brokers
            self.kafka = self._kafka_of(brokers)
        if instances is not None:
            if instances < 1:
                raise StackError("--instances: 1 or more")
            self.instances = instances
        if self.instances > 1 and not (postgres or self.uses_postgres()
                                       or self._every_store_given_on_postgresql()):
            raise StackError(
                f"{self.instances} instances of a service share its store: that needs "
                "PostgreSQL (`--postgres`, or every *_DATABASE_URL on PostgreSQL), not SQLite")

    def _every_store_given_on_postgresql(self) -> bool:
        urls = [getattr(self.settings, f"{name}_database_url") or "" for name in SERVICES]
        return all(url.startswith("postgresql") for url in urls)

    def _record_size(self) -> None:
        for marker, count in ((self.brokers_marker, self.brokers),
                              (self.instances_marker, self.instances)):
            if count > 1:
                marker.write_text(f"{count}\n")
            else:
                marker.unlink(missing_ok=True)

    def _kafka_of(self, brokers: int) -> LocalBrokers:
        if brokers == 1:
            return LocalKafka(
                self.data_dir, self.settings.kafka_port, self.settings.kafka_controller_port,
                erasure_max_days=self.settings.erasure_max_days,
            )
        return LocalKafkaCluster(self.data_dir, brokers, self.settings.kafka_port,
                                 erasure_max_days=self.settings.erasure_max_days)

    def instance_port(self, name: str, instance: int = 1) -> int:
        return self.settings.port(name) + INSTANCE_PORT_STEP * (instance - 1)

    def _ensure_kafka(self, say: Say) -> None:
        """The stack's broker, with every role's user and ACLs and every topic (SASL/SCRAM
        only: the credentials are made at its first start, `e2c stack client-config`)."""
        started = time.monotonic()
        self.kafka.start()
        kafka_security.provision(self.kafka, self.settings.topic_partitions)
        nodes = "" if self.brokers == 1 else (
            f", {self.brokers} nodes, topics with {self.kafka.replication_factor} replicas")
        say(f"kafka      ready on {self.kafka.bootstrap} ({time.monotonic() - started:.1f}s), "
            f"SASL/SCRAM-SHA-512 with ACLs{nodes}")

    def access(self, principal: str) -> KafkaAccess:
        """How a role connects to the stack's broker (`e2c stack client-config`)."""
        return kafka_security.access(self.kafka, principal)

    def _ensure_redis(self, say: Say) -> str:
        """REDIS_URL when a Redis answers there (and the stack's own is not running), else the
        stack's Redis, with its password. Messages never show a password."""
        if not self.redis.is_running() and redis_answers(self.settings.redis_url):
            say(f"redis      using {redact_url(self.settings.redis_url)}")
            return self.settings.redis_url
        ensure_installed()
        self.redis.start()
        say(f"redis      ready on {redact_url(self.redis.url)} "
            f"(password in {self.redis.password_file})")
        return self.redis.url

    def cache_url(self) -> str:
        """The Redis the stack's services use: its own when it runs, else REDIS_URL."""
        return self.redis.url if self.redis.is_running() else self.settings.redis_url

    def _ensure_postgres(self, say: Say) -> dict[str, str]:
        """Start the stack's PostgreSQL with a database per service whose `*_DATABASE_URL` is
        not set; returns those services' URLs (the others keep the URL they were given)."""
        given = [name for name in SERVICES if getattr(self.settings, f"{name}_database_url")]
        for name in given:
            say(f"postgres   {name} keeps {_database_variable(name)} from the environment")
        wanted = [name for name in SERVICES if name not in given]
        if not wanted:
            return {}
        running = [name for name in wanted if self._service(name).is_running()]
        if running and not self.uses_postgres():
            say(
                f"postgres   {', '.join(running)} already running on their stores: "
                "`e2c stack down` first to move them"
            )
        self.postgres_marker.write_text(f"{self.postgres.port}\n")
        started = time.monotonic()
        self.postgres.start()
        for name in wanted:
            self.postgres.create_database(name)
        say(
            f"postgres   ready on 127.0.0.1:{self.postgres.port} "
            f"({time.monotonic() - started:.1f}s), databases {', '.join(wanted)}"
        )
        return {name: self.postgres.url(name) for name in wanted}

    def _make_folders(self) -> None:
        """The data folder and its run and log folders, owner-only (tightened if looser)."""
        for folder in (self.data_dir, self.run_dir, self.log_dir):
            private_dir(folder)

    def _ensure_tokens(self, say: Say) -> Path:
        """E2C_TOKENS_FILE, else var/tokens.json (created with a random admin token), checked
        as the services check it."""
        path = self.settings.tokens_file or self.data_dir / "tokens.json"
        if self.settings.tokens_file is None and not path.exists():
            create_tokens_file(path)
            say(f"tokens     created {path} with a random admin token")
        else:
            say(f"tokens     {path}")
        load_tokens(path)
        return path

    def _start_service(
        self, name: str, redis_url: str, tokens: Path, database_url: str | None,
        instance: int = 1,
    ) -> subprocess.Popen[bytes] | None:
        """Starts the service's instance unless it runs; returns the child it started."""
        label = instance_label(name, instance)
        service = self._service(name, instance)
        if service.is_running():
            return None
        own = self.access(name)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("E2C_KAFKA_")},
            "KAFKA_BOOTSTRAP_SERVERS": own.bootstrap,
            "E2C_KAFKA_USERNAME": own.username,
            "E2C_KAFKA_PASSWORD": own.password.get_secret_value(),
            "REDIS_URL": redis_url,
            "E2C_DATA_DIR": str(self.data_dir),
            "E2C_TOKENS_FILE": str(tokens),
            "PYTHONUNBUFFERED": "1",
        }
        if database_url is not None:
            env[_database_variable(name)] = database_url
        if instance > 1:
            env[f"{name.upper()}_PORT"] = str(self.instance_port(name, instance))
            env["E2C_INSTANCE_ID"] = label
        command = [sys.executable, "-m", f"services.{name}"]
        return spawn(command, PROJECT_ROOT, self.log_dir / f"{label}.log", service.pid_file,
                     env)

    def _start_console(self) -> subprocess.Popen[bytes] | None:
        """Starts the console unless it runs: it reads the services' HTTP APIs on their
        ports, with no store or tokens file of its own. Its one write, replaying a dead
        letter, goes to the broker as `e2c deadletters replay` does: with the ops principal."""
        console = self._console()
        if console.is_running():
            return None
        ops = self.access(kafka_security.OPS)
        env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith("E2C_KAFKA_") and not k.endswith("_DATABASE_URL")},
            "KAFKA_BOOTSTRAP_SERVERS": ops.bootstrap,
            "E2C_KAFKA_USERNAME": ops.username,
            "E2C_KAFKA_PASSWORD": ops.password.get_secret_value(),
            "E2C_DATA_DIR": str(self.data_dir),
            "CONSOLE_PORT": str(self.settings.console_port),
            **{f"{name.upper()}_PORT": str(self.settings.port(name)) for name in SERVICES},
            "PYTHONUNBUFFERED": "1",
        }
        return spawn([sys.executable, "-m", CONSOLE], PROJECT_ROOT,
                     self.log_dir / "console.log", console.pid_file, env)

    def _wait_console(self, child: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._console().alive(child):
                raise RuntimeError(f"the console exited; see {self.log_dir / 'console.log'}")
            if self._console_health() == "ready":
                return
            time.sleep(0.2)
        raise TimeoutError(f"the console not ready after {timeout}s; see {self.log_dir}")

    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.console_port}"

    def tokens_path(self) -> Path:
        """The tokens file the services read (a console user signs in with one of its tokens)."""
        return self.settings.tokens_file or self.data_dir / "tokens.json"

    def _console(self) -> DetachedProcess:
        return DetachedProcess(
            self.run_dir / "console.pid", lambda pid: command_contains(pid, f"-m {CONSOLE}")
        )

    def _console_health(self) -> str:
        try:
            response = httpx.get(f"{self.console_url()}/health", timeout=3)
        except httpx.HTTPError:
            return "down"
        return "ready" if response.status_code == 200 else "degraded"

    def _wait_ready(
        self, name: str, child: subprocess.Popen[bytes] | None = None, timeout: float = 90,
        instance: int = 1,
    ) -> None:
        label = instance_label(name, instance)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._service(name, instance).alive(child):
                raise RuntimeError(f"{label} exited; see {self.log_dir / f'{label}.log'}")
            if self._health(name, instance) == "ready":
                return
            time.sleep(0.3)
        raise TimeoutError(f"{label} not ready after {timeout}s; see {self.log_dir}")

    # --- down -----------------------------------------------------------------------------

    def down(self, purge: bool = False, echo: bool = True) -> None:
        say: Say = print if echo else _quiet
        console = self._console()
        if console.is_running():
            say("console    stopped")
        console.stop(SERVICE_STOP_TIMEOUT)  # also clears a stale pid file
        for name in SERVICES:
            for k in self._instances_found(name):
                service = self._service(name, k)
                running = service.is_running()
                service.stop(SERVICE_STOP_TIMEOUT)  # also clears a stale pid file
                if running:
                    say(f"{instance_label(name, k):<10} stopped")
        if self.redis.is_running():
            self.redis.stop()
            say("redis      stopped")
        if self.kafka.is_running():
            self.kafka.stop()
            say(f"kafka      stopped ({self.brokers} node{'s' if self.brokers > 1 else ''})")
        self.brokers_marker.unlink(missing_ok=True)
        self.instances_marker.unlink(missing_ok=True)
        # has_cluster() first: it creates nothing, where is_running() may (the postgres user).
        if self.postgres.has_cluster() and self.postgres.is_running():
            self.postgres.stop()
            say("postgres   stopped")
        self.postgres_marker.unlink(missing_ok=True)
        if purge:
            self.kafka.purge()
            for folder in (*self.data_dir.glob("kafka-*"), self.data_dir / "kafka"):
                shutil.rmtree(folder, ignore_errors=True)
            if self.postgres.has_cluster():
                say(f"postgres   cluster deleted ({self.postgres.purge()})")
            for folder in ("stores", "redis", "logs", "run", "demo"):
                shutil.rmtree(self.data_dir / folder, ignore_errors=True)
            say(f"purged     broker log and stores under {self.data_dir}")

    # --- status ---------------------------------------------------------------------------

    def status(self) -> list[PartStatus]:
        parts = [
            *self._kafka_status(),
            PartStatus(
                "redis",
                self.redis.pid,
                self.redis.port,
                "up" if redis_answers(self.cache_url()) else "down",
            ),
        ]
        if self.uses_postgres():
            parts.append(
                PartStatus(
                    "postgres",
                    self.postgres.pid,
                    self.postgres.port,
                    "up" if self.postgres.answers() else "down",
                )
            )
        for name in SERVICES:
            for k in range(1, max(self.instances, *self._instances_found(name)) + 1):
                parts.append(PartStatus(instance_label(name, k), self._service(name, k).pid,
                                        self.instance_port(name, k), self._health(name, k)))
        parts.append(PartStatus("console", self._console().pid, self.settings.console_port,
                                self._console_health()))
        return parts

    def status_dicts(self) -> list[dict[str, object]]:
        return [asdict(part) for part in self.status()]

    # --- one service ----------------------------------------------------------------------

    def service_running(self, name: str) -> bool:
        """Whether the stack runs this service (its pid file names a live process)."""
        return self._service(name).is_running()

    def service_health(self, name: str) -> str:
        """'ready', 'degraded' or 'down': whatever answers on the service's port."""
        return self._health(name)

    def stop_service(self, name: str) -> bool:
        """Stops one of the stack's services; returns whether it was running."""
        service = self._service(name)
        running = service.is_running()
        service.stop(SERVICE_STOP_TIMEOUT)  # also clears a stale pid file
        return running

    def start_service(self, name: str) -> None:
        """Starts one service as `up` would (same broker, cache, tokens and store) and waits
        until it is ready. Nothing happens if it already runs."""
        self._make_folders()
        database_url = None
        if self.uses_postgres() and not getattr(self.settings, f"{name}_database_url"):
            database_url = self.postgres.url(name)
        self._ensure_kafka(_quiet)
        child = self._start_service(
            name,
            self._ensure_redis(_quiet),
            self._ensure_tokens(_quiet),
            database_url,
        )
        self._wait_ready(name, child)

    def _kafka_status(self) -> list[PartStatus]:
        if isinstance(self.kafka, LocalKafka):
            return [PartStatus("kafka", self.kafka.pid, self.kafka.port,
                               "up" if self._kafka_answers() else "down")]
        return [PartStatus(f"kafka-{node.node_id}", node.pid, node.port,
                           "up" if self._node_answers(node) else "down")
                for node in self.kafka.nodes]

    def _kafka_answers(self) -> bool:
        return self.kafka.admin_password_file.exists() and broker_answers(
            self.kafka.admin_access(), 3000)

    def _node_answers(self, node: LocalKafka) -> bool:
        return node.admin_password_file.exists() and broker_answers(node.admin_access(), 3000)

    # --- helpers --------------------------------------------------------------------------

    def command_settings(self) -> Settings:
        """Settings for a command run beside the stack: the stores the stack's services use."""
        if not self.uses_postgres():
            return self.settings
        update = {
            f"{name}_database_url": self.postgres.url(name)
            for name in SERVICES
            if not getattr(self.settings, f"{name}_database_url")
        }
        return self.settings.model_copy(update=update)

    def uses_postgres(self) -> bool:
        """Whether PostgreSQL is part of the running stack (started by `up --postgres`)."""
        return self.postgres_marker.exists()

    def _postgres_port(self) -> int:
        """The port recorded by `up --postgres`, else E2C_POSTGRES_PORT, else 5433."""
        for text in (_read_text(self.postgres_marker), os.environ.get("E2C_POSTGRES_PORT")):
            if text and text.strip().isdigit():
                return int(text)
        return POSTGRES_PORT

    def _service(self, name: str, instance: int = 1) -> DetachedProcess:
        marker = f"services.{name}"
        return DetachedProcess(
            self.run_dir / f"{instance_label(name, instance)}.pid",
            lambda pid: command_contains(pid, marker),
        )

    def _instances_found(self, name: str) -> list[int]:
        """Instance 1 and every other one with a pid file (running or stale)."""
        others = [path.stem.removeprefix(f"{name}-")
                  for path in self.run_dir.glob(f"{name}-*.pid")]
        return [1, *sorted(int(k) for k in others if k.isdigit())]

    def _health(self, name: str, instance: int = 1) -> str:
        try:
            response = httpx.get(
                f"http://127.0.0.1:{self.instance_port(name, instance)}/health/ready",
                timeout=3,
            )
        except httpx.HTTPError:
            return "down"
        return "ready" if response.status_code == 200 else "degraded"


def _quiet(_text: str) -> None:
    return None


def instance_label(name: str, instance: int) -> str:
    """`referrals` for the first instance, `referrals-2` for the second (as the tests name
    them)."""
    return name if instance == 1 else f"{name}-{instance}"


def _recorded_count(marker: Path) -> int:
    text = _read_text(marker)
    return int(text) if text and text.strip().isdigit() and int(text) > 0 else 1


def _database_variable(service: str) -> str:
    return f"{service.upper()}_DATABASE_URL"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _port_of(url: str, default: int) -> int:
    from urllib.parse import urlparse

    return urlparse(url).port or default
