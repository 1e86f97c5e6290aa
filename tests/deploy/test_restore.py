"""The proof of issue 14: stores lost and restored from a backup lose nothing and count
nothing twice. A small simulated year runs through the real pipeline (a broker, a cache and
the three services of its own); after its first phases every store is backed up (`e2c
backup`), the rest of the year is published and answered, then the stores are lost,
restored (`e2c restore`) and the services started again: they read again, from the offsets
kept in their stores, what the backup had not stored. The reports equal the plan's ground
truth to the unit, and no input has two different answers on the topics. The second test
loses the aids store alone while referrals and outcomes keep running."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from deploy.harness import Environment, ServiceProcesses
from deploy.kafka_security import OPS
from deploy.simulation.plan import YearPlan, plan_year
from deploy.simulation.run import (
    ANSWER_TOPICS,
    Endpoints,
    Phase,
    Progress,
    Simulation,
    compare,
    delta,
)
from deploy.system import TOPOLOGIES
from shared.kafka import topic_partitions
from shared.kafka_access import KafkaAccess
from shared.settings import PROJECT_ROOT, Settings
from tests.infra import TEST_DATA

pytestmark = pytest.mark.infra

SERVICES = tuple(TOPOLOGIES)
BACKUP_AFTER = "duplicates"  # the phase after which the stores are backed up
SETTLE_SECONDS = 180


class InterruptedYear(Simulation):
    """The simulation with a break after `BACKUP_AFTER` (the backup) and, once the year is
    answered, the loss and restore of stores (`before_reports`); then it waits until the
    restored services have read again what they had lost."""

    def __init__(self, plan: YearPlan, endpoints: Endpoints, at_break: Callable[[], None],
                 **options: Any) -> None:
        super().__init__(plan, endpoints, progress=Progress(live=False), **options)
        self.at_break = at_break
        self.first_reports: tuple[dict[str, Any], dict[str, Any]] | None = None

    def _phases(self) -> list[Phase]:
        phases = super()._phases()
        cut = next(i for i, phase in enumerate(phases) if phase.name == BACKUP_AFTER) + 1
        return [*phases[:cut], Phase("backup", self._break), *phases[cut:]]

    def _break(self) -> list[Any]:
        self.at_break()
        return []

    async def _reports(self) -> tuple[dict[str, Any], dict[str, Any]]:
        reports = await super()._reports()
        if self.first_reports is None:
            self.first_reports = reports
        return reports

    async def settled(self) -> list[str]:
        """Waits until the reports equal the plan again (the restored services caught up);
        the differences left at the deadline."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            differences = await self.differences_now()
            if not differences or time.monotonic() > deadline:
                return differences
            await asyncio.sleep(0.5)

    async def differences_now(self) -> list[str]:
        assert self.first_reports is not None
        finance, outcomes = await self._reports()
        return [*compare(self.plan.expected_finance(), delta(finance, self.first_reports[0]),
                         "finance"),
                *compare(self.plan.expected_outcomes(),
                         delta(outcomes, self.first_reports[1]), "outcomes")]


@pytest.fixture
def environment() -> Iterator[Environment]:
    env = Environment(TEST_DATA / "restore")
    env.start()
    try:
        yield env
    finally:
        env.stop()


def start_stack(env: Environment) -> ServiceProcesses:
    stack = env.stack("stack")
    for name in SERVICES:  # one instance each, SQLite stores under the stack's folder
        stack.add(name).start()
    return stack


def e2c(stack: ServiceProcesses, *arguments: str) -> str:
    """Runs the `e2c` command beside the test stack (its data folder, ops on its broker)."""
    ops = stack.access(OPS)
    env = {**{k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")},
           "E2C_DATA_DIR": str(stack.data_dir), "KAFKA_BOOTSTRAP_SERVERS": ops.bootstrap,
           "E2C_KAFKA_USERNAME": ops.username,
           "E2C_KAFKA_PASSWORD": ops.password.get_secret_value(),
           # The test's services' ports: what answers there is what `e2c restore` checks.
           **{f"{name.upper()}_PORT": str(process.port)
              for name, process in stack.services.items()}}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "deploy.cli", *arguments], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"e2c {' '.join(arguments[:2])}: {time.monotonic() - started:.2f}s\n{done.stdout}")
    return done.stdout


def lose_store(stack: ServiceProcesses, name: str) -> None:
    store = Settings(data_dir=stack.data_dir).stores_dir / f"{name}.db"
    for path in (store, store.with_name(store.name + "-wal"),
                 store.with_name(store.name + "-shm")):
        path.unlink(missing_ok=True)
    assert not store.exists()


async def answers_on_the_topics(reader: KafkaAccess) -> dict[str, list[dict[str, Any]]]:
    """Every answer on the decided topics, from their beginning: request -> its answers."""
    partitions = await topic_partitions(reader, ANSWER_TOPICS)
    consumer = AIOKafkaConsumer(**reader.client_options(), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for partition, first in (await consumer.beginning_offsets(partitions)).items():
            consumer.seek(partition, first)
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            for records in (await consumer.getmany(*partitions, timeout_ms=1000)).values():
                for record in records:
                    body = json.loads(record.value)
                    if body.get("request_event_id"):
                        found.setdefault(body["request_event_id"], []).append(body)
    finally:
        await consumer.stop()
    return found


def one_answer_each(answers: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The inputs answered in two different ways (the same answer published again, with its
    same event_id, is expected after a restore)."""
    different = []
    for request, bodies in answers.items():
        contents = {json.dumps({k: v for k, v in body.items() if k != "occurred_at"},
                               sort_keys=True) for body in bodies}
        if len(contents) > 1:
            different.append(request)
    return different


async def run_interrupted_year(env: Environment, lost: tuple[str, ...]) -> None:
    stack = start_stack(env)
    backup_dir = stack.data_dir / "backups" / "mid-year"
    try:
        plan = plan_year(2021, 40, seed=11, settings=Settings())
        endpoints = Endpoints.of(env.kafka, stack.services["aids"].url,
                                 stack.services["outcomes"].url, env.admin_token)
        simulation = InterruptedYear(
            plan, endpoints, at_break=lambda: e2c(stack, "backup", *lost, "--to",
                                                  str(backup_dir)),
            timeout=180)

        async def lose_and_restore() -> None:
            for name in lost:
                stack.services[name].stop()
            for name in lost:
                lose_store(stack, name)
                e2c(stack, "restore", name, str(backup_dir))
            for name in lost:
                stack.services[name].start()
            assert await simulation.settled() == []

        outcome = await simulation.run(before_reports=lose_and_restore)

        assert outcome.differences == []
        answers = await answers_on_the_topics(stack.access(OPS))
        assert set(outcome.answers) <= set(answers)
        different = one_answer_each(answers)
        assert different == [], [answers[request] for request in different[:3]]
        sizes = {p.name: p.stat().st_size for p in backup_dir.iterdir()}
        print(f"backup files: {sizes}")
    finally:
        stack.stop_all()


async def test_every_store_lost_and_restored_from_a_mid_year_backup(
    environment: Environment,
) -> None:
    await run_interrupted_year(environment, SERVICES)


async def test_the_aids_store_alone_lost_and_restored_while_the_others_run(
    environment: Environment,
) -> None:
    await run_interrupted_year(environment, ("aids",))
