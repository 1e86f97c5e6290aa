"""The referrals partner API over a real SQLite store filled by the real handlers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from services.referrals.api import router
from services.referrals.app import TOPOLOGY
from services.referrals.handlers import ReferralHandlers
from services.referrals.store import TABLES, Referral, ReferralStore
from shared.contract import Topic
from shared.schools import load_schools
from tests import plumbing
from tests.events import derogation, enrollment, exit_decided, new_id, referral
from tests.http_app import app_for as http_app_for
from tests.http_app import assert_documented
from tests.plumbing import engine_fixture

OWN = "ml-toulouse"
OTHER = "ft-31"
TOKENS = {
    "tok-own": f"partner:{OWN}",
    "tok-other": f"partner:{OTHER}",
    "tok-admin": "admin",
    "tok-finance": "finance",
    "tok-outcomes": "outcomes",
    "tok-ops": "ops",
}
OWN_TOKEN = {"Authorization": "Bearer tok-own"}
OTHER_TOKEN = {"Authorization": "Bearer tok-other"}
ADMIN_TOKEN = {"Authorization": "Bearer tok-admin"}
FINANCE_TOKEN = {"Authorization": "Bearer tok-finance"}
CANDIDATE_FIELDS = {"first_name", "last_name", "birth_date", "email", "phone"}
SUBMITTED = Topic.REFERRALS_SUBMITTED


# --- Store and app ------------------------------------------------------------------------

engine = engine_fixture(TABLES, sqlite_only=True)


def app_for(engine: Engine, *extra: Route) -> Starlette:
    return http_app_for(router, engine, TOKENS, *extra)


@pytest.fixture
def client(engine: Engine) -> TestClient:
    return TestClient(app_for(engine))


def feed(engine: Engine, *events: tuple[str, dict[str, Any]]) -> None:
    """Runs the real handlers on `events` (topic, payload) in one batch."""
    handlers = ReferralHandlers(set(load_schools()))
    assert not plumbing.feed(TOPOLOGY, engine, *events, handlers=handlers).dead_letters


def stored(engine: Engine, referral_id: str) -> Referral:
    with Session(engine) as session:
        found = ReferralStore(session).get(referral_id)
        assert found is not None
        return found


def set_updated_at(engine: Engine, moments: dict[str, datetime]) -> None:
    with Session(engine) as session:
        for referral_id, moment in moments.items():
            row = session.get(Referral, referral_id)
            assert row is not None
            row.updated_at = moment
            session.add(row)
        session.commit()


@dataclass
class World:
    """Five referrals of OWN (in updated_at order) and one of OTHER."""

    enrolled: dict[str, Any]
    resend_event_id: str
    enrollment_event_id: str
    derogation: str
    rejected: str
    exited: str
    duplicate: str
    other: str

    @property
    def enrolled_id(self) -> str:
        return str(self.enrolled["referral_id"])


@pytest.fixture
def world(engine: Engine) -> World:
    enrolled = referral(candidate={"email": "ines@example.org", "phone": "+33600000000"})
    resend = {**enrolled, "event_id": new_id()}
    pending = referral(candidate={"birth_date": "1997-01-01"})
    rejected = referral(candidate={"in_school": True})
    exited = referral()
    duplicate = referral(candidate=enrolled["candidate"])
    other = referral(agency={"kind": "france_travail", "id": OTHER, "name": "France Travail"})
    enrolling = enrollment(enrolled["referral_id"], enrolled_on="2024-09-02")
    feed(engine, *((SUBMITTED, r) for r in [enrolled, pending, rejected, exited, other]))
    feed(engine, (SUBMITTED, resend), (Topic.ENROLLMENTS_SUBMITTED, enrolling),
         (Topic.ENROLLMENTS_SUBMITTED, enrollment(exited["referral_id"], enrolled_on="2024-09-02")),
         (Topic.DEROGATIONS_SUBMITTED, derogation(pending["referral_id"], granted=True)),
         (SUBMITTED, duplicate))
    trainee_id = str(stored(engine, exited["referral_id"]).trainee_id)
    feed(engine, (Topic.EXITS_DECIDED, exit_decided(trainee_id, exited_on="2025-03-31")))
    ids = [enrolled, pending, rejected, exited, duplicate]
    set_updated_at(engine, {
        str(r["referral_id"]): datetime(2024, 3, day, 10, tzinfo=UTC)
        for day, r in enumerate(ids, start=1)
    })
    return World(
        enrolled=enrolled,
        resend_event_id=resend["event_id"],
        enrollment_event_id=enrolling["event_id"],
        derogation=pending["referral_id"],
        rejected=rejected["referral_id"],
        exited=exited["referral_id"],
        duplicate=duplicate["referral_id"],
        other=other["referral_id"],
    )


# --- GET /referrals/{id} ------------------------------------------------------------------


def test_the_sending_agency_sees_status_history_and_candidate(
    client: TestClient, world: World
) -> None:
    answer = client.get(f"/referrals/{world.enrolled_id}", headers=OWN_TOKEN)

    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "accepted"
    assert body["stage"] == "enrolled"
    assert body["reasons"] == []
    assert body["trainee_id"]
    assert body["duplicate_of"] is None
    assert (body["agency_id"], body["school_id"]) == (OWN, "toulouse")
    assert (body["referred_on"], body["enrolled_on"], body["exited_on"]) == (
        "2024-03-04", "2024-09-02", None
    )
    assert body["erased"] is False
    candidate = world.enrolled["candidate"]
    assert body["candidate"] == {
        "first_name": candidate["first_name"], "last_name": candidate["last_name"],
        "birth_date": "2006-05-17", "email": "ines@example.org", "phone": "+33600000000",
    }
    history = body["history"]
    assert [(h["kind"], h["status"], h["reasons"]) for h in history] == [
        ("referral", "accepted", []), ("resend", "accepted", []), ("enrollment", "enrolled", []),
    ]
    assert [h["request_event_id"] for h in history] == [
        world.enrolled["event_id"], world.resend_event_id, world.enrollment_event_id
    ]
    assert all(datetime.fromisoformat(h["at"]).utcoffset() is not None for h in history)


def test_decisions_with_reasons_duplicates_and_exits_are_shown(
    client: TestClient, world: World
) -> None:
    def get(referral_id: str) -> dict[str, Any]:
        answer = client.get(f"/referrals/{referral_id}", headers=OWN_TOKEN)
        assert answer.status_code == 200
        return cast(dict[str, Any], answer.json())

    rejected, duplicate = get(world.rejected), get(world.duplicate)
    derogated, exited = get(world.derogation), get(world.exited)

    assert (rejected["status"], rejected["reasons"], rejected["trainee_id"]) == (
        "rejected", ["in_school"], None
    )
    assert duplicate["status"] == duplicate["stage"] == "duplicate"
    assert duplicate["duplicate_of"] == world.enrolled_id
    assert duplicate["trainee_id"] == get(world.enrolled_id)["trainee_id"]
    assert [(h["kind"], h["status"], h["reasons"]) for h in derogated["history"]] == [
        ("referral", "pending_derogation", ["needs_derogation"]),
        ("derogation", "accepted", []),
    ]
    assert (exited["stage"], exited["exited_on"]) == ("exited", "2025-03-31")
    assert exited["history"][-1]["kind"] == "exit"


def test_another_agency_gets_403(client: TestClient, world: World) -> None:
    answer = client.get(f"/referrals/{world.enrolled_id}", headers=OTHER_TOKEN)

    assert answer.status_code == 403
    assert answer.json()["detail"]


def test_admin_sees_any_referral_without_personal_data(client: TestClient, world: World) -> None:
    answer = client.get(f"/referrals/{world.enrolled_id}", headers=ADMIN_TOKEN)

    assert answer.status_code == 200
    body = answer.json()
    assert "candidate" not in body
    assert world.enrolled["candidate"]["last_name"] not in answer.text
    assert body["stage"] == "enrolled"
    assert len(body["history"]) == 3


@pytest.mark.parametrize("role_token", ["tok-finance", "tok-outcomes", "tok-ops"])
def test_other_roles_get_403(client: TestClient, world: World, role_token: str) -> None:
    headers = {"Authorization": f"Bearer {role_token}"}

    assert client.get(f"/referrals/{world.enrolled_id}", headers=headers).status_code == 403
    assert client.get("/referrals", params={"agency_id": OWN}, headers=headers).status_code == 403
    erase = client.delete(f"/referrals/{world.enrolled_id}/personal-data", headers=headers)
    assert erase.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic tok-own"},
     {"Authorization": "Bearer"}],
)
def test_a_missing_or_wrong_token_gets_a_json_401(
    client: TestClient, world: World, headers: dict[str, str]
) -> None:
    answer = client.get(f"/referrals/{world.enrolled_id}", headers=headers)

    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"detail": "a valid bearer token is required"}
    assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [OWN_TOKEN, ADMIN_TOKEN])
def test_an_unknown_referral_is_404(
    client: TestClient, world: World, headers: dict[str, str]
) -> None:
    answer = client.get("/referrals/ML-TLS-nobody", headers=headers)

    assert answer.status_code == 404
    assert answer.json() == {"detail": "no such referral"}
    assert "ML-TLS-nobody" not in answer.text


@pytest.mark.parametrize(
    "referral_id", ["ML%00TLS", pytest.param("x" * 65, id="65-chars"), "ML TLS", "%C3%A9"]
)
def test_an_id_the_contract_does_not_allow_is_404_without_asking_the_store(
    client: TestClient, world: World, referral_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the store was asked")  # PostgreSQL refuses a NUL: a 500

    monkeypatch.setattr(ReferralStore, "get", refuse)

    answers = [client.get(f"/referrals/{referral_id}", headers=ADMIN_TOKEN),
               erase(client, referral_id, ADMIN_TOKEN)]

    for answer in answers:
        assert (answer.status_code, answer.json()) == (404, {"detail": "no such referral"})


# --- GET /referrals -----------------------------------------------------------------------


def listing(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    answer = client.get("/referrals", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return cast(dict[str, Any], answer.json())


def ids(page: dict[str, Any]) -> list[str]:
    return [item["referral_id"] for item in page["items"]]


def test_a_partner_lists_its_own_referrals_with_candidates(
    client: TestClient, world: World
) -> None:
    page = listing(client, OWN_TOKEN)

    assert ids(page) == [world.enrolled_id, world.derogation, world.rejected, world.exited,
                         world.duplicate]
    assert (page["page"], page["page_size"], page["total"], page["next_page"]) == (
        1, 100, 5, None
    )
    assert page["agency_id"] == OWN  # how a partner's tools learn their token's agency
    first = page["items"][0]
    assert set(first["candidate"]) == CANDIDATE_FIELDS
    assert "history" not in first
    assert listing(client, OWN_TOKEN, agency_id=OWN) == page


def test_the_list_filters_by_stage(client: TestClient, world: World) -> None:
    def stage(status: str) -> list[str]:
        return ids(listing(client, OWN_TOKEN, status=status))

    assert stage("accepted") == [world.derogation]
    assert stage("enrolled") == [world.enrolled_id]
    assert stage("exited") == [world.exited]
    assert stage("rejected") == [world.rejected]
    assert stage("duplicate") == [world.duplicate]
    assert stage("pending_derogation") == []


def test_the_list_filters_by_last_change(client: TestClient, world: World) -> None:
    def since(value: str) -> list[str]:
        return ids(listing(client, OWN_TOKEN, since=value))

    later = [world.exited, world.duplicate]
    assert since("2024-03-04") == later
    assert since("2024-03-03T11:00:00+02:00") == [world.rejected, *later]  # 09:00Z
    assert since("2024-03-03T13:00:00+02:00") == later  # 11:00Z
    assert since("2024-03-03T10:00:00Z") == [world.rejected, *later]
    assert since("2099-01-01") == []


def test_an_unencoded_plus_in_since_is_read_as_the_offset(
    client: TestClient, world: World
) -> None:
    answer = client.get("/referrals?since=2024-03-03T13:00:00+02:00", headers=OWN_TOKEN)

    assert answer.status_code == 200
    assert ids(answer.json()) == [world.exited, world.duplicate]


def test_the_list_is_paginated(client: TestClient, world: World) -> None:
    first = listing(client, OWN_TOKEN, page_size=2)
    second = listing(client, OWN_TOKEN, page_size=2, page=2)
    last = listing(client, OWN_TOKEN, page_size=2, page=3)
    beyond = listing(client, OWN_TOKEN, page_size=2, page=4)

    assert ids(first) + ids(second) + ids(last) == ids(listing(client, OWN_TOKEN))
    assert [p["next_page"] for p in (first, second, last, beyond)] == [2, 3, None, None]
    assert {p["total"] for p in (first, second, last, beyond)} == {5}
    assert (len(ids(last)), ids(beyond)) == (1, [])
    filtered = listing(client, OWN_TOKEN, page_size=1, status="rejected")
    assert (filtered["total"], filtered["next_page"]) == (1, None)


def test_admin_lists_an_agency_without_personal_data(client: TestClient, world: World) -> None:
    page = listing(client, ADMIN_TOKEN, agency_id=OTHER)

    assert ids(page) == [world.other]
    assert "candidate" not in page["items"][0]
    assert listing(client, OTHER_TOKEN)["items"][0]["candidate"]["first_name"] == "Inès"


def test_a_partner_may_not_list_another_agency(client: TestClient, world: World) -> None:
    answer = client.get("/referrals", params={"agency_id": OTHER}, headers=OWN_TOKEN)

    assert answer.status_code == 403
    assert answer.json()["detail"]


EXPECTED = {
    "status": "one of accepted, rejected, pending_derogation, duplicate, expired, enrolled, exited",
    "since": "an RFC 3339 date-time with an offset or a date YYYY-MM-DD",
    "page": "an integer from 1 to 10000000",
    "page_size": "an integer from 1 to 500",
}
THOUSANDS_OF_DIGITS = "7" * 5000  # beyond int()'s 4300 digits


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"status": "lost"}, "status"),
        ({"status": "ACCEPTED"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2024-03-03T10:00:00"}, "since"),
        ({"since": "2024-02-30"}, "since"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),  # before year 1 in UTC
        ({"since": "9999-12-31T23:59:59-23:59"}, "since"),  # after year 9999 in UTC
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"page": "one"}, "page"),
        ({"page": "99999999999999999999"}, "page"),
        ({"page": THOUSANDS_OF_DIGITS}, "page"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "501"}, "page_size"),
        ({"page_size": "2.5"}, "page_size"),
        ({"page_size": THOUSANDS_OF_DIGITS}, "page_size"),
    ],
)
def test_bad_list_parameters_are_422_naming_the_parameter(
    client: TestClient, world: World, params: dict[str, str], named: str
) -> None:
    answer = client.get("/referrals", params=params, headers=OWN_TOKEN)

    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"detail": f"invalid {named}: expected {EXPECTED[named]}"}


@pytest.mark.parametrize("name", ["status", "since", "page", "page_size"])
def test_a_bad_parameter_is_never_echoed(client: TestClient, world: World, name: str) -> None:
    marker = "<script>alert(1)</script>"

    answer = client.get("/referrals", params={name: marker}, headers=OWN_TOKEN)

    assert answer.status_code == 422
    assert name in answer.json()["detail"]
    assert "script" not in answer.text


def test_the_earliest_and_latest_since_in_utc_are_accepted(
    client: TestClient, world: World
) -> None:
    assert len(ids(listing(client, OWN_TOKEN, since="0001-01-01T00:00:00-01:00"))) == 5
    assert ids(listing(client, OWN_TOKEN, since="9999-12-31T23:59:59Z")) == []


def test_the_largest_page_size_is_accepted(client: TestClient, world: World) -> None:
    assert listing(client, OWN_TOKEN, page_size=500)["total"] == 5


@pytest.mark.parametrize("agency_id", ["ml\x00toulouse", "ml\ntoulouse"])
def test_an_agency_id_with_control_characters_is_422(
    client: TestClient, world: World, agency_id: str
) -> None:
    answer = client.get("/referrals", params={"agency_id": agency_id}, headers=ADMIN_TOKEN)

    assert answer.status_code == 422
    assert answer.json() == {"detail": "invalid agency_id: expected printable characters"}


def test_admin_must_name_the_agency(client: TestClient, world: World) -> None:
    answer = client.get("/referrals", headers=ADMIN_TOKEN)

    assert answer.status_code == 422
    assert "agency_id" in answer.json()["detail"]


# --- DELETE /referrals/{id}/personal-data -------------------------------------------------


def erase(client: TestClient, referral_id: str, headers: dict[str, str]) -> httpx.Response:
    return client.delete(f"/referrals/{referral_id}/personal-data", headers=headers)


def test_the_sending_agency_erases_personal_data(
    client: TestClient, world: World, engine: Engine
) -> None:
    before = client.get(f"/referrals/{world.enrolled_id}", headers=OWN_TOKEN).json()

    answer = erase(client, world.enrolled_id, OWN_TOKEN)

    assert answer.status_code == 200
    assert answer.json() == {
        "referral_id": world.enrolled_id, "erased": True, "already_erased": False
    }
    after = client.get(f"/referrals/{world.enrolled_id}", headers=OWN_TOKEN).json()
    assert after["candidate"] == dict.fromkeys(CANDIDATE_FIELDS)
    assert after["erased"] is True
    for kept in ("status", "stage", "reasons", "trainee_id", "enrolled_on", "referred_on"):
        assert after[kept] == before[kept]
    assert after["history"][:-1] == before["history"]
    last = after["history"][-1]
    assert (last["kind"], last["status"], last["reasons"], last["request_event_id"]) == (
        "erasure", "accepted", ["erasure_request"], None
    )
    row = stored(engine, world.enrolled_id)
    assert row.person_key is None and row.erased_at is not None


def test_a_second_erasure_says_already_erased(client: TestClient, world: World) -> None:
    assert erase(client, world.enrolled_id, OWN_TOKEN).json()["already_erased"] is False

    again = erase(client, world.enrolled_id, OWN_TOKEN)

    assert again.status_code == 200
    assert again.json() == {
        "referral_id": world.enrolled_id, "erased": True, "already_erased": True
    }
    history = client.get(f"/referrals/{world.enrolled_id}", headers=OWN_TOKEN).json()["history"]
    assert [h["kind"] for h in history].count("erasure") == 1


def test_an_erased_referral_is_listed_as_erased(client: TestClient, world: World) -> None:
    erase(client, world.rejected, OWN_TOKEN)

    [item] = listing(client, OWN_TOKEN, status="rejected")["items"]

    assert item["erased"] is True
    assert item["candidate"] == dict.fromkeys(CANDIDATE_FIELDS)


def test_another_agency_may_not_erase(client: TestClient, world: World) -> None:
    answer = erase(client, world.enrolled_id, OTHER_TOKEN)

    assert answer.status_code == 403
    body = client.get(f"/referrals/{world.enrolled_id}", headers=OWN_TOKEN).json()
    assert body["erased"] is False
    assert body["candidate"]["email"] == "ines@example.org"


def test_admin_may_erase(client: TestClient, world: World) -> None:
    answer = erase(client, world.other, ADMIN_TOKEN)

    assert answer.status_code == 200
    assert answer.json()["already_erased"] is False
    body = client.get(f"/referrals/{world.other}", headers=OTHER_TOKEN).json()
    assert body["candidate"]["last_name"] is None


def test_erasing_an_unknown_referral_is_404(client: TestClient, world: World) -> None:
    assert erase(client, "ML-TLS-nobody", OWN_TOKEN).status_code == 404
    assert erase(client, "ML-TLS-nobody", ADMIN_TOKEN).status_code == 404


# --- JSON errors --------------------------------------------------------------------------


def test_routing_errors_are_json(client: TestClient) -> None:
    missing = client.get("/nowhere", headers=OWN_TOKEN)
    wrong_method = client.patch("/referrals", headers=OWN_TOKEN)  # POST refers (1.1)

    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"detail": "Method Not Allowed"}
    assert "GET" in wrong_method.headers["allow"]


@pytest.mark.parametrize("path", ["/referrals/", "/referrals/ML-TLS-1/", "/nowhere/"])
def test_a_trailing_slash_is_a_json_404_not_a_redirect_to_the_host_given(
    engine: Engine, path: str
) -> None:
    client = TestClient(app_for(engine), follow_redirects=False)

    answer = client.get(path, headers={**OWN_TOKEN, "Host": "evil.example"})

    assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"})
    assert "location" not in answer.headers
    assert "evil.example" not in answer.text


def test_an_unexpected_failure_is_a_json_500(engine: Engine) -> None:
    async def broken(_request: Request) -> Response:
        raise RuntimeError("bug")

    client = TestClient(app_for(engine, Route("/broken", broken)),
                        raise_server_exceptions=False)

    answer = client.get("/broken")

    assert (answer.status_code, answer.json()) == (500, {"detail": "internal server error"})


# --- The OpenAPI document tells the truth ---------------------------------------------------


@pytest.mark.parametrize("headers", [OWN_TOKEN, ADMIN_TOKEN])
def test_the_answers_are_what_the_document_says(
    client: TestClient, world: World, headers: dict[str, str]
) -> None:
    detail = client.get(f"/referrals/{world.enrolled_id}", headers=headers)
    agency = {} if headers is OWN_TOKEN else {"agency_id": OWN}
    page = client.get("/referrals", params=agency, headers=headers)
    erasure = erase(client, world.rejected, headers)

    assert_documented(detail, "referrals", "/referrals/{referral_id}")
    assert_documented(page, "referrals", "/referrals")
    assert_documented(erasure, "referrals", "/referrals/{referral_id}/personal-data", "delete")


def test_the_error_answers_are_what_the_document_says(client: TestClient, world: World) -> None:
    one = "/referrals/{referral_id}"
    assert_documented(client.get(f"/referrals/{world.enrolled_id}"), "referrals", one)
    assert_documented(client.get(f"/referrals/{world.enrolled_id}", headers=OTHER_TOKEN),
                      "referrals", one)
    assert_documented(client.get("/referrals/ML-TLS-nobody", headers=OWN_TOKEN),
                      "referrals", one)
    assert_documented(client.get("/referrals", params={"page": "x"}, headers=OWN_TOKEN),
                      "referrals", "/referrals")
    assert_documented(client.get("/referrals", headers=ADMIN_TOKEN), "referrals", "/referrals")
    assert_documented(erase(client, "ML-TLS-nobody", OWN_TOKEN), "referrals",
                      "/referrals/{referral_id}/personal-data", "delete")
