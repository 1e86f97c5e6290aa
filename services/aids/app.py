"""Wiring of the aids service."""

from __future__ import annotations

from shared.aid_rules import load_rules
from shared.contract import AidDecided, Topic
from shared.service import ServiceApp, ServiceSpec, build_app, hold_sweep
from shared.settings import Settings

from . import api
from .handlers import AidHandlers
from .store import TABLES, AidStore


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    handlers = AidHandlers(load_rules(settings.aid_rules_file))
    spec = ServiceSpec(
        name="aids",
        routes=handlers.routes(),
        outputs={Topic.AIDS_DECIDED: AidDecided},
        tables=TABLES,
        http_routes=api.routes,
        periodic=[hold_sweep("held-requests-sweep", handlers.sweep, settings.hold_sweep_seconds)],
        description="Aid requests, budget envelopes, the spending ledger and finance reports.",
        held_count=lambda session: AidStore(session).held.count(),
    )
    return build_app(spec, settings)
