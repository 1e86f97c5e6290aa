"""`Writers.start` waits for a broker that is not there yet (restarting, in the chaos run):
it tries again with backoff until its deadline, and gives up at once on a wrong password."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed
from pydantic import SecretStr

from deploy.harness import free_port
from deploy.local_kafka import LocalKafka
from deploy.writers import Writers, writer_accesses
from shared.contract import Topic
from shared.kafka_access import KafkaAccess

ACCESS = KafkaAccess(bootstrap="127.0.0.1:1", username="staff", password=SecretStr("x"))


class FakeProducer:
    """Fails its start with the next error of `errors` (none left: starts)."""

    def __init__(self, errors: list[KafkaError]) -> None:
        self.errors = errors
        self.started = self.stopped = False

    async def start(self) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


class Factory:
    def __init__(self, *errors: KafkaError) -> None:
        self.errors = list(errors)
        self.made: list[FakeProducer] = []

    def __call__(self, **_options: Any) -> AIOKafkaProducer:
        producer = FakeProducer(self.errors)
        self.made.append(producer)
        return producer  # type: ignore[return-value]


async def test_a_broker_that_answers_after_two_refusals_is_started_on_the_third_try() -> None:
    factory = Factory(KafkaConnectionError("down"), KafkaConnectionError("still down"))
    writers = Writers({"t": ACCESS}, producer_factory=factory, start_deadline=30)

    await writers.start()

    assert [(p.started, p.stopped) for p in factory.made] == [
        (False, True), (False, True), (True, False)]
    assert writers.producer("t") is factory.made[-1]


async def test_a_broker_that_never_answers_raises_its_error_at_the_deadline() -> None:
    factory = Factory(*(KafkaConnectionError(f"down {n}") for n in range(100)))
    writers = Writers({"t": ACCESS}, producer_factory=factory, start_deadline=1.0)

    with pytest.raises(KafkaConnectionError):
        await writers.start()

    assert 2 <= len(factory.made) <= 4  # 0.25 s, 0.5 s... within one second
    assert all(p.stopped and not p.started for p in factory.made)


async def test_a_refused_password_is_not_tried_again() -> None:
    factory = Factory(SaslAuthenticationFailed("bad password"))
    writers = Writers({"t": ACCESS}, producer_factory=factory, start_deadline=30)

    with pytest.raises(SaslAuthenticationFailed):
        await writers.start()

    assert len(factory.made) == 1


async def test_the_second_principal_failing_stops_the_first_one_started() -> None:
    other = ACCESS.model_copy(update={"username": "finance"})
    factory = Factory(*(KafkaConnectionError(f"down {n}") for n in range(100)))
    first = FakeProducer([])

    def first_then_down(**options: Any) -> AIOKafkaProducer:
        return factory(**options) if first.started else first  # type: ignore[return-value]

    writers = Writers({"a": ACCESS, "b": other}, producer_factory=first_then_down,
                      start_deadline=0.1)
    with pytest.raises(KafkaConnectionError):
        await writers.start()

    assert first.started and first.stopped
    with pytest.raises(ValueError):
        writers.producer("a")


@contextlib.asynccontextmanager
async def tcp_proxy(port: int, target_port: int) -> AsyncIterator[None]:
    """127.0.0.1:port forwarding to 127.0.0.1:target_port (the broker "coming back")."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(client_reader: asyncio.StreamReader,
                    client_writer: asyncio.StreamWriter) -> None:
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_reader, broker_writer),
                             pipe(broker_reader, client_writer))

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


@pytest.mark.infra
async def test_the_real_broker_appearing_after_refusals_is_written_to(kafka: LocalKafka) -> None:
    """The bootstrap address answers nothing until a first try has failed; then it forwards
    to the session's broker: start() goes on by itself and reads the topic's partitions."""
    port = free_port()
    accesses = {topic: access.with_bootstrap(f"127.0.0.1:{port}")
                for topic, access in writer_accesses(kafka).items()
                if topic == str(Topic.BUDGETS_SUBMITTED)}
    refused = asyncio.Event()

    def noting_refusals(**options: Any) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**options)
        start = producer.start

        async def start_noted() -> None:
            try:
                await start()
            except KafkaConnectionError:
                refused.set()
                raise

        producer.start = start_noted  # type: ignore[method-assign]
        return producer

    writers = Writers(accesses, producer_factory=noting_refusals, start_deadline=60)
    starting = asyncio.create_task(writers.start())
    await asyncio.wait_for(refused.wait(), 30)
    assert not starting.done()
    async with tcp_proxy(port, kafka.port):
        await asyncio.wait_for(starting, 60)
    try:  # the broker's metadata read through the producer (nothing is written)
        topic = str(Topic.BUDGETS_SUBMITTED)
        assert await writers.producer(topic).partitions_for(topic)
    finally:
        await writers.stop()
