"""(1.1) "Erasure reaches every copy", proved on disk: a stack of its own with the bound cut
to seconds, referrals with unique names sent over Kafka and over HTTP, some erased (HTTP and
the command), some dead-lettered; once the bound has passed, no byte of any file under the
stack's data folder (broker segments and indexes, SQLite stores with -wal/-shm, logs,
Redis) holds an erased or dead-lettered name or birth date, in any form the code writes;
the others are still where they belong. Reports stay byte-identical, and so does the
outcomes view rebuilt from the topics."""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.harness import Environment, ServiceProcesses
from deploy.kafka_security import OPS
from shared.contract import Topic
from tests import tokens
from tests.events import enrollment, referral
from tests.infra import TEST_DATA, Publisher, TopicWatcher

pytestmark = pytest.mark.infra

BOUND_SECONDS = 24.0
MAX_DAYS = BOUND_SECONDS / 86400
AGENCY = {"kind": "mission_locale", "id": "ml-toulouse", "name": "ML Toulouse"}
PARTNER = tokens.bearer(tokens.ML_TOULOUSE)
YEAR = 2024


@dataclass(frozen=True)
class Person:
    token: str  # ten random lowercase letters, in both names: found in any form of them
    first_name: str
    last_name: str
    birth_date: str

    def needles(self) -> list[bytes]:
        """Every form the code writes the person in: UTF-8 (NFC and NFD), JSON's \\u
        escapes, the duplicate check's fold (no case, accents or spaces), the birth date."""
        forms = {self.token, self.birth_date}
        for name in (self.first_name, self.last_name):
            forms.add(name)
            forms.add(unicodedata.normalize("NFD", name))
            forms.add(json.dumps(name)[1:-1])  # ensure_ascii: "Zo\u00e9..."
            forms.add(fold(name))
        return [form.encode("utf-8") for form in forms]


