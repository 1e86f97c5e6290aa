"""`make chaos`: a simulated year replayed while the system is hurt, then checked.

    python -m deploy.chaos --trainees 300 --duration 45   # the short form (CI runs it)
    make chaos                                   # the long form: a whole network year

On a broker, cache and services of its own (var/chaos/), it publishes a planned year at a
steady rate while it kills every service with SIGKILL at random moments (at least twice
each) and restarts it, restarts the Kafka broker once, stops Redis for a while, and slips
malformed messages among the good ones. Then it checks that every input has exactly one
answer, that the finance and outcomes reports equal the plan's ground truth to the unit,
that the dead letters hold exactly the malformed messages, and that no envelope is exceeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from deploy.harness import Environment, ServiceProcess, ServiceProcesses
from deploy.ops import original_bytes
from deploy.simulation.plan import YearPlan, plan_year
from deploy.simulation.run import Endpoints, Outcome, Progress, Simulation
from deploy.writers import Writers, writer_accesses
from shared.contract import Topic
from shared.kafka import topic_partitions
from shared.kafka_access import KafkaAccess
from shared.settings import PROJECT_ROOT

CHAOS_DIR = PROJECT_ROOT / "var" / "chaos"
SERVICES = ("referrals", "aids", "outcomes")
MALFORMED_TOPICS = (Topic.REFERRALS_SUBMITTED, Topic.AIDS_REQUESTED, Topic.EXITS_SUBMITTED,
                    Topic.ENROLLMENTS_SUBMITTED, Topic.BUDGETS_SUBMITTED)


@dataclass
class Journal:
    """What the chaos did, in order, for the summary."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)
    malformed: dict[str, bytes] = field(default_factory=dict)  # marker -> original

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:6.1f}s  {text}"
        self.lines.append(line)
        print(line, flush=True)


