"""Wiring of the referrals service."""

from __future__ import annotations

from shared.contract import ReferralDecided, Topic
from shared.schools import load_schools
from shared.service import ServiceApp, ServiceSpec, build_app
from shared.settings import Settings

from . import api
from .handlers import ReferralHandlers
from .store import TABLES


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    handlers = ReferralHandlers(set(load_schools(settings.schools_file)))
    spec = ServiceSpec(
        name="referrals",
        routes=handlers.routes(),
        outputs={Topic.REFERRALS_DECIDED: ReferralDecided},
        tables=TABLES,
        http_routes=api.routes,
        description="Intake, eligibility and decisions on referrals; the only holder of "
        "personal data.",
    )
    return build_app(spec, settings)
