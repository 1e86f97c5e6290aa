"""Wiring of the aids service."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from shared.contract import AidDecided, Topic
from shared.messaging import Unit
from shared.service import PeriodicJob, ServiceApp, ServiceContext, ServiceSpec, build_app
from shared.settings import Settings

from . import api
from .domain import load_rules
from .handlers import AidHandlers
from .store import TABLES, AidStore


def sweep_held_requests(handlers: AidHandlers, ctx: ServiceContext) -> int:
    """Refuses `unknown_trainee` the requests whose enrollment never came within the hold."""
    with Session(ctx.engine) as session:
        swept = handlers.sweep(Unit(session), timedelta(seconds=ctx.settings.hold_seconds))
        session.commit()
    return swept


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    handlers = AidHandlers(load_rules(settings.aid_rules_file))
    spec = ServiceSpec(
        name="aids",
        routes=handlers.routes(),
        outputs={Topic.AIDS_DECIDED: AidDecided},
        tables=TABLES,
        http_routes=api.routes,
        periodic=[
            PeriodicJob(
                "held-requests-sweep",
                settings.hold_sweep_seconds,
                lambda ctx: sweep_held_requests(handlers, ctx),
            )
        ],
        description="Aid requests, budget envelopes, the spending ledger and finance reports.",
        held_count=lambda session: AidStore(session).held_count(),
    )
    return build_app(spec, settings)
