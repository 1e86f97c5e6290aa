"""Publishing as the outside world does: each topic written by the role the broker lets
write it (a partner refers, school staff enroll and ask for aid, finance sets budgets).

The simulation, the demo, the chaos run, the benchmark and the tests publish through
`Writers`, one producer per role, so that they run under the same ACLs as real clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

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


class Writers:
    """One producer per role; `send` picks the one allowed to write the topic."""

    def __init__(self, accesses: Mapping[str, KafkaAccess], **options: Any) -> None:
        self.accesses = dict(accesses)
        self.options = options
        self._producers: dict[str, AIOKafkaProducer] = {}

    async def start(self) -> None:
        by_principal: dict[str, AIOKafkaProducer] = {}
        for topic, access in self.accesses.items():
            if access.username not in by_principal:
                producer = AIOKafkaProducer(**access.client_options(), **self.options)
                await producer.start()
                by_principal[access.username] = producer
            self._producers[topic] = by_principal[access.username]

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


