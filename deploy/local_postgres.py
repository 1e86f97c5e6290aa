"""A local PostgreSQL cluster (Debian packages) run with pg_ctl, its files under the data folder.

Durable by default (fsync, synchronous commits, full-page writes: PostgreSQL's own defaults);
`unsafe_fast_for_tests=True` turns them off, for the test suite's throwaway databases only.
Connections need the password of the `postgres` user (scram-sha-256, over TCP and the socket
alike), generated at `initdb` and kept 0600 in `<data_dir>/postgres.password`; `dsn()` and
`url()` carry it.

PostgreSQL refuses to run as root: when we are root, initdb and pg_ctl run as the `postgres`
system user, which cannot enter our owner-only data folder. The cluster then lives in a
private folder of that user made by `tempfile.mkdtemp` (random name, mode 0700), whose path is
recorded in `<data_dir>/postgres.location` (0600) so that the same data folder finds its
cluster again; `cluster_root` tells where it is and `purge()` removes it with the record.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import psycopg
from psycopg import errors, sql

from deploy.processes import apt_install, port_open, read_pid, tail
from shared.private_files import (
    OWNER_ONLY_UMASK,
    private_dir,
    read_or_create_secret,
    read_secret,
    write_private,
)

SYSTEM_USER = "postgres"
PG_LIB = Path("/usr/lib/postgresql")
MAX_SOCKET_PATH = 100
# Durability traded for speed: for the test suite's throwaway databases, never for data.
UNSAFE_FAST_OPTIONS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class ClusterNeedsPurge(RuntimeError):
    """The data folder's cluster cannot be used as it is (made with trust authentication by
    an older version, or its password file is gone): `purge()` it and start again."""


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
    """One PostgreSQL cluster with password authentication, listening on 127.0.0.1 only."""

    def __init__(
        self, data_dir: Path, port: int = 5433, *, unsafe_fast_for_tests: bool = False
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.unsafe_fast_for_tests = unsafe_fast_for_tests
        self.password_file = self.data_dir / "postgres.password"
        self.location_file = self.data_dir / "postgres.location"
        self._root: Path | None = None

    @property
    def cluster_root(self) -> Path:
        """The cluster's folder. When we are root and have none yet, `start()` makes one."""
        root = self._root or self._existing_root()
        if root is None:
            raise RuntimeError(f"no PostgreSQL cluster for {self.data_dir} yet: start() makes it")
        return root

    @property
    def pgdata(self) -> Path:
        return self.cluster_root / "data"

    @property
    def log_file(self) -> Path:
        return self.cluster_root / "postgres.log"

    @property
    def password(self) -> str:
        return read_secret(self.password_file)

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL, password included: keep it out of logs."""
        return f"postgresql://{SYSTEM_USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """The SQLAlchemy URL of a database (psycopg 3 driver), password included."""
        return f"postgresql+psycopg://{SYSTEM_USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2) as connection:
                connection.execute("SELECT 1")
        except (psycopg.Error, OSError, ValueError):
            return False
        return True

    @property
    def pid(self) -> int | None:
        """The postmaster's pid when the server runs, else None."""
        return read_pid(self.pgdata / "postmaster.pid") if self.is_running() else None

    def has_cluster(self) -> bool:
        """Whether this data folder has a cluster (looked up without creating anything)."""
        root = self._existing_root()
        return root is not None and (root / "data" / "PG_VERSION").exists()

    def is_running(self) -> bool:
        if not self.has_cluster():
            return False
        return self._pg_ctl("status").returncode == 0

    def start(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        if self.has_cluster():
            self._check_password_auth()
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

    def purge(self) -> Path | None:
        """Stop the server and delete the cluster (all databases), its password and the
        record of its location; returns the folder deleted, if any."""
        self.stop()
        root = self.data_dir / "postgres" if os.geteuid() != 0 else self._recorded_root()
        if root is not None and (os.geteuid() != 0 or _is_private_to_system_user(root)):
            shutil.rmtree(root, ignore_errors=True)
        self.password_file.unlink(missing_ok=True)
        self.location_file.unlink(missing_ok=True)
        self._root = None
        return root

    def create_database(self, name: str) -> None:
        """Create the database unless it exists (also when another client creates it meanwhile)."""
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as connection:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if connection.execute(query, (name,)).fetchone():
                return
            create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            with suppress(errors.DuplicateDatabase, errors.UniqueViolation):
                connection.execute(create)

    # --- where the cluster lives -----------------------------------------------------------

    def _existing_root(self) -> Path | None:
        """The cluster's folder if this data folder has one chosen, without creating it."""
        if os.geteuid() != 0:
            return self.data_dir / "postgres"
        root = self._recorded_root()
        if root is not None and not _is_private_to_system_user(root):
            raise RuntimeError(
                f"{root} (recorded in {self.location_file}) is not a private folder of the "
                f"{SYSTEM_USER} user: delete {self.location_file} to start a new cluster"
            )
        return root

    def _recorded_root(self) -> Path | None:
        """The folder named in the location file, if it still exists (a reboot may clear
        temporary folders: a new one is then made)."""
        try:
            recorded = self.location_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        root = Path(recorded) if recorded else None
        return root if root is not None and root.exists() else None

    def _new_private_root(self) -> Path:
        """A fresh 0700 folder of the postgres user with an unguessable name, recorded."""
        owner = _system_user()
        root = Path(tempfile.mkdtemp(prefix="e2c-postgres-"))
        os.chown(root, owner.pw_uid, owner.pw_gid)
        private_dir(self.data_dir)
        write_private(self.location_file, f"{root}\n")
        return root

    # --- creating and running it -----------------------------------------------------------

    def _prepare(self) -> None:
        ensure_installed()
        self._make_root()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()

    def _make_root(self) -> None:
        self._root = self._existing_root() or self._new_private_root()
        for folder in (self._root, self._socket_dir()):
            private_dir(folder)
            if os.geteuid() == 0:
                owner = _system_user()
                os.chown(folder, owner.pw_uid, owner.pw_gid)

    def _check_password_auth(self) -> None:
        """Refuse a cluster made with trust authentication, or whose password is lost."""
        if not self.password_file.exists():
            raise ClusterNeedsPurge(
                f"the PostgreSQL cluster in {self.cluster_root} has no password file "
                f"({self.password_file}): it was made with trust authentication by an older "
                "version, or the file was deleted. Purge it (`e2c stack down --purge`, which "
                "deletes its databases) and start again"
            )
        hba = (self.pgdata / "pg_hba.conf").read_text(encoding="utf-8")
        if any(_is_trust_line(line) for line in hba.splitlines()):
            raise ClusterNeedsPurge(
                f"the PostgreSQL cluster in {self.cluster_root} accepts connections without a "
                "password (trust): purge it (`e2c stack down --purge`, which deletes its "
                "databases) and start again"
            )

    def _initdb(self) -> None:
        password = read_or_create_secret(self.password_file)
        pwfile = self.cluster_root / "initdb.password"  # readable by the cluster's owner
        write_private(pwfile, password + "\n")
        if os.geteuid() == 0:
            owner = _system_user()
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        command = [
            str(ensure_installed() / "initdb"),
            "-D", str(self.pgdata),
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-U", SYSTEM_USER,
            "--encoding=UTF8",
            f"--locale={_initdb_locale()}",
            *(["--no-sync"] if self.unsafe_fast_for_tests else []),
        ]  # fmt: skip
        try:
            result = self._run_as_owner(command)
        finally:
            pwfile.unlink(missing_ok=True)
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
        options = [
            "-p", str(self.port),
            "-k", self._socket_option(),
            "-c", "listen_addresses=127.0.0.1",
        ]  # fmt: skip
        if self.unsafe_fast_for_tests:
            for setting in UNSAFE_FAST_OPTIONS:
                options += ["-c", setting]
        return options

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
            umask=OWNER_ONLY_UMASK,
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


def _is_private_to_system_user(folder: Path) -> bool:
    """A real folder (not a link) of the postgres user that nobody else may enter."""
    info = folder.lstat()
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == _system_user().pw_uid
        and not stat.S_IMODE(info.st_mode) & 0o077
    )


def _is_trust_line(line: str) -> bool:
    """Whether a pg_hba.conf line lets clients in without a password."""
    return "trust" in line.split("#", 1)[0].split()


def _initdb_locale() -> str:
    return "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
