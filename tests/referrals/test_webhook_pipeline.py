"""Webhooks through the real broker and the services as processes (two referrals instances
on one PostgreSQL store): every decision about an agency's referrals reaches its URL signed,
through failures, a partner that stays down (parked, then replayed) and a SIGKILL of the
referrals process in the middle of a delivery."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from typing import Any

import httpx
import pytest

from deploy import cli, kafka_security
from deploy.harness import ServiceProcesses
from deploy.ops import SERVICES, collect_status, render_status
from shared.contract import Topic
from shared.settings import Settings
from tests import events
from tests.events import referral
from tests.infra import Publisher, TopicWatcher, poll
from tests.receiver import Receiver, receiving
from tests.tokens import ADMIN, ML_TOULOUSE, OPS, bearer

pytestmark = pytest.mark.infra

DECIDED = Topic.REFERRALS_DECIDED
ENROLLED = Topic.ENROLLMENTS_DECIDED


def new_agency(prefix: str) -> dict[str, str]:
    return {"kind": "mission_locale", "id": f"{prefix}-{uuid.uuid4().hex[:8]}",
            "name": "Mission Locale (test)"}


def admin_put(stack: ServiceProcesses, agency_id: str, url: str) -> httpx.Response:
    return httpx.put(f"{stack.services['referrals'].url}/admin/webhooks/{agency_id}",
                     json={"url": url}, headers=bearer(ADMIN), timeout=10)


async def run_cli(monkeypatch: pytest.MonkeyPatch, stack: ServiceProcesses,
                  capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`e2c ...` on the test stack's referrals store; its exit code and what it printed
    (standard output, then error)."""
    url = stack.services["referrals"].env["REFERRALS_DATABASE_URL"]
    monkeypatch.setattr(cli, "_command_settings", lambda: Settings(REFERRALS_DATABASE_URL=url))
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, list(argv))
    printed = capsys.readouterr()
    return code, printed.out + printed.err


async def decide(publisher: Publisher, watcher: TopicWatcher, topic: Topic,
                 answer: Topic, event: dict[str, Any]) -> dict[str, Any]:
    key = event.get("referral_id") or event.get("trainee_id")
    await publisher.send(topic, event, key=key)
    [decision] = await watcher.wait_for(answer, request_event_id=event["event_id"], timeout=60)
    return decision


def delivered_ids(receiver: Receiver) -> set[str | None]:
    return {received.event_id for received in receiver.delivered()}