def fold(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join("".join(c for c in decomposed if not unicodedata.combining(c))
                   .casefold().split())


def new_people(count: int) -> list[Person]:
    days = random.sample(range(365 * 7), count)  # distinct birth dates, aged 18 to 25
    people = []
    for day in days:
        token = "".join(random.choices(string.ascii_lowercase, k=10))
        born = date(1999, 1, 1) + timedelta(days=day)
        people.append(Person(token, f"Zoé{token}", f"Lefèvre {token} Dùpont", born.isoformat()))
    return people


def submission(person: Person) -> dict[str, Any]:
    return referral(agency=AGENCY, occurred_at=f"{YEAR}-03-04T09:12:00+01:00",
                    candidate={"first_name": person.first_name,
                               "last_name": person.last_name, "birth_date": person.birth_date,
                               "email": f"{person.token}@example.org"})


def files_under(folder: Path) -> Iterator[Path]:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def scan(folder: Path, people: list[Person]) -> dict[str, set[str]]:
    """person token -> the files holding any of its forms (case-insensitive for ASCII)."""
    needles = {needle.lower(): person.token for person in people for needle in person.needles()}
    pattern = re.compile(b"|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True)))
    hits: dict[str, set[str]] = {person.token: set() for person in people}
    for path in files_under(folder):
        try:
            data = path.read_bytes().lower()
        except FileNotFoundError:  # a segment deleted while we walked
            continue
        for match in pattern.finditer(data):
            hits[needles[match.group(0)]].add(str(path.relative_to(folder)))
    return hits


@dataclass
class ErasureStack:
    env: Environment
    stack: ServiceProcesses

    def url(self, service: str) -> str:
        return self.stack.services[service].url


@pytest.fixture
def erasure_stack() -> Iterator[ErasureStack]:
    env = Environment(TEST_DATA / "erasure", erasure_max_days=MAX_DAYS)
    stack = env.stack("stack")
    tokens.write_tokens_file(stack.data_dir / "tokens.json")
    bound = {"E2C_ERASURE_MAX_DAYS": str(MAX_DAYS)}
    try:
        env.start()
        for name in ("referrals", "aids", "outcomes"):
            stack.add(name, extra_env=bound).start()
        yield ErasureStack(env, stack)
    finally:
        stack.stop_all()
        env.stop()


def reports(erasure: ErasureStack) -> tuple[bytes, bytes]:
    finance = httpx.get(f"{erasure.url('aids')}/reports/finance?year={YEAR}",
                        headers=tokens.bearer(tokens.FINANCE), timeout=10)
    outcomes = httpx.get(f"{erasure.url('outcomes')}/reports/outcomes?year={YEAR}",
                         headers=tokens.bearer(tokens.OUTCOMES), timeout=10)
    assert finance.status_code == outcomes.status_code == 200
    return finance.content, outcomes.content


def run_cli(erasure: ErasureStack, service: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=erasure.stack.services[service].env,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_erased_and_dead_lettered_people_leave_every_file_within_the_bound(
    erasure_stack: ErasureStack,
) -> None:
    erasure = erasure_stack
    everyone = new_people(9)
    kept_kafka, erased_kafka, erased_cli = everyone[0:2], everyone[2:4], everyone[4:5]
    kept_http, erased_http, dead = everyone[5:6], everyone[6:7], everyone[7:9]
    watcher = TopicWatcher(erasure.stack.access(OPS), [
        Topic.REFERRALS_SUBMITTED, Topic.REFERRALS_DECIDED, Topic.ENROLLMENTS_DECIDED,
        Topic.DEADLETTER])
    publisher = Publisher(erasure.env.kafka)
    await watcher.start()
    await publisher.start()
    try:
        ids: dict[str, str] = {}
        for person in [*kept_kafka, *erased_kafka, *erased_cli]:
            event = submission(person)
            ids[person.token] = event["referral_id"]
            await publisher.send(Topic.REFERRALS_SUBMITTED, event, key=event["referral_id"])
        async with httpx.AsyncClient(base_url=erasure.url("referrals"), timeout=10) as http:
            for person in [*kept_http, *erased_http]:
                event = submission(person)
                ids[person.token] = event["referral_id"]
                answer = await http.post("/referrals", json=event, headers=PARTNER)
                assert answer.status_code == 202, answer.text
        for person in dead:  # unreadable: a dead letter, whose original holds the names
            event = submission(person)
            event["schema_version"] = 2
            await publisher.send(Topic.REFERRALS_SUBMITTED, event, key=event["referral_id"])
        for referral_id in ids.values():
            await watcher.wait_for(Topic.REFERRALS_DECIDED, referral_id=referral_id,
                                   status="accepted")
        await watcher.wait_for(Topic.DEADLETTER, count=len(dead),
                               source_topic=str(Topic.REFERRALS_SUBMITTED))
        # Enrolled people are counted by outcomes: the reports have something to keep.
        for person in (kept_kafka[0], erased_kafka[0]):
            event = enrollment(ids[person.token], enrolled_on=f"{YEAR}-01-15")
            await publisher.send(Topic.ENROLLMENTS_SUBMITTED, event, key=ids[person.token])
            await watcher.wait_for(Topic.ENROLLMENTS_DECIDED, request_event_id=event["event_id"])

        data = erasure.env.data
        before = await wait_for_reports_with_entries(erasure)
        assert all(scan(data, everyone).values())  # every person is on disk before

        async with httpx.AsyncClient(base_url=erasure.url("referrals"), timeout=10) as http:
            for person in [*erased_kafka, *erased_http]:
                gone = await http.delete(f"/referrals/{ids[person.token]}/personal-data",
                                         headers=PARTNER)
                assert gone.status_code == 200, gone.text
        for person in erased_cli:
            done = await asyncio.to_thread(
                run_cli, erasure, "referrals", "-m", "deploy.cli", "referrals", "erase",
                ids[person.token])
            assert done.returncode == 0, done.stderr[-2000:]
        erased_at = time.monotonic()

        gone_people = [*erased_kafka, *erased_cli, *erased_http, *dead]
        kept_people = [*kept_kafka, *kept_http]
        hits = await wait_until_clean(data, gone_people, kept_people)
        took = time.monotonic() - erased_at
        assert took < BOUND_SECONDS, f"clean after {took:.1f}s, over the bound"
        for person in kept_people:  # still readable where they belong
            assert "stack/stores/referrals.db" in hits[person.token], hits[person.token]
            assert any("e2c.referrals.submitted.v1-" in path for path in hits[person.token])
        for person in gone_people:
            assert not hits[person.token]

        # The tombstones were skipped by referrals: neither answered nor dead-lettered.
        tombstones = [k for t, k, _b, raw in watcher.messages
                      if t == Topic.REFERRALS_SUBMITTED and raw is None]
        assert {ids[p.token] for p in [*erased_kafka, *erased_cli, *erased_http]} <= set(
            tombstones)
        assert len(watcher.find(Topic.DEADLETTER)) == len(dead)
        for referral_id in ids.values():
            assert len(watcher.find(Topic.REFERRALS_DECIDED, referral_id=referral_id)) == 1

        assert reports(erasure) == before
        outcomes = erasure.stack.services["outcomes"]
        outcomes.stop()
        rebuilt = await asyncio.to_thread(
            run_cli, erasure, "outcomes", "-c",
            "from services.outcomes.app import rebuild; from shared.settings import Settings; "
            "print(rebuild(Settings()))")
        await asyncio.to_thread(outcomes.start)
        assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
        assert reports(erasure) == before
    finally:
        await publisher.stop()
        await watcher.stop()


async def wait_for_reports_with_entries(erasure: ErasureStack) -> tuple[bytes, bytes]:
    """The reports once outcomes counted both enrollments (it reads them on its own)."""
    deadline = time.monotonic() + 30
    while True:
        finance, outcomes = await asyncio.to_thread(reports, erasure)
        if json.loads(outcomes)["entries"] == 2:
            return finance, outcomes
        assert time.monotonic() < deadline, outcomes
        await asyncio.sleep(0.2)


async def wait_until_clean(
    data: Path, gone: list[Person], kept: list[Person]
) -> dict[str, set[str]]:
    """Scans until no file holds the erased or dead-lettered people (a few bounds at most)."""
    deadline = time.monotonic() + 4 * BOUND_SECONDS
    while True:
        hits = await asyncio.to_thread(scan, data, [*gone, *kept])
        if not any(hits[person.token] for person in gone):
            return hits
        if time.monotonic() > deadline:
            left = {p.token: sorted(hits[p.token]) for p in gone if hits[p.token]}
            raise AssertionError(f"still on disk after {4 * BOUND_SECONDS}s: {left}")
        await asyncio.sleep(0.5)
