"""What one consumed batch costs the outcomes service, beside the referrals service.

    .venv/bin/python -m bench.profile_outcomes_batch
    .venv/bin/python -m bench.profile_outcomes_batch --batch 500 --repeat 5 --profile exits
    E2C_BENCH_POSTGRES_URL=postgresql+psycopg://user@127.0.0.1:5433/bench \\
        .venv/bin/python -m bench.profile_outcomes_batch --backend postgresql

`BatchProcessor.process` is called directly (no broker) on one batch of each input of the
outcomes service, in the order a year brings them: referrals.decided, enrollments.decided,
aids.decided, then exits.submitted of the trainees just enrolled; and, for the ratio, one
batch of referrals.submitted through the referrals service. Each round uses new ids, on a
store that already holds `--history` trainees. Printed per batch: records/s (wall clock),
CPU seconds of this process (`time.process_time`: the database server's work on PostgreSQL
is not in it), and SQL statements per record (an executemany counts once). With
`--profile KIND` the cProfile of the first batch of that kind is printed. With `--direct`
each outcomes batch is also handled, in the same round, by the processor without its batch
loading (every read and write at once: the service before it batched), on its own store.

PostgreSQL: the database E2C_BENCH_POSTGRES_URL names is DROPPED and created again; without
it a local cluster (durable settings) is started under var/bench/. A benchmark, never a
test: nothing here asserts a timing; the machine is shared, so compare runs made together.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from deploy.harness import free_port
from services.outcomes.app import TOPOLOGY as OUTCOMES
from services.referrals.app import TOPOLOGY as REFERRALS
from shared.contract import Topic
from shared.db import make_engine
from shared.messaging import BatchProcessor, Inbound
from shared.migrations import migrate_store
from shared.settings import PROJECT_ROOT, Settings
from tests import events

BENCH_DIR = PROJECT_ROOT / "var" / "bench"
KINDS = ("referrals_decided", "enrollments", "aids", "exits", "referrals")
AID_KINDS = ("meals", "laptop", "childcare")
OUTCOME_VALUES = ("durable_employment", "qualifying_training", "iae", "no_solution", "other")


@dataclass
class Measure:
    backend: str
    kind: str
    records: int
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.records / statistics.median(self.wall)

    @property
    def cpu_rate(self) -> float:
        """Records per CPU second of this process: steadier than the wall clock on a
        shared machine, blind to the database server's own work."""
        return self.records / statistics.median(self.cpu)

    def line(self) -> str:
        per_record = statistics.median(self.statements) / self.records
        return (f"{self.backend:<10} {self.kind:<18} {self.rate:>8,.0f} rec/s "
                f"(min {self.records / max(self.wall):,.0f}, "
                f"max {self.records / min(self.wall):,.0f})"
                f"  cpu {statistics.median(self.cpu) * 1000:>6.0f} ms"
                f"  {per_record:>5.2f} stmt/rec")


class StatementCounter:
    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1


def records(topic: str, payloads: list[dict[str, Any]]) -> list[Inbound]:
    offset = int(time.time() * 1000)
    return [Inbound(topic, 0, offset + i, p.get("trainee_id") or "k", json.dumps(p).encode())
            for i, p in enumerate(payloads)]


@dataclass
class Cohort:
    """One batch's worth of young people: their referral, enrollment, aids and exit."""

    size: int
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = [uuid.uuid4().hex for _ in range(self.size)]

    def referrals_decided(self) -> list[Inbound]:
        return records(Topic.REFERRALS_DECIDED, [
            events.referral_decided(f"R-{t[:12]}", trainee_id=t, agency_id=f"ml-{i % 40}",
                                    occurred_at="2024-02-01T10:00:00+01:00")
            for i, t in enumerate(self.ids)])

    def enrollments(self) -> list[Inbound]:
        return records(Topic.ENROLLMENTS_DECIDED, [
            events.enrollment_decided(t, referral_id=f"R-{t[:12]}", age_at_entry=16 + i % 10)
            for i, t in enumerate(self.ids)])

    def aids(self) -> list[Inbound]:
        return records(Topic.AIDS_DECIDED, [
            events.aid_decided(t, AID_KINDS[i % len(AID_KINDS)])
            for i, t in enumerate(self.ids)])

    def exits(self) -> list[Inbound]:
        return records(Topic.EXITS_SUBMITTED, [
            events.exit_submitted(t, outcome=OUTCOME_VALUES[i % len(OUTCOME_VALUES)],
                                  satisfied=i % 3 != 0)
            for i, t in enumerate(self.ids)])


def referral_submissions(size: int) -> list[Inbound]:
    return records(Topic.REFERRALS_SUBMITTED, [events.referral() for _ in range(size)])


def timed(processor: BatchProcessor, counter: StatementCounter, batch: list[Inbound],
          measure: Measure | None, profile: bool) -> None:
    before = counter.count
    profiler = cProfile.Profile() if profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    result = processor.process(batch)
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    handled = sum(result.handled.values())
    if handled != len(batch):
        raise RuntimeError(f"{len(batch)} records, {handled} handled: {result}")
    if measure is not None:
        measure.wall.append(wall)
        measure.cpu.append(cpu)
        measure.statements.append(counter.count - before)
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())


