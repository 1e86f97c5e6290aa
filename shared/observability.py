"""Logging and Prometheus metrics common to the services. Logs never carry personal data."""

from __future__ import annotations

import logging
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.messaging import BatchResult


def configure_logging(service: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


class ServiceMetrics:
    """The service's own metrics; faststream's middleware adds per-message broker metrics."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.service = service
        self.registry = registry
        self.events_consumed = Counter(
            "e2c_events_consumed_total",
            "Input records consumed, by topic and result (handled, duplicate, dead_letter).",
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
        self.outbox_backlog = Gauge(
            "e2c_outbox_backlog",
            "Events committed but not yet published.",
            ["service"],
            registry=registry,
        )

    def record_batch(self, result: BatchResult, seconds: float, size: int) -> None:
        self.batch_seconds.labels(self.service).observe(seconds)
        self.batch_size.labels(self.service).observe(size)
        for bucket, name in (
            (result.handled, "handled"),
            (result.duplicates, "duplicate"),
            (result.dead_letters, "dead_letter"),
        ):
            for topic, count in bucket.items():
                self.events_consumed.labels(self.service, topic, name).inc(count)

    def record_published(self, topic: str, count: int) -> None:
        self.events_published.labels(self.service, topic).inc(count)
