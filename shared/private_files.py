"""Files and folders readable by their owner only (0600 / 0700), from their first byte.

The mode is given to `os.open` / `mkdir` when the file or folder is created, so there is
no moment where it exists with looser bits (a write-then-chmod leaves one). `OWNER_ONLY_UMASK`
is what the services, the `e2c` command and the processes the stack spawns run with, so
that whatever they create (stores, the broker's log, logs) is private too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import IO

OWNER_ONLY_UMASK = 0o077
FILE_MODE = 0o600
FOLDER_MODE = 0o700


def restrict_umask() -> int:
    """Files and folders this process creates from now on are its owner's only."""
    return os.umask(OWNER_ONLY_UMASK)


def loose_bits(path: Path) -> int:
    """The group and other permission bits of `path` (0 when only its owner may use it)."""
    return stat.S_IMODE(path.stat().st_mode) & 0o077


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) at 0700; tighten it when it exists with looser
    bits and belongs to us. A folder of someone else's is left as it is, and so is a shared
    drop with the sticky bit (`/tmp`: run as root, a store file put there must not close
    it to every other user)."""
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    info = path.stat()
    shared_drop = bool(info.st_mode & stat.S_ISVTX)
    if info.st_uid == os.geteuid() and not shared_drop and stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(stat.S_IMODE(info.st_mode) & ~0o077)
    return path


def write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write `text` to `path`, created at 0600 (an existing file is truncated and tightened;
    with `exclusive`, an existing file raises FileExistsError instead)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    descriptor = os.open(path, flags | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), FILE_MODE)
        file.write(text)


def open_private_append(path: Path) -> IO[bytes]:
    """`path` opened for appending bytes (a log), created at 0600."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    return os.fdopen(descriptor, "ab")


def touch_private(path: Path) -> None:
    """Create an empty 0600 file unless `path` exists (SQLite then gives its -wal and -shm
    files the same mode as the database file)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def new_secret() -> str:
    """A random password: 32 URL-safe characters (safe inside a URL without quoting)."""
    return secrets.token_urlsafe(24)


def read_or_create_secret(path: Path) -> str:
    """The secret kept in `path`, created (0600, in a 0700 folder) on first use."""
    if not path.exists():
        private_dir(path.parent)
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            write_private(path, new_secret() + "\n", exclusive=True)
    return read_secret(path)


def read_secret(path: Path) -> str:
    """The secret in `path`; refused when group or others may read or write it."""
    if loose_bits(path):
        raise PermissionError(f"{path} is readable or writable by group or others: chmod 600 it")
    secret = path.read_text(encoding="utf-8").strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret
