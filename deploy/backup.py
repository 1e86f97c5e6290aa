"""`e2c backup` and `e2c restore`: a service's store copied while it runs, and put back.

SQLite: the online backup API (one step: a consistent snapshot while the service writes, WAL
readers do not block it). PostgreSQL: `pg_dump -Fc` (one repeatable-read snapshot) and
`pg_restore --clean --if-exists --single-transaction`. Each store's file comes with a
manifest (service, moment, dialect, Alembic revision, sha256, size); backups hold personal
data: files 0600 in folders 0700.

(1.1) A restored referrals store gets back every erasure made since its backup: they are
read from the erasure journal (`e2c.referrals.erasures.v1`, compacted and kept) and applied
again before the service starts; what it then reads again from its stored offsets is kept
erased too (`ReferralHandlers.on_referral`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from deploy.local_kafka import run_sync
from shared.db import make_engine
from shared.kafka import topic_partitions
from shared.kafka_access import KafkaAccess
from shared.private_files import FILE_MODE, OWNER_ONLY_UMASK, private_dir, touch_private
from shared.settings import Settings

SQLITE, POSTGRESQL = "sqlite", "postgresql"
CHUNK = 1024 * 1024


class RestoreRefused(Exception):
    """A restore that must not happen (wrong service, damaged file, service running)."""


@dataclass(frozen=True)
class Manifest:
    service: str
    taken_at: str  # UTC, ISO 8601
    dialect: str
    revision: str | None  # Alembic's, when the store has one
    file: str  # next to the manifest
    sha256: str
    size: int
    seconds: float

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class Restored:
    service: str
    manifest: Manifest
    journaled: int = 0  # erasures read from the journal
    erased_again: int = 0  # of them, referrals the backup still held personal data of
    caught_up: int | None = None  # backlog records decided in publication order (None: not)
    seconds: float = 0.0


# --- backup --------------------------------------------------------------------------------


def default_folder(settings: Settings, moment: datetime | None = None) -> Path:
    moment = moment or datetime.now(UTC)
    return settings.data_dir / "backups" / moment.strftime("%Y%m%dT%H%M%S.%fZ")


def backup(settings: Settings, services: Sequence[str], folder: Path) -> list[Manifest]:
    """Each service's store into `folder` (created 0700), with its manifest."""
    private_dir(folder)
    return [backup_store(service, settings.database_url(service), folder)
            for service in services]


def backup_store(service: str, url: str, folder: Path) -> Manifest:
    started = time.monotonic()
    taken_at = datetime.now(UTC).isoformat()
    dialect = _dialect(url)
    target = folder / f"{service}.{'db' if dialect == SQLITE else 'dump'}"
    touch_private(target)
    target.chmod(FILE_MODE)
    if dialect == SQLITE:
        _sqlite_backup(_sqlite_path(url), target)
    else:
        _pg_run("pg_dump", url, ["-Fc", "--no-owner", "-f", str(target)])
    manifest = Manifest(
        service=service, taken_at=taken_at, dialect=dialect, revision=alembic_revision(url),
        file=target.name, sha256=sha256_of(target), size=target.stat().st_size,
        seconds=round(time.monotonic() - started, 3),
    )
    _write_manifest(folder / f"{service}.json", manifest)
    return manifest


def _sqlite_backup(source: Path, target: Path) -> None:
    if not source.exists():
        raise FileNotFoundError(f"no store at {source}")
    origin = sqlite3.connect(source, timeout=30)
    copy = sqlite3.connect(target)
    try:
        origin.execute("PRAGMA busy_timeout=30000")
        origin.backup(copy)  # all pages in one step: one consistent snapshot
        # One self-contained file: no -wal beside it.
        copy.execute("PRAGMA journal_mode=DELETE")
    finally:
        copy.close()
        origin.close()


def alembic_revision(url: str) -> str | None:
    """The store's Alembic revision (None when it has no `alembic_version` table)."""
    engine = make_engine(url, pool_size=1)
    try:
        if not inspect(engine).has_table("alembic_version"):
            return None
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def _write_manifest(path: Path, manifest: Manifest) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(json.dumps(asdict(manifest), indent=2) + "\n")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- restore -------------------------------------------------------------------------------


def find_manifest(service: str, source: Path) -> Manifest:
    """The manifest of `service`'s backup in `source` (a backup folder, or one of its files);
    refused when it is another service's or its file is not the one backed up."""
    folder = source if source.is_dir() else source.parent
    path = folder / f"{service}.json"
    if not source.is_dir():
        path = source if source.suffix == ".json" else source.with_suffix(".json")
    if not path.exists():
        found = sorted(p.stem for p in folder.glob("*.json"))
        raise RestoreRefused(f"no backup of {service} in {folder}"
                             + (f" (it holds {', '.join(found)})" if found else ""))
    manifest = Manifest.read(path)
    if manifest.service != service:
        raise RestoreRefused(f"{source} is a backup of {manifest.service}, not of {service}")
    data = path.parent / manifest.file
    if not source.is_dir() and source.suffix != ".json" and source.name != manifest.file:
        raise RestoreRefused(f"{source} is not the file of the backup beside it")
    if not data.exists() or sha256_of(data) != manifest.sha256:
        raise RestoreRefused(f"{data}: its checksum is not the manifest's (damaged or changed "
                             "since the backup): not restored")
    return manifest