def run_backend(
    backend: str, url_for: Callable[[str], str], args: argparse.Namespace
) -> list[Measure]:
    """The batches of each kind, round by round; with `args.direct` each outcomes batch is
    also handled, in the same round, by the processor without the batch's loading (every
    read and write at once, as the service did before it batched) on a store of its own."""
    stores = ["outcomes", "referrals", *(["direct"] if args.direct else [])]
    engines = {name: make_engine(url_for(f"bench_{name}_batch")) for name in stores}
    try:
        processors: dict[str, BatchProcessor] = {}
        for name, engine in engines.items():
            topology = REFERRALS if name == "referrals" else OUTCOMES
            migrate_store(engine, topology.name)
            processors[name] = topology.processor(engine, topology.handlers(Settings()))
        if args.direct:
            processors["direct"].prepare = None
        counters = {name: StatementCounter(engine) for name, engine in engines.items()}
        outcome_stores = [name for name in stores if name != "referrals"]
        for _ in range(0, args.history, args.batch):  # stores that are not empty
            cohort = Cohort(args.batch)
            for batch in (cohort.referrals_decided(), cohort.enrollments(), cohort.aids()):
                for name in outcome_stores:
                    timed(processors[name], counters[name], batch, None, False)
        measures: dict[str, Measure] = {}
        for round_ in range(args.repeat):
            cohort = Cohort(args.batch)
            batches = [(kind, "outcomes", batch) for kind, batch in (
                ("referrals_decided", cohort.referrals_decided()),
                ("enrollments", cohort.enrollments()),
                ("aids", cohort.aids()),
                ("exits", cohort.exits()),
            )] + [("referrals", "referrals", referral_submissions(args.batch))]
            for kind, store, batch in batches:
                for name in ([store, "direct"] if store == "outcomes" and args.direct
                             else [store]):
                    label = f"{kind} (direct)" if name == "direct" else kind
                    measure = measures.setdefault(label, Measure(backend, label, args.batch))
                    profile = round_ == 0 and kind in args.profile
                    if profile:
                        print(f"--- cProfile: {backend} {label}, {len(batch)} records")
                    timed(processors[name], counters[name], batch, measure, profile)
        return list(measures.values())
    finally:
        for engine in engines.values():
            engine.dispose()


def recreate(admin_url: str) -> Callable[[str], str]:
    """Database name -> its URL, dropped and created again on the server of `admin_url`."""
    base = make_url(admin_url)

    def create(name: str) -> str:
        engine = create_engine(base, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return base.set(database=name).render_as_string(hide_password=False)

    return create


@contextmanager
def postgres() -> Iterator[Callable[[str], str]]:
    given = os.environ.get("E2C_BENCH_POSTGRES_URL")
    if given:
        yield recreate(given)
        return
    from deploy.local_postgres import LocalPostgres, ensure_installed

    ensure_installed()
    server = LocalPostgres(BENCH_DIR / "profile-outcomes", port=free_port())
    server.start()
    try:
        yield recreate(server.url("postgres"))
    finally:
        server.stop()


def sqlite_urls(folder: Path) -> Callable[[str], str]:
    def url(name: str) -> str:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{folder / name}.db{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{folder / name}.db"

    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="batches of each kind")
    parser.add_argument("--history", type=int, default=2000, help="trainees stored before")
    parser.add_argument("--backend", choices=("all", "sqlite", "postgresql"), default="all")
    parser.add_argument("--profile", nargs="*", default=[], choices=KINDS)
    parser.add_argument("--direct", action="store_true",
                        help="also each outcomes batch without its batch loading (before)")
    args = parser.parse_args(argv)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    results: list[Measure] = []
    if args.backend in ("all", "sqlite"):
        results += run_backend("sqlite", sqlite_urls(BENCH_DIR), args)
    if args.backend in ("all", "postgresql"):
        with postgres() as url_for:
            results += run_backend("postgresql", url_for, args)
    print(f"\none batch of {args.batch} records, median of {args.repeat} "
          f"({args.history} trainees stored before):")
    for measure in results:
        print(measure.line())
    for backend in sorted({m.backend for m in results}):
        rates = {m.kind: m.rate for m in results if m.backend == backend}
        cpu_rates = {m.kind: m.cpu_rate for m in results if m.backend == backend}
        ratios = ", ".join(f"{kind} {rates[kind] / rates['referrals']:.2f}"
                           f" ({cpu_rates[kind] / cpu_rates['referrals']:.2f})"
                           for kind in rates if kind != "referrals")
        print(f"{backend}: ratio to referrals.submitted, wall (cpu): {ratios}")
    out = BENCH_DIR / "profile-outcomes-batch.json"
    out.write_text(json.dumps([{**m.__dict__, "rate": m.rate, "cpu_rate": m.cpu_rate}
                               for m in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
