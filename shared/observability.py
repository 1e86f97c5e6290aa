"""Logging and Prometheus metrics common to the services. Logs never carry personal data."""

from __future__ import annotations

import logging
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.messaging import BATCH_STAGES, BatchResult

# Where a service's time goes, beside the batch's own stages (`BATCH_STAGES`): the hop to
# and from the worker thread and the Kafka offset commit of the consumer loop (`dispatch`,
# `ack`); the outbox relay's sends (`publish`) and its store work (`relay_store`: reading,
# deleting and counting outbox rows). The relay runs beside the consumer: its seconds
# overlap the batches'.
CONSUMER_STAGES = (*BATCH_STAGES, "dispatch", "ack")
RELAY_STAGES = ("publish", "relay_store")


def configure_logging(service: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # httpx logs each request's whole URL at INFO: a webhook's query string may hold a
    # partner's token (the webhook worker logs the URL without it).
    logging.getLogger("httpx").setLevel(logging.WARNING)


class ServiceMetrics:
    """The service's own metrics; faststream's middleware adds per-message broker metrics."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.service = service
        self.registry = registry
        self.events_consumed = Counter(
            "e2c_events_consumed_total",
            "Input records consumed, by topic and result "
            "(handled, duplicate, dead_letter, skipped: a tombstone).",
            ["service", "topic", "result"],
            registry=registry,
        )
        self.events_published = Counter(
            "e2c_events_published_total",
            "Events published from the outbox, by topic.",
            ["service", "topic"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "e2c_batch_handling_seconds",
            "Time to handle one consumed batch in one transaction.",
            ["service"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.stage_seconds = Counter(
            "e2c_batch_seconds",
            "Seconds spent per stage: a consumed batch's decode, prepare (inbox lookup and "
            "the service's reads), handle, write, commit (the store's), dispatch (to and from "
            "the worker thread), ack (Kafka offsets); the outbox relay's publish and "
            "relay_store.",
            ["service", "stage"],
            registry=registry,
        )
        self.stage_cpu_seconds = Counter(
            "e2c_batch_cpu_seconds",
            "CPU seconds of the thread that handles consumed batches, per stage (decode, "
            "prepare, handle, write, commit): the part of e2c_batch_seconds_total not spent "
            "waiting (for the store, a lock, or a CPU busy with other work).",
            ["service", "stage"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "e2c_batch_records",
            "Records per consumed batch.",
            ["service"],
            registry=registry,
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000),
        )
        self.batch_failures = Counter(
            "e2c_batch_failures_total",
            "Batches rolled back and read again because the store or a commit failed.",
            ["service"],
            registry=registry,
        )
        self.relay_failures = Counter(
            "e2c_outbox_relay_failures_total",
            "Outbox relay rounds that failed (broker or store unavailable).",
            ["service"],
            registry=registry,
        )
        self.outbox_parked = Counter(
            "e2c_outbox_parked_total",
            "Outbox rows the broker refused for good, set aside (see /ops/pipeline).",
            ["service"],
            registry=registry,
        )
        self.outbox_backlog = Gauge(
            "e2c_outbox_backlog",
            "Events committed but not yet published.",
            ["service"],
            registry=registry,
        )

        self.dead_letters = Counter(
            "e2c_dead_letters_total",
            "Input records sent to e2c.deadletter.v1, by the topic they were read from.",
            ["service", "source_topic"],
            registry=registry,
        )
        self.held_requests = Gauge(
            "e2c_held_requests",
            "Requests held until their trainee's enrollment is known.",
            ["service"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "e2c_consumer_lag",
            "Records of the service's consumer group not yet committed (end - committed "
            "offset), per topic and partition; refreshed every few seconds.",
            ["service", "topic", "partition"],
            registry=registry,
        )
        self.last_event_timestamp = Gauge(
            "e2c_last_event_processed_timestamp_seconds",
            "Unix time at which this instance last committed a consumed batch.",
            ["service"],
            registry=registry,
        )
        self.last_event_age = Gauge(
            "e2c_last_event_age_seconds",
            "Seconds since this instance last committed a consumed batch (absent before "
            "the first one).",
            ["service"],
            registry=registry,
        )
        self.heartbeat_failures = Counter(
            "e2c_heartbeat_failures_total",
            "Heartbeats that could not be written to Redis.",
            ["service"],
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "e2c_webhook_attempts_total",
            "Webhook deliveries sent to partners, by result (delivered: a 2xx answer; "
            "failed: anything else, tried again later).",
            ["service", "result"],
            registry=registry,
        )
        self.webhook_parked = Counter(
            "e2c_webhook_parked_total",
            "Webhook deliveries parked after too many failed tries (see /ops/pipeline; "
            "`e2c partners webhook replay` sends them again).",
            ["service"],
            registry=registry,
        )
        self.webhook_queue = Gauge(
            "e2c_webhook_deliveries",
            "Webhook deliveries queued, by state (pending, parked); refreshed every few seconds.",
            ["service", "state"],
            registry=registry,
        )
        self._last_processed_at: float | None = None
        self.outbox_parked.labels(service)  # visible at zero: an alert can watch it
        for stage in (*CONSUMER_STAGES, *RELAY_STAGES):
            self.stage_seconds.labels(service, stage)
        for stage in BATCH_STAGES:
            self.stage_cpu_seconds.labels(service, stage)

    def watch_webhooks(self) -> None:
        """Makes the webhook series visible at zero (a service that sends webhooks)."""
        for result in ("delivered", "failed"):
            self.webhook_attempts.labels(self.service, result)
        self.webhook_parked.labels(self.service)
        for state in ("pending", "parked"):
            self.webhook_queue.labels(self.service, state)

    def watch_topics(self, topics: list[str]) -> None:
        """Makes the per-topic series visible at zero before anything happened."""
        for topic in topics:
            self.dead_letters.labels(self.service, topic)
            for result in ("handled", "duplicate", "dead_letter", "skipped"):
                self.events_consumed.labels(self.service, topic, result)

    def mark_processed(self, at: float) -> None:
        """A batch was committed at `at` (unix time)."""
        if self._last_processed_at is None:
            self.last_event_age.labels(self.service).set_function(self._last_event_age)
        self._last_processed_at = at
        self.last_event_timestamp.labels(self.service).set(at)

    def _last_event_age(self) -> float:
        at = self._last_processed_at
        return max(time.time() - at, 0.0) if at is not None else 0.0

    def set_lag(self, rows: list[dict[str, object]]) -> None:
        for row in rows:
            self.consumer_lag.labels(self.service, str(row["topic"]), str(row["partition"])).set(
                float(row["lag"])  # type: ignore[arg-type]
            )

    def add_seconds(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(self.service, stage).inc(max(seconds, 0.0))

    def record_batch(self, result: BatchResult, seconds: float, size: int) -> None:
        """A committed batch: `seconds` from the consumer handing it to the worker thread to
        its result coming back (the batch's stages, and the rest counted as `dispatch`)."""
        self.batch_seconds.labels(self.service).observe(seconds)
        for stage, spent in result.seconds.items():
            self.add_seconds(stage, spent)
        self.add_seconds("dispatch", seconds - sum(result.seconds.values()))
        for stage, spent in result.cpu_seconds.items():
            self.stage_cpu_seconds.labels(self.service, stage).inc(max(spent, 0.0))
        self.batch_size.labels(self.service).observe(size)
        for topic, count in result.dead_letters.items():
            self.dead_letters.labels(self.service, topic).inc(count)
        for bucket, name in (
            (result.handled, "handled"),
            (result.duplicates, "duplicate"),
            (result.dead_letters, "dead_letter"),
            (result.skipped, "skipped"),
        ):
            for topic, count in bucket.items():
                self.events_consumed.labels(self.service, topic, name).inc(count)

    def record_published(self, topic: str, count: int) -> None:
        self.events_published.labels(self.service, topic).inc(count)
