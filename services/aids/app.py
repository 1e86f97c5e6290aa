"""Wiring of the aids service: its topology."""

from __future__ import annotations

from shared.contract import Topic
from shared.service import HeldInputs, ServiceApp, ServiceSpec, build_app
from shared.settings import Settings
from shared.topology import ServiceTopology

from . import api
from .handlers import AidHandlers
from .store import TABLES, AidStore

TOPOLOGY = ServiceTopology(
    name="aids",
    description="Aid requests, budget envelopes, the spending ledger and finance reports.",
    handlers=AidHandlers.from_settings,
    store=AidStore,
    tables=TABLES,
    consumes={
        Topic.AIDS_REQUESTED: AidHandlers.on_request,
        Topic.BUDGETS_SUBMITTED: AidHandlers.on_budget,
        Topic.ENROLLMENTS_DECIDED: AidHandlers.on_enrollment,
        Topic.EXITS_DECIDED: AidHandlers.on_exit,
    },
    produces=(Topic.AIDS_DECIDED,),
    prepare=AidHandlers.prepare,
)


def create_app(settings: Settings | None = None) -> ServiceApp:
    held = HeldInputs("held-requests-sweep", AidHandlers.sweep)
    return build_app(ServiceSpec(TOPOLOGY, api.router, held=held), settings)
