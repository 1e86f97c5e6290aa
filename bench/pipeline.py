"""Throughput and latency of the pipeline against the raw Kafka ceiling, on this machine.

    make bench                       # everything, with the default sizes
    make bench ARGS="--repeat 5"     # the default figures five times: values and medians
    make bench-pipeline ARGS="--events 2000 --trainees 300 --skip-scaling --skip-cluster"

One run starts its own broker, Redis and (for the PostgreSQL runs) PostgreSQL under
var/bench/, then measures:

1. raw: aiokafka alone, one producer and one consumer, N small JSON messages (the size of
   a referral) through the same broker: the ceiling (and on a second broker of the same
   build without SASL nor ACLs).
2. per stage, on SQLite (the services as deployed by default, one instance each) then on
   PostgreSQL (a broker of its own): N referrals published at once, timed to their last
   decision; A of the trainees enrolled (not timed); then A aid requests alone, and A exits
   alone, each published at once and timed from the first publish to the last answer.
3. lifecycle (on the SQLite stack): T young people taken through referral, enrollment, one
   aid and their exit (4 inputs each, each published when the previous answer arrives),
   and where its time went: each service's `e2c_batch_seconds_total` (its /metrics) read
   before and after, per stage (decode, prepare, handle, write, commit, ack, dispatch; the
   relay's publish and store work beside them) and idle.
4. scaling (`--skip-scaling` leaves it out): 1, 2 and 3 instances of each service sharing
   one PostgreSQL store; each count decides N referrals (timed), enrolls them, then decides
   A aid requests of the enrolled trainees (timed), printed as inputs/s and per core.
5. three brokers (`--skip-cluster` leaves it out): raw aiokafka and the referral pipeline
   again on a cluster of three KRaft nodes (replication 3, min.insync.replicas 2,
   acks=all), each printed as a ratio to the same run on the one broker above.

`--repeat R` runs 1 to 3 R times (each on fresh brokers and stores) and prints each
figure's R values and median, and each ratio's median; scaling and the cluster run once.
Each line gives events per second (N / from the first publish to the last answer) and
the p50/p99 latency from publish to answer. Ratios: each stage / raw in the same run, and
aid requests and exits / the referrals on the same store. The figures go to
var/bench/pipeline.json. A benchmark, never a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from deploy.harness import Environment, ServiceProcesses, free_port
from deploy.kafka_security import OPS, access
from deploy.local_kafka import LocalBrokers, LocalKafka
from deploy.writers import Writers, writer_accesses
from shared.contract import Topic
from shared.kafka import topic_partitions
from shared.settings import PROJECT_ROOT

BENCH_DIR = PROJECT_ROOT / "var" / "bench"
RESULTS = BENCH_DIR / "pipeline.json"


@dataclass
class Figure:
    name: str
    events: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def figure(name: str, sent: dict[str, float], received: dict[str, float]) -> Figure:
    latencies = sorted((received[k] - sent[k]) * 1000 for k in sent if k in received)
    if len(latencies) < len(sent):
        raise RuntimeError(f"{name}: {len(sent) - len(latencies)} events never answered")
    seconds = max(received.values()) - min(sent.values())
    return Figure(name, len(sent), seconds, statistics.median(latencies),
                  latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))])


# --- the environment -------------------------------------------------------------------------


def quiet(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"E2C_LOG_LEVEL": "WARNING", **(extra or {})}


# --- 1. raw -----------------------------------------------------------------------------------


async def raw_ceiling(kafka: LocalBrokers, events: int) -> Figure:
    """One producer and one consumer on a topic of their own, both as the admin principal
    (authenticated as every client is: SASL/SCRAM, with the ACLs checked)."""
    return await _raw(kafka.admin_access().client_options(), events, "raw aiokafka")


async def raw_without_authentication(events: int) -> Figure:
    """The same on a broker of the same build without SASL nor ACLs: what they cost."""
    broker = LocalKafka(BENCH_DIR / "open", port=free_port(), controller_port=free_port(),
                        authenticated=False)
    broker.purge()
    broker.start()
    try:
        return await _raw({"bootstrap_servers": broker.bootstrap}, events,
                          "raw aiokafka, no authentication")
    finally:
        broker.purge()


async def _raw(options: dict[str, Any], events: int, name: str,
               replication: int = 1) -> Figure:
    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    configs = {"min.insync.replicas": str(min_insync(replication))}
    await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=replication,
                                        topic_configs=configs)])
    await admin.close()
    padding = "x" * 420  # about the size of a referral
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    consumer = await _consumer_at_end(options, [TopicPartition(topic, p) for p in range(3)])
    reading = asyncio.create_task(_read(consumer, received, "id", events))
    producer = AIOKafkaProducer(**options, linger_ms=5, acks="all",
                                enable_idempotence=True)
    await producer.start()
    futures = []
    for index in range(events):
        key = str(index)
        sent[key] = time.time()
        body = json.dumps({"id": key, "padding": padding}).encode()
        futures.append(await producer.send(topic, body, key=key.encode()))
    await asyncio.gather(*futures)
    await producer.stop()
    await reading
    await consumer.stop()
    return figure(name, sent, received)


def min_insync(replication: int) -> int:
    """The project's rule: with three replicas a write needs two of them."""
    return 2 if replication >= 3 else 1


