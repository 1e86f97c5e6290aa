"""Describing errors for logs without the values they carry (names, birth dates, contacts).

Database errors quote the rows they refused (PostgreSQL's DETAIL line, SQLAlchemy's
parameters): only the error's class, its first line and where it was raised are logged.
"""

from __future__ import annotations

import traceback
from urllib.parse import urlsplit, urlunsplit


def describe_error(error: BaseException) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    where = _raised_at(error)
    return f"{type(error).__name__}: {first_line[:200]}{where}"


def _raised_at(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"


def redact_url(url: str) -> str:
    """`url` with its password (if any) replaced by `***`, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
