"""Webhooks: the decisions about an agency's referrals pushed to its callback URL.

- Registration (`register`, `remove`, `listing`, `replay`): plain functions on the store,
  called by the admin route (`api.py`) and by `e2c partners webhook` (`command_store`).
- Queueing: the handlers call `ReferralStore.enqueue_webhook` in the decision's transaction.
- Delivery (`WebhookWorker`): an asyncio task of the service that leases due deliveries,
  POSTs each one signed (`domain.webhook_signature`), deletes it on a 2xx answer, and
  otherwise tries again later with an exponential backoff, parking it after
  `E2C_WEBHOOK_MAX_ATTEMPTS` failures. At least once: a send may be repeated after a crash;
  the body's `event_id` lets the partner drop the repeat.

Logs name the agency, the delivery and the URL without its query string; never the secret,
never the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from sqlalchemy import Engine

from shared.db import make_engine
from shared.logsafe import describe_error
from shared.messaging import unit_of_work
from shared.observability import ServiceMetrics
from shared.settings import Settings

from . import domain
from .store import PARKED, PENDING, Outgoing, WebhookSet, WebhookStore

if TYPE_CHECKING:
    from shared.service import ServiceContext

log = logging.getLogger(__name__)

SERVICE = "referrals"
CLAIM_BATCH = 20  # deliveries leased and sent at once by one worker
QUEUE_METRICS_SECONDS = 10
USER_AGENT = "e2c-webhooks/1"
MAX_AGENCY_ID_LENGTH = 200


class WebhookError(ValueError):
    """A registration refused: the message says why (it never echoes a secret)."""


# --- Registration (admin route and command line) ---------------------------------------------


def agency_problem(agency_id: str) -> str | None:
    if not 1 <= len(agency_id) <= MAX_AGENCY_ID_LENGTH:
        return f"the agency id must be 1 to {MAX_AGENCY_ID_LENGTH} characters"
    if not agency_id.isprintable() or any(char.isspace() for char in agency_id):
        return "the agency id holds spaces or control characters"
    return None


def register(
    store: WebhookStore, agency_id: str, url: str, rotate_secret: bool = False
) -> WebhookSet:
    """Sets the agency's callback URL (http or https); its secret is made on creation (or
    with `rotate_secret`) and returned in the result only."""
    problem = agency_problem(agency_id) or domain.webhook_url_problem(url)
    if problem is not None:
        raise WebhookError(problem)
    result = store.set_webhook(agency_id, url, rotate_secret)
    log.info("webhook of agency %s %s: %s%s", agency_id,
             "created" if result.created else "changed", domain.shown_url(url),
             ", new secret" if result.secret and not result.created else "")
    return result


def remove(store: WebhookStore, agency_id: str) -> int | None:
    """Removes the agency's webhook and its queued deliveries (their count; None: none)."""
    if agency_problem(agency_id) is not None:  # never registered (and never sent to the store)
        return None
    dropped = store.remove_webhook(agency_id)
    if dropped is not None:
        log.info("webhook of agency %s removed (%d deliveries dropped)", agency_id, dropped)
    return dropped


def listing(store: WebhookStore) -> list[dict[str, Any]]:
    """The registrations with their queues: no secret, no query string."""
    return store.webhooks()


def replay(store: WebhookStore, agency_id: str | None = None,
           delivery_ids: Sequence[int] = ()) -> int:
    """Parked deliveries (of the agency, or these ids, else all) are tried again now."""
    replayed = store.replay_parked(agency_id, delivery_ids)
    log.info("%d parked webhook deliveries replayed", replayed)
    return replayed


@contextlib.contextmanager
def command_store(settings: Settings) -> Iterator[WebhookStore]:
    """The referrals store of the stack, for a command: one transaction, committed when the
    block ends."""
    from shared.migrations import migrate_store

    engine = make_engine(settings.database_url(SERVICE))
    migrate_store(engine, SERVICE)
    try:
        with unit_of_work(engine, WebhookStore, SERVICE) as uow:
            yield uow.store
    finally:
        engine.dispose()


def ops_state(ctx: ServiceContext, limit: int) -> dict[str, Any]:
    """The `webhooks` part of `/ops/pipeline`."""
    with unit_of_work(ctx.engine, WebhookStore) as uow:
        return uow.store.webhook_state(limit)


# --- Delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One send: `error` None when the partner answered 2xx."""

    delivery: Outgoing
    status: int | None
    error: str | None


def signed_headers(delivery: Outgoing, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "E2C-Event-Id": delivery.event_id,
        "E2C-Timestamp": str(timestamp),
        "E2C-Signature": domain.webhook_signature(delivery.secret, timestamp, body),
    }


def check_settings(settings: Settings) -> None:
    """The service refuses to start with a lease shorter than a send (ValueError)."""
    if settings.webhook_lease_seconds <= settings.webhook_timeout_seconds:
        raise ValueError(
            "E2C_WEBHOOK_LEASE_SECONDS must be longer than E2C_WEBHOOK_TIMEOUT_SECONDS: "
            "another worker would send a delivery still in flight"
        )


