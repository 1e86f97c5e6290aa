"""Process helpers shared by the local runners and the stack: pid files, /proc, signals, ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from shared.private_files import OWNER_ONLY_UMASK, open_private_append, write_private

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
POLL_SECONDS = 0.1
KILL_WAIT_SECONDS = 10.0


class DetachedProcess:
    """A process started in the background, found again through its pid file.

    `recognise` tells whether a pid is still that process: after a reboot or a crash the pid
    in the file may belong to another program.
    """

    def __init__(self, pid_file: Path, recognise: Callable[[int], bool]) -> None:
        self.pid_file = pid_file
        self.recognise = recognise

    @property
    def pid(self) -> int | None:
        """The pid when the process is running, else None."""
        pid = read_pid(self.pid_file)
        return pid if pid is not None and self.recognise(pid) else None

    def is_running(self) -> bool:
        return self.pid is not None

    def alive(self, child: subprocess.Popen[bytes] | None = None) -> bool:
        """Like `is_running`, asking our own child first when we just started it."""
        # Right after exec, /proc/<pid>/cmdline can still be empty.
        return child.poll() is None if child is not None else self.is_running()

    def stop(self, timeout: float = 10) -> None:
        pid = self.pid
        if pid is not None:
            terminate(pid, timeout)
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown hook runs. Returns once it is gone."""
        pid = self.pid
        if pid is not None:
            send_signal(pid, signal.SIGKILL)
            wait_gone(pid, KILL_WAIT_SECONDS)
            reap(pid)
        self.pid_file.unlink(missing_ok=True)


class DetachedServer(DetachedProcess, ABC):
    """A server we launch detached, then wait for until it answers on its port.

    Its files (pid file `<folder>.pid` included) live under `<data_dir>/<folder>`.
    """

    name = "server"
    start_timeout = 30.0
    stop_timeout = 10.0
    ready_poll = 0.2

    def __init__(
        self, data_dir: Path, folder: str, port: int, recognise: Callable[[int], bool]
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.home = self.data_dir / folder
        super().__init__(self.home / f"{folder}.pid", recognise)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @abstractmethod
    def answers(self) -> bool:
        """True when the server serves requests."""

    @abstractmethod
    def _launch(self) -> subprocess.Popen[bytes]:
        """Check what is needed, then spawn the server (writing the pid file)."""

    def log_tail(self, lines: int = 20) -> str:
        return ""

    def start(self, timeout: float | None = None) -> None:
        """Launch it unless it runs, then wait until it answers (stopping it if it never does)."""
        self.wait_answering(self.launch(), timeout)

    def launch(self) -> subprocess.Popen[bytes] | None:
        """Spawn it unless it runs, without waiting: the child, or None if it was running."""
        return None if self.is_running() else self._launch()

    def wait_answering(
        self, child: subprocess.Popen[bytes] | None, timeout: float | None = None
    ) -> None:
        """Wait until it answers (stopping it if it never does)."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            if not self.alive(child):
                self.pid_file.unlink(missing_ok=True)
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            if self.answers():
                return
            time.sleep(self.ready_poll)
        log = self.log_tail()
        self.stop()
        raise TimeoutError(f"{self.name} did not answer on {self.address} in time:\n{log}")

    def stop(self, timeout: float | None = None) -> None:
        super().stop(self.stop_timeout if timeout is None else timeout)


def read_pid(pid_file: Path) -> int | None:
    """The pid on the first line of a pid file; None when it is missing or not a number."""
    try:
        return int(pid_file.read_text().partition("\n")[0].strip())
    except (OSError, ValueError):
        return None


def command_line(pid: int) -> list[str]:
    """The process's arguments; empty for a dead process or a zombie."""
    reap(pid)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def command_contains(pid: int, marker: str) -> bool:
    """True when the live process's command line (arguments joined by spaces) holds `marker`."""
    return marker in " ".join(command_line(pid))


def reap(pid: int) -> None:
    """Collect the exit status when the process is our child, so it does not linger as a zombie."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def process_exists(pid: int) -> bool:
    """True until every thread of the process has exited (zombies count as exited)."""
    reap(pid)
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    return any(task_state(task) not in ("", "Z", "X") for task in tasks)


def task_state(task_dir: Path) -> str:
    """The state letter of one thread (`R`, `S`, `Z`...); empty when it is gone."""
    try:
        stat = (task_dir / "stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL when the process outlives `timeout` seconds."""
    send_signal(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        send_signal(pid, signal.SIGKILL)
        wait_gone(pid, KILL_WAIT_SECONDS)
    reap(pid)


def send_signal(pid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signum)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until the process has exited; False when it is still there after `timeout`."""
    deadline = time.monotonic() + timeout
    while process_exists(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def spawn(
    command: list[str],
    cwd: Path,
    log_file: Path,
    pid_file: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `command` in a session of its own (Ctrl-C spares it), output appended to a log.

    The process creates its files owner-only (umask 077): the broker's log, Redis's files.
    """
    with open_private_append(log_file) as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            umask=OWNER_ONLY_UMASK,
        )
    write_private(pid_file, str(process.pid))
    return process


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a text file; empty when it cannot be read."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(content[-lines:])


def apt_install(package: str) -> None:
    """`apt-get update` then install one Debian package, waiting for the dpkg lock."""
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
