"""Publishing as the outside world does: each topic written by the role the broker lets
write it (a partner refers, school staff enroll and ask for aid, finance sets budgets).

The simulation, the demo, the chaos run, the benchmark and the tests publish through
`Writers`, one producer per role, so that they run under the same ACLs as real clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from deploy import kafka_security
from deploy.kafka_security import FINANCE, STAFF
from deploy.local_kafka import LocalKafka
from shared.contract import Topic
from shared.kafka_access import KafkaAccess

# The agency whose principal the project's own tools (demo, simulation, tests) refer as.
TOOLS_AGENCY = "e2c-tools"


def writer_roles(agency: str = TOOLS_AGENCY) -> dict[str, str]:
    """The role that writes each topic from outside the services."""
    roles = {str(topic): STAFF for topic in kafka_security.STAFF_TOPICS}
    roles.update({str(topic): FINANCE for topic in kafka_security.FINANCE_WRITES})
    roles.update({str(topic): kafka_security.partner_principal(agency)
                  for topic in kafka_security.PARTNER_TOPICS})
    return roles


def writer_accesses(kafka: LocalKafka) -> dict[str, KafkaAccess]:
    """Topic -> the credentials of its writer on the stack's broker (the tools' partner is
    created on first use)."""
    kafka_security.ensure_partner(kafka, TOOLS_AGENCY)
    return {topic: kafka_security.access(kafka, role) for topic, role in writer_roles().items()}


# How long `Writers.start` keeps trying a broker that does not answer (e.g. restarting in
# the chaos run), and the pauses between tries: doubling from FIRST to LONGEST.
START_DEADLINE_SECONDS = 120.0
FIRST_PAUSE_SECONDS, LONGEST_PAUSE_SECONDS = 0.25, 5.0

ProducerFactory = Callable[..., AIOKafkaProducer]


class Writers:
    """One producer per role; `send` picks the one allowed to write the topic."""

    def __init__(self, accesses: Mapping[str, KafkaAccess], *,
                 start_deadline: float = START_DEADLINE_SECONDS,
                 producer_factory: ProducerFactory = AIOKafkaProducer, **options: Any) -> None:
        self.accesses = dict(accesses)
        self.options = options
        self.start_deadline = start_deadline
        self._new_producer = producer_factory
        self._producers: dict[str, AIOKafkaProducer] = {}

    async def start(self) -> None:
        """A producer per principal; a broker that cannot be reached is tried again with
        backoff until `start_deadline` seconds have passed (then its error is raised)."""
        deadline = time.monotonic() + self.start_deadline
        by_principal: dict[str, AIOKafkaProducer] = {}
        try:
            for topic, access in self.accesses.items():
                if access.username not in by_principal:
                    by_principal[access.username] = await self._started(access, deadline)
                self._producers[topic] = by_principal[access.username]
        except BaseException:
            self._producers.clear()
            for producer in by_principal.values():
                await producer.stop()
            raise

    async def _started(self, access: KafkaAccess, deadline: float) -> AIOKafkaProducer:
        pause = FIRST_PAUSE_SECONDS
        while True:
            # A producer whose start failed is not started again: each try has a new one.
            producer = self._new_producer(**access.client_options(), **self.options)
            try:
                await producer.start()
                return producer
            except KafkaError as error:
                await producer.stop()
                if not error.retriable or time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE_SECONDS)

    async def stop(self) -> None:
        for producer in {id(p): p for p in self._producers.values()}.values():
            await producer.stop()
        self._producers.clear()

    async def __aenter__(self) -> Writers:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def producer(self, topic: str) -> AIOKafkaProducer:
        try:
            return self._producers[str(topic)]
        except KeyError:
            raise ValueError(f"no outside writer for {topic}: a service decides it") from None

    async def send(
        self, topic: str | Topic, value: bytes, key: bytes | None = None
    ) -> asyncio.Future[Any]:
        return await self.producer(str(topic)).send(str(topic), value, key=key)

    async def send_and_wait(self, topic: str | Topic, value: bytes,
                            key: bytes | None = None) -> Any:
        return await self.producer(str(topic)).send_and_wait(str(topic), value, key=key)

    async def flush(self) -> None:
        for producer in {id(p): p for p in self._producers.values()}.values():
            await producer.flush()


