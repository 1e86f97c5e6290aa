"""`e2c backup` / `e2c restore` (deploy/backup.py), on SQLite and PostgreSQL: a backup taken
while a writer commits is one consistent moment; backups are private; a restore refuses
another service's backup, a damaged file and a running service; a restored referrals store
gets back, from the erasure journal, every erasure made after its backup (through the real
broker: the name is in no byte of the restored file, the decision stays, the trail shows
the erasure applied again); a submission read again for an erased referral is stored
erased."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select

from deploy import backup as backups
from deploy.backup import RestoreRefused
from deploy.harness import Environment
from deploy.kafka_security import OPS
from deploy.local_kafka import LocalKafka
from deploy.processes import command_contains
from deploy.stack import LocalStack
from services.referrals.app import TOPOLOGY, erase_referral
from services.referrals.domain import ERASURE_JOURNAL, RESTORE_REASON
from services.referrals.handlers import ReferralHandlers
from services.referrals.store import (
    AuditEntry,
    Referral,
    ReferralErasure,
    ReferralHistory,
    ReferralStore,
)
from shared.contract import Topic
from shared.db import make_engine
from shared.messaging import Inbound, unit_of_work
from shared.migrations import migrate_store
from shared.settings import Settings
from tests.infra import TEST_DATA, Publisher, TopicWatcher
from tests.referrals.test_erasure_on_disk import new_people, scan, submission

ROWS_PER_COMMIT = 7


def settings_for(url: str, data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, referrals_database_url=url)


def history_rows(url: str) -> int:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return int(session.exec(select(func.count()).select_from(ReferralHistory)).one())
    finally:
        engine.dispose()


class Writer(threading.Thread):
    """Commits ROWS_PER_COMMIT history rows at a time until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = make_engine(url)
        self.done = threading.Event()
        self.commits = 0

    def run(self) -> None:
        while not self.done.is_set():
            with Session(self.engine) as session:
                for _ in range(ROWS_PER_COMMIT):
                    session.add(ReferralHistory(referral_id=f"R{self.commits}", kind="referral",
                                                status="accepted", at=datetime.now(UTC)))
                session.commit()
            self.commits += 1

    def stop(self) -> None:
        self.done.set()
        self.join(30)
        self.engine.dispose()


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[str]:
    engine = make_engine(store_url)
    migrate_store(engine, "referrals")
    engine.dispose()
    yield store_url


def test_a_backup_taken_while_a_writer_commits_is_one_moment(store: str, tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path / "var")
    writer = Writer(store)
    writer.start()
    try:
        poll_sync(lambda: writer.commits >= 20)
        before = history_rows(store)
        folder = tmp_path / "backups" / "one"
        [manifest] = backups.backup(settings, ["referrals"], folder)
        after = history_rows(store)
    finally:
        writer.stop()

    data = folder / manifest.file
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    assert sorted(p.name for p in folder.iterdir()) == sorted([manifest.file, "referrals.json"])
    assert manifest.service == "referrals" and manifest.size == data.stat().st_size
    assert manifest.dialect == store.split(":")[0].split("+")[0]
    if manifest.dialect == "sqlite":
        import sqlite3

        with sqlite3.connect(data) as copy:
            assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    backups.restore(settings, "referrals", folder, running=lambda _name: False,
                    journal=lambda: [])

    restored = history_rows(store)
    assert before <= restored <= after  # a moment between the two counts
    assert restored % ROWS_PER_COMMIT == 0  # and no commit cut in half


def poll_sync(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("never happened")
        time.sleep(0.05)


def test_a_restore_refuses_another_services_backup_a_bad_checksum_and_a_running_service(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'stores' / 'referrals.db'}"
    settings = Settings(data_dir=tmp_path / "var", referrals_database_url=url,
                        aids_database_url=f"sqlite:///{tmp_path / 'var' / 'stores' / 'aids.db'}")
    for name in ("referrals", "aids"):
        engine = make_engine(settings.database_url(name))
        migrate_store(engine, name)
        engine.dispose()
    folder = tmp_path / "backup"
    backups.backup(settings, ["referrals", "aids"], folder)
    nobody = lambda _name: False  # noqa: E731

    with pytest.raises(RestoreRefused, match="backup of aids, not of referrals"):
        backups.restore(settings, "referrals", folder / "aids.db", nobody, lambda: [])
    with pytest.raises(RestoreRefused, match="no backup of outcomes"):
        backups.restore(settings, "outcomes", folder, nobody, lambda: [])

    damaged = folder / "aids.db"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x01")
    with pytest.raises(RestoreRefused, match="checksum"):
        backups.restore(settings, "aids", folder, nobody, lambda: [])

    # The stack's own record of its running services (its pid files).
    stack = LocalStack(settings)
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "services.referrals"])
    try:
        (stack.run_dir / "referrals.pid").write_text(str(sleeper.pid))
        # Until the child has exec'd, its command line is still this process's.
        poll_sync(lambda: command_contains(sleeper.pid, "services.referrals"))
        with pytest.raises(RestoreRefused, match="referrals is running"):
            backups.restore(settings, "referrals", folder, stack.service_running, lambda: [])
    finally:
        sleeper.kill()
        sleeper.wait()
    from deploy.cli import main

    assert main(["restore", "nobody", str(folder)]) == 2