async def _consumer_at_end(
    options: dict[str, Any], partitions: list[TopicPartition]
) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await consumer.start()
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for partition in partitions:
        await consumer.position(partition)
    return consumer


async def _answers_at_end(kafka: LocalBrokers, topics: list[Topic]) -> AIOKafkaConsumer:
    """A consumer of the services' answers, as ops (who may read every topic)."""
    ops = access(kafka, OPS)
    return await _consumer_at_end(ops.client_options(), await topic_partitions(ops, topics))


async def _read(consumer: AIOKafkaConsumer, received: dict[str, float], field: str,
                expected: int, on_answer: Callable[[dict[str, Any]], Awaitable[None]] | None = None
                ) -> None:
    while len(received) < expected:
        batches = await consumer.getmany(timeout_ms=500, max_records=5000)
        now = time.time()
        for records in batches.values():
            for record in records:
                body = json.loads(record.value)
                key = body.get(field)
                if key is not None and key not in received:
                    received[key] = now
                    if on_answer is not None:
                        await on_answer(body)


# --- 2. referrals --------------------------------------------------------------------------------


def referral(index: int, tag: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()), "occurred_at": "2024-03-04T09:12:00+01:00",
        "schema_version": 1, "referral_id": f"B-{tag}-{index:07d}",
        "agency": {"kind": "mission_locale", "id": "ml-toulouse", "name": "ML Toulouse"},
        "school_id": "toulouse",
        "candidate": {"first_name": "Inès", "last_name": f"Bench-{tag}-{index}",
                      "birth_date": "2006-05-17", "email": None, "phone": None,
                      "highest_qualification": "none", "in_school": False,
                      "has_work_experience": False, "rqth": False, "qpv_resident": True},
    }


async def referral_pipeline(kafka: LocalBrokers, events: int, name: str) -> Figure:
    tag = uuid.uuid4().hex[:8]
    inputs = [referral(i, tag) for i in range(events)]
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    consumer = await _answers_at_end(kafka, [Topic.REFERRALS_DECIDED])
    reading = asyncio.create_task(_read(consumer, received, "request_event_id", events))
    producer = Writers(writer_accesses(kafka), linger_ms=5, acks="all")
    await producer.start()
    futures = []
    for event in inputs:
        sent[event["event_id"]] = time.time()
        futures.append(await producer.send(Topic.REFERRALS_SUBMITTED,
                                           json.dumps(event).encode(),
                                           key=event["referral_id"].encode()))
    await asyncio.gather(*futures)
    await asyncio.wait_for(reading, timeout=600)
    await producer.stop()
    await consumer.stop()
    return figure(name, sent, received)