def restore(
    settings: Settings,
    service: str,
    source: Path,
    running: Callable[[str], bool],
    journal: Callable[[], list[dict[str, Any]]] | None = None,
    catch_up: Callable[[], int] | None = None,
) -> Restored:
    """Puts `service`'s store back as the backup in `source` holds it. `running(service)`
    says whether the service runs (refused then). For referrals, `journal()` reads the
    erasure journal, whose erasures are applied again. Then `catch_up()` decides the
    backlog since the backup in the order it was published (`shared.rebuild.catch_up`)."""
    started = time.monotonic()
    manifest = find_manifest(service, source)
    if running(service):
        raise RestoreRefused(f"{service} is running: stop it first (`e2c stack down`)")
    url = settings.database_url(service)
    if _dialect(url) != manifest.dialect:
        raise RestoreRefused(f"the backup is a {manifest.dialect} store, {service}'s store is "
                             f"{_dialect(url)}")
    data = (source if source.is_dir() else source.parent) / manifest.file
    if manifest.dialect == SQLITE:
        _sqlite_restore(data, _sqlite_path(url))
    else:
        _pg_run("pg_restore", url, ["--clean", "--if-exists", "--single-transaction",
                                    "--no-owner", str(data)])
    journaled = erased_again = 0
    if service == "referrals":
        if journal is None:
            raise ValueError("restoring referrals needs the erasure journal")
        erasures = journal()
        journaled = len(erasures)
        erased_again = reapply_erasures(url, erasures)
    caught_up = catch_up() if catch_up is not None else None
    return Restored(service, manifest, journaled, erased_again, caught_up,
                    round(time.monotonic() - started, 3))


def _sqlite_restore(data: Path, store: Path) -> None:
    """The backup copied next to the store, flushed, then swapped in at once; the store's
    old -wal and -shm go first (SQLite would replay a stale WAL onto the new file)."""
    private_dir(store.parent)
    staging = store.with_name(store.name + ".restoring")
    staging.unlink(missing_ok=True)
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         FILE_MODE)
    with os.fdopen(descriptor, "wb") as out, data.open("rb") as backup_file:
        while chunk := backup_file.read(CHUNK):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    for suffix in ("-wal", "-shm"):
        store.with_name(store.name + suffix).unlink(missing_ok=True)
    os.replace(staging, store)
    folder = os.open(store.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def reapply_erasures(url: str, erasures: list[dict[str, Any]]) -> int:
    from services.referrals.app import reapply_erasures as apply

    return apply(url, erasures)


# --- the erasure journal -------------------------------------------------------------------


def read_erasure_journal(reader: KafkaAccess) -> list[dict[str, Any]]:
    """Every erasure on the journal topic, read from its beginning to its end as now (the
    latest record of each referral)."""
    from services.referrals.domain import ERASURE_JOURNAL

    return run_sync(_read_topic(reader, ERASURE_JOURNAL))


async def _read_topic(reader: KafkaAccess, topic: str) -> list[dict[str, Any]]:
    partitions = await topic_partitions(reader, [topic])
    consumer = AIOKafkaConsumer(**reader.client_options(), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for partition, first in (await consumer.beginning_offsets(partitions)).items():
            consumer.seek(partition, first)
        latest: dict[str, dict[str, Any]] = {}
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            batches = await consumer.getmany(*partitions, timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    if record.value is not None and record.key is not None:
                        latest[record.key.decode()] = json.loads(record.value)
        return list(latest.values())
    finally:
        await consumer.stop()


# --- helpers -------------------------------------------------------------------------------


def _dialect(url: str) -> str:
    return SQLITE if url.startswith("sqlite") else POSTGRESQL


def _sqlite_path(url: str) -> Path:
    return Path(url.split("///", 1)[-1].partition("?")[0])


def _pg_run(tool: str, url: str, arguments: list[str]) -> None:
    """Runs pg_dump or pg_restore on the store of `url`: the password goes in PGPASSWORD,
    never on the command line."""
    from deploy.local_postgres import ensure_installed

    parsed = make_url(url)
    env = {**os.environ, "PGPASSWORD": parsed.password or ""}
    command = [str(ensure_installed() / tool), "-h", parsed.host or "127.0.0.1",
               "-p", str(parsed.port or 5432), "-U", parsed.username or "postgres",
               "-d", parsed.database or "postgres", *arguments]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                          umask=OWNER_ONLY_UMASK)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
