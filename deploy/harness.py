"""Services run as processes, as in production: used by the tests, the benchmark and the
chaos run, each with its own broker, cache and stores."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deploy import kafka_security
from deploy.local_kafka import LocalBrokers, LocalKafka, LocalKafkaCluster
from deploy.local_postgres import LocalPostgres
from deploy.local_postgres import ensure_installed as ensure_postgres
from deploy.local_redis import LocalRedis
from deploy.local_redis import ensure_installed as ensure_redis
from shared.http import Role
from shared.kafka_access import KafkaAccess
from shared.private_files import new_secret, open_private_append, private_dir, write_private
from shared.settings import PROJECT_ROOT, Settings

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before by this process: the kernel may give
    the same free port to two calls in a row (neither is bound yet), and two parts of one
    stack then fight for it."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def free_port_range(count: int) -> int:
    """The first of `count` consecutive ports free now and never handed out before (a
    `LocalKafkaCluster` takes two per node from its first port)."""
    while True:
        first = free_port()
        wanted = range(first + 1, first + count)
        if all(port not in _HANDED_OUT and _bindable(port) for port in wanted):
            _HANDED_OUT.update(wanted)
            return first


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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

    def start(
        self,
        extra_env: dict[str, str] | None = None,
        timeout: float = 60,
        wait: str = "ready",
        crash_at: str | None = None,
    ) -> None:
        """Starts the process and waits for `/health/<wait>` ("ready", or "live" when the
        cache may be away) to answer 200. With `crash_at` (a point of `deploy.faults`) the
        service runs through `python -m deploy.faults` and dies there."""
        env = {**self.env, **(extra_env or {})}
        module = ["deploy.faults", self.name, crash_at] if crash_at else [f"services.{self.name}"]
        with open_private_append(self.log_path) as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *module],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
            )
        self.wait_ready(timeout, wait)

    def wait_ready(self, timeout: float, wait: str = "ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health/{wait}", timeout=2).status_code == 200:
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
class ServiceProcesses:
    """Service processes of the tests, the benchmark and the chaos run: children of the
    caller on free ports, against a broker and a cache they are given, stopped with it.

    Not `deploy.stack.LocalStack`, the operator's `e2c stack`: detached processes on the
    configured ports, found again through pid files, that starts its own Kafka and Redis."""

    kafka: LocalBrokers  # provisioned: its principals and topics exist
    redis_url: str
    data_dir: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    def access(self, principal: str) -> KafkaAccess:
        """How a role's client (a partner, staff, ops, a service) connects to this broker."""
        return kafka_security.access(self.kafka, principal)

    def service_env(self, name: str, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.endswith("_DATABASE_URL") and not k.startswith("E2C_KAFKA_")}
        own = self.access(name)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=own.bootstrap,
            E2C_KAFKA_USERNAME=own.username,
            E2C_KAFKA_PASSWORD=own.password.get_secret_value(),
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


class Environment:
    """A broker, a cache and (on demand) PostgreSQL of its own, on free ports under `data`
    (emptied first): for the benchmark and the chaos run."""

    def __init__(
        self, data: Path, erasure_max_days: float | None = None, brokers: int = 1
    ) -> None:
        shutil.rmtree(data, ignore_errors=True)
        self.data = private_dir(data)
        # The admin token of every stack made here (written to each one's tokens file).
        self.admin_token = new_secret()
        self.kafka: LocalBrokers = (
            LocalKafka(self.data, port=free_port(), controller_port=free_port(),
                       erasure_max_days=erasure_max_days)
            if brokers == 1
            else LocalKafkaCluster(self.data, brokers, free_port_range(2 * brokers),
                                   erasure_max_days=erasure_max_days)
        )
        ensure_redis()
        self.redis = LocalRedis(self.data, port=free_port())
        self.postgres: LocalPostgres | None = None

    def start(self) -> None:
        self.kafka.start()
        kafka_security.provision(self.kafka, Settings().topic_partitions)
        self.redis.start()

    def database(self, name: str) -> str:
        if self.postgres is None:
            ensure_postgres()
            self.postgres = LocalPostgres(self.data, port=free_port())
            self.postgres.start()
        self.postgres.create_database(name)
        return self.postgres.url(name)

    def stop(self) -> None:
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres.purge()
        self.redis.stop()
        self.kafka.stop()

    def stack(self, label: str) -> ServiceProcesses:
        folder = private_dir(self.data / label)
        write_private(folder / "tokens.json", json.dumps({self.admin_token: Role.ADMIN}) + "\n")
        return ServiceProcesses(self.kafka, self.redis.url, folder)
