"""`make chaos`: a simulated year replayed while the system is hurt, then checked.

    python -m deploy.chaos --trainees 300 --duration 45   # the short form (CI runs it)
    make chaos                                   # the long form: a whole network year
    make chaos ARGS="--brokers 3"                # on a cluster of three KRaft nodes

On a broker, cache and services of its own (var/chaos/), it publishes a planned year at a
steady rate while it kills every service with SIGKILL at random moments (at least twice
each) and restarts it, restarts the Kafka broker once, stops Redis for a while, and slips
malformed messages among the good ones. Then it checks that every input has exactly one
answer, that the finance and outcomes reports equal the plan's ground truth to the unit,
that the dead letters hold exactly the malformed messages, and that no envelope is exceeded.

With `--brokers 3` the broker is a cluster of three nodes (replication 3, min ISR 2) and each
service runs `--instances` (2 by default) on one PostgreSQL store per service: instead of a
broker restart, the node leading the busiest input partition is SIGKILLed and started again
later, and each service kill hits one instance while the other goes on. The run watches the
decision topics and prints the longest pause in decisions while a node was down, and the
longest for the rest of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from deploy.harness import Environment, ServiceProcess, ServiceProcesses
from deploy.local_kafka import LocalKafkaCluster, partition_leaders
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
INPUT_TOPICS = (*MALFORMED_TOPICS, Topic.DEROGATIONS_SUBMITTED)
DECISION_TOPICS = (Topic.REFERRALS_DECIDED, Topic.ENROLLMENTS_DECIDED, Topic.AIDS_DECIDED,
                   Topic.EXITS_DECIDED)


@dataclass
class Journal:
    """What the chaos did, in order, for the summary."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)
    malformed: dict[str, bytes] = field(default_factory=dict)  # marker -> original
    broker_down: list[tuple[float, float]] = field(default_factory=list)  # monotonic

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
        """Two kills of each service in a random order, the broker and Redis in between.
        A cluster node is killed first, while the traffic flows (restarting services takes
        longer than the traffic on a small machine): its outage overlaps the next kills."""
        kills = [name for name in SERVICES for _ in range(2)]
        self.rng.shuffle(kills)
        middle = len(kills) // 2
        if isinstance(self.env.kafka, LocalKafkaCluster):
            return ["kafka", *kills[:2], "redis", *kills[2:]]
        return [*kills[:2], "redis", *kills[2:middle], "kafka", *kills[middle:]]

    async def run(self) -> None:
        producer = Writers(writer_accesses(self.env.kafka), acks="all")
        await producer.start()
        try:
            steps = self.schedule()
            outages: list[asyncio.Task[None]] = []
            per_step = max(1, self.malformed_count // len(steps))
            for step in steps:
                await asyncio.sleep(self.pause * self.rng.uniform(0.5, 1.5))
                await self._slip_malformed(producer, per_step)
                if step == "kafka" and isinstance(self.env.kafka, LocalKafkaCluster):
                    outages.append(asyncio.create_task(self._node_outage(self.env.kafka)))
                elif step == "kafka":
                    await producer.flush()
                    await asyncio.to_thread(self._restart_kafka)
                elif step == "redis":
                    await self._pause_redis()
                else:
                    await asyncio.to_thread(self._kill_and_restart, step)
            missing = self.malformed_count - len(self.journal.malformed)
            await self._slip_malformed(producer, missing)
            await producer.flush()
            await asyncio.gather(*outages)
        finally:
            await producer.stop()

    def _kill_and_restart(self, name: str) -> None:
        """SIGKILLs one instance of the service (picked at random when it runs several: the
        others go on) and starts it again."""
        label = self.rng.choice(instances_of(self.stack, name))
        service: ServiceProcess = self.stack.services[label]
        assert service.process is not None
        service.process.send_signal(signal.SIGKILL)
        service.process.wait()
        service.process = None
        self.journal.kills[name] = self.journal.kills.get(name, 0) + 1
        self.journal.note(f"SIGKILL {label} (kill {self.journal.kills[name]} of {name})")
        time.sleep(self.rng.uniform(0.2, 2.0))
        service.start(timeout=120, wait="live")
        self.journal.note(f"restarted {label}")

    async def _node_outage(self, cluster: LocalKafkaCluster) -> None:
        """SIGKILLs the node that leads the busiest input partition, keeps it down while the
        traffic and the other faults go on, then starts it again."""
        admin = cluster.admin_access()
        topic, partition = await busiest_partition(admin)
        leader = (await partition_leaders(admin, topic))[partition]
        node = cluster.node(leader)
        down = time.monotonic()
        await asyncio.to_thread(node.kill)
        self.journal.note(f"SIGKILL Kafka node {leader}, leader of {topic}[{partition}], "
                          "the busiest input partition")
        await asyncio.sleep(self.pause * 3)
        await asyncio.to_thread(node.start, 120)
        self.journal.broker_down.append((down, time.monotonic()))
        self.journal.note(f"Kafka node {leader} back")

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


def instances_of(stack: ServiceProcesses, name: str) -> list[str]:
    return [label for label, service in stack.services.items() if service.name == name]


async def busiest_partition(access: KafkaAccess) -> tuple[str, int]:
    """The input partition that holds the most records now."""
    partitions = await topic_partitions(access, list(INPUT_TOPICS))
    consumer = AIOKafkaConsumer(**access.client_options(), group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    busiest = max(ends, key=lambda tp: ends[tp])
    return busiest.topic, busiest.partition


class DecisionWatch:
    """When each decision arrives (monotonic clock), read as the partners read them: from
    every decision topic, from the end at the start of the run."""

    def __init__(self, access: KafkaAccess) -> None:
        self.access = access
        self.arrivals: list[float] = []
        self.by_topic: dict[str, list[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        partitions = await topic_partitions(self.access, list(DECISION_TOPICS))
        consumer = AIOKafkaConsumer(**self.access.client_options(), group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for tp in partitions:
                await consumer.position(tp)
            self._ready.set()
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                now = time.monotonic()
                for tp, records in batches.items():
                    self.arrivals.extend(now for _ in records)
                    self.by_topic.setdefault(tp.topic, []).extend(now for _ in records)
        finally:
            await consumer.stop()


def longest_pauses(
    arrivals: list[float], windows: list[tuple[float, float]]
) -> tuple[float | None, float]:
    """The longest gap between two decisions that overlaps one of `windows` (None when no
    decisions came both before and after a window's start or end), and the longest of the
    other gaps."""
    during: float | None = None
    rest = 0.0
    times = sorted(arrivals)
    for before, after in itertools.pairwise(times):
        gap = after - before
        if any(before < up and after > down for down, up in windows):
            during = gap if during is None else max(during, gap)
        else:
            rest = max(rest, gap)
    return during, rest


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


def start_services(env: Environment, stack: ServiceProcesses, instances: int) -> None:
    """Each service once on SQLite, or `instances` times on one PostgreSQL store of its own;
    the instances of a service start together."""
    for name in SERVICES:
        extra = {"E2C_LOG_LEVEL": "WARNING"}
        if instances > 1:
            extra[f"{name.upper()}_DATABASE_URL"] = env.database(f"e2c_chaos_{name}")
        labels = [f"-{i + 1}" if instances > 1 else "" for i in range(instances)]
        added = [stack.add(name, label, extra) for label in labels]
        with ThreadPoolExecutor(max_workers=len(added)) as pool:
            for started in [pool.submit(service.start, None, 120) for service in added]:
                started.result()


async def run_chaos(trainees: int, seed: int, duration: float, malformed: int,
                    brokers: int = 1, instances: int = 1) -> int:
    env = Environment(CHAOS_DIR, brokers=brokers)
    stack = env.stack("services")
    journal = Journal()
    watch: DecisionWatch | None = None
    try:
        env.start()  # inside: a start that fails halfway still stops what it started
        start_services(env, stack, instances)
        plan = plan_year(2024, trainees, seed)
        # The traffic and the faults both span `duration`: every fault hits a live pipeline.
        rate = plan.input_count() / duration
        pause = duration / (len(SERVICES) * 2 + 3)
        journal.note(f"replaying a year of {trainees} trainees: {plan.input_count()} inputs "
                     f"at {rate:.0f}/s over about {duration:.0f}s, {malformed} malformed "
                     "among them")
        endpoints = Endpoints.of(env.kafka, stack.services[instances_of(stack, "aids")[0]].url,
                                 stack.services[instances_of(stack, "outcomes")[0]].url,
                                 env.admin_token)
        watch = DecisionWatch(endpoints.reader)
        await watch.start()
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
        await watch.stop()
        summary(journal, plan, outcome, letters, problems)
        print_pauses(journal, watch)
        return 1 if problems else 0
    finally:
        if watch is not None:
            await watch.stop()
        stack.stop_all()
        env.stop()


def summary(journal: Journal, plan: YearPlan, outcome: Outcome, letters: list[dict[str, Any]],
            problems: list[str]) -> None:
    print("\nwhat the chaos did:")
    broker = ("a Kafka node SIGKILLed and started again" if journal.broker_down
              else "the Kafka broker restarted once")
    print(f"  kills: {', '.join(f'{n} x{c}' for n, c in sorted(journal.kills.items()))}; "
          f"{broker}; Redis stopped once")
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


def print_pauses(journal: Journal, watch: DecisionWatch) -> None:
    during, rest = longest_pauses(watch.arrivals, journal.broker_down)
    print(f"decisions seen: {len(watch.arrivals)}")
    if journal.broker_down and during is None:
        print("no decision was due while a Kafka node was down: no pause measured")
    elif journal.broker_down:
        print(f"longest pause in decisions while a Kafka node was down: {during:.2f}s "
              f"(node down {', '.join(f'{up - down:.1f}s' for down, up in journal.broker_down)})")
    print(f"longest pause in decisions otherwise: {rest:.2f}s")
    for topic, arrivals in sorted(watch.by_topic.items()):
        during, rest = longest_pauses(arrivals, journal.broker_down)
        shown = "none due" if during is None else f"{during:.2f}s"
        print(f"  {topic}: {len(arrivals)} decisions, longest pause while a node was down "
              f"{shown}, otherwise {rest:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainees", type=int, default=1750)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--duration", type=float, default=180,
                        help="seconds over which the inputs and the faults are spread")
    parser.add_argument("--malformed", type=int, default=40)
    parser.add_argument("--brokers", type=int, default=1,
                        help="Kafka nodes: 1 (restarted once) or 3 (the busiest partition's "
                             "leader SIGKILLed)")
    parser.add_argument("--instances", type=int, default=None,
                        help="instances of each service, on PostgreSQL when more than one "
                             "(default: 2 with several brokers, else 1)")
    args = parser.parse_args()
    instances = args.instances or (2 if args.brokers > 1 else 1)
    sys.exit(asyncio.run(run_chaos(args.trainees, args.seed, args.duration, args.malformed,
                                   args.brokers, instances)))


if __name__ == "__main__":
    main()
