"""Outcomes HTTP: health and metrics for now."""

from __future__ import annotations

from starlette.routing import BaseRoute

from shared.service import ServiceContext


def routes(_ctx: ServiceContext) -> list[BaseRoute]:
    return []
