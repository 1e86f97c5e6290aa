"""One round of raw aiokafka then the referral pipeline on a broker of its own, with the
CPU seconds each service process spent, for before/after comparisons of a change.

    python -m bench.referral_rounds [--tree DIR] [--events 5000] [--profile PREFIX]

`--tree`: a checkout to run the services from (e.g. a clone of main), so that rounds of
two versions can be interleaved under the same conditions. `--profile`: py-spy samples
of the referrals and outcomes processes during the pipeline run (PREFIX-<service>.txt,
py-spy's raw format, one line per stack, by thread). Prints one JSON line. A benchmark,
never a test: run the versions alternately, several times, and compare medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import pipeline
from deploy import harness


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds the process has used so far (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=str(harness.PROJECT_ROOT))
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--profile", default="")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    tree = Path(args.tree)
    harness.PROJECT_ROOT = tree  # services run from that tree (cwd first on sys.path)
    env = harness.Environment(pipeline.BENCH_DIR / f"e-{args.label or tree.name}")
    env.start()
    spies: list[subprocess.Popen[bytes]] = []
    stack = env.stack("default")
    try:
        raw = asyncio.run(pipeline.raw_ceiling(env.kafka, args.events))
        for name in ("referrals", "aids", "outcomes"):
            stack.add(name, "-1", pipeline.quiet({"PYTHONPATH": str(tree)})).start(timeout=120)
        pids = {label: s.process.pid for label, s in stack.services.items() if s.process}
        before = {label: cpu_seconds(pid) for label, pid in pids.items()}
        if args.profile:
            for label in ("referrals-1", "outcomes-1"):
                spies.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                     str(pids[label]), "--format", "raw", "--threads", "--rate", "250",
                     "--nonblocking", "-o", f"{args.profile}-{label}.txt"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)  # py-spy attaches before the first record is sent
        started = time.monotonic()
        ref = asyncio.run(pipeline.referral_pipeline(env.kafka, args.events, "referrals"))
        wall = time.monotonic() - started
        after = {label: cpu_seconds(pid) for label, pid in pids.items()}
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            spy.wait(60)
        stack.stop_all()
        env.stop()
    print(json.dumps({
        "tree": str(tree), "label": args.label, "raw": round(raw.per_second),
        "referrals": round(ref.per_second), "ratio": round(ref.per_second / raw.per_second, 3),
        "p50": round(ref.p50_ms), "wall": round(wall, 1),
        "cpu": {label: round(after[label] - before[label], 2) for label in pids},
    }), flush=True)


if __name__ == "__main__":
    main()
