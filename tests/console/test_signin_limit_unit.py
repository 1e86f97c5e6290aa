"""The brake on guessing tokens, on a clock the test moves: refusals per address within a
minute, 429's wait, and the address free again once its oldest refusal is a minute old."""

from __future__ import annotations

import pytest

from console.signin_limit import SigninLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_stopped_after_its_refusals_and_free_a_minute_after_the_first() -> None:
    clock = Clock()
    limit = SigninLimit(3, clock=clock)
    for _ in range(3):
        assert limit.retry_after("203.0.113.7") == 0
        limit.refused("203.0.113.7")
        clock.now += 10  # refusals at 1000, 1010, 1020; now 1030

    assert limit.retry_after("203.0.113.7") == 30  # the first refusal leaves at 1060
    assert limit.retry_after("198.51.100.9") == 0  # another address is not slowed
    clock.now = 1059.5
    assert limit.retry_after("203.0.113.7") == 1
    clock.now = 1060
    assert limit.retry_after("203.0.113.7") == 0


def test_only_the_last_minute_counts() -> None:
    clock = Clock()
    limit = SigninLimit(2, clock=clock)
    limit.refused("a")
    clock.now += 61
    limit.refused("a")
    assert limit.retry_after("a") == 0
    limit.refused("a")
    assert limit.retry_after("a") == 60


def test_addresses_with_nothing_left_in_the_window_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("console.signin_limit.TIDY_ABOVE", 2)
    clock = Clock()
    limit = SigninLimit(5, clock=clock)
    for address in ("a", "b", "c"):
        limit.refused(address)
    clock.now += 61
    limit.refused("d")  # more than two addresses known: the stale ones go
    assert list(limit._by_address) == ["d"]


@pytest.mark.parametrize(("refusals", "window"), [(0, 60), (3, 0)])
def test_a_limit_that_stops_nothing_or_everything_is_refused(refusals: int,
                                                            window: float) -> None:
    with pytest.raises(ValueError):
        SigninLimit(refusals, window)
