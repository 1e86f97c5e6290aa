"""Owner-only files from the first byte: the helpers, the SQLite stores (with their -wal and
-shm, written with secure_delete) and the processes the stack spawns."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from deploy.processes import spawn, tail
from shared.db import make_engine
from shared.private_files import (
    loose_bits,
    open_private_append,
    private_dir,
    read_or_create_secret,
    read_secret,
    touch_private,
    write_private,
)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """No umask at all: whatever mode a file gets is the one its code asked for."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_folders_are_created_owner_only(tmp_path: Path, umask_zero: None) -> None:
    folder = private_dir(tmp_path / "a" / "b")
    write_private(folder / "secret.txt", "x")
    with open_private_append(folder / "server.log") as log:
        log.write(b"started\n")

    assert mode(folder) == 0o700
    assert mode(folder / "secret.txt") == 0o600
    assert mode(folder / "server.log") == 0o600


def test_a_looser_folder_of_ours_is_tightened_and_a_file_rewritten_tight(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "var"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (folder / "old.txt").write_text("old")
    (folder / "old.txt").chmod(0o644)

    private_dir(folder)
    write_private(folder / "old.txt", "new")

    assert mode(folder) == 0o700
    assert mode(folder / "old.txt") == 0o600



def test_a_shared_drop_with_the_sticky_bit_is_never_tightened(tmp_path: Path) -> None:
    """A store file put in `/tmp` by a process running as root must leave `/tmp` open."""
    drop = tmp_path / "tmp"
    drop.mkdir()
    drop.chmod(0o1777)

    private_dir(drop)
    touch_private(drop / "store.sqlite")

    assert mode(drop) == 0o1777
    assert mode(drop / "store.sqlite") == 0o600

def test_a_secret_is_made_once_and_refused_when_others_may_read_it(tmp_path: Path) -> None:
    path = tmp_path / "redis" / "password"

    first = read_or_create_secret(path)

    assert len(first) >= 32 and mode(path) == 0o600 and mode(path.parent) == 0o700
    assert read_or_create_secret(path) == first
    path.chmod(0o640)
    with pytest.raises(PermissionError, match="group or others"):
        read_secret(path)


def test_sqlite_stores_are_owner_only_and_delete_securely(
    tmp_path: Path, umask_zero: None
) -> None:
    database = tmp_path / "stores" / "aids.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (v TEXT)"))
            connection.execute(text("INSERT INTO t VALUES ('x')"))
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA secure_delete")).scalar() == 1
            files = sorted(path.name for path in database.parent.iterdir())
            assert files == ["aids.db", "aids.db-shm", "aids.db-wal"]
    finally:
        engine.dispose()
    assert mode(database.parent) == 0o700
    assert [path.name for path in database.parent.iterdir() if loose_bits(path)] == []


def test_spawned_processes_create_owner_only_files(tmp_path: Path, umask_zero: None) -> None:
    code = "import os; open('made.txt', 'w').close(); print('done', flush=True)"
    log_file = tmp_path / "child.log"
    child = spawn([sys.executable, "-c", code], tmp_path, log_file, tmp_path / "child.pid")

    assert child.wait(timeout=20) == 0 and "done" in tail(log_file, 1)
    assert mode(tmp_path / "made.txt") == 0o600
    assert mode(log_file) == 0o600 and mode(tmp_path / "child.pid") == 0o600
