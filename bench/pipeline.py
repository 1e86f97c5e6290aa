"""Throughput and latency of the pipeline against the raw Kafka ceiling, on this machine.

    make bench                       # everything, with the default sizes
    make bench ARGS="--events 2000 --trainees 300 --skip-scaling"

One run starts its own broker, Redis and (for the scaling runs) PostgreSQL under
var/bench/, then measures:

1. raw: aiokafka alone, one producer and one consumer, N small JSON messages (the size of
   a referral) through the same broker: the ceiling.
2. referrals: N referrals published, N decisions received, through the referrals service
   as it is deployed by default (one instance, SQLite).
3. lifecycle: T young people taken through referral, enrollment, one aid and their exit
   (4 inputs each, each published when the previous answer arrives).
4. scaling: 1, 2 and 3 instances of each service sharing one PostgreSQL store; each
   count decides N referrals (timed), enrolls them, then decides A aid requests of the
   enrolled trainees (timed), printed as inputs/s and inputs/s per core of this machine.
5. three brokers (`--skip-cluster` leaves it out): raw aiokafka and the referral pipeline
   again on a cluster of three KRaft nodes (replication 3, min.insync.replicas 2,
   acks=all), each printed as a ratio to the same run on the one broker above.

Each line gives events per second (N / from the first publish to the last answer) and
the p50/p99 latency from publish to answer. `ratio` is referrals / raw. The figures go to
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

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


# --- 4. scaling: referrals, then aid requests of the enrolled ------------------------------


async def referrals_then_aids(kafka: LocalBrokers, referrals: int, aids: int,
                              label: str) -> tuple[Figure, Figure]:
    """N referrals decided (timed); the first A of them enrolled (not timed); one meal request
    per enrolled trainee decided (timed): the two stages a month-start wave loads most."""
    tag = uuid.uuid4().hex[:8]
    inputs = [referral(i, tag) for i in range(referrals)]
    producer = Writers(writer_accesses(kafka), linger_ms=5, acks="all")
    await producer.start()
    try:
        decided, trainees = await _stage(kafka, producer, Topic.REFERRALS_SUBMITTED,
                                         Topic.REFERRALS_DECIDED,
                                         [(e["referral_id"], e) for e in inputs],
                                         f"referrals ({label})")
        accepted = [ref for ref, trainee in trainees.items() if trainee][:aids]
        enrollments = [(ref, {**_base(), "referral_id": ref, "school_id": "toulouse",
                              "enrolled_on": "2024-04-02"}) for ref in accepted]
        _, enrolled = await _stage(kafka, producer, Topic.ENROLLMENTS_SUBMITTED,
                                   Topic.ENROLLMENTS_DECIDED, enrollments, "enrollments")
        requests = [(trainee, {**_base(), "request_id": f"BA-{tag}-{index:07d}",
                               "trainee_id": trainee, "kind": "meals", "quantity": 10,
                               "amount_cents": None, "period_start": "2024-04-02",
                               "period_end": "2024-04-30"})
                    for index, trainee in enumerate(t for t in enrolled.values() if t)]
        aid_figure, _ = await _stage(kafka, producer, Topic.AIDS_REQUESTED, Topic.AIDS_DECIDED,
                                     requests, f"aid requests ({label})")
    finally:
        await producer.stop()
    return decided, aid_figure


def _base() -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "occurred_at": "2024-05-01T09:00:00+02:00",
            "schema_version": 1}


async def _stage(kafka: LocalBrokers, producer: Writers, topic: Topic, answers: Topic,
                 inputs: list[tuple[str, dict[str, Any]]], name: str
                 ) -> tuple[Figure, dict[str, str | None]]:
    """Publishes every input at once, waits for every answer; returns the stage's figure and
    each input key's `trainee_id` in its answer (None when refused)."""
    sent = {event["event_id"]: 0.0 for _, event in inputs}
    received: dict[str, float] = {}
    trainee_of_request: dict[str, str | None] = {}
    consumer = await _answers_at_end(kafka, [answers])
    reading = asyncio.create_task(_answers_to(consumer, set(sent), received,
                                              trainee_of_request, name))
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
                      trainee_of_request: dict[str, str | None], name: str) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--trainees", type=int, default=1000)
    parser.add_argument("--aids", type=int, default=1000,
                        help="aid requests per instance count in the scaling runs")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    env = Environment(BENCH_DIR / "env")
    env.start()
    figures: list[Figure] = []
    scaling: list[Scaled] = []
    try:
        open_raw = asyncio.run(raw_without_authentication(args.events))
        figures.append(asyncio.run(raw_ceiling(env.kafka, args.events)))
        stack = start_services(env, "default", 1, postgres=False)
        figures.append(asyncio.run(referral_pipeline(
            env.kafka, args.events, "referrals (1 instance, SQLite)")))
        figures.append(asyncio.run(lifecycle(env.kafka, args.trainees)))
        stack.stop_all()
    finally:
        env.stop()
    if not args.skip_scaling:
        scaling = [scaling_run(instances, args.events, args.aids) for instances in (1, 2, 3)]
    cluster = None if args.skip_cluster else three_broker_runs(args.events)
    report(figures, scaling, open_raw, cluster)
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
            return Scaled(instances, *asyncio.run(referrals_then_aids(
                env.kafka, referrals, aids, label)))
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