# --- 2b. per stage: referrals, aid requests alone, exits alone ---------------------------


@dataclass
class Staged:
    """The timed stages of one store: referrals, then aid requests alone, then (unless left
    out) exits alone, each published at once and timed from its first publish to its last
    answer; the trainees the later stages need made first (enrollments, not timed)."""

    referrals: Figure
    aids: Figure
    exits: Figure | None = None
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> answers

    def figures(self) -> list[Figure]:
        return [self.referrals, self.aids, *([self.exits] if self.exits else [])]


async def stages(kafka: LocalBrokers, referrals: int, later: int, label: str,
                 exits: bool = True) -> Staged:
    """N referrals decided (timed); the first A of them enrolled (not timed); one meal request
    per enrolled trainee decided (timed), then (`exits`) each of them exits (timed): the
    stages a month-start wave and the year's end load most, each alone."""
    tag = uuid.uuid4().hex[:8]
    inputs = [referral(i, tag) for i in range(referrals)]
    producer = Writers(writer_accesses(kafka), linger_ms=5, acks="all")
    await producer.start()
    statuses: dict[str, dict[str, int]] = {"referrals": {}, "aids": {}, "exits": {}}
    try:
        decided, trainees = await _stage(kafka, producer, Topic.REFERRALS_SUBMITTED,
                                         Topic.REFERRALS_DECIDED,
                                         [(e["referral_id"], e) for e in inputs],
                                         f"referrals ({label})", statuses["referrals"])
        accepted = [ref for ref, trainee in trainees.items() if trainee][:later]
        enrollments = [(ref, {**_base(), "referral_id": ref, "school_id": "toulouse",
                              "enrolled_on": "2024-04-02"}) for ref in accepted]
        _, enrolled = await _stage(kafka, producer, Topic.ENROLLMENTS_SUBMITTED,
                                   Topic.ENROLLMENTS_DECIDED, enrollments, "enrollments")
        people = [t for t in enrolled.values() if t]
        requests = [(trainee, {**_base(), "request_id": f"BA-{tag}-{index:07d}",
                               "trainee_id": trainee, "kind": "meals", "quantity": 10,
                               "amount_cents": None, "period_start": "2024-04-02",
                               "period_end": "2024-04-30"})
                    for index, trainee in enumerate(people)]
        aid_figure, _ = await _stage(kafka, producer, Topic.AIDS_REQUESTED, Topic.AIDS_DECIDED,
                                     requests, f"aid requests ({label})", statuses["aids"])
        exit_figure = None
        if exits:
            leaving = [(trainee, {**_base(), "trainee_id": trainee, "exited_on": "2024-09-30",
                                  "outcome": "durable_employment", "satisfied": True})
                       for trainee in people]
            exit_figure, _ = await _stage(kafka, producer, Topic.EXITS_SUBMITTED,
                                          Topic.EXITS_DECIDED, leaving, f"exits ({label})",
                                          statuses["exits"])
    finally:
        await producer.stop()
    return Staged(decided, aid_figure, exit_figure, statuses)


def _base() -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "occurred_at": "2024-05-01T09:00:00+02:00",
            "schema_version": 1}


