"""Aids subscribers: decode, decide, persist, emit."""

from __future__ import annotations

from shared.messaging import Route


def routes() -> dict[str, Route]:
    return {}
