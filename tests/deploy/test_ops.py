"""Pipeline health through the real broker, cache and services: the lag figure of a stopped
consumer, `GET /ops/pipeline` and `e2c ops status`, dead-letter listing and replay (a cause
not fixed, a cause fixed, a replay twice), and Redis stopped and restarted mid-stream."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from deploy import cli, kafka_security
from deploy.ops import (
    REDIS_DOWN,
    SERVICES,
    collect_status,
    consumer_lag,
    read_dead_letters,
    replay_dead_letter,
)
from deploy.processes import command_line
from deploy.system import TOPOLOGIES
from shared.contract import Topic
from shared.kafka_access import KafkaAccess
from shared.observability import ServiceMetrics
from shared.ops import heartbeat_key
from shared.settings import PROJECT_ROOT
from tests import tokens
from tests.events import dead_letter, exit_submitted, new_id, referral
from tests.http_app import assert_documented
from tests.infra import Publisher, TopicWatcher, controllable_redis, learn_trainee

if TYPE_CHECKING:
    from deploy.harness import ServiceProcesses

infra = pytest.mark.infra

OPS = tokens.bearer(tokens.OPS)
EXITS = str(Topic.EXITS_SUBMITTED)


async def exits_lag(reader: KafkaAccess) -> int:
    rows = await consumer_lag(reader, "e2c-outcomes", [EXITS])
    assert rows and {row["topic"] for row in rows} == {EXITS}
    return sum(row["lag"] for row in rows)


async def eventually(check: Any, timeout: float, pause: float = 0.3) -> Any:
    """Polls `check` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(pause)


def ops_access(stack: ServiceProcesses) -> KafkaAccess:
    return stack.access(kafka_security.OPS)


def service_urls(stack: ServiceProcesses) -> dict[str, str]:
    return {name: stack.services[name].url for name in SERVICES}


async def run_cli(monkeypatch: pytest.MonkeyPatch, stack: ServiceProcesses, *argv: str) -> int:
    """`e2c ...` against the test stack (the first instance of each service)."""
    ops = ops_access(stack)  # the CLI connects as its operator does
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", ops.bootstrap)
    monkeypatch.setenv("E2C_KAFKA_USERNAME", ops.username)
    monkeypatch.setenv("E2C_KAFKA_PASSWORD", ops.password.get_secret_value())
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    monkeypatch.setenv("E2C_TOKENS_FILE", str(stack.data_dir / "tokens.json"))
    for name in SERVICES:
        monkeypatch.setenv(f"{name.upper()}_PORT", str(stack.services[name].port))
    return await asyncio.to_thread(cli.main, list(argv))


# --- lag -------------------------------------------------------------------------------------