async def _stage(kafka: LocalBrokers, producer: Writers, topic: Topic, answers: Topic,
                 inputs: list[tuple[str, dict[str, Any]]], name: str,
                 statuses: dict[str, int] | None = None,
                 ) -> tuple[Figure, dict[str, str | None]]:
    """Publishes every input at once, waits for every answer; returns the stage's figure and
    each input key's `trainee_id` in its answer (None when refused). `statuses`, if given,
    counts the answers by their `status`."""
    sent = {event["event_id"]: 0.0 for _, event in inputs}
    received: dict[str, float] = {}
    trainee_of_request: dict[str, str | None] = {}
    consumer = await _answers_at_end(kafka, [answers])
    reading = asyncio.create_task(_answers_to(consumer, set(sent), received,
                                              trainee_of_request, name, statuses))
    futures = []
    for key, event in inputs:
        sent[event["event_id"]] = time.time()
        futures.append(await producer.send(topic, json.dumps(event).encode(),
                                           key=key.encode()))
    await asyncio.gather(*futures)
    await asyncio.wait_for(reading, timeout=900)
    await consumer.stop()
    trainees = {key: trainee_of_request.get(event["event_id"]) for key, event in inputs}
    return figure(name, sent, received), trainees


async def _answers_to(consumer: AIOKafkaConsumer, wanted: set[str], received: dict[str, float],
                      trainee_of_request: dict[str, str | None], name: str,
                      statuses: dict[str, int] | None = None) -> None:
    """Reads until every input in `wanted` is answered; answers to other inputs (none are
    expected: each run has a broker of its own) are counted apart, never taken for ours."""
    foreign: set[str] = set()
    while not wanted <= received.keys():
        batches = await consumer.getmany(timeout_ms=500, max_records=5000)
        now = time.time()
        for records in batches.values():
            for record in records:
                body = json.loads(record.value)
                request = body.get("request_event_id")
                if request in wanted and request not in received:
                    received[request] = now
                    trainee_of_request[request] = body.get("trainee_id")
                    if statuses is not None:
                        status = str(body.get("status"))
                        statuses[status] = statuses.get(status, 0) + 1
                elif request not in wanted:
                    foreign.add(str(request))
    if foreign:
        print(f"{name}: {len(foreign)} answers to inputs of earlier runs seen meanwhile")


# --- 3. lifecycle -------------------------------------------------------------------------------


async def lifecycle(kafka: LocalBrokers, trainees: int) -> Figure:
    """Each young person: referral → enrollment → meals → exit, the next input published as
    soon as the previous answer arrives, all people at once."""
    tag = uuid.uuid4().hex[:8]
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    producer = Writers(writer_accesses(kafka), linger_ms=2, acks="all")
    await producer.start()
    topics = [Topic.REFERRALS_DECIDED, Topic.ENROLLMENTS_DECIDED, Topic.AIDS_DECIDED,
              Topic.EXITS_DECIDED]
    consumer = await _answers_at_end(kafka, topics)

    async def send(topic: str, key: str, body: dict[str, Any]) -> None:
        sent[body["event_id"]] = time.time()
        await producer.send(topic, json.dumps(body).encode(), key=key.encode())

    async def next_step(answer: dict[str, Any]) -> None:
        base = {"event_id": str(uuid.uuid4()), "occurred_at": "2024-05-01T09:00:00+02:00",
                "schema_version": 1}
        if "agency_id" in answer:  # a referral decided: enroll
            await send(Topic.ENROLLMENTS_SUBMITTED, answer["referral_id"], {
                **base, "referral_id": answer["referral_id"], "school_id": "toulouse",
                "enrolled_on": "2024-04-02"})
        elif "age_at_entry" in answer:  # enrolled: meals
            trainee = answer["trainee_id"]
            await send(Topic.AIDS_REQUESTED, trainee, {
                **base, "request_id": f"BM-{uuid.uuid4().hex[:12]}", "trainee_id": trainee,
                "kind": "meals", "quantity": 10, "amount_cents": None,
                "period_start": "2024-04-02", "period_end": "2024-04-30"})
        elif "request_id" in answer:  # aid decided: exit
            trainee = answer["trainee_id"]
            await send(Topic.EXITS_SUBMITTED, trainee, {
                **base, "trainee_id": trainee, "exited_on": "2024-09-30",
                "outcome": "durable_employment", "satisfied": True})

    reading = asyncio.create_task(
        _read(consumer, received, "request_event_id", trainees * 4, next_step))
    for index in range(trainees):
        event = referral(index, tag)
        await send(Topic.REFERRALS_SUBMITTED, event["referral_id"], event)
    await asyncio.wait_for(reading, timeout=900)
    await producer.stop()
    await consumer.stop()
    return figure("whole lifecycle (4 inputs each)", sent, received)


