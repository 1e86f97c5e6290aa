"""The local stack: Kafka, Redis and the three services as background processes."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from deploy.local_kafka import LocalKafka, broker_answers
from deploy.local_redis import LocalRedis, ensure_installed, redis_answers
from deploy.processes import DetachedProcess, command_contains, spawn
from shared.http import create_tokens_file
from shared.settings import PROJECT_ROOT, SERVICE_PORTS, Settings

SERVICES = tuple(SERVICE_PORTS)
SERVICE_STOP_TIMEOUT = 20.0
Say = Callable[[str], None]


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
        self.kafka = LocalKafka(
            self.data_dir, self.settings.kafka_port, self.settings.kafka_controller_port
        )
        self.redis = LocalRedis(self.data_dir, _port_of(self.settings.redis_url, 6379))

    # --- up -------------------------------------------------------------------------------

    def up(self, echo: bool = True) -> None:
        say: Say = print if echo else _quiet
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = self._ensure_kafka(say)
        redis_url = self._ensure_redis(say)
        tokens = self._ensure_tokens(say)
        for name in SERVICES:
            self._start_service(name, bootstrap, redis_url, tokens)
        for name in SERVICES:
            self._wait_ready(name)
            say(f"{name:<10} ready on http://127.0.0.1:{self.settings.port(name)}")

    def _ensure_kafka(self, say: Say) -> str:
        configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if configured and broker_answers(configured):
            say(f"kafka      using {configured}")
            return configured
        started = time.monotonic()
        self.kafka.start()
        say(f"kafka      ready on {self.kafka.bootstrap} ({time.monotonic() - started:.1f}s)")
        return self.kafka.bootstrap

    def _ensure_redis(self, say: Say) -> str:
        if redis_answers(self.settings.redis_url):
            say(f"redis      using {self.settings.redis_url}")
            return self.settings.redis_url
        ensure_installed()
        self.redis.start()
        say(f"redis      ready on {self.redis.url}")
        return self.redis.url

    def _ensure_tokens(self, say: Say) -> Path:
        if self.settings.tokens_file is not None:
            return self.settings.tokens_file
        path = self.data_dir / "tokens.json"
        if not path.exists():
            create_tokens_file(path)
            say(f"tokens     created {path} with a random admin token")
        else:
            say(f"tokens     {path}")
        return path

    def _start_service(self, name: str, bootstrap: str, redis_url: str, tokens: Path) -> None:
        service = self._service(name)
        if service.is_running():
            return
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "REDIS_URL": redis_url,
            "E2C_DATA_DIR": str(self.data_dir),
            "E2C_TOKENS_FILE": str(tokens),
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", f"services.{name}"]
        spawn(command, PROJECT_ROOT, self.log_dir / f"{name}.log", service.pid_file, env)

    def _wait_ready(self, name: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._service(name).is_running():
                raise RuntimeError(f"{name} exited; see {self.log_dir / f'{name}.log'}")
            if self._health(name) == "ready":
                return
            time.sleep(0.3)
        raise TimeoutError(f"{name} not ready after {timeout}s; see {self.log_dir}")

    # --- down -----------------------------------------------------------------------------

    def down(self, purge: bool = False, echo: bool = True) -> None:
        say: Say = print if echo else _quiet
        for name in SERVICES:
            service = self._service(name)
            running = service.is_running()
            service.stop(SERVICE_STOP_TIMEOUT)  # also clears a stale pid file
            if running:
                say(f"{name:<10} stopped")
        if self.redis.is_running():
            self.redis.stop()
            say("redis      stopped")
        if self.kafka.is_running():
            self.kafka.stop()
            say("kafka      stopped")
        if purge:
            self.kafka.purge()
            for folder in ("stores", "redis", "logs", "run", "demo"):
                shutil.rmtree(self.data_dir / folder, ignore_errors=True)
            say(f"purged     broker log and stores under {self.data_dir}")

    # --- status ---------------------------------------------------------------------------

    def status(self) -> list[PartStatus]:
        parts = [
            PartStatus(
                "kafka",
                self.kafka.pid,
                self.kafka.port,
                "up" if broker_answers(self.kafka.bootstrap, 3000) else "down",
            ),
            PartStatus(
                "redis",
                self.redis.pid,
                self.redis.port,
                "up" if redis_answers(self.settings.redis_url) else "down",
            ),
        ]
        for name in SERVICES:
            parts.append(
                PartStatus(
                    name, self._service(name).pid, self.settings.port(name), self._health(name)
                )
            )
        return parts

    def status_dicts(self) -> list[dict[str, object]]:
        return [asdict(part) for part in self.status()]

    # --- helpers --------------------------------------------------------------------------

    def _service(self, name: str) -> DetachedProcess:
        marker = f"services.{name}"
        return DetachedProcess(
            self.run_dir / f"{name}.pid", lambda pid: command_contains(pid, marker)
        )

    def _health(self, name: str) -> str:
        try:
            response = httpx.get(
                f"http://127.0.0.1:{self.settings.port(name)}/health/ready", timeout=3
            )
        except httpx.HTTPError:
            return "down"
        return "ready" if response.status_code == 200 else "degraded"


def _quiet(_text: str) -> None:
    return None


def _port_of(url: str, default: int) -> int:
    from urllib.parse import urlparse

    return urlparse(url).port or default
