"""The outcome reports over HTTP and on the command line: the contract's counts in one
canonical byte form, the rates people read computed from them, the funnel a partner may
see, aid beside outcome, and the same bytes after the store is rebuilt from the events.

A real SQLite store filled by the real outcome handlers through the BatchProcessor; no
broker (the rebuild's replay is fed the same records the topics would hold)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from deploy import cli
from services.outcomes import app as outcomes_app
from services.outcomes import domain, reports
from services.outcomes.api import router
from services.outcomes.handlers import OutcomeHandlers
from services.outcomes.store import TABLES, OutcomeStore
from shared import rebuild
from shared.contract import Topic
from shared.kafka_access import KafkaAccess
from shared.messaging import OutboxMessage
from shared.schools import load_schools
from shared.settings import Settings
from tests import plumbing
from tests.events import aid_decided, enrollment_decided, exit_submitted, referral_decided
from tests.http_app import app_for as http_app_for
from tests.http_app import assert_bad_year, assert_documented
from tests.plumbing import engine_fixture, store_engine

YEAR = 2024
REGISTRY = list(load_schools())
TOKENS = {
    "tok-outcomes": "outcomes",
    "tok-admin": "admin",
    "tok-finance": "finance",
    "tok-ops": "ops",
    "tok-ml": "partner:ml-toulouse",
    "tok-ft": "partner:ft-toulouse",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


OUTCOMES = bearer("tok-outcomes")

# The contract's `GET :8003/reports/outcomes` body, key by key, as docs/contract.md writes it.
CONTRACT_KEYS = [
    "year", "accompanied", "entries", "exits", "exits_by_outcome", "exits_by_category",
    "solutions", "satisfaction", "profile", "entries_by_agency_kind", "by_school",
]
CONTRACT_SECTIONS = {
    "exits_by_outcome": ["qualifying_training", "durable_employment", "short_employment",
                         "iae", "pre_qualifying_training", "civic_service", "no_solution",
                         "dropout", "other"],
    "exits_by_category": ["training", "employment", "dynamic", "none"],
    "satisfaction": ["answered", "satisfied"],
    "profile": ["age_at_entry_sum", "minors", "rqth", "qpv_resident", "no_work_experience"],
    "entries_by_agency_kind": ["mission_locale", "france_travail", "mlds", "spontaneous",
                               "other"],
}
SCHOOL_KEYS = ["accompanied", "entries", "exits", "solutions"]


# --- Events through the real handlers -----------------------------------------------------

engine = engine_fixture(TABLES, sqlite_only=True)


def referral(referral_id: str, agency_id: str, at: str, status: str = "accepted",
             school_id: str = "toulouse") -> tuple[str, dict[str, Any]]:
    """The referral decided at `at`; its trainee is T-<referral_id> unless rejected."""
    rejected = status == "rejected"
    return Topic.REFERRALS_DECIDED, referral_decided(
        referral_id, occurred_at=at, agency_id=agency_id, school_id=school_id, status=status,
        reasons=["too_old"] if rejected else [],
        trainee_id=None if rejected else f"T-{referral_id}",
    )


def enrolled(referral_id: str, school_id: str, on: str, *, kind: str = "mission_locale",
             age: int = 19, rqth: bool = False, qpv: bool = False, worked: bool = True
             ) -> tuple[str, dict[str, Any]]:
    return Topic.ENROLLMENTS_DECIDED, enrollment_decided(
        f"T-{referral_id}", referral_id=referral_id, school_id=school_id, enrolled_on=on,
        agency_kind=kind, age_at_entry=age, rqth=rqth, qpv_resident=qpv,
        has_work_experience=worked,
    )


def aid(referral_id: str, kind: str, on: str, status: str = "granted"
        ) -> tuple[str, dict[str, Any]]:
    """One 450 € aid of `kind` on the day `on`, granted or refused (budget exhausted)."""
    return Topic.AIDS_DECIDED, aid_decided(
        f"T-{referral_id}", kind, status=status,
        reasons=[] if status == "granted" else ["budget_exhausted"], quantity=1,
        amount_cents=45000, period_start=on, period_end=on,
    )


def exit_(referral_id: str, on: str, outcome: str, satisfied: bool | None
          ) -> tuple[str, dict[str, Any]]:
    return Topic.EXITS_SUBMITTED, exit_submitted(
        f"T-{referral_id}", exited_on=on, outcome=outcome, satisfied=satisfied
    )


def feed(engine: Engine, *events: tuple[str, dict[str, Any]], rebuild: bool = False) -> None:
    """Runs the real outcome handlers (the live ones, or a rebuild's) on `events`."""
    result = plumbing.feed(outcomes_app.TOPOLOGY, engine, *events, handlers=OutcomeHandlers(),
                           rebuild=rebuild)
    assert not result.dead_letters


def cohort() -> list[list[tuple[str, dict[str, Any]]]]:
    """R1..R4 and R8 enrolled; R2 waited for a derogation; R5 enrolled in 2022 and left in
    2023; R6 rejected; R7 accepted, never enrolled; R9 an exit whose enrollment never came;
    R8's exit came before its enrollment (held, then decided)."""
    return [
        [
            referral("R1", "ml-toulouse", "2024-01-02T09:00:00+01:00"),
            referral("R2", "ft-toulouse", "2024-02-01T09:00:00+01:00",
                     status="pending_derogation"),
            referral("R2", "ft-toulouse", "2024-02-05T09:00:00+01:00"),
            referral("R3", "ml-toulouse", "2023-11-10T09:00:00+01:00",
                     school_id="montpellier-1"),
            referral("R4", "ml-castres", "2024-03-01T09:00:00+01:00", school_id="castres"),
            referral("R5", "ml-toulouse", "2022-01-03T09:00:00+01:00"),
            referral("R6", "ml-toulouse", "2024-04-01T09:00:00+02:00", status="rejected"),
            referral("R7", "ml-toulouse", "2024-05-02T09:00:00+02:00"),
            referral("R8", "ft-toulouse", "2024-01-08T09:00:00+01:00"),
        ],
        [
            enrolled("R1", "toulouse", "2024-01-15", age=17, rqth=True, qpv=True,
                     worked=False),
            enrolled("R2", "toulouse", "2024-02-20", kind="france_travail", age=20),
            enrolled("R3", "montpellier-1", "2023-12-01", age=22, qpv=True, worked=False),
            enrolled("R4", "castres", "2024-03-10", kind="spontaneous", age=16),
            enrolled("R5", "toulouse", "2022-01-10", age=25),
        ],
        [
            aid("R1", "laptop", "2024-01-20"),
            aid("R4", "meals", "2024-04-01"),
            aid("R2", "meals", "2024-04-01", status="rejected"),
        ],
        [
            exit_("R1", "2024-06-30", "durable_employment", True),
            exit_("R2", "2024-09-30", "no_solution", False),
            exit_("R3", "2023-11-01", "iae", True),  # before enrollment: refused
            exit_("R4", "2024-11-15", "qualifying_training", None),
            exit_("R5", "2023-12-31", "short_employment", True),
            exit_("R8", "2024-12-20", "civic_service", True),  # its enrollment follows
            exit_("R9", "2024-10-01", "dropout", True),  # never enrolled: held
        ],
        [
            enrolled("R8", "toulouse", "2024-01-22", kind="france_travail", age=18),
        ],
    ]


def app_for(engine: Engine) -> Starlette:
    return http_app_for(router, engine, TOKENS)


Batches = list[list[tuple[str, dict[str, Any]]]]


@pytest.fixture
def events() -> Batches:
    return cohort()


@pytest.fixture
def filled(engine: Engine, events: Batches) -> Engine:
    for batch in events:
        feed(engine, *batch)
    return engine


@pytest.fixture
def client(filled: Engine) -> TestClient:
    return TestClient(app_for(filled))


def get(client: TestClient, path: str, token: str = "tok-outcomes", **params: Any) -> Any:
    return client.get(path, params={"year": YEAR, **params}, headers=bearer(token))


# --- GET /reports/outcomes ----------------------------------------------------------------


def test_the_outcomes_report_counts_the_cohort(client: TestClient) -> None:
    answer = get(client, "/reports/outcomes")

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    report = answer.json()
    # Accompanied: R1 R2 R3 R4 R8 (R5 left in 2023); entries R1 R2 R4 R8;
    # exits R1 (employment) R2 (none) R4 (training) R8 (dynamic).
    assert (report["year"], report["accompanied"], report["entries"], report["exits"]) == (
        YEAR, 5, 4, 4
    )
    assert report["exits_by_category"] == {"training": 1, "employment": 1, "dynamic": 1,
                                           "none": 1}
    assert report["exits_by_outcome"]["durable_employment"] == 1
    assert report["exits_by_outcome"]["civic_service"] == 1
    assert sum(report["exits_by_outcome"].values()) == 4
    assert report["solutions"] == 3
    assert report["satisfaction"] == {"answered": 3, "satisfied": 2}
    assert report["profile"] == {"age_at_entry_sum": 17 + 20 + 22 + 16 + 18, "minors": 2,
                                 "rqth": 1, "qpv_resident": 2, "no_work_experience": 2}
    assert report["entries_by_agency_kind"] == {"mission_locale": 1, "france_travail": 2,
                                                "mlds": 0, "spontaneous": 1, "other": 0}
    assert report["by_school"]["toulouse"] == {"accompanied": 3, "entries": 3, "exits": 3,
                                               "solutions": 2}
    assert report["by_school"]["montpellier-1"] == {"accompanied": 1, "entries": 0,
                                                    "exits": 0, "solutions": 0}
    assert report["by_school"]["castres"] == {"accompanied": 1, "entries": 1, "exits": 1,
                                              "solutions": 1}
    assert set(report["by_school"]) == set(REGISTRY)  # every site, zeros included


def test_the_body_has_the_contracts_keys_in_the_contracts_order(client: TestClient) -> None:
    body = get(client, "/reports/outcomes").content

    report = json.loads(body, object_pairs_hook=lambda pairs: pairs)
    top = dict(report)
    assert [key for key, _ in report] == CONTRACT_KEYS
    for section, keys in CONTRACT_SECTIONS.items():
        assert [key for key, _ in top[section]] == keys, section
    schools = [school for school, _ in top["by_school"]]
    assert schools == sorted(schools)
    assert all([key for key, _ in counts] == SCHOOL_KEYS for _, counts in top["by_school"])
    assert b" " not in body  # compact: one byte form for one report


def test_the_canonical_form_does_not_depend_on_the_dicts_order() -> None:
    report = cast(dict[str, Any], domain.outcomes_report([], YEAR, ["toulouse", "ales"]))
    shuffled = {key: report[key] for key in reversed(list(report))}
    shuffled["profile"] = dict(reversed(list(report["profile"].items())))
    shuffled["by_school"] = dict(reversed(list(report["by_school"].items())))

    assert reports.outcomes_report_json(shuffled) == reports.outcomes_report_json(report)
    assert reports.outcomes_report_json(report).startswith(b'{"year":2024,"accompanied":0,')


def test_non_ascii_school_ids_stay_readable() -> None:
    report = domain.outcomes_report([], YEAR, ["nîmes"])

    assert '"nîmes"'.encode() in reports.outcomes_report_json(report)


def test_a_later_year_counts_only_who_is_still_there(client: TestClient) -> None:
    report = client.get("/reports/outcomes", params={"year": 2030}, headers=OUTCOMES).json()

    assert (report["accompanied"], report["entries"], report["exits"]) == (1, 0, 0)  # R3
    assert report["solutions"] == 0 and not any(report["exits_by_outcome"].values())
    assert report["satisfaction"] == {"answered": 0, "satisfied": 0}


# --- Roles and parameters -----------------------------------------------------------------


def test_the_outcomes_report_is_for_outcomes_and_admin(client: TestClient) -> None:
    assert client.get("/reports/outcomes", params={"year": YEAR}).status_code == 401
    assert get(client, "/reports/outcomes", "nope").status_code == 401
    for token in ("tok-finance", "tok-ops", "tok-ml"):
        answer = get(client, "/reports/outcomes", token)
        assert answer.status_code == 403, token
        assert "detail" in answer.json()
    for token in ("tok-outcomes", "tok-admin"):
        assert get(client, "/reports/outcomes", token).status_code == 200, token


def test_aid_beside_outcome_is_for_outcomes_finance_and_admin(client: TestClient) -> None:
    assert client.get("/reports/aids-outcomes", params={"year": YEAR}).status_code == 401
    for token in ("tok-ops", "tok-ml"):
        assert get(client, "/reports/aids-outcomes", token).status_code == 403, token
    for token in ("tok-outcomes", "tok-finance", "tok-admin"):
        assert get(client, "/reports/aids-outcomes", token).status_code == 200, token


@pytest.mark.parametrize("path", ["/reports/outcomes", "/reports/funnel",
                                  "/reports/aids-outcomes"])
@pytest.mark.parametrize("year", [None, "", "abc", "1999", "2101", "2024.0", "-2024",
                                  pytest.param("7" * 5000, id="5000-digits")])
def test_a_missing_or_bad_year_is_422(client: TestClient, path: str, year: str | None) -> None:
    params = {} if year is None else {"year": year}

    answer = client.get(path, params=params, headers=OUTCOMES)

    assert_bad_year(answer, year)


def test_a_partner_with_a_bad_year_is_422_too(client: TestClient) -> None:
    answer = client.get("/reports/funnel", params={"year": "x"}, headers=bearer("tok-ml"))

    assert answer.status_code == 422


# --- GET /reports/funnel ------------------------------------------------------------------


def test_the_funnel_follows_the_years_referrals(client: TestClient) -> None:
    answer = get(client, "/reports/funnel")

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    funnel = answer.json()
    assert funnel["steps"] == ["received", "accepted", "enrolled", "exited", "with_solution"]
    # Received in 2024: R1 R2 R4 R6 R7 R8 (R3 in 2023, R5 in 2022).
    total = funnel["total"]
    assert [total[step] for step in funnel["steps"]] == [6, 5, 4, 4, 3]
    assert set(funnel["by_agency"]) == {"ml-toulouse", "ft-toulouse", "ml-castres"}
    ml = funnel["by_agency"]["ml-toulouse"]  # R1 (exited with a job), R6 rejected, R7
    assert [ml[step] for step in funnel["steps"]] == [3, 2, 1, 1, 1]
    ft = funnel["by_agency"]["ft-toulouse"]  # R2 (derogation, 4 days), R8
    assert [ft[step] for step in funnel["steps"]] == [2, 2, 2, 2, 1]
    assert ft["median_days"]["received_to_accepted"] == 2.0  # 4 and 0 days
    assert ml["median_days"] == {"received_to_accepted": 0.0, "accepted_to_enrolled": 13.0,
                                 "enrolled_to_exited": 167.0}
    assert set(funnel["by_school"]) == {"toulouse", "castres"}


def test_a_partner_sees_its_own_agency_only(client: TestClient) -> None:
    mine = get(client, "/reports/funnel", "tok-ml")
    asked = get(client, "/reports/funnel", "tok-ml", agency_id="ml-toulouse")
    everyone = get(client, "/reports/funnel", "tok-outcomes").json()

    assert mine.status_code == asked.status_code == 200
    assert mine.content == asked.content
    funnel = mine.json()
    assert list(funnel["by_agency"]) == ["ml-toulouse"]
    assert funnel["total"] == everyone["by_agency"]["ml-toulouse"]
    assert list(funnel["by_school"]) == ["toulouse"]
    assert get(client, "/reports/funnel", "tok-ft").json()["total"]["received"] == 2


def test_a_partner_asking_for_another_agency_is_403(client: TestClient) -> None:
    answer = get(client, "/reports/funnel", "tok-ml", agency_id="ft-toulouse")

    assert answer.status_code == 403
    assert "own agency" in answer.json()["detail"]


def test_the_funnel_roles(client: TestClient) -> None:
    assert client.get("/reports/funnel", params={"year": YEAR}).status_code == 401
    for token in ("tok-finance", "tok-ops"):
        assert get(client, "/reports/funnel", token).status_code == 403, token
    one = get(client, "/reports/funnel", "tok-admin", agency_id="ft-toulouse").json()
    assert list(one["by_agency"]) == ["ft-toulouse"]
    unknown = get(client, "/reports/funnel", "tok-outcomes", agency_id="nobody").json()
    assert unknown["total"]["received"] == 0 and unknown["by_agency"] == {}


# --- GET /reports/aids-outcomes -----------------------------------------------------------


def test_aid_beside_outcome_counts_exits_with_and_without_each_kind(
    client: TestClient,
) -> None:
    report = get(client, "/reports/aids-outcomes", "tok-finance").json()

    assert report == {"year": YEAR, "by_kind": {
        "laptop": {"with_aid": {"exits": 1, "solutions": 1},
                   "without_aid": {"exits": 3, "solutions": 2}},
        "meals": {"with_aid": {"exits": 1, "solutions": 1},  # R2's refusal does not count
                  "without_aid": {"exits": 3, "solutions": 2}},
        "childcare": {"with_aid": {"exits": 0, "solutions": 0},
                      "without_aid": {"exits": 4, "solutions": 3}},
    }}


# --- The OpenAPI document tells the truth ---------------------------------------------------

PATHS = ["/reports/outcomes", "/reports/funnel", "/reports/aids-outcomes"]


@pytest.mark.parametrize("path", PATHS)
def test_each_canonical_body_is_what_the_document_says(client: TestClient, path: str) -> None:
    assert_documented(get(client, path), "outcomes", path)
    assert_documented(get(client, path, year=2031), "outcomes", path)  # nobody that year


def test_a_partners_funnel_is_what_the_document_says(client: TestClient) -> None:
    assert_documented(get(client, "/reports/funnel", "tok-ml"), "outcomes", "/reports/funnel")


@pytest.mark.parametrize("path", PATHS)
def test_the_error_answers_are_what_the_document_says(client: TestClient, path: str) -> None:
    assert_documented(client.get(path, params={"year": YEAR}), "outcomes", path)
    assert_documented(get(client, path, "tok-ops"), "outcomes", path)
    assert_documented(get(client, path, year="x"), "outcomes", path)


# --- The same bytes after a rebuild -------------------------------------------------------


def test_a_rebuild_from_the_events_gives_the_same_bytes(
    events: Batches, filled: Engine, client: TestClient, tmp_path: Path
) -> None:
    """What the topics hold (the inputs fed, and the exits.decided the service emitted),
    replayed topic by topic in the rebuild's order into an empty store, with the rebuild's
    routes, gives the same reports byte for byte."""
    topics: dict[str, list[dict[str, Any]]] = {}
    for batch in events:
        for topic, payload in batch:
            topics.setdefault(topic, []).append(payload)
    with Session(filled) as session:
        query = select(OutboxMessage).where(OutboxMessage.topic == Topic.EXITS_DECIDED)
        emitted = session.exec(query.order_by(col(OutboxMessage.id))).all()
        topics[Topic.EXITS_DECIDED] = [json.loads(message.payload) for message in emitted]
    assert len(topics[Topic.EXITS_DECIDED]) == 6  # R9's exit is still held: no decision

    with store_engine(f"sqlite:///{tmp_path / 'rebuilt.db'}", TABLES) as rebuilt:
        topology = outcomes_app.TOPOLOGY
        assert topology.rebuild is not None
        for topic in topology.rebuild.replays:
            feed(rebuilt, *((topic, payload) for payload in topics.get(topic, [])),
                 rebuild=True)
        assert rebuild.finish(topology, OutcomeHandlers(), rebuilt) == 1  # R9's, held again
        again = TestClient(app_for(rebuilt))
        for path in ("/reports/outcomes", "/reports/funnel", "/reports/aids-outcomes"):
            assert get(again, path).content == get(client, path).content, path
        with Session(rebuilt) as session:
            assert session.exec(select(OutboxMessage)).all() == []  # nothing published
            assert OutcomeStore(session).held.count() == 1


# --- Rates as people read them ------------------------------------------------------------


@pytest.mark.parametrize(("count", "total", "text"), [
    (87, 100, "87 %"), (0, 100, "0 %"), (100, 100, "100 %"), (1, 3, "33 %"), (2, 3, "67 %"),
    (1, 8, "13 %"), (1, 200, "1 %"), (0, 0, "–"), (5, 0, "–"),
])
def test_percent_is_a_whole_number_half_up_or_a_dash(count: int, total: int, text: str) -> None:
    assert reports.percent(count, total) == text


def counts_report(**changes: Any) -> dict[str, Any]:
    report = cast(dict[str, Any], domain.outcomes_report([], YEAR, ["toulouse"]))
    for key, value in changes.items():
        report[key] = {**report[key], **value} if isinstance(value, dict) else value
    return report


def test_the_text_gives_the_rates_computed_from_the_counts() -> None:
    report = counts_report(
        accompanied=100, entries=60, exits=100, solutions=87,
        exits_by_outcome={"qualifying_training": 28, "durable_employment": 27,
                          "short_employment": 32, "no_solution": 13},
        exits_by_category={"training": 28, "employment": 27, "dynamic": 32, "none": 13},
        satisfaction={"answered": 90, "satisfied": 81},
        profile={"age_at_entry_sum": 1950, "minors": 34, "rqth": 7, "qpv_resident": 41,
                 "no_work_experience": 58},
        entries_by_agency_kind={"mission_locale": 45, "france_travail": 15},
        by_school={"toulouse": {"accompanied": 100, "entries": 60, "exits": 100,
                                "solutions": 87}},
    )

    text = reports.render_outcomes_text(report)

    assert "Outcomes report 2024" in text
    assert "87 % with a solution (87 of 100 exits)" in text
    assert "by category: 28 % / 27 % / 32 % / 13 % (training / employment / dynamic / none)" \
        in text
    assert "90 % satisfied (81 of 90 who answered)" in text
    lines = {line.split("  ")[0]: line.split() for line in text.splitlines()}
    assert lines["average age at entry"][-1] == "19.5"
    assert lines["minors at entry"][-2:] == ["34", "%"] and "34" in lines["minors at entry"]
    assert lines["RQTH"][-2:] == ["7", "%"]
    assert lines["QPV residents"][-2:] == ["41", "%"]
    assert lines["no work experience"][-2:] == ["58", "%"]
    assert lines["mission_locale"][-3:] == ["45", "75", "%"]  # of 60 entries
    assert lines["toulouse"][-2:] == ["87", "%"]


def test_zero_denominators_read_as_a_dash() -> None:
    text = reports.render_outcomes_text(counts_report())

    assert "– with a solution (0 of 0 exits)" in text
    assert "– satisfied (0 of 0 who answered)" in text
    lines = {line.split("  ")[0]: line.split() for line in text.splitlines()}
    assert lines["average age at entry"][-1] == "–"
    assert lines["minors at entry"][-1] == "–"
    assert lines["toulouse"][-1] == "–"
    assert " 0 %" not in text  # nothing over nothing is not 0 %


def test_no_answer_to_satisfaction_is_a_dash_even_with_exits() -> None:
    report = counts_report(exits=4, solutions=4, exits_by_category={"training": 4})

    text = reports.render_outcomes_text(report)

    assert "100 % with a solution" in text and "– satisfied" in text


def test_the_funnel_and_aid_texts(client: TestClient) -> None:
    funnel = reports.render_funnel_text(get(client, "/reports/funnel").json())
    aids = reports.render_aids_outcomes_text(get(client, "/reports/aids-outcomes").json())

    assert "Referral funnel 2024" in funnel
    rows = {line.split()[0]: line.split() for line in funnel.splitlines() if line}
    assert rows["ml-toulouse"] == ["ml-toulouse", "3", "2", "1", "1", "1", "100", "%", "0",
                                   "13", "167"]
    assert rows["ml-castres"][-3:] == ["0", "9", "250"]
    assert "Aid and outcome 2024" in aids
    assert "laptop with" in aids and "Counts, not causes" in aids
    childcare = next(line for line in aids.splitlines() if line.startswith("childcare with "))
    assert childcare.split()[-1] == "–"


def test_median_days_read_plainly() -> None:
    assert [reports.days(v) for v in (None, 0.0, 12.0, 12.5)] == ["–", "0", "12", "12.5"]


# --- The commands -------------------------------------------------------------------------


def use_store(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> None:
    url = str(engine.url)
    monkeypatch.setattr(cli, "_command_settings", lambda: Settings(OUTCOMES_DATABASE_URL=url))


def test_e2c_report_outcomes_prints_the_rates(
    filled: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_store(monkeypatch, filled)

    assert cli.main(["report", "outcomes", "--year", "2024"]) == 0

    out = capsys.readouterr().out
    assert "75 % with a solution (3 of 4 exits)" in out
    assert "67 % satisfied (2 of 3 who answered)" in out


def test_e2c_report_outcomes_json_is_the_http_body(
    filled: Engine, client: TestClient, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_store(monkeypatch, filled)

    assert cli.main(["report", "outcomes", "--year", "2024", "--json"]) == 0

    assert capsys.readouterr().out.encode() == get(client, "/reports/outcomes").content + b"\n"


def test_e2c_report_funnel_for_one_agency(
    filled: Engine, client: TestClient, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_store(monkeypatch, filled)

    assert cli.main(["report", "funnel", "--year", "2024", "--agency", "ml-toulouse",
                     "--json"]) == 0
    assert capsys.readouterr().out.encode() == get(client, "/reports/funnel", "tok-ml"
                                                   ).content + b"\n"
    assert cli.main(["report", "funnel", "--year", "2024"]) == 0
    assert "ft-toulouse" in capsys.readouterr().out
    assert cli.main(["report", "aids-outcomes", "--year", "2024"]) == 0
    assert "laptop with" in capsys.readouterr().out


def test_e2c_report_outcomes_refuses_a_bad_year(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["report", "outcomes", "--year", "1999"])

    assert stopped.value.code == 2
    assert "2000 to 2100" in capsys.readouterr().err


class FakeStack:
    """The few LocalStack methods the rebuild command uses, recording the calls."""

    calls: list[str]

    def __init__(self, running: bool, health: str = "down") -> None:
        self.running, self.health = running, health
        self.calls = []

    def __call__(self) -> FakeStack:  # stands for the LocalStack class
        return self

    def access(self, principal: str) -> KafkaAccess:
        return KafkaAccess(bootstrap="127.0.0.1:19092", username=principal,
                           password=SecretStr("not-a-real-password"))

    def command_settings(self) -> Settings:
        return Settings(OUTCOMES_DATABASE_URL="sqlite:///unused.db")

    def service_running(self, name: str) -> bool:
        return self.running

    def service_health(self, name: str) -> str:
        return self.health

    def stop_service(self, name: str) -> bool:
        self.calls.append(f"stop {name}")
        return True

    def start_service(self, name: str) -> None:
        self.calls.append(f"start {name}")


def rebuild_with(monkeypatch: pytest.MonkeyPatch, stack: FakeStack,
                 fail: bool = False) -> list[Settings]:
    import deploy.local_kafka
    import deploy.stack

    seen: list[Settings] = []

    def fake_rebuild(settings: Settings) -> outcomes_app.RebuildResult:
        stack.calls.append("rebuild")
        seen.append(settings)
        if fail:
            raise RuntimeError("broker went away")
        return outcomes_app.RebuildResult(records=42, held_again=1)

    monkeypatch.setattr(deploy.stack, "LocalStack", stack)
    monkeypatch.setattr(deploy.local_kafka, "broker_answers", lambda _access: True)
    monkeypatch.setattr(outcomes_app, "rebuild", fake_rebuild)
    return seen


def test_e2c_outcomes_rebuild_stops_rebuilds_and_restarts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = FakeStack(running=True)
    seen = rebuild_with(monkeypatch, stack)

    assert cli.main(["outcomes", "rebuild"]) == 0

    assert stack.calls == ["stop outcomes", "rebuild", "start outcomes"]
    assert seen[0].kafka_bootstrap_servers == "127.0.0.1:19092"  # the stack's broker
    assert seen[0].kafka_username == "outcomes"  # as the outcomes service's principal
    assert seen[0].outcomes_database_url == "sqlite:///unused.db"  # the stack's store
    out = capsys.readouterr().out
    assert "42 records replayed, 1 exits held again" in out


def test_e2c_outcomes_rebuild_leaves_a_stopped_service_stopped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = FakeStack(running=False)
    rebuild_with(monkeypatch, stack)

    assert cli.main(["outcomes", "rebuild"]) == 0

    assert stack.calls == ["rebuild"]


def test_e2c_outcomes_rebuild_refuses_beside_a_service_it_did_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = FakeStack(running=False, health="ready")
    rebuild_with(monkeypatch, stack)

    assert cli.main(["outcomes", "rebuild"]) == 1
    assert stack.calls == []
    assert "did not start" in capsys.readouterr().err
    assert cli.main(["outcomes", "rebuild", "--force"]) == 0
    assert stack.calls == ["rebuild"]


def test_a_failed_rebuild_leaves_the_service_stopped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = FakeStack(running=True)
    rebuild_with(monkeypatch, stack, fail=True)

    with pytest.raises(RuntimeError):
        cli.main(["outcomes", "rebuild"])

    assert stack.calls == ["stop outcomes", "rebuild"]
    assert "run `e2c outcomes rebuild` again" in capsys.readouterr().err