def print_scaling(scaling: list[Scaled]) -> None:
    cores = os.cpu_count() or 1
    print(f"\nscaling on one PostgreSQL store, {cores} cores shared by everything")
    print(f"{'instances':>9}{'referrals/s':>13}{'per core':>10}{'aids/s':>9}{'per core':>10}")
    for line in scaling:
        print(f"{line.instances:>9}{line.referrals.per_second:>13.0f}"
              f"{line.referrals.per_second / cores:>10.0f}{line.aids.per_second:>9.0f}"
              f"{line.aids.per_second / cores:>10.0f}")


def print_cluster(one_broker: list[Figure], cluster: list[Figure]) -> None:
    print()
    print_figures(cluster)
    for three, one in zip(cluster, one_broker, strict=True):
        print(f"ratio {three.per_second / one.per_second:.2f}   ({three.name} / the same on "
              "1 broker)")


def report(figures: list[Figure], scaling: list[Scaled], open_raw: Figure,
           cluster: list[Figure] | None) -> None:
    print_figures([open_raw, *figures])
    ratio = figures[1].per_second / figures[0].per_second
    print(f"ratio {ratio:.2f}   (referral pipeline / raw aiokafka; the goal is 0.25 or more)")
    open_ratio = figures[1].per_second / open_raw.per_second
    print(f"ratio {open_ratio:.2f}   (the same pipeline / raw aiokafka on a broker without "
          "SASL nor ACLs)")
    cost = 1 - figures[0].per_second / open_raw.per_second
    print(f"authentication and ACLs cost raw aiokafka {cost:.0%} of its rate in this run")
    if scaling:
        print_scaling(scaling)
    if cluster is not None:
        print_cluster(figures[:2], cluster)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": machine(),
        "figures": [{**asdict(f), "per_second": f.per_second} for f in figures],
        "cores": os.cpu_count(),
        "scaling": [{"instances": s.instances,
                     "referrals": {**asdict(s.referrals), "per_second": s.referrals.per_second},
                     "aids": {**asdict(s.aids), "per_second": s.aids.per_second}}
                    for s in scaling],
        "three_brokers": None if cluster is None else [
            {**asdict(f), "per_second": f.per_second,
             "ratio_to_one_broker": f.per_second / one.per_second}
            for f, one in zip(cluster, figures[:2], strict=True)],
        "ratio": ratio,
        "raw_without_authentication": {**asdict(open_raw), "per_second": open_raw.per_second},
        "ratio_to_raw_without_authentication": open_ratio,
    }, indent=2))
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
