"""CPU cost of the referrals service's batches, in one process, without Kafka.

    python -m bench.referral_batch [--batches 20] [--size 500] [--gc default|tuned]

Builds the referrals service as it starts (its app, hence its modules and objects, then
`tune_garbage_collector` unless `--gc default`), then hands its batch processor batches
of new referrals on a SQLite store of its own, and prints the CPU seconds of this process
per batch (`time.process_time`: what other processes on the machine do counts little), the
rate they make, and the wall time per batch (the commit's sync to disk included). Run the
variants one after the other, more than once: a benchmark, never a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.pipeline import referral
from shared.contract import Topic
from shared.db import make_engine
from shared.messaging import Inbound
from shared.migrations import migrate_store
from shared.private_files import new_secret, write_private
from shared.service import tune_garbage_collector
from shared.settings import Settings


def batches(count: int, size: int) -> list[list[Inbound]]:
    tag = uuid.uuid4().hex[:8]
    made = []
    for number in range(count):
        records = []
        for index in range(size):
            event = referral(number * size + index, tag)
            records.append(Inbound(Topic.REFERRALS_SUBMITTED.value, index % 3,
                                   number * size + index, event["referral_id"],
                                   json.dumps(event).encode()))
        made.append(records)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--gc", choices=("default", "tuned"), default="tuned")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("E2C_DATA_DIR", folder)
        tokens = Path(folder) / "tokens.json"
        write_private(tokens, json.dumps({new_secret(): "admin"}) + "\n")
        os.environ["E2C_TOKENS_FILE"] = str(tokens)
        os.environ.setdefault("E2C_KAFKA_USERNAME", "referrals")  # nothing connects
        os.environ.setdefault("E2C_KAFKA_PASSWORD", new_secret())
        from services.referrals.app import TOPOLOGY, create_app

        create_app(Settings())  # the objects a running service holds
        engine = make_engine(f"sqlite:///{Path(folder) / 'referrals.db'}")
        migrate_store(engine, TOPOLOGY.name)
        processor = TOPOLOGY.processor(engine, TOPOLOGY.handlers(Settings()))
        work = batches(args.batches + 1, args.size)
        if args.gc == "tuned":
            tune_garbage_collector()
        processor.process(work[0])  # warm-up: statement caches, first pages
        seconds, walls = [], []
        collections = sum(stat["collections"] for stat in gc.get_stats())
        for batch in work[1:]:
            started, wall = time.process_time(), time.perf_counter()
            processor.process(batch)
            seconds.append(time.process_time() - started)
            walls.append(time.perf_counter() - wall)
        collections = sum(stat["collections"] for stat in gc.get_stats()) - collections
        engine.dispose()
    median = statistics.median(seconds)
    print(json.dumps({"gc": args.gc, "size": args.size, "batches": args.batches,
                      "cpu_ms_median": round(median * 1000, 1),
                      "cpu_ms_min": round(min(seconds) * 1000, 1),
                      "cpu_ms_max": round(max(seconds) * 1000, 1),
                      "cpu_s_total": round(sum(seconds), 2),
                      "records_per_cpu_second": round(args.size / median),
                      "wall_ms_median": round(statistics.median(walls) * 1000, 1),
                      "collections": collections}))


if __name__ == "__main__":
    main()
