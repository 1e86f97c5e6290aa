"""Where one consumed batch spends its time, per service and input: `BatchProcessor.process`
called directly on a prepared store (no broker), timed, its SQL statements counted, and
optionally profiled, beside one batch of referrals (the pace the others are compared with).

    make bench-batch                                                  # every scenario, SQLite + PG
    .venv/bin/python -m bench.profile_batch --scenario aids --profile --repeat 3
    .venv/bin/python -m bench.profile_batch --scenario referrals --gc tuned --no-postgres
    .venv/bin/python -m bench.profile_batch --scenario outcomes --direct
    E2C_BENCH_POSTGRES_URL=postgresql+psycopg://.../postgres .venv/bin/python -m bench.profile_batch

Scenarios (each on a fresh store: its state, one unmeasured batch of the measured kind so
that the statements are compiled and the first pages read as in a running service, then
ONE measured batch of `--records` records; `--scenario` takes a scenario or a service's
name, repeatable, default all):
- `referrals`: referral submissions of new people (the referrals service);
- aids: `aid-requests` (meals, laptops, childcare of enrolled trainees, budgets set),
  `enrollments` (new trainees), `held-released` (enrollments of which one in five releases
  a request held before it, in its own savepoint as `release_each` does);
- outcomes, on a store already holding `--history` trainees, the inputs of one cohort in
  the order a year brings them (each seeded with the cohort's inputs before it):
  `outcomes-referrals` (referrals.decided), `outcomes-enrollments` (enrollments.decided),
  `outcomes-aids` (aids.decided), `outcomes-exits` (exits.submitted).

Printed per batch, then as medians per store and scenario: records/s (wall clock), the CPU
seconds of this process (`time.process_time`: the database server's work on PostgreSQL is
not in it; the steadier figure on a shared machine), SQL statements per record (an
executemany counts once), the garbage collector's CPU seconds, and the ratio to the
referrals scenario on the same store (wall and CPU). The medians are also written to
var/bench/profile-batch.json. `--direct`: each scenario also runs without its batch
loading (`prepare`: every read and write at once, as before the services batched).
`--gc tuned`: the collector tuned as a running service tunes it (`tune_garbage_collector`).

PostgreSQL: a fresh database per scenario on the server of E2C_BENCH_POSTGRES_URL (an
admin URL; its databases named e2c_profile_* are DROPPED), else on a local durable cluster
started under var/bench/ and removed afterwards (`--no-postgres` leaves it out). A
benchmark, never a test: nothing here asserts a timing; compare runs made together.
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
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from services.aids.app import TOPOLOGY as AIDS
from services.outcomes.app import TOPOLOGY as OUTCOMES
from services.referrals.app import TOPOLOGY as REFERRALS
from shared.contract import Topic
from shared.db import make_engine
from shared.messaging import Inbound
from shared.migrations import migrate_store
from shared.service import tune_garbage_collector
from shared.settings import PROJECT_ROOT, Settings
from shared.topology import ServiceTopology
from tests import events

BENCH_DIR = PROJECT_ROOT / "var" / "bench"
REFERENCE = "referrals"
KINDS_PER_TRAINEE = 2  # requests per trainee in `aid-requests`
BUDGET_KINDS = ("meals", "laptop", "childcare")
OUTCOME_VALUES = ("durable_employment", "qualifying_training", "iae", "no_solution", "other")


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
    def per_second(self) -> float:
        return self.records / self.wall_seconds

    @property
    def per_cpu_second(self) -> float:
        return self.records / self.cpu_seconds

    @property
    def statements_per_record(self) -> float:
        return self.statements / self.records


Batches = list[list[Inbound]]


@dataclass(frozen=True)
class Scenario:
    """A store's service, the batches fed to it before the measurement, and the measured
    batch."""

    topology: ServiceTopology[Any, Any]
    seed: Batches
    batch: list[Inbound]


@dataclass(frozen=True)
class Kind:
    """How a scenario is built: the store's state (from the batch size and the history),
    and one batch of the measured kind with the batches it needs before it."""

    topology: ServiceTopology[Any, Any]
    state: Callable[[int, int], Batches]
    cohort: Callable[[int], tuple[Batches, list[Inbound]]]

    def scenario(self, size: int, history: int) -> Scenario:
        needs, warm_up = self.cohort(size)
        before, batch = self.cohort(size)
        return Scenario(self.topology, [*self.state(size, history), *needs, warm_up, *before],
                        batch)


# --- the scenarios ----------------------------------------------------------------------------

_offsets = iter(range(10**9))


def records(topic: Topic, values: Sequence[dict[str, Any]]) -> list[Inbound]:
    return [Inbound(topic, 0, next(_offsets), value.get("trainee_id") or "k",
                    json.dumps(value).encode())
            for value in values]


def chunks(items: list[Inbound], size: int) -> Batches:
    return [items[start:start + size] for start in range(0, len(items), size)]


def new_ids(count: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(count)]


def nothing(_size: int, _history: int) -> Batches:
    return []


def budgets(_size: int = 0, _history: int = 0) -> Batches:
    return [records(Topic.BUDGETS_SUBMITTED,
                    [events.budget(kind, 10**12, year=2024) for kind in BUDGET_KINDS])]


def referrals(size: int) -> tuple[Batches, list[Inbound]]:
    return [], records(Topic.REFERRALS_SUBMITTED, [events.referral() for _ in range(size)])


def aid_requests(size: int) -> tuple[Batches, list[Inbound]]:
    """Requests of trainees enrolled before, `KINDS_PER_TRAINEE` each."""
    trainees = new_ids(max(1, size // KINDS_PER_TRAINEE))
    requests = [aid_request(trainees[index % len(trainees)], index // len(trainees), index)
                for index in range(size)]
    return chunks(aids_enrollments(trainees), 500), records(Topic.AIDS_REQUESTED, requests)


def aid_request(trainee: str, round_: int, index: int) -> dict[str, Any]:
    """Three meal requests in five, then a laptop, then childcare, a month per round."""
    month = f"2024-{2 + round_ % 10:02d}"
    kind = ("meals", "meals", "meals", "laptop", "childcare")[index % 5]
    if kind == "meals":
        return events.aid_request(trainee, "meals", quantity=12, period_start=f"{month}-01",
                                  period_end=f"{month}-20")
    if kind == "laptop":
        return events.aid_request(trainee, "laptop", amount_cents=40000,
                                  period_start=f"{month}-03", period_end=f"{month}-03")
    return events.aid_request(trainee, "childcare", amount_cents=25000,
                              period_start=f"{month}-01", period_end=f"{month}-28")


def enrollments(size: int) -> tuple[Batches, list[Inbound]]:
    return [], aids_enrollments(new_ids(size))


def held_released(size: int) -> tuple[Batches, list[Inbound]]:
    """Enrollments of which one in five releases a meal request held before it."""
    trainees = new_ids(size)
    held = [events.aid_request(t, "meals", quantity=10, period_start="2024-03-01",
                               period_end="2024-03-20") for t in trainees[::5]]
    return [records(Topic.AIDS_REQUESTED, held)], aids_enrollments(trainees)


def aids_enrollments(trainees: list[str]) -> list[Inbound]:
    schools = ("toulouse", "nimes", "ales", "castres", "lunel")
    return records(Topic.ENROLLMENTS_DECIDED, [
        events.enrollment_decided(t, enrolled_on="2024-01-08",
                                  school_id=schools[index % len(schools)])
        for index, t in enumerate(trainees)])


# One cohort's inputs to the outcomes service, in the order a year brings them.
def outcomes_referrals(ids: list[str]) -> list[Inbound]:
    return records(Topic.REFERRALS_DECIDED, [
        events.referral_decided(f"R-{t[:12]}", trainee_id=t, agency_id=f"ml-{i % 40}",
                                occurred_at="2024-02-01T10:00:00+01:00")
        for i, t in enumerate(ids)])


def outcomes_enrollments(ids: list[str]) -> list[Inbound]:
    return records(Topic.ENROLLMENTS_DECIDED, [
        events.enrollment_decided(t, referral_id=f"R-{t[:12]}", age_at_entry=16 + i % 10)
        for i, t in enumerate(ids)])


def outcomes_aids(ids: list[str]) -> list[Inbound]:
    return records(Topic.AIDS_DECIDED, [
        events.aid_decided(t, BUDGET_KINDS[i % len(BUDGET_KINDS)]) for i, t in enumerate(ids)])


def outcomes_exits(ids: list[str]) -> list[Inbound]:
    return records(Topic.EXITS_SUBMITTED, [
        events.exit_submitted(t, outcome=OUTCOME_VALUES[i % len(OUTCOME_VALUES)],
                              satisfied=i % 3 != 0)
        for i, t in enumerate(ids)])


COHORT = (outcomes_referrals, outcomes_enrollments, outcomes_aids, outcomes_exits)


def outcomes_history(size: int, history: int) -> Batches:
    """The referrals, enrollments and aids of `history` trainees, a batch of each per
    `size` of them."""
    return [make(ids) for ids in (new_ids(size) for _ in range(0, history, size))
            for make in COHORT[:3]]


def outcomes_step(step: int) -> Callable[[int], tuple[Batches, list[Inbound]]]:
    """A cohort's `step`-th input, after the cohort's inputs before it."""

    def cohort(size: int) -> tuple[Batches, list[Inbound]]:
        ids = new_ids(size)
        return [make(ids) for make in COHORT[:step]], COHORT[step](ids)

    return cohort


KINDS: dict[str, Kind] = {
    "referrals": Kind(REFERRALS, nothing, referrals),
    "aid-requests": Kind(AIDS, budgets, aid_requests),
    "enrollments": Kind(AIDS, budgets, enrollments),
    "held-released": Kind(AIDS, budgets, held_released),
    **{f"outcomes-{name}": Kind(OUTCOMES, outcomes_history, outcomes_step(step))
       for step, name in enumerate(("referrals", "enrollments", "aids", "exits"))},
}
SERVICES = {
    "referrals": ["referrals"],
    "aids": ["aid-requests", "enrollments", "held-released"],
    "outcomes": [name for name in KINDS if name.startswith("outcomes-")],
}


# --- one batch ----------------------------------------------------------------------------------


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
    scenario: Scenario,
    engine: Engine,
    name: str = "",
    backend: str = "",
    profile: bool = False,
    direct: bool = False,
) -> tuple[BatchFigure, str | None]:
    """Migrates the store of `engine`, feeds it the scenario's seed batches, then processes
    its batch once as the deployed service does (its handlers from the default settings;
    with `direct`, without the batch's loading): its CPU and wall seconds, its statements,
    the collector's seconds, and with `profile` the cProfile of that one call."""
    topology = scenario.topology
    migrate_store(engine, topology.name)
    processor = topology.processor(engine, topology.handlers(Settings()))
    if direct:
        processor.prepare = None
    for batch in scenario.seed:
        processor.process(list(batch))
    profiler = cProfile.Profile(time.process_time) if profile else None
    # A full collection of the seeding's garbage would land in a random batch (0.1-0.2 s of
    # CPU here, about a batch's own time): every measured batch starts from the same state.
    gc.collect()
    with counted_statements(engine) as count, collector_seconds() as collecting:
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        result = processor.process(list(scenario.batch))
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    handled = sum(result.handled.values())
    if handled != len(scenario.batch):
        raise RuntimeError(f"{name}: {handled} of {len(scenario.batch)} records handled: "
                           f"{result}")
    figure = BatchFigure(name, backend, len(scenario.batch), cpu, wall, count[0], collecting[0])
    return figure, _top(profiler) if profiler is not None else None


def _top(profiler: cProfile.Profile, lines: int = 30) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)
    return out.getvalue()


