"""The right of access (`GET /referrals/{id}/personal-data`) and the access trail over HTTP,
on a real SQLite store filled by the real handlers: every read of personal data and every
erasure appends the rows counted here independently (straight from the table), the trail
(`GET /audit`) is admin's only, and no row ever holds a name, a birth date or a contact."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from starlette.testclient import TestClient

from services.referrals.api import router
from services.referrals.app import erase_referral
from services.referrals.handlers import ReferralHandlers
from services.referrals.store import AuditEntry
from shared.contract import Topic
from shared.schools import load_schools
from shared.settings import Settings
from tests.events import referral
from tests.http_app import app_for, assert_documented
from tests.plumbing import published
from tests.referrals.test_api import (
    ADMIN_TOKEN,
    CANDIDATE_FIELDS,
    FINANCE_TOKEN,
    OTHER_TOKEN,
    OWN,
    OWN_TOKEN,
    TOKENS,
    World,
    engine,
    feed,
    world,
)

__all__ = ["engine", "world"]  # the fixtures, shared with the route tests

OPS_TOKEN = {"Authorization": "Bearer tok-ops"}
SUBMITTED = str(Topic.REFERRALS_SUBMITTED)
PERSONAL_DATA = "/referrals/{referral_id}/personal-data"


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    app = app_for(router, engine, TOKENS)
    app.state.context.handlers = ReferralHandlers(set(load_schools()))
    with TestClient(app) as test_client:
        yield test_client


def rows(engine: Engine) -> list[AuditEntry]:
    """The trail as the table holds it (not as `GET /audit` shows it)."""
    with Session(engine) as session:
        return list(session.exec(select(AuditEntry).order_by(AuditEntry.id)).all())


def new_rows(engine: Engine, before: list[AuditEntry]) -> list[tuple[Any, ...]]:
    seen = {entry.id for entry in before}
    return [(e.action, e.role, e.agency_id, e.referral_id, e.detail_codes)
            for e in rows(engine) if e.id not in seen]


def personal_data(client: TestClient, referral_id: str, headers: dict[str, str]) -> Any:
    return client.get(f"/referrals/{referral_id}/personal-data", headers=headers)


# --- GET /referrals/{id}/personal-data ----------------------------------------------------


def test_the_sending_agency_gets_everything_held_about_the_person(
    client: TestClient, world: World, engine: Engine
) -> None:
    before = rows(engine)

    answer = personal_data(client, world.enrolled_id, OWN_TOKEN)

    assert answer.status_code == 200
    body = answer.json()
    sent = world.enrolled["candidate"]
    assert body["candidate"] == {
        "first_name": sent["first_name"], "last_name": sent["last_name"],
        "birth_date": sent["birth_date"], "email": "ines@example.org", "phone": "+33600000000"}
    assert body["profile"] == {
        "highest_qualification": sent["highest_qualification"], "in_school": False,
        "has_work_experience": False, "rqth": False, "qpv_resident": True, "age_at_entry": 18}
    assert (body["status"], body["stage"], body["enrolled_on"], body["exited_on"]) == (
        "accepted", "enrolled", "2024-09-02", None)
    assert (body["agency_id"], body["agency_kind"], body["school_id"]) == (
        OWN, "mission_locale", "toulouse")
    assert [h["kind"] for h in body["history"]] == ["referral", "resend", "enrollment"]
    assert body["trainee_id"] and body["submission"] is None and body["erased_at"] is None
    assert_documented(answer, "referrals", PERSONAL_DATA)
    assert new_rows(engine, before) == [
        ("read_personal_data", "partner", OWN, world.enrolled_id, [])]


def test_admin_gets_it_too_and_is_recorded_as_admin(
    client: TestClient, world: World, engine: Engine
) -> None:
    before = rows(engine)

    answer = personal_data(client, world.other, ADMIN_TOKEN)

    assert answer.status_code == 200
    assert answer.json()["candidate"]["first_name"] == "Inès"
    assert new_rows(engine, before) == [
        ("read_personal_data", "admin", None, world.other, [])]


@pytest.mark.parametrize(("headers", "status"), [
    (OTHER_TOKEN, 403), (FINANCE_TOKEN, 403), (OPS_TOKEN, 403), ({}, 401),
    ({"Authorization": "Bearer nope"}, 401)])
def test_nobody_else_gets_it_and_a_refusal_records_nothing(
    client: TestClient, world: World, engine: Engine, headers: dict[str, str], status: int
) -> None:
    before = rows(engine)

    answer = personal_data(client, world.enrolled_id, headers)

    assert answer.status_code == status
    assert world.enrolled["candidate"]["last_name"] not in answer.text
    assert_documented(answer, "referrals", PERSONAL_DATA)
    assert new_rows(engine, before) == []


def test_an_unknown_referral_is_404(client: TestClient, world: World, engine: Engine) -> None:
    answer = personal_data(client, "ML-TLS-nobody", OWN_TOKEN)

    assert (answer.status_code, answer.json()) == (404, {"detail": "no such referral"})
    assert_documented(answer, "referrals", PERSONAL_DATA)
    assert rows(engine) == []


def test_once_erased_the_fields_are_null_and_erased_at_says_when(
    client: TestClient, world: World, engine: Engine
) -> None:
    client.delete(f"/referrals/{world.rejected}/personal-data", headers=OWN_TOKEN)
    before = rows(engine)

    answer = personal_data(client, world.rejected, OWN_TOKEN)

    body = answer.json()
    assert answer.status_code == 200
    assert body["candidate"] == dict.fromkeys(CANDIDATE_FIELDS)
    assert body["erased_at"] is not None and body["history"][-1]["kind"] == "erasure"
    assert (body["status"], body["reasons"]) == ("rejected", ["in_school"])
    assert new_rows(engine, before) == [
        ("read_personal_data", "partner", OWN, world.rejected, ["erased"])]


def test_a_referral_sent_over_http_shows_its_submission_record(
    client: TestClient, engine: Engine
) -> None:
    body = referral(agency={"kind": "mission_locale", "id": OWN, "name": "ML Toulouse"})
    sent = client.post("/referrals", json=body, headers=OWN_TOKEN).json()
    [event] = published(engine, SUBMITTED)
    feed(engine, (SUBMITTED, event))

    answer = personal_data(client, body["referral_id"], OWN_TOKEN).json()

    assert answer["submission"]["event_id"] == sent["event_id"]
    assert answer["submission"]["agency_id"] == OWN
    assert answer["candidate"]["last_name"] == body["candidate"]["last_name"]


# --- Reads through the other routes -------------------------------------------------------


def test_a_partners_read_of_its_referral_is_recorded_admins_is_not(
    client: TestClient, world: World, engine: Engine
) -> None:
    before = rows(engine)

    assert client.get(f"/referrals/{world.exited}", headers=OWN_TOKEN).status_code == 200
    assert client.get(f"/referrals/{world.exited}", headers=ADMIN_TOKEN).status_code == 200
    assert client.get(f"/referrals/{world.exited}", headers=OTHER_TOKEN).status_code == 403

    assert new_rows(engine, before) == [("read_referral", "partner", OWN, world.exited, [])]


def test_a_partners_listing_records_one_row_per_referral_shown(
    client: TestClient, world: World, engine: Engine
) -> None:
    before = rows(engine)

    page = client.get("/referrals", params={"page_size": 2, "page": 2},
                      headers=OWN_TOKEN).json()
    client.get("/referrals", params={"agency_id": OWN}, headers=ADMIN_TOKEN)  # no candidate

    shown = [item["referral_id"] for item in page["items"]]
    assert len(shown) == 2
    assert new_rows(engine, before) == [
        ("list_referrals", "partner", OWN, referral_id, []) for referral_id in shown]


def test_a_decision_answered_to_a_waiting_partner_is_recorded(
    client: TestClient, engine: Engine
) -> None:
    body = referral(agency={"kind": "mission_locale", "id": OWN, "name": "ML Toulouse"})
    client.post("/referrals", json=body, headers=OWN_TOKEN)
    feed(engine, (SUBMITTED, published(engine, SUBMITTED)[0]))
    before = rows(engine)

    again = client.post("/referrals", params={"wait": 1}, json=body, headers=OWN_TOKEN)

    assert again.status_code == 200 and again.json()["candidate"]["first_name"]
    assert new_rows(engine, before) == [
        ("read_referral", "partner", OWN, body["referral_id"], ["submit_wait"])]


# --- Erasures -----------------------------------------------------------------------------


def test_every_erasure_path_records_who_erased_once(
    client: TestClient, world: World, engine: Engine
) -> None:
    before = rows(engine)
    settings = Settings(REFERRALS_DATABASE_URL=str(engine.url))

    client.delete(f"/referrals/{world.enrolled_id}/personal-data", headers=OWN_TOKEN)
    client.delete(f"/referrals/{world.other}/personal-data", headers=ADMIN_TOKEN)
    assert erase_referral(settings, world.exited) is True
    client.delete(f"/referrals/{world.enrolled_id}/personal-data", headers=OWN_TOKEN)  # again
    assert erase_referral(settings, world.exited) is False
    refused = client.delete(f"/referrals/{world.duplicate}/personal-data", headers=OTHER_TOKEN)

    assert refused.status_code == 403
    assert new_rows(engine, before) == [
        ("erasure", "partner", OWN, world.enrolled_id, ["erasure_request"]),
        ("erasure", "admin", None, world.other, ["erasure_request"]),
        ("erasure", "operator", None, world.exited, ["erasure_request"]),
    ]


# --- Accesses made outside the service: POST /audit/access --------------------------------


def letter(source_topic: str | None, key: str | None) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "source_topic": source_topic, "key": key}


def test_shown_dead_letter_originals_are_recorded_one_row_each(
    client: TestClient, engine: Engine
) -> None:
    letters = [letter(SUBMITTED, "ML-TLS-2024-1"), letter(SUBMITTED, "not a referral id"),
               letter(str(Topic.EXITS_SUBMITTED), "T-123"), letter("made.up", "x"),
               {"event_id": "not-a-uuid", "source_topic": None, "key": None}]

    answer = client.post("/audit/access", headers=OPS_TOKEN,
                         json={"action": "show_dead_letter_original", "dead_letters": letters})

    assert (answer.status_code, answer.json()) == (200, {"recorded": 5})
    assert_documented(answer, "referrals", "/audit/access", "post")
    action = "show_dead_letter_original"
    ids = [item["event_id"] for item in letters]
    assert new_rows(engine, []) == [
        (action, "ops", None, "ML-TLS-2024-1",
         [f"dead_letter={ids[0]}", f"source_topic={SUBMITTED}"]),
        (action, "ops", None, None, [f"dead_letter={ids[1]}", f"source_topic={SUBMITTED}"]),
        (action, "ops", None, None,
         [f"dead_letter={ids[2]}", f"source_topic={Topic.EXITS_SUBMITTED}"]),
        (action, "ops", None, None, [f"dead_letter={ids[3]}", "source_topic=other"]),
        (action, "ops", None, None, ["dead_letter=unknown", "source_topic=other"]),
    ]


@pytest.mark.parametrize(("headers", "status"), [
    (OWN_TOKEN, 403), (FINANCE_TOKEN, 403), ({}, 401)])
def test_only_ops_and_admin_record_accesses(
    client: TestClient, engine: Engine, headers: dict[str, str], status: int
) -> None:
    body = {"action": "show_dead_letter_original", "dead_letters": [letter(SUBMITTED, "A")]}

    assert client.post("/audit/access", headers=headers, json=body).status_code == status
    assert client.post("/audit/access", headers=ADMIN_TOKEN, json=body).status_code == 200
    assert [e.role for e in rows(engine)] == ["admin"]


def test_an_unknown_action_is_422_naming_it(client: TestClient, engine: Engine) -> None:
    answer = client.post("/audit/access", headers=OPS_TOKEN,
                         json={"action": "peek", "dead_letters": []})

    assert answer.status_code == 422 and "action" in answer.json()["detail"]
    assert "peek" not in answer.text
    assert rows(engine) == []


# --- GET /audit ---------------------------------------------------------------------------


def audit(client: TestClient, headers: dict[str, str] = ADMIN_TOKEN, **params: Any) -> Any:
    return client.get("/audit", params=params, headers=headers)


def test_admin_reads_the_trail_oldest_first_by_referral_and_by_page(
    client: TestClient, world: World, engine: Engine
) -> None:
    personal_data(client, world.enrolled_id, OWN_TOKEN)
    client.get(f"/referrals/{world.derogation}", headers=OWN_TOKEN)
    client.delete(f"/referrals/{world.enrolled_id}/personal-data", headers=ADMIN_TOKEN)
    expected = rows(engine)

    everything = audit(client)
    of_one = audit(client, referral_id=world.enrolled_id).json()
    pages = [audit(client, page_size=2, page=page).json() for page in (1, 2)]
    since_last = audit(client, since=expected[-1].at.isoformat()).json()

    assert everything.status_code == 200
    assert_documented(everything, "referrals", "/audit")
    assert [row["id"] for row in everything.json()["items"]] == [e.id for e in expected]
    assert [(row["action"], row["role"], row["agency_id"]) for row in of_one["items"]] == [
        ("read_personal_data", "partner", OWN), ("erasure", "admin", None)]
    assert [row["id"] for page in pages for row in page["items"]] == [e.id for e in expected]
    assert [page["next_page"] for page in pages] == [2, None]
    assert {page["total"] for page in pages} == {3}
    assert [row["id"] for row in since_last["items"]] == [expected[-1].id]
    assert audit(client, since="2999-01-01").json()["items"] == []


@pytest.mark.parametrize(("headers", "status"), [
    (OWN_TOKEN, 403), (OPS_TOKEN, 403), (FINANCE_TOKEN, 403), ({}, 401)])
def test_only_admin_reads_the_trail(
    client: TestClient, world: World, headers: dict[str, str], status: int
) -> None:
    answer = audit(client, headers)

    assert answer.status_code == status
    assert_documented(answer, "referrals", "/audit")


@pytest.mark.parametrize(("params", "named"), [
    ({"since": "yesterday"}, "since"), ({"since": "2024-03-03T10:00:00"}, "since"),
    ({"page": "zero"}, "page"), ({"page_size": "501"}, "page_size"),
    ({"referral_id": "a\x00b"}, "referral_id")])
def test_a_bad_parameter_is_422_naming_it_never_echoed(
    client: TestClient, params: dict[str, str], named: str
) -> None:
    answer = audit(client, **params)

    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(f"invalid {named}: expected")
    assert all(value not in answer.text for value in params.values())
    assert_documented(answer, "referrals", "/audit")


def test_no_row_of_the_trail_holds_a_name_a_birth_date_or_a_contact(
    client: TestClient, world: World
) -> None:
    for referral_id in (world.enrolled_id, world.rejected, world.exited):
        personal_data(client, referral_id, OWN_TOKEN)
        client.get(f"/referrals/{referral_id}", headers=OWN_TOKEN)
    client.get("/referrals", headers=OWN_TOKEN)
    client.delete(f"/referrals/{world.enrolled_id}/personal-data", headers=OWN_TOKEN)

    trail = audit(client, page_size=500)

    assert trail.json()["total"] == 3 + 3 + 5 + 1
    candidate = world.enrolled["candidate"]
    for value in (candidate["first_name"], candidate["last_name"], candidate["birth_date"],
                  "17/05/2006", "ines@example.org", "+33600000000", "Inès"):
        assert value not in trail.text
