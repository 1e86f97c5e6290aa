"""Wiring of the outcomes service: its topology, and its rebuild from the topics."""

from __future__ import annotations

from shared.contract import Topic
from shared.rebuild import RebuildResult
from shared.rebuild import rebuild as rebuild_from_topics
from shared.service import HeldInputs, ServiceApp, ServiceSpec, build_app
from shared.settings import Settings
from shared.topology import Rebuild, ServiceTopology

from . import api
from .handlers import OutcomeHandlers
from .store import TABLES, OutcomeStore

TOPOLOGY = ServiceTopology(
    name="outcomes",
    description="Exits, outcome categories, yearly indicators and the referral funnel.",
    handlers=OutcomeHandlers.from_settings,
    store=OutcomeStore,
    tables=TABLES,
    consumes={
        Topic.EXITS_SUBMITTED: OutcomeHandlers.on_exit,
        Topic.REFERRALS_DECIDED: OutcomeHandlers.on_referral_decided,
        Topic.ENROLLMENTS_DECIDED: OutcomeHandlers.on_enrollment,
        Topic.AIDS_DECIDED: OutcomeHandlers.on_aid_decided,
    },
    produces=(Topic.EXITS_DECIDED,),
    prepare=OutcomeHandlers.prepare,
    # Submissions first (their answers), then what the view is made of, trainees before
    # the exits that need them; the exits as they were decided, nothing decided again.
    rebuild=Rebuild(
        replays={
            Topic.EXITS_SUBMITTED: OutcomeHandlers.on_exit_replayed,
            Topic.REFERRALS_DECIDED: OutcomeHandlers.on_referral_decided,
            Topic.ENROLLMENTS_DECIDED: OutcomeHandlers.on_enrollment,
            Topic.AIDS_DECIDED: OutcomeHandlers.on_aid_decided,
            Topic.EXITS_DECIDED: OutcomeHandlers.on_exit_decided,
        },
        finish=OutcomeHandlers.finish_rebuild,
    ),
)


def create_app(settings: Settings | None = None) -> ServiceApp:
    held = HeldInputs("held-exits-sweep", OutcomeHandlers.sweep)
    return build_app(ServiceSpec(TOPOLOGY, api.router, held=held), settings)


def rebuild(settings: Settings) -> RebuildResult:
    """Drops the outcomes store and rebuilds it from the topics (see `shared.rebuild`):
    exits are taken as they were decided; submissions never answered are decided now when
    their trainee is known, held again otherwise."""
    return rebuild_from_topics(TOPOLOGY, settings)
