"""Wiring of the referrals service."""

from __future__ import annotations

from sqlmodel import Session

from shared.contract import EnrollmentDecided, ReferralDecided, Topic
from shared.schools import load_schools
from shared.service import PeriodicJob, ServiceApp, ServiceContext, ServiceSpec, build_app
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
        periodic=[
            PeriodicJob("retention", settings.retention_interval_hours * 3600, apply_retention)
        ],
        description="Intake, eligibility, duplicates, derogations and enrollment; the only "
        "holder of personal data.",
    )
    return build_app(spec, settings)
