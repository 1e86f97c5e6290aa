"""The system's topology in one place: every service's own declaration (`TOPOLOGY` in its
`app.py`). The command line, the stack and the tests read who consumes and produces what
from here; the services themselves never import each other."""

from __future__ import annotations

from typing import Any

from services.aids.app import TOPOLOGY as AIDS
from services.outcomes.app import TOPOLOGY as OUTCOMES
from services.referrals.app import TOPOLOGY as REFERRALS
from shared.contract import Topic
from shared.topology import ServiceTopology

TOPOLOGIES: dict[str, ServiceTopology[Any, Any]] = {
    topology.name: topology for topology in (REFERRALS, AIDS, OUTCOMES)
}


def consumers_of(topic: Topic) -> list[str]:
    return [name for name, topology in TOPOLOGIES.items() if topic in topology.inputs]


def producer_of(topic: Topic) -> str | None:
    """The service that decides `topic`; None for what partners and schools submit (and
    for dead letters, which every service writes)."""
    found = [name for name, topology in TOPOLOGIES.items() if topic in topology.produces]
    return found[0] if found else None