class WebhookWorker:
    """Sends the due deliveries of the store, from any instance: each claim leases its rows
    (see `WebhookStore.claim_deliveries`) so that two workers never send one at once."""

    def __init__(self, engine: Engine, settings: Settings, metrics: ServiceMetrics) -> None:
        check_settings(settings)
        self.engine = engine
        self.metrics = metrics
        self.timeout = settings.webhook_timeout_seconds
        self.lease = settings.webhook_lease_seconds
        self.poll = settings.webhook_poll_seconds
        self.max_attempts = settings.webhook_max_attempts
        self.backoff = settings.webhook_backoff_seconds
        self.backoff_max = settings.webhook_backoff_max_seconds

    def client(self) -> httpx.AsyncClient:
        """Redirects are never followed (a 3xx is a failure): a callback URL cannot send the
        signed body elsewhere."""
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), follow_redirects=False)

    async def run(self) -> None:
        """The service's task: rounds until cancelled; a failing round (store away) is logged
        and tried again after a growing pause."""
        self.metrics.watch_webhooks()
        counted = 0.0
        failures = 0
        async with self.client() as client:
            while True:
                sent = 0
                pause = self.poll
                try:
                    sent = await self.round(client)
                    failures = 0
                except Exception as error:
                    failures += 1
                    pause = min(self.poll * 2**failures, 30.0)
                    log.error("webhook round failed, next in %gs: %s", pause,
                              describe_error(error))
                if time.monotonic() - counted > QUEUE_METRICS_SECONDS:
                    counted = time.monotonic()
                    with contextlib.suppress(Exception):
                        await anyio.to_thread.run_sync(self._count_queue)
                if sent < CLAIM_BATCH:  # a full batch: more may be due at once
                    await asyncio.sleep(pause)

    async def round(self, client: httpx.AsyncClient) -> int:
        """Leases due deliveries, sends them at once and records each outcome; returns how
        many were sent."""
        claimed = await anyio.to_thread.run_sync(self._claim)
        if not claimed:
            return 0
        attempts = await asyncio.gather(*(self.send(client, d) for d in claimed))
        await anyio.to_thread.run_sync(self._settle, attempts)
        return len(attempts)

    async def send(self, client: httpx.AsyncClient, delivery: Outgoing) -> Attempt:
        body = delivery.body.encode("utf-8")
        headers = signed_headers(delivery, body, int(time.time()))
        try:
            async with asyncio.timeout(self.timeout), client.stream(
                "POST", delivery.url, content=body, headers=headers
            ) as response:
                status = response.status_code  # the answer's body is not read
        except TimeoutError:
            return Attempt(delivery, None, f"no answer within {self.timeout:g}s")
        except Exception as error:  # never its text: it may quote the URL
            return Attempt(delivery, None, type(error).__name__)
        if 200 <= status < 300:
            return Attempt(delivery, status, None)
        if 300 <= status < 400:
            return Attempt(delivery, status, f"HTTP {status} (redirects are not followed)")
        return Attempt(delivery, status, f"HTTP {status}")

    def _claim(self) -> list[Outgoing]:
        with unit_of_work(self.engine, WebhookStore, SERVICE) as uow:
            return uow.store.claim_deliveries(CLAIM_BATCH, self.lease)

    def _settle(self, attempts: Sequence[Attempt]) -> None:
        with unit_of_work(self.engine, WebhookStore, SERVICE) as uow:
            store = uow.store
            store.delivered([a.delivery.id for a in attempts if a.error is None])
            for attempt in attempts:
                if attempt.error is not None:
                    self._failed(store, attempt, attempt.error)
        delivered = sum(1 for a in attempts if a.error is None)
        self.metrics.webhook_attempts.labels(SERVICE, "delivered").inc(delivered)
        self.metrics.webhook_attempts.labels(SERVICE, "failed").inc(len(attempts) - delivered)

    def _failed(self, store: WebhookStore, attempt: Attempt, error: str) -> None:
        delivery = attempt.delivery
        failures = delivery.attempts + 1
        retry_in = domain.retry_delay(failures, self.max_attempts, self.backoff,
                                      self.backoff_max)
        store.failed(delivery, error, attempt.status, retry_in)
        where = f"delivery {delivery.id} ({delivery.type}) to agency {delivery.agency_id} " \
                f"at {domain.shown_url(delivery.url)}"
        if retry_in is None:
            self.metrics.webhook_parked.labels(SERVICE).inc()
            log.error("webhook %s parked after %d failed tries: %s", where, failures, error)
        else:
            log.warning("webhook %s failed (try %d): %s; next in %gs", where, failures, error,
                        retry_in)

    def _count_queue(self) -> None:
        with unit_of_work(self.engine, WebhookStore, SERVICE) as uow:
            state = uow.store.webhook_state(0)
        self.metrics.webhook_queue.labels(SERVICE, PENDING).set(state["pending"])
        self.metrics.webhook_queue.labels(SERVICE, PARKED).set(state["parked"])


def delivery_task(ctx: ServiceContext) -> Any:
    """The worker as the service's background task."""
    return WebhookWorker(ctx.engine, ctx.settings, ctx.metrics).run()
