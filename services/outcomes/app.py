"""Wiring of the outcomes service."""

from __future__ import annotations

from shared.contract import ExitDecided, Topic
from shared.service import ServiceApp, ServiceSpec, build_app
from shared.settings import Settings

from . import api, handlers
from .store import TABLES


def create_app(settings: Settings | None = None) -> ServiceApp:
    spec = ServiceSpec(
        name="outcomes",
        routes=handlers.routes(),
        outputs={Topic.EXITS_DECIDED: ExitDecided},
        tables=TABLES,
        http_routes=api.routes,
        description="Exits, outcome categories, yearly indicators and the referral funnel.",
    )
    return build_app(spec, settings)
