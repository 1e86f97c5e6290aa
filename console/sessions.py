"""Server-side sessions kept in memory, keyed by a random id (the cookie): the token stays
here, never in a page, a URL or a cookie. A restart signs everyone out."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Session:
    token: str
    pages: frozenset[str]  # the console pages this token's role may open
    csrf: str
    expires_at: float  # time.monotonic()
    agency_id: str | None = None  # a partner's own agency, when the services showed it


class Sessions:
    def __init__(self, lifetime_seconds: float) -> None:
        self.lifetime_seconds = lifetime_seconds
        self._by_id: dict[str, Session] = {}

    def open(self, token: str, pages: frozenset[str], agency_id: str | None = None) -> str:
        """A new session's id."""
        self._forget_expired()
        session_id = secrets.token_urlsafe(32)
        self._by_id[session_id] = Session(
            token, pages, secrets.token_urlsafe(32), time.monotonic() + self.lifetime_seconds,
            agency_id,
        )
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        session = self._by_id.get(session_id) if session_id else None
        if session is None or session.expires_at <= time.monotonic():
            return None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for session_id in [key for key, s in self._by_id.items() if s.expires_at <= now]:
            del self._by_id[session_id]


def same_secret(given: str | None, expected: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())
