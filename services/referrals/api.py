"""Referrals HTTP: health and metrics for now (partner access comes with its issue)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from shared.service import ServiceContext


def routes(_ctx: ServiceContext) -> list[BaseRoute]:
    return []
