"""Where one consumed batch spends its time: `BatchProcessor.process` called directly on a
prepared store (no broker), timed in CPU seconds, its SQL statements counted, and profiled.

    .venv/bin/python -m bench.profile_batch                       # every scenario, SQLite + PG
    .venv/bin/python -m bench.profile_batch --scenario aid-requests --profile --repeat 3
    E2C_BENCH_POSTGRES_URL=postgresql+psycopg://.../postgres .venv/bin/python -m bench.profile_batch

Scenarios (each a store seeded first, then ONE measured batch of `--records` records):
- `aid-requests`: trainees enrolled and budgets set, then aid requests (meals, laptops,
  childcare) of those trainees;
- `enrollments`: enrollments of new trainees (what aids learns from them);
- `held-released`: enrollments of which one in five releases a held request;
- `referrals`: referral submissions of new people, through the referrals service (the pace
  the others are compared with).

PostgreSQL: a fresh database on the server of E2C_BENCH_POSTGRES_URL (an admin URL), else on
a local durable cluster started under var/bench/ and removed afterwards (`--no-postgres`
leaves it out). CPU time is the process's own (`time.process_time`): the server's work on
PostgreSQL is not in it, the wall time is printed beside it. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from shared.db import make_engine
from shared.messaging import Inbound
from shared.migrations import migrate_store
from shared.settings import PROJECT_ROOT, Settings
from shared.topology import ServiceTopology
from tests.events import aid_request, budget, enrollment_decided, referral

BENCH_DIR = PROJECT_ROOT / "var" / "bench"
KINDS_PER_TRAINEE = 2  # requests per trainee in `aid-requests`


@dataclass(frozen=True)
class BatchFigure:
    """One measured batch."""

    scenario: str
    backend: str
    records: int
    cpu_seconds: float
    wall_seconds: float
    statements: int
    gc_seconds: float  # CPU seconds of the garbage collector within the batch

    @property
    def per_cpu_second(self) -> float:
        return self.records / self.cpu_seconds

    @property
    def per_second(self) -> float:
        return self.records / self.wall_seconds

    @property
    def statements_per_record(self) -> float:
        return self.statements / self.records


@dataclass(frozen=True)
class Scenario:
    """A store's service, the batches that seed it, and the batch that is measured."""

    topology: ServiceTopology[Any, Any]
    seed: list[list[Inbound]]
    batch: list[Inbound]


_offsets = iter(range(10**9))


def records(topic: str, values: Sequence[dict[str, Any]], key: str = "k") -> list[Inbound]:
    return [Inbound(topic, 0, next(_offsets), key, json.dumps(value).encode())
            for value in values]


