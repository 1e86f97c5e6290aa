"""Wiring of the aids service."""

from __future__ import annotations

from shared.contract import AidDecided, Topic
from shared.service import ServiceApp, ServiceSpec, build_app
from shared.settings import Settings

from . import api, handlers
from .store import TABLES


def create_app(settings: Settings | None = None) -> ServiceApp:
    spec = ServiceSpec(
        name="aids",
        routes=handlers.routes(),
        outputs={Topic.AIDS_DECIDED: AidDecided},
        tables=TABLES,
        http_routes=api.routes,
        description="Aid requests, budget envelopes, the spending ledger and finance reports.",
    )
    return build_app(spec, settings)