class Chaos:
    def __init__(self, env: Environment, stack: ServiceProcesses, journal: Journal, seed: int,
                 malformed: int, pause: float) -> None:
        self.env = env
        self.stack = stack
        self.journal = journal
        self.rng = random.Random(seed)
        self.malformed_count = malformed
        self.pause = pause

    def schedule(self) -> list[str]:
        """Two kills of each service in a random order, the broker and Redis in between."""
        kills = [name for name in SERVICES for _ in range(2)]
        self.rng.shuffle(kills)
        middle = len(kills) // 2
        return [*kills[:2], "redis", *kills[2:middle], "kafka", *kills[middle:]]

    async def run(self) -> None:
        producer = Writers(writer_accesses(self.env.kafka), acks="all")
        await producer.start()
        try:
            steps = self.schedule()
            per_step = max(1, self.malformed_count // len(steps))
            for step in steps:
                await asyncio.sleep(self.pause * self.rng.uniform(0.5, 1.5))
                await self._slip_malformed(producer, per_step)
                if step == "kafka":
                    await producer.flush()
                    await asyncio.to_thread(self._restart_kafka)
                elif step == "redis":
                    await self._pause_redis()
                else:
                    await asyncio.to_thread(self._kill_and_restart, step)
            missing = self.malformed_count - len(self.journal.malformed)
            await self._slip_malformed(producer, missing)
            await producer.flush()
        finally:
            await producer.stop()

    def _kill_and_restart(self, name: str) -> None:
        service: ServiceProcess = self.stack.services[name]
        assert service.process is not None
        service.process.send_signal(signal.SIGKILL)
        service.process.wait()
        service.process = None
        self.journal.kills[name] = self.journal.kills.get(name, 0) + 1
        self.journal.note(f"SIGKILL {name} (kill {self.journal.kills[name]})")
        time.sleep(self.rng.uniform(0.2, 2.0))
        service.start(timeout=120, wait="live")
        self.journal.note(f"restarted {name}")

    def _restart_kafka(self) -> None:
        self.journal.note("stopping the Kafka broker")
        self.env.kafka.stop()
        time.sleep(1)
        self.env.kafka.start()
        self.journal.note("Kafka broker back")

    async def _pause_redis(self) -> None:
        self.journal.note("stopping Redis")
        await asyncio.to_thread(self.env.redis.stop)
        await asyncio.sleep(self.pause * 2)
        await asyncio.to_thread(self.env.redis.start)
        self.journal.note("Redis back")

    async def _slip_malformed(self, producer: Writers, count: int) -> None:
        for _ in range(count):
            marker = uuid.uuid4().hex
            topic = self.rng.choice(MALFORMED_TOPICS)
            raw = self.rng.choice((
                f'{{"chaos": "{marker}", "not closed"'.encode(),  # not JSON
                json.dumps({"event_id": str(uuid.uuid4()), "schema_version": 2,
                            "chaos": marker}).encode(),  # wrong version, missing fields
                json.dumps({"event_id": marker, "occurred_at": "yesterday",
                            "schema_version": 1}).encode(),  # not a UUID, not a date
                b"\xff\xfe" + marker.encode(),  # not UTF-8: kept in base64
            ))
            self.journal.malformed[marker] = raw
            await producer.send(topic, raw, key=f"chaos-{marker[:8]}".encode())
        if count:
            self.journal.note(f"{count} malformed messages slipped in")


async def dead_letters(reader: KafkaAccess) -> list[dict[str, Any]]:
    """Every letter of the dead-letter topic (one per event_id)."""
    letters, _ends = await _read_dead_letters(reader)
    return letters


async def dead_letter_ends(reader: KafkaAccess) -> dict[int, int]:
    """The dead-letter topic's end offset per partition (what a failed check reports)."""
    _letters, ends = await _read_dead_letters(reader)
    return ends


async def _read_dead_letters(
    reader: KafkaAccess,
) -> tuple[list[dict[str, Any]], dict[int, int]]:
    partitions = await topic_partitions(reader, [Topic.DEADLETTER])
    consumer = AIOKafkaConsumer(**reader.client_options(), group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        letters: dict[str, dict[str, Any]] = {}
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    letter = json.loads(record.value)
                    letters[letter["event_id"]] = letter
        return list(letters.values()), {tp.partition: end for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def settled_dead_letters(
    reader: KafkaAccess, journal: Journal, timeout: float = 60
) -> list[dict[str, Any]]:
    """The dead letters once every malformed message has had the time to become one."""
    deadline = time.monotonic() + timeout
    while True:
        letters = await dead_letters(reader)
        if len(letters) >= len(journal.malformed) or time.monotonic() > deadline:
            return letters
        await asyncio.sleep(1)


def check_dead_letters(letters: list[dict[str, Any]], journal: Journal) -> list[str]:
    originals = [original_bytes(letter) or b"" for letter in letters]
    expected = sorted(journal.malformed.values())
    if sorted(originals) == expected:
        return []
    extra = len([o for o in originals if o not in journal.malformed.values()])
    return [f"dead letters: {len(originals)} letters for {len(expected)} malformed messages "
            f"({extra} that were not malformed)"]


def dead_letter_counters(stack: ServiceProcesses) -> dict[str, list[str]]:
    """What each service's /metrics says of its dead letters and parked outbox rows (since
    its last restart): where a missing dead letter stopped."""
    wanted = ("e2c_dead_letters_total", "e2c_outbox_parked_total", "e2c_outbox_relay_failures")
    counters: dict[str, list[str]] = {}
    for name, service in stack.services.items():
        try:
            text = httpx.get(f"{service.url}/metrics", timeout=5).text
        except httpx.HTTPError as error:
            counters[name] = [f"unreachable: {type(error).__name__}"]
            continue
        counters[name] = [line for line in text.splitlines() if line.startswith(wanted)]
    return counters


def check_envelopes(outcome: Outcome, plan: YearPlan) -> list[str]:
    problems = []
    committed = outcome.finance_delta["budgets"]
    for kind, envelope in plan.envelopes.items():
        spent = committed[kind.value]["committed_cents"]
        if spent > envelope:
            problems.append(f"envelope {kind.value} exceeded: {spent} > {envelope}")
    return problems


async def run_chaos(trainees: int, seed: int, duration: float, malformed: int) -> int:
    env = Environment(CHAOS_DIR)
    stack = env.stack("services")
    journal = Journal()
    try:
        env.start()  # inside: a start that fails halfway still stops what it started
        for name in SERVICES:
            stack.add(name, "", {"E2C_LOG_LEVEL": "WARNING"}).start(timeout=120)
        plan = plan_year(2024, trainees, seed)
        # The traffic and the faults both span `duration`: every fault hits a live pipeline.
        rate = plan.input_count() / duration
        pause = duration / (len(SERVICES) * 2 + 3)
        journal.note(f"replaying a year of {trainees} trainees: {plan.input_count()} inputs "
                     f"at {rate:.0f}/s over about {duration:.0f}s, {malformed} malformed "
                     "among them")
        endpoints = Endpoints.of(env.kafka, stack.services["aids"].url,
                                 stack.services["outcomes"].url, env.admin_token)
        chaos = asyncio.create_task(Chaos(env, stack, journal, seed, malformed, pause).run())

        async def settle() -> None:
            await chaos
            for service in stack.services.values():
                await asyncio.to_thread(service.wait_ready, 120)
            journal.note("faults over; every service ready")

        outcome = await Simulation(plan, endpoints, rate, Progress(sys.stderr.isatty()),
                                   timeout=900).run(before_reports=settle)
        letters = await settled_dead_letters(endpoints.reader, journal)
        problems = [*outcome.differences, *check_dead_letters(letters, journal),
                    *check_envelopes(outcome, plan)]
        if len(letters) != len(journal.malformed):
            problems.append(f"{Topic.DEADLETTER} end offsets by partition: "
                            f"{await dead_letter_ends(endpoints.reader)}; services' counters: "
                            f"{dead_letter_counters(stack)}")
        summary(journal, plan, outcome, letters, problems)
        return 1 if problems else 0
    finally:
        stack.stop_all()
        env.stop()


def summary(journal: Journal, plan: YearPlan, outcome: Outcome, letters: list[dict[str, Any]],
            problems: list[str]) -> None:
    print("\nwhat the chaos did:")
    print(f"  kills: {', '.join(f'{n} x{c}' for n, c in sorted(journal.kills.items()))}; "
          "the Kafka broker restarted once; Redis stopped once")
    print(f"  malformed messages sent: {len(journal.malformed)}")
    print("what it found:")
    print(f"  inputs: {plan.input_count()}, answered: {len(outcome.answers)}")
    print(f"  dead letters: {len(letters)}")
    if problems:
        print(f"FAILED: {len(problems)} problems", file=sys.stderr)
        for problem in problems[:50]:
            print(f"  {problem}", file=sys.stderr)
    else:
        print("  nothing lost, nothing counted twice: every input answered once, the reports "
              "equal the ground truth, the dead letters are exactly the malformed messages, "
              "no envelope exceeded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainees", type=int, default=1750)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--duration", type=float, default=180,
                        help="seconds over which the inputs and the faults are spread")
    parser.add_argument("--malformed", type=int, default=40)
    args = parser.parse_args()
    sys.exit(asyncio.run(run_chaos(args.trainees, args.seed, args.duration, args.malformed)))


if __name__ == "__main__":
    main()