async def test_every_decision_of_an_agency_reaches_its_webhook_signed_and_no_other(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    agency, other = new_agency("ml-hook"), new_agency("ml-other")
    with receiving(failures=3) as receiver, receiving() as other_receiver:
        # Registration: the admin route for one agency, the command for the other.
        made = admin_put(stack, agency["id"], f"{receiver.url}/e2c?key=PARTNER-KEY")
        assert made.status_code == 201, made.text
        secret = made.json()["secret"]
        assert made.json()["url"] == f"{receiver.url}/e2c?…"
        code, printed = await run_cli(monkeypatch, stack, capsys, "partners", "webhook", "set",
                                      other["id"], other_receiver.url)
        assert code == 0 and "shown this once" in printed
        other_secret = printed.rsplit(": ", 1)[1].strip()

        # Every kind of decision about the agency's referrals.
        accepted = referral(agency=agency)
        rejected = referral(agency=agency, candidate={"in_school": True})
        pending = referral(agency=agency, candidate={"birth_date": "1997-01-02"})
        twin = referral(agency=agency,
                        candidate={"last_name": accepted["candidate"]["last_name"]})
        theirs, nobodys = referral(agency=other), referral()  # ml-toulouse: no webhook
        decisions = [await decide(publisher, watcher, Topic.REFERRALS_SUBMITTED, DECIDED, e)
                     for e in (accepted, rejected, pending, twin, theirs, nobodys)]
        assert [d["status"] for d in decisions[:4]] == [
            "accepted", "rejected", "pending_derogation", "duplicate"]
        granted = await decide(publisher, watcher, Topic.DEROGATIONS_SUBMITTED, DECIDED,
                               events.derogation(pending["referral_id"]))
        enrolled = await decide(publisher, watcher, Topic.ENROLLMENTS_SUBMITTED, ENROLLED,
                                events.enrollment(accepted["referral_id"]))
        refused = await decide(publisher, watcher, Topic.ENROLLMENTS_SUBMITTED, ENROLLED,
                               events.enrollment(rejected["referral_id"]))
        assert (granted["status"], enrolled["status"], refused["status"]) == (
            "accepted", "enrolled", "rejected")
        exited = events.exit_decided(decisions[0]["trainee_id"])
        await publisher.send(Topic.EXITS_DECIDED, exited, key=exited["trainee_id"])

        ours = {d["event_id"] for d in (*decisions[:4], granted, enrolled, refused)}
        ours.add(exited["event_id"])
        await receiver.wait_until(lambda r: ours <= delivered_ids(r), timeout=90)
        await other_receiver.wait_until(
            lambda r: decisions[4]["event_id"] in delivered_ids(r), timeout=60)

    got = receiver.all()
    assert [r.status for r in got[:3]] == [500, 500, 500]  # the partner failed at first
    assert [r.status for r in got].count(500) == 3
    assert {r.event_id for r in got} == ours  # nothing of another agency
    assert {r.event_id for r in other_receiver.all()} == {decisions[4]["event_id"]}
    assert all(r.verifies(secret) for r in got)
    assert not any(r.verifies(other_secret) for r in got)
    assert all(r.verifies(other_secret) for r in other_receiver.all())
    kinds: dict[str, set[str]] = {}
    for received in receiver.delivered():
        body = json.loads(received.body)
        assert body["event_id"] == received.event_id and received.path == "/e2c?key=PARTNER-KEY"
        kinds.setdefault(body["type"], set()).add(body["data"].get("status") or body["data"]
                                                  .get("outcome"))
        for personal in ("Inès", accepted["candidate"]["last_name"], "2006-05-17",
                         "1997-01-02"):
            assert personal not in received.body.decode()
    assert kinds == {
        "referral.decided": {"accepted", "rejected", "pending_derogation", "duplicate"},
        "enrollment.decided": {"enrolled", "rejected"},
        "trainee.exited": {"durable_employment"},
    }

    # Delivered: nothing left in the queue; the listing shows no secret.
    async def queue_empty() -> bool:
        _, listed = await run_cli(monkeypatch, stack, capsys, "partners", "webhook", "list",
                                  "--json")
        mine = [h for h in json.loads(listed) if h["agency_id"] == agency["id"]]
        return mine == [{**mine[0], "pending": 0, "parked": 0}]

    assert await poll(queue_empty, timeout=30)
    listing = httpx.get(f"{stack.services['referrals'].url}/admin/webhooks",
                        headers=bearer(ADMIN), timeout=10).json()["webhooks"]
    assert secret not in json.dumps(listing) and "PARTNER-KEY" not in json.dumps(listing)
    for log in stack.data_dir.glob("referrals*.log"):  # never the query string, nor a secret
        text = log.read_text(errors="replace")
        assert "PARTNER-KEY" not in text and secret not in text and other_secret not in text


async def test_a_partner_down_is_parked_shown_to_operations_and_replayed(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    referrals = stack.services["referrals"]
    agency = new_agency("ml-down")
    with receiving() as gone:
        dead_url = gone.url  # nothing listens there once it is stopped
    assert admin_put(stack, agency["id"], f"{dead_url}/hook").status_code == 201
    event = referral(agency=agency)
    decision = await decide(publisher, watcher, Topic.REFERRALS_SUBMITTED, DECIDED, event)

    async def parked() -> dict[str, Any] | None:
        page = httpx.get(f"{referrals.url}/ops/pipeline", headers=bearer(OPS), timeout=20)
        hooks = page.json()["webhooks"]
        mine = [e for e in hooks["last_errors"] if e["event_id"] == decision["event_id"]]
        return hooks if mine and mine[0]["state"] == "parked" else None

    hooks = await poll(parked, timeout=60)
    assert hooks["parked"] >= 1
    [entry] = [e for e in hooks["last_errors"] if e["event_id"] == decision["event_id"]]
    assert (entry["attempts"], entry["last_error"], entry["last_status"]) == (
        4, "ConnectError", None)
    assert dead_url not in json.dumps(hooks)
    assert sum(stack.services[name].metric("e2c_webhook_parked_total")
               for name in ("referrals", "referrals-2")) >= 1
    urls = {name: stack.services[name].url for name in SERVICES}
    status = await collect_status(stack.access(kafka_security.OPS), stack.redis_url, urls, OPS)
    table = render_status(status)  # what `e2c ops status` prints
    assert "webhooks of referrals" in table and "ConnectError" in table

    # The partner is back at a new address: change it, replay the parked delivery.
    with receiving() as receiver:
        changed = admin_put(stack, agency["id"], receiver.url)
        assert changed.status_code == 200 and "secret" not in changed.json()
        code, printed = await run_cli(monkeypatch, stack, capsys, "partners", "webhook",
                                      "replay", "--agency", agency["id"])
        assert code == 0 and printed.startswith("1 parked")
        [received] = await receiver.wait_until(lambda r: r.delivered(), timeout=30)
    assert received.event_id == decision["event_id"]
    code, printed = await run_cli(monkeypatch, stack, capsys, "partners", "webhook", "remove",
                                  agency["id"])
    assert code == 0 and "0 queued deliveries dropped" in printed


async def test_the_admin_route_refuses_other_roles_and_other_schemes(
    stack: ServiceProcesses, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = f"{stack.services['referrals'].url}/admin/webhooks"
    body = {"url": "https://partner.example.org/hook"}
    assert httpx.put(f"{base}/ml-x", json=body, timeout=10).status_code == 401
    assert httpx.put(f"{base}/ml-toulouse", json=body, headers=bearer(ML_TOULOUSE),
                     timeout=10).status_code == 403
    assert httpx.get(base, headers=bearer(OPS), timeout=10).status_code == 403
    refused = admin_put(stack, "ml-x", "ftp://partner.example.org/hook")
    assert refused.status_code == 422 and "http:// or https://" in refused.json()["detail"]
    assert httpx.put(f"{base}/ml-x", content=b"{", headers=bearer(ADMIN),
                     timeout=10).status_code == 422
    assert httpx.delete(f"{base}/ml-nobody", headers=bearer(ADMIN), timeout=10).status_code \
        == 404
    code, printed = await run_cli(monkeypatch, stack, capsys, "partners", "webhook", "set",
                                  "ml-x", "gopher://partner.example.org")
    assert code == 2 and "http:// or https://" in printed


async def test_a_delivery_in_flight_when_the_service_is_killed_is_sent_again(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher,
) -> None:
    """The partner holds the first request; the one referrals process left is SIGKILLed
    meanwhile and started again: once the dead worker's lease ends, the delivery is sent
    again (at least once: the partner drops a repeat by its event_id)."""
    service, twin = stack.services["referrals"], stack.services["referrals-2"]
    agency = new_agency("ml-kill")
    twin.stop()  # one instance holds every partition and sends every delivery
    try:
        with receiving(hold_first=True) as receiver:
            made = admin_put(stack, agency["id"], receiver.url)
            event = referral(agency=agency)
            decision = await decide(publisher, watcher, Topic.REFERRALS_SUBMITTED, DECIDED,
                                    event)
            await receiver.wait_until(lambda r: r.held.is_set(), timeout=30)
            await asyncio.to_thread(service.stop, signal.SIGKILL)
            receiver.release()
            await asyncio.to_thread(service.start)
            await receiver.wait_until(lambda r: r.delivered(), timeout=60)
        tries = receiver.all()
        assert {r.event_id for r in tries} == {decision["event_id"]}
        assert tries[0].status == 503 and tries[-1].status == 200
        assert all(r.verifies(made.json()["secret"]) for r in tries)
    finally:
        if service.process is None:
            await asyncio.to_thread(service.start)
        await asyncio.to_thread(twin.start)
