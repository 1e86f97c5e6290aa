"""The chaos run in its short form: a simulated year through a pipeline that is killed,
cut from its broker and its cache, and fed malformed messages, then checked to the unit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.settings import PROJECT_ROOT

pytestmark = pytest.mark.infra


def test_a_year_survives_kills_a_broker_restart_redis_down_and_poison() -> None:
    """Its own broker, Redis and services (var/chaos/), so the session's stack is untouched.
    `make chaos` runs the long form: a whole network year."""
    run = subprocess.run(
        [sys.executable, "-m", "deploy.chaos", "--trainees", "200", "--duration", "40",
         "--malformed", "16", "--seed", "11"],
        cwd=PROJECT_ROOT, env=os.environ.copy(), capture_output=True, text=True,
        timeout=900, check=False,
    )

    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "kills: aids x2, outcomes x2, referrals x2" in run.stdout
    assert "inputs: " in run.stdout and "nothing lost, nothing counted twice" in run.stdout