def test_a_submission_read_again_for_an_erased_referral_is_stored_erased(store: str) -> None:
    """After a restore, the store reads again submissions it had not stored; one whose
    referral was erased since (the journal says so) keeps its decision, not the person."""
    person = new_people(1)[0]
    event = submission(person)
    referral_id = event["referral_id"]
    engine = make_engine(store)
    try:
        with unit_of_work(engine, ReferralStore) as uow:
            uow.store.record_erasure(referral_id, datetime(2024, 5, 1, tzinfo=UTC), "retention")
        processor = TOPOLOGY.processor(engine, ReferralHandlers(set(["toulouse"])))
        record = Inbound(Topic.REFERRALS_SUBMITTED, 0, 0, referral_id,
                         json.dumps(event).encode("utf-8"))
        result = processor.process([record])
        assert result.handled == {Topic.REFERRALS_SUBMITTED: 1}
        with Session(engine) as session:
            row = session.get(Referral, referral_id)
            assert row is not None and row.status == "accepted"
            assert row.erased_at == datetime(2024, 5, 1, tzinfo=UTC)
            assert (row.first_name, row.last_name, row.birth_date, row.email, row.phone,
                    row.person_key) == (None,) * 6
            kinds = session.exec(select(ReferralHistory.kind)
                                 .where(ReferralHistory.referral_id == referral_id)).all()
            assert sorted(kinds) == ["erasure", "referral"]
            audit = session.exec(select(AuditEntry)
                                 .where(AuditEntry.referral_id == referral_id)).all()
            assert [(a.role, a.action, a.detail_codes) for a in audit] == [
                ("system", "erasure", ["retention", RESTORE_REASON])]
    finally:
        engine.dispose()


# --- through the real broker ----------------------------------------------------------------


@pytest.mark.infra
async def test_the_erasure_journal_is_compacted_and_kept(kafka: LocalKafka) -> None:
    from tests.shared.test_relay import topic_config

    config = await topic_config(kafka, ERASURE_JOURNAL)
    assert config["cleanup.policy"] == "compact" and config["retention.ms"] == "-1"


@pytest.fixture
def own_broker() -> Iterator[Environment]:
    """A broker of its own: the session's runs the stack fixture's referrals, which would
    share the consumer group (and decide this test's referrals into their store)."""
    env = Environment(TEST_DATA / "backup-journal")
    env.start()
    try:
        yield env
    finally:
        env.stop()


@pytest.mark.infra
async def test_a_restore_applies_again_the_erasures_made_after_the_backup(
    own_broker: Environment,
) -> None:
    kafka = own_broker.kafka
    running = own_broker.stack("stack")
    service = running.add("referrals")
    store_file = running.data_dir / "stores" / "referrals.db"
    # The store the service uses (it is given no *_DATABASE_URL), whatever this process has.
    settings = Settings(data_dir=running.data_dir,
                        referrals_database_url=f"sqlite:///{store_file}")
    erased_person, kept_person = new_people(2)
    events = [submission(erased_person), submission(kept_person)]
    publisher = Publisher(kafka)
    watcher = TopicWatcher(running.access(OPS), [str(Topic.REFERRALS_DECIDED), ERASURE_JOURNAL])
    service.start()
    await publisher.start()
    await watcher.start()
    try:
        for event in events:
            await publisher.send(Topic.REFERRALS_SUBMITTED, event, event["referral_id"])
        for event in events:
            await watcher.wait_for(Topic.REFERRALS_DECIDED, request_event_id=event["event_id"])
        folder = running.data_dir / "backup"
        backups.backup(settings, ["referrals"], folder)
        erased_id = events[0]["referral_id"]
        assert erase_referral(settings, erased_id) is True
        [journaled] = await watcher.wait_for(ERASURE_JOURNAL, referral_id=erased_id)
        assert set(journaled) == {"referral_id", "erased_at", "reason"}  # no personal data
        assert journaled["reason"] == "erasure_request"
        service.stop()

        # The backup still holds the person: that is why the journal is applied again.
        assert scan(folder, [erased_person])[erased_person.token]
        done = backups.restore(settings, "referrals", folder, lambda _name: False,
                               lambda: backups.read_erasure_journal(running.access(OPS)))
    finally:
        service.stop()
        await watcher.stop()
        await publisher.stop()

    assert done.journaled >= 1 and done.erased_again == 1
    hits = scan(store_file.parent, [erased_person, kept_person])
    assert hits[erased_person.token] == set()  # the file, its -wal and -shm
    assert hits[kept_person.token]
    engine = make_engine(settings.database_url("referrals"))
    try:
        with Session(engine) as session:
            row = session.get(Referral, erased_id)
            assert row is not None and row.status == "accepted" and row.erased_at is not None
            assert row.first_name is None and row.birth_date is None
            assert session.get(ReferralErasure, erased_id) is not None
            audit = session.exec(select(AuditEntry).where(AuditEntry.referral_id == erased_id)
                                 .order_by(col(AuditEntry.id))).all()
            assert [(a.role, a.detail_codes) for a in audit if a.action == "erasure"] == [
                ("system", [RESTORE_REASON])]
    finally:
        engine.dispose()
