"""Where a service's time goes: a batch's stages timed by the processor, added to the
`e2c_batch_seconds_total` counters, and those counters moving in running services."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from deploy.harness import ServiceProcesses
from services.referrals.app import TOPOLOGY
from services.referrals.handlers import ReferralHandlers
from services.referrals.store import TABLES, ReferralStore
from shared.contract import ReferralSubmitted, Topic
from shared.messaging import BATCH_STAGES, BatchResult, Route, UnitOfWork
from shared.observability import CONSUMER_STAGES, RELAY_STAGES, ServiceMetrics
from shared.schools import load_schools
from tests import plumbing
from tests.events import referral
from tests.infra import Publisher, TopicWatcher
from tests.plumbing import engine_fixture, inbound

pytestmark = pytest.mark.infra

engine = engine_fixture(TABLES)
processor = partial(plumbing.processor, TOPOLOGY)
record = partial(inbound, Topic.REFERRALS_SUBMITTED)


def test_a_processed_batch_reports_the_seconds_of_each_stage(engine: Engine) -> None:
    records = [record(referral()) for _ in range(20)]

    started = time.perf_counter()
    result = processor(engine).process(records)
    elapsed = time.perf_counter() - started

    assert set(result.seconds) == set(BATCH_STAGES) == set(result.cpu_seconds)
    assert all(seconds > 0 for seconds in result.seconds.values())
    assert sum(result.seconds.values()) <= elapsed
    assert sum(result.cpu_seconds.values()) > 0  # the thread did the work
    for stage in BATCH_STAGES:  # on the CPU no longer than elapsed (a little clock slack)
        assert result.cpu_seconds[stage] <= result.seconds[stage] + 0.001


def test_a_batch_done_again_counts_both_passes(engine: Engine) -> None:
    """A handler that fails on the fast path: the batch is rolled back and done again one
    savepoint a record; its stages are the two passes', and no more than the whole call."""
    handlers = ReferralHandlers(set(load_schools()))

    def buggy(unit: UnitOfWork[ReferralStore], event: object) -> None:
        handlers.on_referral(unit, event)  # type: ignore[arg-type]
        if unit.inbound is not None and unit.inbound.offset == 0:
            raise KeyError("bug after a write")

    routes = {Topic.REFERRALS_SUBMITTED: Route(ReferralSubmitted, buggy)}
    started = time.perf_counter()
    result = processor(engine, routes).process([record(referral(), 0),
                                                record(referral(), 1)])
    elapsed = time.perf_counter() - started

    assert result.dead_letters == {Topic.REFERRALS_SUBMITTED: 1}
    assert set(result.seconds) == set(BATCH_STAGES)
    assert sum(result.seconds.values()) <= elapsed


def test_the_counters_add_a_batch_stages_and_the_rest_as_dispatch() -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics("timed", registry)
    result = BatchResult(seconds={"decode": 0.25, "prepare": 0.5, "handle": 1.0,
                                  "write": 0.125, "commit": 0.0625},
                         cpu_seconds={"decode": 0.25, "handle": 0.75})

    metrics.record_batch(result, 2.5, size=10)
    metrics.record_batch(result, 2.5, size=10)

    def value(stage: str) -> float | None:
        return registry.get_sample_value("e2c_batch_seconds_total",
                                         {"service": "timed", "stage": stage})

    assert [value(s) for s in BATCH_STAGES] == [0.5, 1.0, 2.0, 0.25, 0.125]
    assert value("dispatch") == pytest.approx(2 * (2.5 - 1.9375))
    assert value("ack") == 0.0 and value("publish") == 0.0  # visible before anything moved
    cpu = {stage: registry.get_sample_value("e2c_batch_cpu_seconds_total",
                                            {"service": "timed", "stage": stage})
           for stage in BATCH_STAGES}
    assert cpu == {"decode": 0.5, "prepare": 0.0, "handle": 1.5, "write": 0.0, "commit": 0.0}


def stage_totals(stack: ServiceProcesses, service: str) -> dict[str, float]:
    """Per stage, the sum over the instances of `service` of what its /metrics say."""
    instances = [s for s in stack.services.values() if s.name == service]
    return {stage: sum(s.metric("e2c_batch_seconds_total", stage=stage) for s in instances)
            for stage in (*CONSUMER_STAGES, *RELAY_STAGES)}


async def test_a_running_service_counts_the_seconds_of_each_stage(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    before = await asyncio.to_thread(stage_totals, stack, "referrals")
    event = referral()

    await publisher.send(Topic.REFERRALS_SUBMITTED, event, key=event["referral_id"])
    await watcher.wait_for(Topic.REFERRALS_DECIDED, request_event_id=event["event_id"])

    # The relay counts its sends once the broker acknowledged them: a moment after the
    # decision can be read. Wait for that condition, not for a time.
    async with asyncio.timeout(30):
        while True:
            after = await asyncio.to_thread(stage_totals, stack, "referrals")
            if after["publish"] > before["publish"]:
                break
            await asyncio.sleep(0.1)
    moved = {stage for stage in after if after[stage] > before[stage]}
    assert {*CONSUMER_STAGES, *RELAY_STAGES} <= moved
