"""A local redis-server (Debian package), started detached with its state under the data folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import redis

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def ensure_installed() -> str:
    """The path of redis-server, installed with apt-get when missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        _apt_install("redis-server")
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


class LocalRedis:
    """A throwaway Redis (no persistence) with its pid and log files under `<data_dir>/redis`."""

    def __init__(self, data_dir: Path, port: int = 6379) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.home = self.data_dir / "redis"
        self.pid_file = self.home / "redis.pid"
        self.log_file = self.home / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.pid
        return pid is not None and _is_redis_process(pid)

    def start(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        process = None
        if not self.is_running():
            if redis_answers(self.url):
                raise RuntimeError(f"{self.url} is served by a Redis not started here")
            process = self._launch(ensure_installed())
        self._wait_ready(deadline, process)

    def stop(self, timeout: float = 10) -> None:
        pid = self.pid
        if pid is not None and _is_redis_process(pid):
            _terminate(pid, timeout)
        self.pid_file.unlink(missing_ok=True)

    def _launch(self, binary: str) -> subprocess.Popen[bytes]:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        return process

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.home),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip

    def _wait_ready(self, deadline: float, process: subprocess.Popen[bytes] | None) -> None:
        while time.monotonic() < deadline:
            # Right after exec, /proc/<pid>/cmdline can still be empty: trust our own child first.
            alive = process.poll() is None if process is not None else self.is_running()
            if not alive:
                self.pid_file.unlink(missing_ok=True)
                raise RuntimeError(f"redis-server exited during start-up:\n{self._log_tail()}")
            if redis_answers(self.url):
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"Redis did not answer on {self.url} in time:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _apt_install(package: str) -> None:
    env = {**os.environ, **APT_ENV}
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    commands = [
        ["apt-get", "-qq", *lock_wait, "update"],
        ["apt-get", "-qq", "-y", *lock_wait, "install", "--no-install-recommends", package],
    ]
    for command in commands:
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def _is_redis_process(pid: int) -> bool:
    _reap(pid)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    program = raw.split(b"\0", 1)[0].split(b" ", 1)[0]
    return Path(program.decode(errors="replace")).name == "redis-server"


def _reap(pid: int) -> None:
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _process_exists(pid: int) -> bool:
    """True until every thread of the process has exited (zombies count as exited)."""
    _reap(pid)
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    return any(_task_state(task) not in ("", "Z", "X") for task in tasks)


def _task_state(task_dir: Path) -> str:
    try:
        stat = (task_dir / "stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


def _terminate(pid: int, timeout: float) -> None:
    for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while _process_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _process_exists(pid):
            break
    _reap(pid)
