"""Wiring of the referrals service."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from shared.contract import EnrollmentDecided, ReferralDecided, Topic
from shared.db import make_engine
from shared.schools import load_schools
from shared.service import (
    PeriodicJob,
    ServiceApp,
    ServiceContext,
    ServiceSpec,
    build_app,
    create_schema,
)
from shared.settings import Settings

from . import api
from .handlers import ReferralHandlers, erase_due
from .store import TABLES, ReferralStore, now


def apply_retention(ctx: ServiceContext) -> int:
    """Erases the personal data that the retention period no longer allows to keep."""
    with Session(ctx.engine) as session:
        erased = erase_due(ReferralStore(session), ctx.settings.retention_months, now())
        session.commit()
    return erased


def erase_referral(settings: Settings, referral_id: str) -> bool | None:
    """Erases one referral's personal data from the store (None: no such referral)."""
    engine = make_engine(settings.database_url("referrals"))
    create_schema(engine, TABLES)
    try:
        with Session(engine) as session:
            store = ReferralStore(session)
            referral = store.get(referral_id, for_update=True)
            if referral is None:
                return None
            erased = store.erase(referral, "erasure_request")
            session.commit()
            return erased
    finally:
        engine.dispose()


def run_retention(settings: Settings, months: int, as_of: datetime) -> int:
    """The retention job as a command (for cron): erases what is past `months`."""
    engine = make_engine(settings.database_url("referrals"))
    create_schema(engine, TABLES)
    try:
        with Session(engine) as session:
            erased = erase_due(ReferralStore(session), months, as_of)
            session.commit()
            return erased
    finally:
        engine.dispose()


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    handlers = ReferralHandlers(set(load_schools(settings.schools_file)))
    spec = ServiceSpec(
        name="referrals",
        routes=handlers.routes(),
        outputs={
            Topic.REFERRALS_DECIDED: ReferralDecided,
            Topic.ENROLLMENTS_DECIDED: EnrollmentDecided,
        },
        tables=TABLES,
        http_routes=api.routes,
        prepare=handlers.prepare,
        periodic=[
            PeriodicJob("retention", settings.retention_interval_hours * 3600, apply_retention)
        ],
        description="Intake, eligibility, duplicates, derogations and enrollment; the only "
        "holder of personal data.",
    )
    return build_app(spec, settings)
