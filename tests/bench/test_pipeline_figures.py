"""The benchmark's arithmetic (never its timings): the lifecycle's time table from two
scrapes of the counters, and the ratios of a run."""

from __future__ import annotations

import pytest

from bench.pipeline import Figure, Run, ratios, time_table

STAGES = ("decode", "prepare", "handle", "write", "commit", "ack", "dispatch", "publish",
          "relay_store")


def test_the_time_table_is_the_counters_moves_and_idle_the_rest_of_the_wall_time() -> None:
    before = {name: dict.fromkeys(STAGES, 10.0) for name in ("referrals", "aids", "outcomes")}
    after = {name: dict.fromkeys(STAGES, 10.0) for name in before}
    after["aids"].update(decode=10.5, handle=13.0, commit=10.25, publish=12.0)

    table = time_table(before, after, wall=5.0)

    assert table["aids"]["handle"] == 3.0
    assert table["aids"]["publish"] == 2.0  # beside the consumer: not taken from idle
    assert table["aids"]["idle"] == 5.0 - (0.5 + 3.0 + 0.25)
    assert table["referrals"]["idle"] == 5.0
    assert all(table[name]["wall"] == 5.0 for name in table)


def figure(name: str, events: int, seconds: float) -> Figure:
    return Figure(name, events, seconds, 1.0, 2.0)


def test_each_stage_is_divided_by_the_raw_rate_and_aids_and_exits_by_the_referrals() -> None:
    rates = {"raw aiokafka": 10_000, "raw aiokafka, no authentication": 8_000,
             "referrals (1 instance, SQLite)": 4_000, "aid requests (1 instance, SQLite)": 1_000,
             "exits (1 instance, SQLite)": 3_000, "referrals (1 instance, PostgreSQL)": 2_000,
             "aid requests (1 instance, PostgreSQL)": 1_800,
             "exits (1 instance, PostgreSQL)": 500}
    run = Run({name: figure(name, rate, 1.0) for name, rate in rates.items()}, {}, {}, {})

    found = ratios(run)

    assert found["referrals (1 instance, SQLite) / raw"] == pytest.approx(0.4)
    assert found["referrals (1 instance, SQLite) / raw without authentication"] == 0.5
    assert found["aid requests / referrals (SQLite)"] == 0.25
    assert found["exits / referrals (SQLite)"] == 0.75
    assert found["aid requests / referrals (PostgreSQL)"] == 0.9
    assert found["exits / referrals (PostgreSQL)"] == 0.25
    assert "raw aiokafka / raw" not in found
