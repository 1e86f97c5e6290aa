"""A local PostgreSQL cluster (Debian packages) run with pg_ctl, its files under the data folder.

PostgreSQL refuses to run as root: when we are root, initdb and pg_ctl run as the `postgres`
system user, which must be able to reach the cluster folder. When it cannot traverse the data
folder (pytest's /tmp/pytest-of-root and /root are mode 700), the cluster goes to
/tmp/e2c-postgres-<hash of the data folder> instead (the same data folder always maps to the
same cluster, whatever the port) rather than loosening permissions of folders we do not own;
`cluster_root` tells where it went and `purge()` removes it.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shlex
import shutil
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import psycopg
from psycopg import errors, sql

from deploy.processes import apt_install, port_open, read_pid, tail

SYSTEM_USER = "postgres"
PG_LIB = Path("/usr/lib/postgresql")
MAX_SOCKET_PATH = 100


def ensure_installed() -> Path:
    """The bin folder of the newest installed PostgreSQL, installed with apt-get when missing."""
    bin_dir = _find_bin_dir()
    if bin_dir is None:
        apt_install("postgresql")
        bin_dir = _find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("initdb/pg_ctl are still missing after apt-get install postgresql")
    return bin_dir


class LocalPostgres:
    """One PostgreSQL cluster with trust authentication, listening on 127.0.0.1 only."""

    def __init__(self, data_dir: Path, port: int = 5433) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self._root: Path | None = None

    @property
    def cluster_root(self) -> Path:
        if self._root is None:
            self._root = self._choose_root()
        return self._root

    @property
    def pgdata(self) -> Path:
        return self.cluster_root / "data"

    @property
    def log_file(self) -> Path:
        return self.cluster_root / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SYSTEM_USER}@127.0.0.1:{self.port}/{dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """The SQLAlchemy URL of a database (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SYSTEM_USER}@127.0.0.1:{self.port}/{dbname}"

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2) as connection:
                connection.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    @property
    def pid(self) -> int | None:
        """The postmaster's pid when the server runs, else None."""
        return read_pid(self.pgdata / "postmaster.pid") if self.is_running() else None

    def has_cluster(self) -> bool:
        """Whether this data folder has a cluster (looked up without creating users or folders)."""
        roots = (self._preferred_root(), self._fallback_root())
        return any((root / "data" / "PG_VERSION").exists() for root in roots)

    def is_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        return self._pg_ctl("status").returncode == 0

    def start(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        if not self.is_running():
            if port_open(self.port):
                raise RuntimeError(f"127.0.0.1:{self.port} is taken by a process not started here")
            self._prepare()
            self._launch(timeout)
        self._wait_ready(deadline)

    def stop(self, timeout: float = 60) -> None:
        if not self.is_running():
            return
        result = self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(timeout)))
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed:\n{result.stdout}{result.stderr}")

    def purge(self) -> None:
        """Stop the server and delete the cluster (all databases)."""
        self.stop()
        shutil.rmtree(self.cluster_root, ignore_errors=True)

    def create_database(self, name: str) -> None:
        """Create the database unless it exists (also when another client creates it meanwhile)."""
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as connection:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if connection.execute(query, (name,)).fetchone():
                return
            create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            with suppress(errors.DuplicateDatabase, errors.UniqueViolation):
                connection.execute(create)

    def _choose_root(self) -> Path:
        if os.geteuid() != 0 or _reachable_by_system_user(self.data_dir):
            return self._preferred_root()
        return self._fallback_root()

    def _preferred_root(self) -> Path:
        return self.data_dir / "postgres"

    def _fallback_root(self) -> Path:
        digest = hashlib.sha256(str(self._preferred_root()).encode()).hexdigest()[:10]
        return Path("/tmp") / f"e2c-postgres-{digest}"

    def _prepare(self) -> None:
        ensure_installed()
        self._make_root()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()

    def _make_root(self) -> None:
        for folder in (self.cluster_root, self._socket_dir()):
            folder.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                owner = _system_user()
                os.chown(folder, owner.pw_uid, owner.pw_gid)

    def _initdb(self) -> None:
        command = [
            str(ensure_installed() / "initdb"),
            "-D", str(self.pgdata),
            "-A", "trust",
            "-U", SYSTEM_USER,
            "--encoding=UTF8",
            f"--locale={_initdb_locale()}",
            "--no-sync",
        ]  # fmt: skip
        result = self._run_as_owner(command)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def _launch(self, timeout: float) -> None:
        options = shlex.join(self._server_options())
        result = self._pg_ctl(
            "start", "-w", "-t", str(int(timeout)), "-l", str(self.log_file), "-o", options
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n{self._log_tail()}"
            )

    def _server_options(self) -> list[str]:
        return [
            "-p", str(self.port),
            "-k", self._socket_option(),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip

    def _socket_dir(self) -> Path:
        return self.cluster_root / "run"

    def _socket_option(self) -> str:
        # Unix socket paths are limited to ~107 bytes; an empty value means TCP only.
        socket_path = self._socket_dir() / f".s.PGSQL.{self.port}"
        return str(self._socket_dir()) if len(str(socket_path)) <= MAX_SOCKET_PATH else ""

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.answers():
                return
            time.sleep(0.2)
        raise TimeoutError(f"PostgreSQL did not answer on port {self.port}:\n{self._log_tail()}")

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(ensure_installed() / "pg_ctl"), "-D", str(self.pgdata), *args]
        return self._run_as_owner(command)

    def _run_as_owner(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            _system_user()
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        # A cwd the postgres user can enter, and a session of its own so Ctrl-C spares the server.
        cwd = self.cluster_root if self.cluster_root.exists() else Path("/")
        return subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            start_new_session=True,
        )

    def _log_tail(self, lines: int = 30) -> str:
        return tail(self.log_file, lines)


def _find_bin_dir() -> Path | None:
    found = [
        path.parent for path in PG_LIB.glob("*/bin/pg_ctl") if path.with_name("initdb").exists()
    ]
    if found:
        return max(found, key=_major_version)
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl and shutil.which("initdb") else None


def _major_version(bin_dir: Path) -> int:
    name = bin_dir.parent.name
    return int(name) if name.isdigit() else 0


def _system_user() -> pwd.struct_passwd:
    """The `postgres` account, created as a system user when missing."""
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        command = [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SYSTEM_USER,
        ]
        subprocess.run(command, capture_output=True, text=True, check=True)
        return pwd.getpwnam(SYSTEM_USER)


def _reachable_by_system_user(folder: Path) -> bool:
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    _system_user()
    command = ["runuser", "-u", SYSTEM_USER, "--", "test", "-x", str(existing)]
    result = subprocess.run(command, cwd="/", capture_output=True, check=False)
    return result.returncode == 0


def _initdb_locale() -> str:
    return "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
