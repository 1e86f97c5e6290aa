"""A local redis-server (Debian package), started detached with its state under the data folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from deploy.processes import DetachedServer, apt_install, command_line, port_open, spawn, tail
from shared.private_files import private_dir, read_or_create_secret, write_private


def ensure_installed() -> str:
    """The path of redis-server, installed with apt-get when missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        apt_install("redis-server")
        binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is still missing after apt-get install")
    return binary


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class LocalRedis(DetachedServer):
    """A throwaway Redis (no persistence) with its pid and log files under `<data_dir>/redis`.

    It asks for a password, generated on first use and kept (0600) in `redis/password`, so a
    restart comes back with the same one; `url` carries it. The password reaches redis-server
    through an owner-only config file, never its command line.
    """

    name = "Redis"
    start_timeout = 30.0
    stop_timeout = 10.0
    ready_poll = 0.1

    def __init__(self, data_dir: Path, port: int = 6379) -> None:
        super().__init__(data_dir, "redis", port, _is_redis_process)
        self.log_file = self.home / "redis.log"
        self.password_file = self.home / "password"
        self.config_file = self.home / "redis.conf"

    @property
    def password(self) -> str:
        return read_or_create_secret(self.password_file)

    @property
    def url(self) -> str:
        """The URL clients use, password included: keep it out of logs (`redact_url`)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        return redis_answers(self.url)

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_file, lines)

    def _launch(self) -> subprocess.Popen[bytes]:
        if port_open(self.port):
            raise RuntimeError(f"{self.address} is taken by a process not started here")
        binary = ensure_installed()
        private_dir(self.home)
        write_private(self.config_file, f"requirepass {self.password}\n")
        return spawn(self._command(binary), self.home, self.log_file, self.pid_file)

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            str(self.config_file),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.home),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip


def _is_redis_process(pid: int) -> bool:
    args = command_line(pid)
    # redis-server rewrites its title to "redis-server 127.0.0.1:<port>".
    program = args[0].split(" ", 1)[0] if args else ""
    return Path(program).name == "redis-server"
