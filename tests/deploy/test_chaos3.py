"""The chaos run on a cluster of three Kafka nodes, two instances of each service on
PostgreSQL: the leader of the busiest input partition is SIGKILLed, one instance of each
service is killed twice, Redis stops, malformed messages slip in; then checked to the unit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pydantic import SecretStr

from deploy.chaos import longest_pauses
from shared.kafka_access import KafkaAccess
from shared.settings import PROJECT_ROOT

pytestmark = pytest.mark.infra


@pytest.mark.cluster_chaos
def test_a_year_survives_losing_the_leader_of_the_busiest_partition() -> None:
    """Its own cluster, Redis, PostgreSQL and services (var/chaos/). The pause in decisions
    is printed, not asserted: a figure of this machine, not a property of the code."""
    run = subprocess.run(
        [sys.executable, "-m", "deploy.chaos", "--brokers", "3", "--trainees", "200",
         "--duration", "40", "--malformed", "16", "--seed", "11"],
        cwd=PROJECT_ROOT, env=os.environ.copy(), capture_output=True, text=True,
        timeout=900, check=False,
    )
    print(run.stdout[-3000:])

    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert re.search(r"SIGKILL Kafka node \d, leader of e2c\.[a-z.]+\.v1\[\d+\]", run.stdout)
    assert re.search(r"Kafka node \d back", run.stdout)
    assert "kills: aids x2, outcomes x2, referrals x2" in run.stdout
    killed = set(re.findall(r"SIGKILL ((?:referrals|aids|outcomes)-[12]) ", run.stdout))
    assert {label.rsplit("-", 1)[0] for label in killed} == {"referrals", "aids", "outcomes"}
    assert "nothing lost, nothing counted twice" in run.stdout
    assert "longest pause in decisions while a Kafka node was down: " in run.stdout, (
        "the node outage must overlap the traffic")


def test_the_pause_is_the_longest_gap_that_overlaps_an_outage() -> None:
    arrivals = [0.0, 1.0, 2.0, 6.0, 6.5, 9.5, 10.0]
    outage = [(2.5, 5.0)]  # inside the gap 2.0 -> 6.0

    during, rest = longest_pauses(arrivals, outage)

    assert (during, rest) == (4.0, 3.0)


def test_no_outage_leaves_every_gap_to_the_rest() -> None:
    assert longest_pauses([0.0, 2.0, 2.5], []) == (None, 2.0)


def test_an_outage_after_the_last_decision_has_no_pause() -> None:
    assert longest_pauses([0.0, 1.0], [(3.0, 4.0)]) == (None, 1.0)


def test_the_services_broker_gets_every_node_as_bootstrap() -> None:
    """faststream takes a string as one address: "a:1,b:2" would be a host named "a:1,b"."""
    access = KafkaAccess(bootstrap="127.0.0.1:9092,127.0.0.1:9094, 127.0.0.1:9096",
                         username="referrals", password=SecretStr("unused"))

    assert access.bootstrap_servers() == ["127.0.0.1:9092", "127.0.0.1:9094", "127.0.0.1:9096"]
