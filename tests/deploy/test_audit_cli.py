"""The access trail through the running stack (real broker, two referrals instances on one
PostgreSQL store): `e2c referrals audit` shows the reads made over HTTP, and
`e2c deadletters list --show-original` records each original it shows before printing it,
and shows none when the referrals service cannot record them."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from deploy import cli
from shared.contract import Topic
from tests import tokens
from tests.deploy.test_ops import ops_access
from tests.events import referral
from tests.infra import Publisher, TopicWatcher

if TYPE_CHECKING:
    from deploy.harness import ServiceProcesses

pytestmark = pytest.mark.infra

SUBMITTED = str(Topic.REFERRALS_SUBMITTED)
ADMIN = tokens.bearer(tokens.ADMIN)
PARTNER = tokens.bearer(tokens.ML_TOULOUSE)


async def run_cli(monkeypatch: pytest.MonkeyPatch, stack: ServiceProcesses, *argv: str,
                  referrals_port: int | None = None) -> int:
    """`e2c ...` as its operator runs it beside the test stack (the first instances)."""
    ops = ops_access(stack)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", ops.bootstrap)
    monkeypatch.setenv("E2C_KAFKA_USERNAME", ops.username)
    monkeypatch.setenv("E2C_KAFKA_PASSWORD", ops.password.get_secret_value())
    monkeypatch.setenv("E2C_TOKENS_FILE", str(stack.data_dir / "tokens.json"))
    monkeypatch.delenv("E2C_TOKEN", raising=False)
    for name in ("referrals", "aids", "outcomes"):
        monkeypatch.setenv(f"{name.upper()}_PORT", str(stack.services[name].port))
    if referrals_port is not None:
        monkeypatch.setenv("REFERRALS_PORT", str(referrals_port))
    return await asyncio.to_thread(cli.main, list(argv))


def trail(stack: ServiceProcesses, referral_id: str) -> list[dict[str, Any]]:
    """The referral's audit rows, as `GET /audit` gives them."""
    answer = httpx.get(f"{stack.services['referrals'].url}/audit",
                       params={"referral_id": referral_id}, headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["items"]
    return rows


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_audit_command_shows_the_reads_of_a_referral(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    event = referral()
    await publisher.send(SUBMITTED, event, key=event["referral_id"])
    await watcher.wait_for(Topic.REFERRALS_DECIDED, request_event_id=event["event_id"])
    url = f"{stack.services['referrals'].url}/referrals/{event['referral_id']}"
    reads = [httpx.get(f"{url}/personal-data", headers=PARTNER, timeout=10),
             httpx.get(url, headers=PARTNER, timeout=10),
             httpx.get(f"{url}/personal-data", headers=ADMIN, timeout=10)]
    assert [answer.status_code for answer in reads] == [200, 200, 200]
    capsys.readouterr()

    assert await run_cli(monkeypatch, stack, "referrals", "audit", "--referral-id",
                         event["referral_id"], "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert await run_cli(monkeypatch, stack, "referrals", "audit", "--referral-id",
                         event["referral_id"], "--since", "2000-01-01") == 0
    text = capsys.readouterr().out

    assert [(row["action"], row["role"], row["agency_id"]) for row in rows] == [
        ("read_personal_data", "partner", "ml-toulouse"),
        ("read_referral", "partner", "ml-toulouse"),
        ("read_personal_data", "admin", None),
    ]
    assert rows == trail(stack, event["referral_id"])
    assert text.count(event["referral_id"]) == 3 and text.endswith("3 rows\n")
    for value in (event["candidate"]["last_name"], event["candidate"]["birth_date"]):
        assert value not in text


async def test_the_audit_command_refuses_a_bad_since_naming_it(
    stack: ServiceProcesses, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await run_cli(monkeypatch, stack, "referrals", "audit", "--since", "yesterday") == 1

    error = capsys.readouterr().err
    assert "422" in error and "invalid since" in error and "yesterday" not in error


async def test_dead_letter_originals_are_recorded_before_they_are_shown(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    bad = referral()
    del bad["candidate"]["in_school"]  # a required field: a dead letter, with the name in it
    await publisher.send(SUBMITTED, bad, key=bad["referral_id"])
    [letter] = await watcher.wait_for(Topic.DEADLETTER, service="referrals",
                                      original=json.dumps(bad))
    name = bad["candidate"]["last_name"]
    assert trail(stack, bad["referral_id"]) == []
    capsys.readouterr()

    # Listing without originals shows and records nothing about the person.
    assert await run_cli(monkeypatch, stack, "deadletters", "list", "--service", "referrals",
                         "--limit", "1000") == 0
    assert name not in capsys.readouterr().out
    assert trail(stack, bad["referral_id"]) == []

    # The referrals service cannot record the access: the originals are not shown.
    assert await run_cli(monkeypatch, stack, "deadletters", "list", "--service", "referrals",
                         "--limit", "1000", "--show-original",
                         referrals_port=unused_port()) == 1
    refused = capsys.readouterr()
    assert name not in refused.out and "originals not shown" in refused.err
    assert trail(stack, bad["referral_id"]) == []

    assert await run_cli(monkeypatch, stack, "deadletters", "list", "--service", "referrals",
                         "--limit", "1000", "--show-original", "--json") == 0
    shown = json.loads(capsys.readouterr().out)["last"]
    assert any(item["event_id"] == letter["event_id"] and name in item["original"]
               for item in shown)
    [row] = trail(stack, bad["referral_id"])
    assert (row["action"], row["role"], row["agency_id"]) == (
        "show_dead_letter_original", "ops", None)
    assert row["detail"] == [f"dead_letter={letter['event_id']}", f"source_topic={SUBMITTED}"]
    assert name not in json.dumps(row) and bad["candidate"]["birth_date"] not in json.dumps(row)
