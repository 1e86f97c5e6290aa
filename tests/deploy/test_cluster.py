"""Three KRaft nodes on loopback (`deploy.local_kafka.LocalKafkaCluster`), real jars and
processes: one cluster, every topic replicated three times with two in sync, no way in
without SASL on any node, and a producer with acks=all that keeps writing while the leader
of its partition is SIGKILLed (every acknowledged record read back once the node is back).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError

from deploy import kafka_security
from deploy.harness import free_port, free_port_range
from deploy.local_kafka import LocalKafkaCluster, partition_leaders
from deploy.local_postgres import ensure_installed as ensure_postgres
from deploy.stack import SERVICES, LocalStack, StackError
from deploy.system import BROKER_TOPICS
from shared.kafka import ensure_topics
from shared.kafka_access import KafkaAccess
from shared.settings import Settings
from tests.infra import TEST_DATA

infra = pytest.mark.infra
T = TypeVar("T")
BROKERS = 3
TIMEOUT = 60.0
FAILOVER_TOPIC = "cluster-test.failover"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalKafkaCluster]:
    nodes = LocalKafkaCluster(TEST_DATA / "cluster", BROKERS, free_port_range(2 * BROKERS))
    nodes.purge()
    nodes.start()
    try:
        kafka_security.provision(nodes, Settings().topic_partitions)
        yield nodes
    finally:
        nodes.purge()


async def wait_for(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Polls `check` until it returns a value (not None); fails after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            found = await check()
        except KafkaError:  # a client may try the killed node first: ask again
            found = None
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"not seen within {TIMEOUT}s: {what}")


async def admin_client(access: KafkaAccess) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**access.client_options(), request_timeout_ms=10_000)
    await admin.start()
    return admin


@infra
async def test_three_nodes_form_one_cluster(cluster: LocalKafkaCluster) -> None:
    admin = await admin_client(cluster.admin_access())
    try:
        described = await admin.describe_cluster()
    finally:
        await admin.close()
    assert {broker["node_id"] for broker in described["brokers"]} == {1, 2, 3}
    assert cluster.bootstrap == ",".join(f"127.0.0.1:{node.port}" for node in cluster.nodes)
    assert [node.node_id for node in cluster.nodes] == [1, 2, 3]
    assert cluster.answers()


@infra
async def test_every_topic_has_three_replicas_and_two_in_sync(
    cluster: LocalKafkaCluster,
) -> None:
    admin = await admin_client(cluster.admin_access())
    try:
        described = await admin.describe_topics(list(BROKER_TOPICS))
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, str(t)) for t in BROKER_TOPICS])
    finally:
        await admin.close()
    replicas = {(topic["topic"], p["partition"]): sorted(p["replicas"])
                for topic in described for p in topic["partitions"]}
    assert {topic for topic, _ in replicas} == {str(t) for t in BROKER_TOPICS}
    assert len(replicas) == len(BROKER_TOPICS) * Settings().topic_partitions
    assert set(map(tuple, replicas.values())) == {(1, 2, 3)}
    min_insync = {name: {entry[0]: entry[1] for entry in entries}["min.insync.replicas"]
                  for response in configs
                  for _code, _message, _type, name, entries, *_ in response.resources}
    assert min_insync == {str(t): "2" for t in BROKER_TOPICS}


@infra
@pytest.mark.parametrize("listener", ["client", "controller"])
async def test_every_node_refuses_a_client_without_sasl(
    cluster: LocalKafkaCluster, listener: str
) -> None:
    for node in cluster.nodes:
        port = node.port if listener == "client" else node.controller_port
        client = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}",
                                  request_timeout_ms=10_000)
        try:
            with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
                await asyncio.wait_for(client.start(), TIMEOUT)
        finally:
            await client.stop()


class Writer:
    """Writes numbered records one after the other with acks=all (idempotent), noting when
    each was acknowledged, until stopped."""

    def __init__(self, access: KafkaAccess) -> None:
        self.producer = AIOKafkaProducer(**access.client_options(), enable_idempotence=True,
                                         acks="all", request_timeout_ms=30_000)
        self.acked: list[tuple[int, float]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Writer:
        await self.producer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.producer.stop()

    async def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            await self.producer.send_and_wait(FAILOVER_TOPIC, str(number).encode(),
                                              key=str(number).encode(), partition=0)
            self.acked.append((number, time.monotonic()))
            number += 1

    async def acked_after(self, moment: float, count: int) -> None:
        async def enough() -> bool | None:
            return True if sum(1 for _, at in self.acked if at > moment) >= count else None
        await wait_for(enough, f"{count} records acknowledged")

    def longest_pause(self, since: float) -> float:
        times = [since] + [at for _, at in self.acked if at > since]
        return max(later - earlier for earlier, later in itertools.pairwise(times))


async def read_partition(access: KafkaAccess) -> list[int]:
    """Every record of the partition, from its start to its end offset now."""
    consumer = AIOKafkaConsumer(**access.client_options(), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    partition = TopicPartition(FAILOVER_TOPIC, 0)
    try:
        consumer.assign([partition])
        end = (await consumer.end_offsets([partition]))[partition]
        read: list[int] = []
        while (await consumer.position(partition)) < end:
            batch = await consumer.getmany(partition, timeout_ms=1000)
            read.extend(int(record.value or b"") for record in batch.get(partition, []))
        return read
    finally:
        await consumer.stop()


async def in_sync_replicas(access: KafkaAccess) -> list[int]:
    admin = await admin_client(access)
    try:
        described = await admin.describe_topics([FAILOVER_TOPIC])
    finally:
        await admin.close()
    partitions = described[0].get("partitions") or [{"isr": []}]  # a new topic: none yet
    return sorted(partitions[0]["isr"])


async def all_in_sync(access: KafkaAccess) -> None:
    async def check() -> bool | None:
        return True if await in_sync_replicas(access) == [1, 2, 3] else None

    await wait_for(check, "every replica of partition 0 in sync")


@infra
async def test_writes_go_on_through_the_sigkill_of_a_leader_and_nothing_is_lost(
    cluster: LocalKafkaCluster,
) -> None:
    access = cluster.admin_access()
    await ensure_topics(access, [FAILOVER_TOPIC], partitions=1, replication_factor=3)
    await all_in_sync(access)

    async def first_leader() -> int | None:
        return (await partition_leaders(access, FAILOVER_TOPIC)).get(0)

    leader = await wait_for(first_leader, "the leader of partition 0")
    async with Writer(access) as writer:
        await writer.acked_after(0.0, 100)
        killed_at = time.monotonic()
        cluster.node(leader).kill()
        assert not cluster.node(leader).alive()

        async def new_leader() -> int | None:
            now = (await partition_leaders(access, FAILOVER_TOPIC)).get(0, -1)
            return now if now not in (-1, leader) else None

        elected = await wait_for(new_leader, "a new leader of partition 0")
        elected_after = time.monotonic() - killed_at
        await writer.acked_after(killed_at, 100)
        pause = writer.longest_pause(killed_at)
        cluster.node(leader).start()
        await all_in_sync(access)
    print(f"\nnode {leader} (leader of partition 0) SIGKILLed: node {elected} leads after "
          f"{elected_after:.2f}s; longest wait for an acknowledged write {pause:.2f}s; "
          f"{len(writer.acked)} records acknowledged")
    assert elected != leader
    assert await read_partition(access) == [number for number, _ in writer.acked]



# --- `e2c stack up --brokers 3 --instances 2 --postgres` -----------------------------------


def stack_settings(data_dir: Path) -> Settings:
    """Settings on free ports (six in a row for the three nodes), so nothing here meets a
    stack running on the defaults."""
    ports = {
        "kafka_port": free_port_range(2 * BROKERS),
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        **{f"{name}_port": free_port() for name in SERVICES},
        "console_port": free_port(),
        **{f"{name}_database_url": None for name in SERVICES},
    }
    return Settings(data_dir=data_dir, **ports)  # type: ignore[arg-type]


def test_several_instances_on_sqlite_are_refused(tmp_path: Path) -> None:
    stack = LocalStack(stack_settings(tmp_path))
    with pytest.raises(StackError, match="PostgreSQL"):
        stack.up(echo=False, instances=2)
    assert not stack.kafka.is_running()


@infra
def test_stack_up_with_three_brokers_and_two_instances_of_each_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_postgres()
    monkeypatch.setenv("E2C_POSTGRES_PORT", str(free_port()))
    settings = stack_settings(tmp_path)
    stack = LocalStack(settings)
    try:
        stack.up(echo=False, postgres=True, brokers=3, instances=2)
        again = LocalStack(settings)  # as `e2c stack status` finds it, from its files
        status = {part.name: part for part in again.status()}
        nodes = [f"kafka-{i}" for i in (1, 2, 3)]
        instances = [f"{name}{suffix}" for name in SERVICES for suffix in ("", "-2")]
        assert [status[name].health for name in nodes] == ["up"] * 3
        assert [status[name].health for name in instances] == ["ready"] * 6
        assert status["postgres"].health == "up"
        assert "kafka" not in status
        assert again.kafka.replication_factor == 3
    finally:
        stack.down(purge=True, echo=False)
    after = {part.name: part.health for part in LocalStack(settings).status()}
    assert after["kafka"] == "down"  # no cluster recorded any more: the default again
    assert not any(path.exists() for path in tmp_path.glob("run/*.pid"))