# --- 5. three brokers ------------------------------------------------------------------------


def three_broker_runs(events: int) -> list[Figure]:
    """Raw aiokafka and the referral pipeline (1 instance, SQLite) on three KRaft nodes,
    every topic with replication 3 and min.insync.replicas 2, every producer acks=all."""
    env = Environment(BENCH_DIR / "cluster", brokers=3)
    env.start()
    try:
        raw = asyncio.run(_raw(env.kafka.admin_access().client_options(), events,
                               "raw aiokafka, 3 brokers", replication=3))
        stack = start_services(env, "stack", 1, postgres=False)
        try:
            pipeline = asyncio.run(referral_pipeline(
                env.kafka, events, "referrals (1 instance, SQLite), 3 brokers"))
        finally:
            stack.stop_all()
    finally:
        env.stop()
    return [raw, pipeline]


# --- the run ------------------------------------------------------------------------------------


def start_services(
    env: Environment, label: str, instances: int, postgres: bool
) -> ServiceProcesses:
    stack = env.stack(label)
    stores = {}
    if postgres:
        stores = {f"{name.upper()}_DATABASE_URL": env.database(f"bench_{label}_{name}")
                  for name in ("referrals", "aids", "outcomes")}
    for name in ("referrals", "aids", "outcomes"):
        for instance in range(instances):
            stack.add(name, f"-{instance + 1}", quiet(stores)).start(timeout=120)
    return stack


def machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform()}


# --- where the lifecycle's time goes ------------------------------------------------------------

SERVICES = ("referrals", "aids", "outcomes")
# Columns of the time table: the consumer's stages (see shared.observability), then the
# relay's, which runs beside the consumer (its seconds overlap the batches').
CONSUMER_COLUMNS = ("decode", "prepare", "handle", "write", "commit", "ack", "dispatch")
RELAY_COLUMNS = ("publish", "relay_store")
CPU_COLUMNS = ("decode", "prepare", "handle", "write", "commit")


ELAPSED, CPU = "e2c_batch_seconds_total", "e2c_batch_cpu_seconds_total"
Seconds = dict[str, dict[str, float]]  # service -> stage -> seconds