def aid_requests_scenario(size: int) -> Scenario:
    from services.aids.app import TOPOLOGY
    from shared.contract import Topic

    trainees = [uuid.uuid4().hex for _ in range(max(1, size // KINDS_PER_TRAINEE))]
    enrollments = [enrollment_decided(t, enrolled_on="2024-01-08", school_id=school)
                   for t, school in zip(trainees, _schools(len(trainees)), strict=True)]
    budgets = [budget(kind, 10**12, year=2024) for kind in ("meals", "laptop", "childcare")]
    requests: list[dict[str, Any]] = []
    for index in range(size):
        trainee = trainees[index % len(trainees)]
        month = 2 + (index // len(trainees)) % 10
        kind = ("meals", "meals", "meals", "laptop", "childcare")[index % 5]
        if kind == "meals":
            requests.append(aid_request(trainee, "meals", quantity=12,
                                        period_start=f"2024-{month:02d}-01",
                                        period_end=f"2024-{month:02d}-20"))
        elif kind == "laptop":
            requests.append(aid_request(trainee, "laptop", amount_cents=40000,
                                        period_start=f"2024-{month:02d}-03",
                                        period_end=f"2024-{month:02d}-03"))
        else:
            requests.append(aid_request(trainee, "childcare", amount_cents=25000,
                                        period_start=f"2024-{month:02d}-01",
                                        period_end=f"2024-{month:02d}-28"))
    seed = [records(Topic.BUDGETS_SUBMITTED, budgets),
            *_chunks(records(Topic.ENROLLMENTS_DECIDED, enrollments), 500)]
    return Scenario(TOPOLOGY, seed, records(Topic.AIDS_REQUESTED, requests))


def enrollments_scenario(size: int) -> Scenario:
    from services.aids.app import TOPOLOGY
    from shared.contract import Topic

    trainees = [uuid.uuid4().hex for _ in range(size)]
    enrollments = [enrollment_decided(t, enrolled_on="2024-01-08", school_id=school)
                   for t, school in zip(trainees, _schools(size), strict=True)]
    budgets = [budget(kind, 10**12, year=2024) for kind in ("meals", "laptop", "childcare")]
    return Scenario(TOPOLOGY, [records(Topic.BUDGETS_SUBMITTED, budgets)],
                    records(Topic.ENROLLMENTS_DECIDED, enrollments))


def held_scenario(size: int) -> Scenario:
    """Enrollments of which one in five releases a request held before it (decided in its
    own savepoint, as `release_each` does)."""
    from services.aids.app import TOPOLOGY
    from shared.contract import Topic

    trainees = [uuid.uuid4().hex for _ in range(size)]
    held = [aid_request(t, "meals", quantity=10, period_start="2024-03-01",
                        period_end="2024-03-20") for t in trainees[::5]]
    enrollments = [enrollment_decided(t, enrolled_on="2024-01-08", school_id=school)
                   for t, school in zip(trainees, _schools(size), strict=True)]
    budgets = [budget(kind, 10**12, year=2024) for kind in ("meals", "laptop", "childcare")]
    return Scenario(TOPOLOGY, [records(Topic.BUDGETS_SUBMITTED, budgets),
                               records(Topic.AIDS_REQUESTED, held)],
                    records(Topic.ENROLLMENTS_DECIDED, enrollments))


def referrals_scenario(size: int) -> Scenario:
    from services.referrals.app import TOPOLOGY
    from shared.contract import Topic

    return Scenario(TOPOLOGY, [], records(Topic.REFERRALS_SUBMITTED,
                                          [referral() for _ in range(size)]))


def _schools(count: int) -> list[str]:
    names = ("toulouse", "nimes", "ales", "castres", "lunel")
    return [names[index % len(names)] for index in range(count)]


def _chunks(items: list[Inbound], size: int) -> Iterator[list[Inbound]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


SCENARIOS: dict[str, Callable[[int], Scenario]] = {
    "aid-requests": aid_requests_scenario,
    "enrollments": enrollments_scenario,
    "held-released": held_scenario,
    "referrals": referrals_scenario,
}


@contextmanager
def counted_statements(engine: Engine) -> Iterator[list[int]]:
    """Counts the statements the engine sends while the block runs (`[count]`)."""
    count = [0]

    def before(*_args: Any) -> None:
        count[0] += 1

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield count
    finally:
        event.remove(engine, "before_cursor_execute", before)


@contextmanager
def collector_seconds() -> Iterator[list[float]]:
    """The CPU seconds the garbage collector runs while the block runs (`[seconds]`)."""
    spent = [0.0]
    started = [0.0]

    def callback(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            spent[0] += time.process_time() - started[0]

    gc.callbacks.append(callback)
    try:
        yield spent
    finally:
        gc.callbacks.remove(callback)


def profile_batch(
    topology: ServiceTopology[Any, Any],
    engine: Engine,
    seed: Sequence[Sequence[Inbound]],
    batch: Sequence[Inbound],
    scenario: str = "",
    backend: str = "",
    profile: bool = False,
) -> tuple[BatchFigure, str | None]:
    """Migrates the store of `engine`, feeds it the `seed` batches, then processes `batch`
    once as the deployed service does (its handlers from the default settings): its CPU and
    wall seconds, its statements, and with `profile` the cProfile of that one call."""
    migrate_store(engine, topology.name)
    processor = topology.processor(engine, topology.handlers(Settings()))
    for records_ in seed:
        processor.process(list(records_))
    profiler = cProfile.Profile(time.process_time) if profile else None
    # A full collection of the seeding's garbage would land in a random batch (0.1-0.2 s of
    # CPU here, about a batch's own time): every measured batch starts from the same state.
    gc.collect()
    with counted_statements(engine) as count, collector_seconds() as collecting:
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        result = processor.process(list(batch))
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    handled = sum(result.handled.values())
    if handled != len(batch):
        raise RuntimeError(f"{scenario}: {handled} of {len(batch)} records handled: {result}")
    figure = BatchFigure(scenario, backend, len(batch), cpu, wall, count[0], collecting[0])
    return figure, _top(profiler) if profiler is not None else None


def _top(profiler: cProfile.Profile, lines: int = 30) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)
    return out.getvalue()


# --- the stores -------------------------------------------------------------------------------


@contextmanager
def sqlite_store(name: str) -> Iterator[Engine]:
    folder = BENCH_DIR / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{path}")
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def postgres_server() -> Iterator[Callable[[str], str]]:
    """A function creating a fresh database (its URL) on the bench's PostgreSQL."""
    admin = os.environ.get("E2C_BENCH_POSTGRES_URL")
    if admin:
        yield _database_factory(admin)
        return
    from deploy.harness import free_port
    from deploy.local_postgres import LocalPostgres, ensure_installed

    ensure_installed()
    server = LocalPostgres(BENCH_DIR / "profile-postgres", port=free_port())
    server.start()
    try:
        yield _database_factory(server.url("postgres"))
    finally:
        server.stop()
        server.purge()


def _database_factory(admin_url: str) -> Callable[[str], str]:
    base, _, _ = admin_url.rpartition("/")

    def create(name: str) -> str:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return f"{base}/{name}"

    return create


@contextmanager
def postgres_store(create: Callable[[str], str], name: str) -> Iterator[Engine]:
    engine = make_engine(create(f"e2c_profile_{name.replace('-', '_')}"))
    try:
        yield engine
    finally:
        engine.dispose()


# --- the command ------------------------------------------------------------------------------


def run(
    names: list[str], size: int, repeat: int, profile: bool, postgres: bool
) -> list[BatchFigure]:
    figures: list[BatchFigure] = []
    backends: list[str] = ["sqlite", "postgresql"] if postgres else ["sqlite"]
    with postgres_server() if postgres else _no_server() as create:
        for _ in range(repeat):  # the scenarios interleaved: the machine's noise spread
            for backend in backends:
                for name in names:
                    scenario = SCENARIOS[name](size)
                    store = (sqlite_store(name) if backend == "sqlite"
                             else postgres_store(create, name))
                    with store as engine:
                        figure, top = profile_batch(scenario.topology, engine, scenario.seed,
                                                    scenario.batch, name, backend, profile)
                    figures.append(figure)
                    print_figure(figure)
                    if top is not None:
                        print(top)
    return figures


@contextmanager
def _no_server() -> Iterator[Callable[[str], str]]:
    def refuse(_name: str) -> str:
        raise RuntimeError("no PostgreSQL in this run")

    yield refuse


def print_figure(figure: BatchFigure) -> None:
    print(f"{figure.scenario:<13} {figure.backend:<10} {figure.records:>5} records  "
          f"cpu {figure.cpu_seconds:6.3f} s ({figure.per_cpu_second:7.0f}/s cpu)  "
          f"wall {figure.wall_seconds:6.3f} s ({figure.per_second:7.0f}/s)  "
          f"{figure.statements_per_record:5.2f} statements/record  "
          f"gc {figure.gc_seconds:5.3f} s", flush=True)


def print_summary(figures: list[BatchFigure]) -> None:
    print("\nmedians (records/s: wall, cpu; statements/record), and the ratios to referrals:")
    groups: dict[tuple[str, str], list[BatchFigure]] = {}
    for figure in figures:
        groups.setdefault((figure.backend, figure.scenario), []).append(figure)
    walls = {key: statistics.median(f.per_second for f in group) for key, group in groups.items()}
    cpus = {key: statistics.median(f.per_cpu_second for f in group)
            for key, group in groups.items()}
    for (backend, scenario), group in groups.items():
        wall, cpu = walls[(backend, scenario)], cpus[(backend, scenario)]
        spread = (min(f.per_second for f in group), max(f.per_second for f in group))
        reference = (walls.get((backend, "referrals")), cpus.get((backend, "referrals")))
        ratio = (f"  of referrals: {wall / reference[0]:4.2f} wall, {cpu / reference[1]:4.2f} cpu"
                 if reference[0] and reference[1] else "")
        print(f"  {backend:<10} {scenario:<13} wall {wall:7.0f}/s "
              f"(min {spread[0]:.0f}, max {spread[1]:.0f}, n={len(group)})  cpu {cpu:7.0f}/s  "
              f"{group[0].statements_per_record:5.2f} statements/record{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="one scenario (repeatable); default: all")
    parser.add_argument("--records", type=int, default=500, help="records in the batch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print each batch's cProfile")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    names = args.scenario or list(SCENARIOS)
    figures = run(names, args.records, args.repeat, args.profile, not args.no_postgres)
    print_summary(figures)


if __name__ == "__main__":
    main()
