"""The system in one place: every service's own declarations (`TOPOLOGY` in its `app.py`,
its HTTP `router` in its `api.py`). The command line, the stack, the generated documents
and the tests read who consumes and produces what, and who serves which route, from here;
the services themselves never import each other."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from services.aids import api as aids_api
from services.aids.app import TOPOLOGY as AIDS
from services.outcomes import api as outcomes_api
from services.outcomes.app import TOPOLOGY as OUTCOMES
from services.referrals import api as referrals_api
from services.referrals.app import TOPOLOGY as REFERRALS
from shared.contract import ALL_TOPICS, Topic
from shared.service import http_app
from shared.topology import ServiceTopology

TOPOLOGIES: dict[str, ServiceTopology[Any, Any]] = {
    topology.name: topology for topology in (REFERRALS, AIDS, OUTCOMES)
}
# The services' internal topics (`ServiceTopology.journals`), and every topic the stack
# creates: the contract's and these.
JOURNALS: tuple[str, ...] = tuple(
    journal for topology in TOPOLOGIES.values() for journal in topology.journals
)
BROKER_TOPICS: tuple[str, ...] = (*ALL_TOPICS, *JOURNALS)
ROUTERS: dict[str, APIRouter] = {
    REFERRALS.name: referrals_api.router,
    AIDS.name: aids_api.router,
    OUTCOMES.name: outcomes_api.router,
}


def service_http_app(name: str) -> FastAPI:
    """The service's HTTP app as it serves it (its routes, health, `/ops/pipeline`, its
    documents), without resources: for its OpenAPI document and the tests."""
    return http_app(TOPOLOGIES[name], ROUTERS[name])


def consumers_of(topic: Topic) -> list[str]:
    return [name for name, topology in TOPOLOGIES.items() if topic in topology.inputs]


def producer_of(topic: Topic) -> str | None:
    """The service that decides `topic`; None for what partners and schools submit (and
    for dead letters, which every service writes)."""
    found = [name for name, topology in TOPOLOGIES.items() if topic in topology.produces]
    return found[0] if found else None