def stage_seconds(stack: ServiceProcesses) -> dict[str, Seconds]:
    """Per counter (`ELAPSED`, `CPU`), per service (its instances summed), the seconds by
    stage, from each instance's /metrics."""
    totals: dict[str, Seconds] = {metric: {name: {} for name in SERVICES}
                                  for metric in (ELAPSED, CPU)}
    for service in stack.services.values():
        text = httpx.get(f"{service.url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in totals:
                    own = totals[sample.name][service.name]
                    stage = sample.labels["stage"]
                    own[stage] = own.get(stage, 0.0) + sample.value
    return totals


def time_table(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
               wall: float) -> dict[str, dict[str, float]]:
    """Per service, the seconds each stage took during a run of `wall` seconds, and `idle`:
    the wall time its consumer spent on no batch (waiting for records)."""
    table: dict[str, dict[str, float]] = {}
    for name in SERVICES:
        row = {stage: after[name].get(stage, 0.0) - before[name].get(stage, 0.0)
               for stage in (*CONSUMER_COLUMNS, *RELAY_COLUMNS)}
        row["idle"] = max(wall - sum(row[stage] for stage in CONSUMER_COLUMNS), 0.0)
        row["wall"] = wall
        table[name] = row
    return table


def cpu_table(before: Seconds, after: Seconds) -> Seconds:
    """Per service, the CPU seconds of its batch-handling thread per stage during a run."""
    return {name: {stage: after[name].get(stage, 0.0) - before[name].get(stage, 0.0)
                   for stage in CPU_COLUMNS} for name in SERVICES}


async def timed_lifecycle(stack: ServiceProcesses, kafka: LocalBrokers, trainees: int
                          ) -> tuple[Figure, Seconds, Seconds]:
    before = await asyncio.to_thread(stage_seconds, stack)
    figure_ = await lifecycle(kafka, trainees)
    after = await asyncio.to_thread(stage_seconds, stack)
    return (figure_, time_table(before[ELAPSED], after[ELAPSED], figure_.seconds),
            cpu_table(before[CPU], after[CPU]))


def print_time_table(table: dict[str, dict[str, float]], title: str) -> None:
    columns = (*CONSUMER_COLUMNS, "idle", *RELAY_COLUMNS)
    print(f"\n{title}: seconds per service and stage over the run's "
          f"{next(iter(table.values()))['wall']:.1f} s")
    print(f"{'service':<10}" + "".join(f"{c:>9}" for c in ("decode", "prepare", "handle",
                                                           "write", "commit", "ack",
                                                           "dispatch", "idle", "publish",
                                                           "relay db")))
    for name, row in table.items():
        print(f"{name:<10}" + "".join(f"{row[c]:>9.3f}" for c in columns))
    print("store = prepare + handle + write; idle = wall - the consumer's stages; the relay "
          "(publish, relay db) runs beside the consumer")


def print_cpu_table(table: Seconds) -> None:
    print("CPU seconds of each service's batch thread (the same stages, without the waits)")
    print(f"{'service':<10}" + "".join(f"{c:>9}" for c in CPU_COLUMNS))
    for name, row in table.items():
        print(f"{name:<10}" + "".join(f"{row[c]:>9.3f}" for c in CPU_COLUMNS))


# --- one run of the figures, repeated -------------------------------------------------------


@dataclass
class Run:
    """One run of the default figures: each by name, and the lifecycle's time table."""

    figures: dict[str, Figure]
    times: Seconds  # the lifecycle's elapsed seconds per service and stage, and idle
    cpu: Seconds  # its CPU seconds per service and batch stage
    statuses: dict[str, dict[str, dict[str, int]]]  # store -> stage -> answers by status

    def rate(self, name: str) -> float:
        return self.figures[name].per_second


RAW, OPEN_RAW = "raw aiokafka", "raw aiokafka, no authentication"
STORES = ("SQLite", "PostgreSQL")


def stage_name(stage: str, store: str) -> str:
    return f"{stage} (1 instance, {store})"


def ratios(run: Run) -> dict[str, float]:
    """Each pipeline figure over the raw ceiling of the same run; aids and exits over the
    referrals of the same store (the issue's goal: 0.8 or more)."""
    raw = run.rate(RAW)
    found = {f"{name} / raw": run.rate(name) / raw
             for name in run.figures if name not in (RAW, OPEN_RAW)}
    found[f"{stage_name('referrals', 'SQLite')} / raw without authentication"] = (
        run.rate(stage_name("referrals", "SQLite")) / run.rate(OPEN_RAW))
    for store in STORES:
        referrals = run.rate(stage_name("referrals", store))
        for stage in ("aid requests", "exits"):
            found[f"{stage} / referrals ({store})"] = run.rate(stage_name(stage, store)) / referrals
    return found


def one_run(events: int, trainees: int, later: int) -> Run:
    figures: list[Figure] = [asyncio.run(raw_without_authentication(events))]
    statuses: dict[str, dict[str, dict[str, int]]] = {}
    env = Environment(BENCH_DIR / "env")
    env.start()
    try:
        figures.append(asyncio.run(raw_ceiling(env.kafka, events)))
        stack = start_services(env, "default", 1, postgres=False)
        try:
            staged = asyncio.run(stages(env.kafka, events, later, "1 instance, SQLite"))
            figures += staged.figures()
            statuses["SQLite"] = staged.statuses
            whole, times, cpu = asyncio.run(timed_lifecycle(stack, env.kafka, trainees))
            figures.append(whole)
        finally:
            stack.stop_all()
    finally:
        env.stop()
    # On a broker of its own: a service keeps its offsets in its store, so a new store on a
    # used broker would first replay every earlier input.
    env = Environment(BENCH_DIR / "postgres")
    env.start()
    try:
        stack = start_services(env, "stack", 1, postgres=True)
        try:
            staged = asyncio.run(stages(env.kafka, events, later, "1 instance, PostgreSQL"))
            figures += staged.figures()
            statuses["PostgreSQL"] = staged.statuses
        finally:
            stack.stop_all()
    finally:
        env.stop()
    return Run({f.name: f for f in figures}, times, cpu, statuses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000,
                        help="records of the raw runs, referrals of each store")
    parser.add_argument("--trainees", type=int, default=1000, help="people of the lifecycle")
    parser.add_argument("--aids", type=int, default=None,
                        help="aid requests (and exits) of each stage run, and aid requests "
                             "per instance count in the scaling runs (default: --events, so "
                             "that every stage's rate is taken over a burst of one size)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of the default figures (not scaling nor cluster): each "
                             "figure's values and median, each ratio's median")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()
    if args.aids is None:
        args.aids = args.events
    started = time.monotonic()
    runs: list[Run] = []
    for index in range(args.repeat):
        began = time.monotonic()
        runs.append(one_run(args.events, args.trainees, args.aids))
        if args.repeat > 1:
            print(f"run {index + 1}/{args.repeat} took {time.monotonic() - began:.0f} s")
    scaling: list[Scaled] = []
    if not args.skip_scaling:
        scaling = [scaling_run(instances, args.events, args.aids) for instances in (1, 2, 3)]
    cluster = None if args.skip_cluster else three_broker_runs(args.events)
    report(runs, scaling, cluster)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"took {time.monotonic() - started:.0f} s; load average at the end {load} "
          f"on {os.cpu_count()} cores (other work on the machine skews every figure)")


