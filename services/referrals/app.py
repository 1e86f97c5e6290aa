"""Wiring of the referrals service: its topology, expiry, retention and erasure commands."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from shared.contract import Topic
from shared.db import make_engine, truncate_wal
from shared.erasure import ErasureBound
from shared.messaging import republish_tombstones, unit_of_work
from shared.migrations import migrate_store
from shared.service import (
    BackgroundTask,
    PeriodicJob,
    ServiceApp,
    ServiceContext,
    ServiceSpec,
    build_app,
)
from shared.settings import Settings
from shared.topology import ServiceTopology

from . import api, domain, webhooks
from .handlers import ReferralHandlers, erase_due, expire_due
from .store import OPERATOR, SYSTEM, TABLES, ReferralStore, now

log = logging.getLogger(__name__)

TOPOLOGY = ServiceTopology(
    name="referrals",
    description="Intake, eligibility, duplicates, derogations and enrollment; the only "
    "holder of personal data.",
    handlers=ReferralHandlers.from_settings,
    store=ReferralStore,
    tables=TABLES,
    consumes={
        Topic.REFERRALS_SUBMITTED: ReferralHandlers.on_referral,
        Topic.DEROGATIONS_SUBMITTED: ReferralHandlers.on_derogation,
        Topic.ENROLLMENTS_SUBMITTED: ReferralHandlers.on_enrollment,
        Topic.EXITS_DECIDED: ReferralHandlers.on_exit,
    },
    # The submitted topic too: referrals received over HTTP are published there (1.1).
    produces=(Topic.REFERRALS_DECIDED, Topic.ENROLLMENTS_DECIDED, Topic.REFERRALS_SUBMITTED),
    prepare=ReferralHandlers.prepare,
    journals=(domain.ERASURE_JOURNAL,),
)


def apply_expiry(ctx: ServiceContext) -> int | None:
    """(1.1) Expires the referrals not enrolled in time (None: another instance runs it)."""
    with unit_of_work(ctx.engine, ReferralStore, TOPOLOGY.name) as uow:
        return expire_due(uow, ctx.settings.referral_expiry_days, now())


def apply_retention(ctx: ServiceContext) -> int | None:
    """Erases the personal data that the retention period no longer allows to keep (None:
    another instance runs it)."""
    with unit_of_work(ctx.engine, ReferralStore, TOPOLOGY.name) as uow:
        if not uow.store.lock_job("retention"):
            return None
        return erase_due(uow.store, ctx.settings.retention_months, now(),
                         ctx.settings.enrolled_retention_months)


def apply_erasure_bound(ctx: ServiceContext) -> int:
    """(1.1) Keeps erasures within `E2C_ERASURE_MAX_DAYS`: publishes again the tombstones
    younger than the bound (their segments roll and get cleaned, see `shared.erasure`), and
    empties SQLite's WAL, where erased values linger in old frames."""
    bound = ErasureBound(ctx.settings.erasure_max_days)
    since = now() - timedelta(milliseconds=bound.total_ms)
    with unit_of_work(ctx.engine, ReferralStore, TOPOLOGY.name) as uow:
        republished = republish_tombstones(uow.session, since)
    if not truncate_wal(ctx.engine) and ctx.engine.dialect.name == "sqlite":
        log.warning("the store's WAL stayed busy: emptied at the next run")
    return republished


def erase_referral(settings: Settings, referral_id: str) -> bool | None:
    """Erases one referral's personal data from the store (None: no such referral)."""
    engine = make_engine(settings.database_url(TOPOLOGY.name))
    migrate_store(engine, TOPOLOGY.name)
    try:
        with unit_of_work(engine, ReferralStore, TOPOLOGY.name) as uow:
            referral = uow.store.get(referral_id, for_update=True)
            if referral is None:
                return None
            return uow.store.erase(referral, "erasure_request", OPERATOR)
    finally:
        engine.dispose()


def reapply_erasures(url: str, erasures: list[dict[str, Any]]) -> int:
    """(1.1) After a restore: every journaled erasure (`domain.erasure_record`) is kept in
    the store, and a referral the backup still holds personal data of is erased again (as
    `system`, code `restore`). Then SQLite's WAL is emptied of the erased values. Returns
    how many referrals were erased again."""
    engine = make_engine(url)
    migrate_store(engine, TOPOLOGY.name)  # a backup from an older release is upgraded too
    try:
        erased = 0
        with unit_of_work(engine, ReferralStore, TOPOLOGY.name) as uow:
            for record in erasures:
                referral_id = str(record["referral_id"])
                erased_at = datetime.fromisoformat(record["erased_at"])
                uow.store.record_erasure(referral_id, erased_at, str(record["reason"]))
                referral = uow.store.get(referral_id, for_update=True)
                if referral is not None and uow.store.erase(
                        referral, domain.RESTORE_REASON, SYSTEM, journal=False):
                    erased += 1
        if not truncate_wal(engine) and engine.dialect.name == "sqlite":
            log.warning("the restored store's WAL stayed busy: emptied by the service")
        return erased
    finally:
        engine.dispose()


def run_retention(settings: Settings, months: int, as_of: datetime) -> int | None:
    """The retention job as a command (for cron): erases what is past `months` (and past
    `E2C_ENROLLED_RETENTION_MONTHS` for the enrolled). None: a service runs it right now."""
    engine = make_engine(settings.database_url(TOPOLOGY.name))
    migrate_store(engine, TOPOLOGY.name)
    try:
        with unit_of_work(engine, ReferralStore, TOPOLOGY.name) as uow:
            if not uow.store.lock_job("retention"):
                return None
            return erase_due(uow.store, months, as_of, settings.enrolled_retention_months)
    finally:
        engine.dispose()


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    webhooks.check_settings(settings)
    return build_app(ServiceSpec(
        topology=TOPOLOGY,
        router=api.router,
        periodic=[
            PeriodicJob("expiry", settings.expiry_interval_seconds, apply_expiry),
            PeriodicJob("retention", settings.retention_interval_hours * 3600, apply_retention),
            PeriodicJob("erasure-bound", ErasureBound(settings.erasure_max_days)
                        .republish_seconds, apply_erasure_bound),
        ],
        background=[BackgroundTask("webhook-deliveries", webhooks.delivery_task)],
        ops_parts={"webhooks": webhooks.ops_state},
    ), settings)