@infra
async def test_a_stopped_consumer_lags_by_what_was_published_then_catches_up(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    outcomes = stack.services["outcomes"]
    outcomes.stop()
    try:
        before = await exits_lag(ops_access(stack))
        sent = [exit_submitted(f"T-lag-{uuid.uuid4().hex[:10]}") for _ in range(7)]
        for event in sent:
            await publisher.send(EXITS, event, key=event["trainee_id"])
        assert await exits_lag(ops_access(stack)) == before + len(sent)

        # The aggregated view: outcomes is down (no HTTP, its heartbeat removed at its stop),
        # its lag is read from Kafka all the same; the exit code says something is down.
        status = await collect_status(ops_access(stack), stack.redis_url, service_urls(stack),
                                      tokens.OPS)
        view = {service["service"]: service for service in status.services}
        assert view["outcomes"]["status"] == "down"
        assert view["outcomes"]["heartbeat"] == "down"
        assert view["outcomes"]["lag_total"] >= len(sent)
        assert view["referrals"]["status"] == "up" and view["aids"]["status"] == "up"
        assert not status.healthy
        capsys.readouterr()
        assert await run_cli(monkeypatch, stack, "ops", "status") == 1
        table = capsys.readouterr().out
        assert "outcomes" in table and "down" in table and EXITS in table
    finally:
        outcomes.start()

    assert await eventually(lambda: _zero(exits_lag(ops_access(stack))), timeout=30)
    for event in sent:  # unknown trainees: held 3 s, then refused
        await watcher.wait_for(Topic.EXITS_DECIDED, request_event_id=event["event_id"])

    page = httpx.get(f"{outcomes.url}/ops/pipeline", headers=OPS, timeout=20).json()
    assert page["service"] == "outcomes" and page["group_id"] == "e2c-outcomes"
    assert page["instance"] == "outcomes" and page["errors"] == {}
    assert {row["topic"] for row in page["lag"]} == set(TOPOLOGIES["outcomes"].inputs)
    assert page["outbox_backlog"] == 0
    assert page["last_processed_age_seconds"] is not None
    assert {beat["service"]: beat["status"] for beat in page["heartbeats"]} == {
        "referrals": "up", "aids": "up", "outcomes": "up"}

    assert await eventually(
        lambda: outcomes.metric("e2c_consumer_lag", topic=EXITS) == 0
        and "e2c_consumer_lag{" in httpx.get(f"{outcomes.url}/metrics").text, timeout=15)
    metrics = httpx.get(f"{outcomes.url}/metrics", timeout=5).text
    for name in ("e2c_last_event_age_seconds", "e2c_dead_letters_total",
                 "e2c_events_consumed_total", "e2c_outbox_backlog"):
        assert f"\n{name}{{" in metrics, name

    capsys.readouterr()
    assert await run_cli(monkeypatch, stack, "ops", "status", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["healthy"] and printed["kafka"] == "up" and printed["redis"] == "up"
    assert [s["status"] for s in printed["services"]] == ["up", "up", "up"]


async def _zero(lag: Any) -> bool:
    return await lag == 0


@infra
async def test_each_service_reports_the_lag_of_its_own_inputs(stack: ServiceProcesses) -> None:
    for name in SERVICES:
        page = httpx.get(f"{stack.services[name].url}/ops/pipeline", headers=OPS,
                         timeout=20).json()
        assert page["errors"] == {}, page
        assert {row["topic"] for row in page["lag"]} == set(TOPOLOGIES[name].inputs)
        assert all(row["lag"] == row["end"] - (row["committed"] or 0) for row in page["lag"])
        assert (page["held"] is None) == (name == "referrals")  # referrals holds nothing


@infra
async def test_the_pipeline_page_needs_the_ops_or_admin_role(stack: ServiceProcesses) -> None:
    url = f"{stack.services['aids'].url}/ops/pipeline"
    assert httpx.get(url, timeout=20).status_code == 401
    finance = tokens.bearer(tokens.FINANCE)
    assert httpx.get(url, headers=finance, timeout=20).status_code == 403
    admin = tokens.bearer(tokens.ADMIN)
    assert httpx.get(url, headers=admin, timeout=20).status_code == 200
    assert httpx.get(url, headers=OPS, params={"limit": "x"}, timeout=20).status_code == 400


@infra
async def test_the_pipeline_and_health_answers_are_what_the_documents_say(
    stack: ServiceProcesses,
) -> None:
    for name in SERVICES:
        url = stack.services[name].url
        for path, headers in [("/ops/pipeline", OPS), ("/health/ready", {}),
                              ("/health/live", {})]:
            answer = httpx.get(f"{url}{path}", headers=headers, timeout=20)
            assert_documented(answer, name, path)
        bad = httpx.get(f"{url}/ops/pipeline", headers=OPS, params={"limit": "x"}, timeout=20)
        assert_documented(bad, name, "/ops/pipeline")


# --- dead letters ----------------------------------------------------------------------------


def letters_about(watcher: TopicWatcher, event_id: str) -> list[dict[str, Any]]:
    return [letter for letter in watcher.find(Topic.DEADLETTER, service="outcomes")
            if event_id in letter["original"]]


@infra
async def test_a_letter_whose_cause_is_not_fixed_is_dead_lettered_again_on_replay(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    outcomes = stack.services["outcomes"]
    counted = outcomes.metric("e2c_dead_letters_total", source_topic=EXITS)
    bad = exit_submitted(f"T-dl-{uuid.uuid4().hex[:10]}")
    del bad["outcome"]
    await publisher.send(EXITS, bad, key=bad["trainee_id"])
    assert await eventually(lambda: letters_about(watcher, bad["event_id"]), timeout=30)
    [first] = letters_about(watcher, bad["event_id"])
    assert first["source_topic"] == EXITS and "outcome" in first["error"]

    count, last = await read_dead_letters(ops_access(stack), limit=1000, service="outcomes")
    listed = {letter["event_id"]: letter for letter in last}
    assert count >= 1 and first["event_id"] in listed
    entry = listed[first["event_id"]]
    assert "original" not in entry and "key" not in entry  # it may hold personal data
    assert entry["source_topic"] == EXITS and entry["offset"] == first["offset"]
    _, shown = await read_dead_letters(ops_access(stack), limit=1000, service="outcomes",
                                       show_original=True)
    assert {letter["event_id"]: letter for letter in shown}[first["event_id"]]["original"] \
        == first["original"]

    capsys.readouterr()
    assert await run_cli(monkeypatch, stack, "deadletters", "replay", "--id",
                         first["event_id"]) == 0
    assert EXITS in capsys.readouterr().out
    assert await eventually(lambda: len(letters_about(watcher, bad["event_id"])) == 2,
                            timeout=30)
    again = letters_about(watcher, bad["event_id"])[1]
    assert again["event_id"] != first["event_id"] and again["offset"] != first["offset"]
    assert watcher.keys(Topic.DEADLETTER, event_id=again["event_id"]) == [bad["trainee_id"]]
    assert await eventually(
        lambda: outcomes.metric("e2c_dead_letters_total", source_topic=EXITS) >= counted + 2,
        timeout=10)

    capsys.readouterr()
    assert await run_cli(monkeypatch, stack, "deadletters", "list", "--service", "outcomes",
                         "--limit", "1000", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert {first["event_id"], again["event_id"]} <= {e["event_id"] for e in printed["last"]}
    assert await run_cli(monkeypatch, stack, "deadletters", "replay", "--id", new_id()) == 1


@infra
async def test_a_letter_whose_cause_is_fixed_is_decided_once_however_often_replayed(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher
) -> None:
    trainee_id = uuid.uuid4().hex
    await learn_trainee(publisher, trainee_id, school_id="nimes")
    # As if the outcomes service had refused this valid exit before a fix, since deployed.
    original = exit_submitted(trainee_id)
    letter = dead_letter(json.dumps(original), service="outcomes", source_topic=EXITS,
                         partition=0, offset=0,
                         error="handler error: RuntimeError: the bug since fixed")
    await publisher.send(Topic.DEADLETTER, letter, trainee_id)

    sent = await replay_dead_letter(ops_access(stack), letter["event_id"])
    assert sent["source_topic"] == EXITS and sent["key"] == trainee_id
    [decision] = await watcher.wait_for(Topic.EXITS_DECIDED,
                                        request_event_id=original["event_id"])
    assert decision["status"] == "recorded" and decision["category"] == "employment"

    outcomes = stack.services["outcomes"]
    duplicates = outcomes.metric("e2c_events_consumed_total", topic=EXITS, result="duplicate")
    await replay_dead_letter(ops_access(stack), letter["event_id"])
    # A later exit of the same trainee (same key, same partition) is answered only once the
    # replay before it was read: then the replay has had all the effect it will ever have.
    later = exit_submitted(trainee_id, exited_on="2024-10-01")
    await publisher.send(EXITS, later, key=trainee_id)
    [refused] = await watcher.wait_for(Topic.EXITS_DECIDED, request_event_id=later["event_id"])
    assert refused["reasons"] == ["already_exited"]
    assert len(watcher.find(Topic.EXITS_DECIDED, request_event_id=original["event_id"])) == 1
    assert outcomes.metric("e2c_events_consumed_total", topic=EXITS,
                           result="duplicate") == duplicates + 1


# --- Redis down ------------------------------------------------------------------------------


@infra
async def test_with_redis_stopped_the_services_decide_and_the_heartbeats_come_back(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher, redis_server: str
) -> None:
    server = controllable_redis(redis_server)
    if server is None:
        pytest.skip("Redis comes from REDIS_URL or testcontainers: it cannot be stopped and "
                    "restarted in place here")
    pid = server.pid
    assert pid is not None and f":{server.port}" in " ".join(command_line(pid)), (
        f"the pid file of {server.home} names another Redis than the one on {server.port} "
        "(a concurrent test run?)"
    )
    referrals = stack.services["referrals"]
    failures = referrals.metric("e2c_heartbeat_failures_total")
    server.stop()
    try:
        events = [referral() for _ in range(6)]
        for event in events:
            await publisher.send(Topic.REFERRALS_SUBMITTED, event, key=event["referral_id"])
        for event in events:
            [decided] = await watcher.wait_for(Topic.REFERRALS_DECIDED,
                                               request_event_id=event["event_id"])
            assert decided["status"] == "accepted"

        ready = httpx.get(f"{referrals.url}/health/ready", timeout=20)
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["cache"].startswith("down") and checks["broker"] == "ok"
        assert checks["store"] == "ok"
        page = httpx.get(f"{referrals.url}/ops/pipeline", headers=OPS, timeout=20).json()
        assert {beat["status"] for beat in page["heartbeats"]} == {REDIS_DOWN}
        assert page["lag"] is not None and page["outbox_backlog"] is not None
        status = await collect_status(ops_access(stack), stack.redis_url, service_urls(stack),
                                      tokens.OPS)
        assert status.redis == "down" and not status.healthy
        assert await eventually(
            lambda: referrals.metric("e2c_heartbeat_failures_total") > failures, timeout=8)
    finally:
        restarted_at = time.time()
        server.start()

    for label, service in stack.services.items():
        assert await eventually(
            lambda url=service.url: httpx.get(f"{url}/health/ready", timeout=5).status_code
            == 200, timeout=15), f"{label} not ready again"
    client = aioredis.from_url(stack.redis_url)
    try:
        async def beats_back() -> bool:
            for label, service in stack.services.items():
                raw = await client.get(heartbeat_key(service.name, label))
                if raw is None or json.loads(raw)["at"] < restarted_at:
                    return False
            return True

        assert await eventually(beats_back, timeout=10), "heartbeats not written again"
    finally:
        await client.aclose()


# --- the Grafana dashboard -------------------------------------------------------------------


def test_the_dashboard_only_queries_metrics_the_services_export() -> None:
    dashboard = json.loads((PROJECT_ROOT / "deploy/grafana/e2c-dashboard.json").read_text())
    assert [item["name"] for item in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    exported: set[str] = set()
    for family in ServiceMetrics("test", CollectorRegistry()).registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        exported.update(family.name + end for end in suffixes.get(family.type, ("",)))
    used: set[str] = set()
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            used.update(re.findall(r"\be2c_[a-z_]+", target["expr"]))
    assert used <= exported, used - exported
    for wanted in ("e2c_events_consumed_total", "e2c_events_published_total",
                   "e2c_batch_handling_seconds_bucket", "e2c_dead_letters_total",
                   "e2c_outbox_backlog", "e2c_held_requests", "e2c_consumer_lag",
                   "e2c_last_event_age_seconds"):
        assert wanted in used, wanted