def scaling_run(instances: int, referrals: int, aids: int) -> Scaled:
    """On a broker of its own: a service's offsets live in its store (exactly-once), so new
    stores on a used broker would first replay every earlier run's inputs."""
    env = Environment(BENCH_DIR / f"scale{instances}")
    env.start()
    try:
        stack = start_services(env, "stack", instances, postgres=True)
        try:
            label = f"{instances} instance{'s' if instances > 1 else ''}, PostgreSQL"
            staged = asyncio.run(stages(env.kafka, referrals, aids, label, exits=False))
            return Scaled(instances, staged.referrals, staged.aids)
        finally:
            stack.stop_all()
    finally:
        env.stop()


@dataclass
class Scaled:
    instances: int
    referrals: Figure
    aids: Figure


def print_figures(lines: list[Figure]) -> None:
    print(f"{'run':<48}{'events':>8}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for line in lines:
        print(f"{line.name:<48}{line.events:>8}{line.per_second:>11.0f}"
              f"{line.p50_ms:>9.1f}{line.p99_ms:>9.1f}")


def print_medians(runs: list[Run]) -> None:
    """Per figure, each run's events/s and their median."""
    print(f"\nevents/s in each of {len(runs)} runs, and their median")
    for name in runs[0].figures:
        values = [run.rate(name) for run in runs]
        shown = " ".join(f"{v:>6.0f}" for v in values)
        print(f"{name:<48}{shown}   median {statistics.median(values):.0f}")


def print_ratios(runs: list[Run]) -> dict[str, float]:
    each = [ratios(run) for run in runs]
    medians = {name: statistics.median(r[name] for r in each) for name in each[0]}
    print(f"\nratios (median of {len(runs)} run{'s' if len(runs) > 1 else ''}"
          f"{': each run' if len(runs) > 1 else ''})")
    for name, value in medians.items():
        values = "  (" + " ".join(f"{r[name]:.2f}" for r in each) + ")" if len(runs) > 1 else ""
        print(f"ratio {value:.2f}   {name}{values}")
    headline = stage_name("referrals", "SQLite") + " / raw"
    print(f"the referral pipeline / raw aiokafka: median {medians[headline]:.2f} over "
          f"{len(runs)} run{'s' if len(runs) > 1 else ''} (the goal is 0.5); aids and exits "
          "/ referrals: the goal is 0.8")
    return medians


def median_table(tables: list[Seconds]) -> Seconds:
    return {service: {stage: statistics.median(table[service][stage] for table in tables)
                      for stage in tables[0][service]}
            for service in tables[0]}


def print_scaling(scaling: list[Scaled]) -> None:
    cores = os.cpu_count() or 1
    print(f"\nscaling on one PostgreSQL store, {cores} cores shared by everything")
    print(f"{'instances':>9}{'referrals/s':>13}{'per core':>10}{'aids/s':>9}{'per core':>10}")
    for line in scaling:
        print(f"{line.instances:>9}{line.referrals.per_second:>13.0f}"
              f"{line.referrals.per_second / cores:>10.0f}{line.aids.per_second:>9.0f}"
              f"{line.aids.per_second / cores:>10.0f}")


def print_cluster(one_broker: list[float], cluster: list[Figure]) -> None:
    print()
    print_figures(cluster)
    for three, one in zip(cluster, one_broker, strict=True):
        print(f"ratio {three.per_second / one:.2f}   ({three.name} / the same on 1 broker, "
              "median)")


def as_json(figure_: Figure) -> dict[str, Any]:
    return {**asdict(figure_), "per_second": figure_.per_second}


def report(runs: list[Run], scaling: list[Scaled], cluster: list[Figure] | None) -> None:
    last = runs[-1]
    print_figures(list(last.figures.values()))
    for store, statuses in last.statuses.items():
        print(f"answers on {store}: " + "; ".join(
            f"{stage} " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            for stage, counts in statuses.items() if counts))
    if len(runs) > 1:
        print_medians(runs)
    medians = print_ratios(runs)
    cost = 1 - statistics.median(run.rate(RAW) / run.rate(OPEN_RAW) for run in runs)
    print(f"authentication and ACLs cost raw aiokafka {cost:.0%} of its rate (median)")
    times = median_table([run.times for run in runs])
    cpu = median_table([run.cpu for run in runs])
    print_time_table(times, "the lifecycle" + (f", median of {len(runs)} runs"
                                               if len(runs) > 1 else ""))
    print_cpu_table(cpu)
    if scaling:
        print_scaling(scaling)
    one_broker = [statistics.median(run.rate(name) for run in runs)
                  for name in (RAW, stage_name("referrals", "SQLite"))]
    if cluster is not None:
        print_cluster(one_broker, cluster)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": machine(),
        "cores": os.cpu_count(),
        "runs": [{"figures": [as_json(f) for f in run.figures.values()],
                  "ratios": ratios(run), "lifecycle_seconds": run.times,
                  "lifecycle_cpu_seconds": run.cpu,
                  "answers": run.statuses} for run in runs],
        "medians": {name: statistics.median(run.rate(name) for run in runs)
                    for name in last.figures},
        "ratio_medians": medians,
        "lifecycle_seconds_median": times,
        "lifecycle_cpu_seconds_median": cpu,
        "scaling": [{"instances": s.instances, "referrals": as_json(s.referrals),
                     "aids": as_json(s.aids)} for s in scaling],
        "three_brokers": None if cluster is None else [
            {**as_json(f), "ratio_to_one_broker": f.per_second / one}
            for f, one in zip(cluster, one_broker, strict=True)],
    }, indent=2))
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
