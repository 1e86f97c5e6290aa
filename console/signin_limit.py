"""A brake on guessing tokens: the sign-ins an address got refused (unknown token) in the
last minute, kept in memory (the console has no store). Past the limit, every sign-in from
that address answers 429 until its oldest refusal is a minute old.

Only refusals count: people of one office behind one address signing in at nine are never
slowed down, a guesser is after a few tries."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0
# Past this many addresses, those with no refusal left in the window are forgotten.
TIDY_ABOVE = 10_000


class SigninLimit:
    def __init__(self, refusals: int, window_seconds: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if refusals < 1 or window_seconds <= 0:
            raise ValueError("the limit needs at least one refusal and a positive window")
        self.refusals = refusals
        self.window_seconds = window_seconds
        self._clock = clock
        self._by_address: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> int:
        """0 when `address` may try to sign in, else the whole seconds to wait."""
        times = self._recent(address)
        if len(times) < self.refusals:
            return 0
        return max(1, math.ceil(times[0] + self.window_seconds - self._clock()))

    def refused(self, address: str) -> None:
        if len(self._by_address) > TIDY_ABOVE:
            self._tidy()
        self._by_address.setdefault(address, deque()).append(self._clock())

    def _recent(self, address: str) -> deque[float]:
        times = self._by_address.get(address, deque())
        start = self._clock() - self.window_seconds
        while times and times[0] <= start:
            times.popleft()
        if not times:
            self._by_address.pop(address, None)
        return times

    def _tidy(self) -> None:
        for address in list(self._by_address):
            self._recent(address)