# --- the stores -------------------------------------------------------------------------------


def sqlite_url(name: str) -> str:
    """The URL of a fresh SQLite store under var/bench/profile/."""
    folder = BENCH_DIR / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    return f"sqlite:///{path}"


@contextmanager
def opened(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
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
    base = make_url(admin_url)

    def create(name: str) -> str:
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return base.set(database=name).render_as_string(hide_password=False)

    return create


@contextmanager
def _no_server() -> Iterator[Callable[[str], str]]:
    def refuse(_name: str) -> str:
        raise RuntimeError("no PostgreSQL in this run")

    yield refuse


# --- the command ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    size: int
    history: int
    repeat: int
    profile: bool
    postgres: bool
    direct: bool


def run(names: list[str], options: Options) -> list[BatchFigure]:
    """Every scenario (and its direct variant) on each store, round after round: the
    scenarios interleaved, so that the machine's noise is spread over all of them."""
    figures: list[BatchFigure] = []
    backends = ["sqlite", "postgresql"] if options.postgres else ["sqlite"]
    variants = [False, True] if options.direct else [False]
    with postgres_server() if options.postgres else _no_server() as create:
        for round_ in range(options.repeat):
            for backend in backends:
                for name in names:
                    for direct in variants:
                        label = f"{name} (direct)" if direct else name
                        scenario = KINDS[name].scenario(options.size, options.history)
                        url = (sqlite_url(name) if backend == "sqlite"
                               else create(f"e2c_profile_{name.replace('-', '_')}"))
                        with opened(url) as engine:
                            figure, top = profile_batch(scenario, engine, label, backend,
                                                        options.profile and round_ == 0,
                                                        direct)
                        figures.append(figure)
                        print_figure(figure)
                        if top is not None:
                            print(top)
    return figures


def print_figure(figure: BatchFigure) -> None:
    print(f"{figure.backend:<10} {figure.scenario:<31} {figure.records:>5} records  "
          f"wall {figure.wall_seconds:6.3f} s ({figure.per_second:6.0f}/s)  "
          f"cpu {figure.cpu_seconds:6.3f} s ({figure.per_cpu_second:6.0f}/s)  "
          f"{figure.statements_per_record:5.2f} stmt/rec  "
          f"gc {figure.gc_seconds:5.3f} s", flush=True)


@dataclass(frozen=True)
class Summary:
    """The medians of one scenario on one store, and its ratios to the referrals'."""

    backend: str
    scenario: str
    records: int
    batches: int
    per_second: float
    per_second_min: float
    per_second_max: float
    cpu_seconds: float
    per_cpu_second: float
    statements_per_record: float
    gc_seconds: float
    ratio_wall: float | None
    ratio_cpu: float | None


def summarise(figures: list[BatchFigure]) -> list[Summary]:
    groups: dict[tuple[str, str], list[BatchFigure]] = {}
    for figure in figures:
        groups.setdefault((figure.backend, figure.scenario), []).append(figure)
    medians = {key: (statistics.median(f.per_second for f in group),
                     statistics.median(f.per_cpu_second for f in group))
               for key, group in groups.items()}
    summaries = []
    for (backend, scenario), group in groups.items():
        wall, cpu = medians[(backend, scenario)]
        reference = medians.get((backend, REFERENCE))
        summaries.append(Summary(
            backend, scenario, group[0].records, len(group), wall,
            min(f.per_second for f in group), max(f.per_second for f in group),
            statistics.median(f.cpu_seconds for f in group), cpu,
            statistics.median(f.statements_per_record for f in group),
            statistics.median(f.gc_seconds for f in group),
            wall / reference[0] if reference else None,
            cpu / reference[1] if reference else None))
    return summaries


def print_summary(summaries: list[Summary]) -> None:
    print(f"\nmedians per store and scenario; ratio = records/s over the {REFERENCE}' "
          "on the same store, wall (cpu):")
    for s in summaries:
        ratio = (f"  ratio {s.ratio_wall:4.2f} ({s.ratio_cpu:4.2f})"
                 if s.ratio_wall is not None and s.ratio_cpu is not None else "")
        print(f"  {s.backend:<10} {s.scenario:<31} wall {s.per_second:6.0f}/s "
              f"(min {s.per_second_min:.0f}, max {s.per_second_max:.0f}, n={s.batches})  "
              f"cpu {s.cpu_seconds:6.3f} s ({s.per_cpu_second:6.0f}/s)  "
              f"{s.statements_per_record:5.2f} stmt/rec  gc {s.gc_seconds:5.3f} s{ratio}")


def scenario_names(chosen: list[str] | None) -> list[str]:
    """The scenarios named or of the services named (all without any), in table order."""
    if not chosen:
        return list(KINDS)
    wanted = {name for choice in chosen for name in SERVICES.get(choice, [choice])}
    return [name for name in KINDS if name in wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--scenario", action="append",
                        choices=list(dict.fromkeys([*KINDS, *SERVICES])),
                        help="a scenario, or a service's scenarios (repeatable); default: all")
    parser.add_argument("--records", type=int, default=500, help="records in the batch")
    parser.add_argument("--history", type=int, default=2000,
                        help="trainees stored before an outcomes scenario")
    parser.add_argument("--repeat", type=int, default=3, help="batches of each scenario")
    parser.add_argument("--profile", action="store_true",
                        help="print the cProfile of each scenario's first batch")
    parser.add_argument("--direct", action="store_true",
                        help="also each scenario without its batch loading (prepare)")
    parser.add_argument("--gc", choices=("default", "tuned"), default="default",
                        help="tuned: the collector as a running service tunes it")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    names = scenario_names(args.scenario)
    if args.gc == "tuned":
        tune_garbage_collector()
    options = Options(args.records, args.history, args.repeat, args.profile,
                      not args.no_postgres, args.direct)
    summaries = summarise(run(names, options))
    print_summary(summaries)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    out = BENCH_DIR / "profile-batch.json"
    out.write_text(json.dumps({"gc": args.gc, "history": args.history,
                               "medians": [asdict(s) for s in summaries]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
