"""The finance report (JSON from the aggregates), its CSV ledger export and `e2c report
finance`, over a real SQLite store filled by the real aid handlers. No broker, no timings."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.testclient import TestClient

from deploy import cli
from services.aids import reports
from services.aids.api import router
from services.aids.app import TOPOLOGY
from services.aids.domain import run_out_month
from services.aids.handlers import AidHandlers
from services.aids.store import TABLES, AidStore, KindYearTotal, LedgerLine, YearTotals
from shared.aid_rules import load_rules
from shared.contract import Topic
from shared.reports import parse_year
from shared.schools import load_schools
from shared.settings import Settings
from tests import plumbing
from tests.events import aid_request, budget, enrollment_decided
from tests.http_app import app_for as http_app_for
from tests.http_app import assert_bad_year, assert_documented
from tests.plumbing import engine_fixture

YEAR = 2024
KINDS = ("laptop", "meals", "childcare")
REGISTRY = list(load_schools())
UNLISTED_SCHOOL = "saint-gaudens"  # a site added to operations' registry, not to ours
TOKENS = {
    "tok-finance": "finance",
    "tok-admin": "admin",
    "tok-outcomes": "outcomes",
    "tok-ops": "ops",
    "tok-partner": "partner:ml-toulouse",
}
FINANCE = {"Authorization": "Bearer tok-finance"}
BOM = b"\xef\xbb\xbf"
REPORT_KEYS = {"year", "currency", "by_kind", "by_school", "by_month", "budgets"}
KIND_KEYS = {"granted", "rejected", "quantity", "amount_cents"}
BUDGET_KEYS = {"envelope_cents", "committed_cents", "remaining_cents", "runs_out_month"}


# --- Store, events, app -------------------------------------------------------------------

engine = engine_fixture(TABLES, sqlite_only=True)


def feed(engine: Engine, *events: tuple[str, dict[str, Any]]) -> None:
    """Runs the real aid handlers on `events` (topic, payload) in one batch."""
    result = plumbing.feed(TOPOLOGY, engine, *events, handlers=AidHandlers(load_rules()))
    assert not result.dead_letters


def aid(trainee_id: str, kind: str, start: str, end: str, **fields: Any
        ) -> tuple[str, dict[str, Any]]:
    """A request of `kind` from `start` to `end` (quantity 1, no amount, unless told)."""
    request = aid_request(trainee_id, kind, period_start=start, period_end=end, **fields)
    return Topic.AIDS_REQUESTED, request


@pytest.fixture
def filled(engine: Engine) -> Engine:
    """A year of aid through the handlers: grants, every kind of refusal that counts, a
    school outside the registry, a grant of the next year, and an envelope lowered below
    what was already committed (meals) so that it ran out in March."""
    feed(engine, *(
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee, school_id=school, enrolled_on=on))
        for trainee, school, on in [("T1", "toulouse", "2024-01-10"),
                                    ("T2", "montpellier-1", "2024-02-01"),
                                    ("T3", "castres", "2024-03-01"),
                                    ("T4", UNLISTED_SCHOOL, "2024-01-05")]
    ))
    feed(engine, (Topic.BUDGETS_SUBMITTED, budget("meals", 30000)),
         (Topic.BUDGETS_SUBMITTED, budget("childcare", 100000)))
    feed(engine,
         aid("T1", "laptop", "2024-01-15", "2024-01-15", amount_cents=45000),
         aid("T1", "laptop", "2024-03-01", "2024-03-01", amount_cents=45000),  # already
         aid("T1", "meals", "2024-02-01", "2024-02-29", quantity=20),  # 140 €
         aid("T2", "meals", "2024-03-01", "2024-03-31", quantity=10),  # 70 €
         aid("T3", "meals", "2024-04-01", "2024-04-30", quantity=15),  # over the envelope
         aid("T3", "meals", "2024-04-01", "2024-04-30", quantity=5),  # 35 €
         aid("T2", "childcare", "2024-03-01", "2024-03-31", amount_cents=25000),
         aid("T2", "childcare", "2024-04-01", "2024-04-30", amount_cents=25000),
         aid("T3", "childcare", "2024-05-01", "2024-05-31", amount_cents=30001),  # over cap
         aid("T4", "childcare", "2024-06-01", "2024-06-30", amount_cents=12345),
         aid("T4", "laptop", "2024-06-03", "2024-06-03", amount_cents=39999),
         aid("T1", "meals", "2024-05-10", "2024-05-01", quantity=3),  # invalid period
         aid("T1", "meals", "2025-01-02", "2025-01-31", quantity=3))  # next year
    feed(engine, (Topic.BUDGETS_SUBMITTED, budget("meals", 20000)))  # below the 245 € committed
    return engine


def app_for(engine: Engine) -> Starlette:
    return http_app_for(router, engine, TOKENS)


@pytest.fixture
def client(filled: Engine) -> TestClient:
    return TestClient(app_for(filled))


def ledger(engine: Engine, year: int = YEAR) -> list[LedgerLine]:
    with Session(engine) as session:
        return list(AidStore(session).ledger_lines(year))


def parse_csv(body: bytes) -> list[dict[str, str]]:
    assert body.startswith(BOM)
    text = body[len(BOM):].decode("utf-8")
    assert text.endswith("\r\n")
    rows = text.removesuffix("\r\n").split("\r\n")
    header = rows[0].split(";")
    return [dict(zip(header, row.split(";"), strict=True)) for row in rows[1:]]


def cents(euros: str) -> int:
    value = Decimal(euros.replace(",", "."))
    assert value == value.quantize(Decimal("0.01"))
    return int(value * 100)


# --- The JSON report ----------------------------------------------------------------------


def test_the_report_has_exactly_the_contract_keys_and_the_figures(client: TestClient) -> None:
    answer = client.get("/reports/finance", params={"year": YEAR}, headers=FINANCE)

    assert answer.status_code == 200
    report = answer.json()
    assert set(report) == REPORT_KEYS
    assert (report["year"], report["currency"]) == (YEAR, "EUR")
    assert report["by_kind"] == {
        "laptop": {"granted": 2, "rejected": 1, "quantity": 2, "amount_cents": 84999},
        "meals": {"granted": 3, "rejected": 2, "quantity": 35, "amount_cents": 24500},
        "childcare": {"granted": 3, "rejected": 1, "quantity": 3, "amount_cents": 62345,
                      "trainees": 2},
    }
    assert list(report["by_school"]) == [*REGISTRY, UNLISTED_SCHOOL]
    assert report["by_school"]["toulouse"] == {"laptop": 45000, "meals": 14000, "childcare": 0}
    assert report["by_school"]["montpellier-1"] == {
        "laptop": 0, "meals": 7000, "childcare": 50000
    }
    assert report["by_school"]["castres"] == {"laptop": 0, "meals": 3500, "childcare": 0}
    assert report["by_school"][UNLISTED_SCHOOL] == {
        "laptop": 39999, "meals": 0, "childcare": 12345
    }
    assert report["by_school"]["montauban"] == {"laptop": 0, "meals": 0, "childcare": 0}
    assert list(report["by_month"]) == [f"{YEAR}-{month:02d}" for month in range(1, 13)]
    assert report["by_month"]["2024-01"] == {"laptop": 45000, "meals": 0, "childcare": 0}
    assert report["by_month"]["2024-03"] == {"laptop": 0, "meals": 7000, "childcare": 25000}
    assert report["by_month"]["2024-06"] == {"laptop": 39999, "meals": 0, "childcare": 12345}
    assert report["by_month"]["2024-12"] == {"laptop": 0, "meals": 0, "childcare": 0}


def test_budgets_carry_envelope_committed_remaining_and_the_run_out_month(
    client: TestClient,
) -> None:
    budgets = client.get("/reports/finance", params={"year": YEAR}, headers=FINANCE).json()[
        "budgets"
    ]

    assert set(budgets) == set(KINDS)
    assert all(set(entry) == BUDGET_KEYS for entry in budgets.values())
    assert budgets["laptop"] == {"envelope_cents": None, "committed_cents": 84999,
                                 "remaining_cents": None, "runs_out_month": None}
    # Lowered to 200 € after 245 € were granted: reached in March (140 € + 70 €).
    assert budgets["meals"] == {"envelope_cents": 20000, "committed_cents": 24500,
                                "remaining_cents": -4500, "runs_out_month": "2024-03"}
    childcare_by_month = [0, 0, 25000, 25000, 0, 12345, 0, 0, 0, 0, 0, 0]
    assert budgets["childcare"] == {
        "envelope_cents": 100000, "committed_cents": 62345, "remaining_cents": 37655,
        "runs_out_month": run_out_month(100000, childcare_by_month, YEAR, reports.today()),
    }


def test_report_totals_equal_the_ledger_lines_to_the_cent(
    filled: Engine, client: TestClient
) -> None:
    report = client.get("/reports/finance", params={"year": YEAR}, headers=FINANCE).json()
    lines = ledger(filled)

    by_kind, by_school, by_month = Counter(), Counter(), Counter()
    for line in lines:
        by_kind[line.kind] += line.amount_cents
        by_school[line.school_id, line.kind] += line.amount_cents
        by_month[f"{line.year}-{line.month:02d}", line.kind] += line.amount_cents
    assert len(lines) == sum(report["by_kind"][kind]["granted"] for kind in KINDS)
    for kind in KINDS:
        assert report["by_kind"][kind]["amount_cents"] == by_kind[kind]
        assert report["budgets"][kind]["committed_cents"] == by_kind[kind]
        for school, amounts in report["by_school"].items():
            assert amounts[kind] == by_school[school, kind]
        for month, amounts in report["by_month"].items():
            assert amounts[kind] == by_month[month, kind]


def test_a_year_without_aid_is_all_zeros(client: TestClient) -> None:
    report = client.get("/reports/finance", params={"year": 2030}, headers=FINANCE).json()

    assert set(report) == REPORT_KEYS
    assert all(set(report["by_kind"][kind]) >= KIND_KEYS for kind in KINDS)
    assert report["by_kind"]["childcare"]["trainees"] == 0
    assert all(not any(entry.values()) for entry in report["by_kind"].values())
    assert list(report["by_school"]) == REGISTRY
    assert len(report["by_month"]) == 12
    assert all(not any(amounts.values()) for amounts in report["by_month"].values())
    assert report["budgets"]["meals"] == {"envelope_cents": None, "committed_cents": 0,
                                          "remaining_cents": None, "runs_out_month": None}


# --- Roles and parameters -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/reports/finance", "/reports/finance.csv"])
def test_finance_and_admin_only(client: TestClient, path: str) -> None:
    params = {"year": YEAR}

    no_token = client.get(path, params=params)
    unknown = client.get(path, params=params, headers={"Authorization": "Bearer nope"})
    assert (no_token.status_code, unknown.status_code) == (401, 401)
    assert no_token.headers["www-authenticate"] == "Bearer"
    assert "detail" in no_token.json()
    for token in ("tok-outcomes", "tok-ops", "tok-partner"):
        answer = client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 403, token
        assert "detail" in answer.json()
    for token in ("tok-finance", "tok-admin"):
        answer = client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, token


@pytest.mark.parametrize("path", ["/reports/finance", "/reports/finance.csv"])
@pytest.mark.parametrize("year", [None, "", "abc", "1999", "2101", "2024.0", "-2024", "٢٠٢٤",
                                  pytest.param("7" * 5000, id="5000-digits")])
def test_a_missing_or_bad_year_is_422(client: TestClient, path: str, year: str | None) -> None:
    params = {} if year is None else {"year": year}

    answer = client.get(path, params=params, headers=FINANCE)

    assert_bad_year(answer, year)


# --- The CSV export -----------------------------------------------------------------------


def test_the_csv_is_the_ledger_in_french_spreadsheet_form(
    filled: Engine, client: TestClient
) -> None:
    answer = client.get("/reports/finance.csv", params={"year": YEAR}, headers=FINANCE)

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == 'attachment; filename="finance-2024.csv"'
    body = answer.content
    assert body.startswith(BOM)
    assert body.count(b"\r\n") == body.count(b"\n")  # every line ends in CRLF
    header = body[len(BOM):].split(b"\r\n", 1)[0].decode()
    assert header.split(";") == list(reports.CSV_COLUMNS)
    rows = parse_csv(body)
    lines = ledger(filled)
    assert [int(row["line_id"]) for row in rows] == [line.id for line in lines]
    first = rows[0]
    assert (first["kind"], first["quantity"], first["rate_eur"], first["amount_eur"]) == (
        "laptop", "1", "", "450,00"
    )
    meals = next(row for row in rows if row["kind"] == "meals")
    assert (meals["quantity"], meals["rate_eur"], meals["amount_eur"], meals["month"]) == (
        "20", "7,00", "140,00", "2024-02"
    )
    assert (meals["period_start"], meals["period_end"]) == ("2024-02-01", "2024-02-29")
    assert meals["correction_of"] == ""
    assert all(row["month"].startswith("2024-") for row in rows)


def test_the_csv_adds_up_to_the_report(client: TestClient) -> None:
    report = client.get("/reports/finance", params={"year": YEAR}, headers=FINANCE).json()
    rows = parse_csv(
        client.get("/reports/finance.csv", params={"year": YEAR}, headers=FINANCE).content
    )

    by_kind, by_school, by_month = Counter(), Counter(), Counter()
    for row in rows:
        amount = cents(row["amount_eur"])
        by_kind[row["kind"]] += amount
        by_school[row["school_id"], row["kind"]] += amount
        by_month[row["month"], row["kind"]] += amount
    for kind in KINDS:
        assert by_kind[kind] == report["by_kind"][kind]["amount_cents"]
        assert Counter(row["kind"] for row in rows)[kind] == report["by_kind"][kind]["granted"]
        for school, amounts in report["by_school"].items():
            assert by_school[school, kind] == amounts[kind]
        for month, amounts in report["by_month"].items():
            assert by_month[month, kind] == amounts[kind]


def test_small_chunks_give_the_same_file(filled: Engine) -> None:
    whole = reports.LedgerCsv(filled, YEAR)
    small = reports.LedgerCsv(filled, YEAR, lines_per_chunk=2)

    whole_bytes, small_chunks = b"".join(whole.chunks()), list(small.chunks())

    assert b"".join(small_chunks) == whole_bytes
    assert len(small_chunks) == 1 + 4  # header, then 7 lines by 2
    assert small.lines == whole.lines == 8


def test_an_empty_year_is_the_header_only(client: TestClient) -> None:
    answer = client.get("/reports/finance.csv", params={"year": 2030}, headers=FINANCE)

    assert answer.content == BOM + ";".join(reports.CSV_COLUMNS).encode() + b"\r\n"


# --- Pure pieces --------------------------------------------------------------------------


@pytest.mark.parametrize(("amount", "text"), [
    (0, "0,00"), (5, "0,05"), (700, "7,00"), (123456, "1234,56"), (-700, "-7,00"),
    (-5, "-0,05"), (100000000, "1000000,00"),
])
def test_euros_have_a_decimal_comma_and_two_decimals(amount: int, text: str) -> None:
    assert reports.euros(amount) == text


@pytest.mark.parametrize(("amount", "text"), [
    (None, "-"), (0, "0,00 €"), (123456, "1 234,56 €"), (100000000, "1 000 000,00 €"),
    (-450000, "-4 500,00 €"),
])
def test_the_table_groups_thousands(amount: int | None, text: str) -> None:
    assert reports.euros_text(amount) == text


def test_text_cells_are_never_formulas_and_separators_are_quoted() -> None:
    assert reports.safe_text("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert reports.safe_text("@SUM(A1)") == "'@SUM(A1)"
    assert reports.safe_text("AID-2024-000042") == "AID-2024-000042"
    assert reports.csv_text([["a;b", 'say "hi"', "c"]]) == '"a;b";"say ""hi""";c\r\n'


def test_the_run_out_month_is_projected_from_the_monthly_burn() -> None:
    """A year in progress: the twelve monthly amounts of the kind go to run_out_month."""
    meals = KindYearTotal(year=2026, kind="meals", granted=4, quantity=40, amount_cents=40000)
    monthly = {1: {"meals": 10000}, 2: {"meals": 10000}, 3: {"meals": 10000},
               4: {"meals": 10000}}
    totals = YearTotals({"meals": meals}, {"toulouse": {"meals": 40000}}, monthly,
                        {"meals": 100000})
    today = date(2026, 4, 15)

    report = reports.finance_report(2026, totals, ["toulouse"], today)

    expected = run_out_month(100000, [10000] * 4 + [0] * 8, 2026, today)
    assert report["budgets"]["meals"]["runs_out_month"] == expected
    assert report["budgets"]["meals"]["remaining_cents"] == 60000
    assert report["by_kind"]["laptop"] == {"granted": 0, "rejected": 0, "quantity": 0,
                                           "amount_cents": 0}


def test_the_table_shows_each_section(client: TestClient) -> None:
    report = client.get("/reports/finance", params={"year": YEAR}, headers=FINANCE).json()

    text = reports.render_text(report)

    for title in ("by kind", "budgets", "by school", "by month"):
        assert title in text
    assert "849,99 €" in text  # laptops
    assert "2024-03" in text and UNLISTED_SCHOOL in text


@pytest.mark.parametrize("value", ["2000", "2024", "2100"])
def test_years_in_range_parse(value: str) -> None:
    assert parse_year(value) == int(value)


# --- The command --------------------------------------------------------------------------


def test_e2c_report_finance_prints_the_table_and_writes_the_same_csv(
    filled: Engine, client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = str(filled.url)
    monkeypatch.setattr(cli, "_command_settings", lambda: Settings(AIDS_DATABASE_URL=url))
    target = tmp_path / "finance.csv"

    assert cli.main(["report", "finance", "--year", "2024", "--csv", str(target)]) == 0

    out = capsys.readouterr().out
    assert "Finance report 2024" in out
    assert "849,99 €" in out and "2024-03" in out
    assert f"8 ledger lines of 2024 written to {target}" in out
    http = client.get("/reports/finance.csv", params={"year": YEAR}, headers=FINANCE)
    assert target.read_bytes() == http.content


def test_e2c_report_finance_json_is_the_http_report(
    filled: Engine, client: TestClient, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = str(filled.url)
    monkeypatch.setattr(cli, "_command_settings", lambda: Settings(AIDS_DATABASE_URL=url))

    assert cli.main(["report", "finance", "--year", "2024", "--json"]) == 0

    printed = json.loads(capsys.readouterr().out)
    assert printed == client.get("/reports/finance", params={"year": YEAR},
                                 headers=FINANCE).json()


def test_e2c_report_finance_refuses_a_bad_year(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["report", "finance", "--year", "1999"])

    assert stopped.value.code == 2
    assert "2000 to 2100" in capsys.readouterr().err


# --- The OpenAPI document tells the truth ---------------------------------------------------


def test_the_report_and_its_errors_are_what_the_document_says(client: TestClient) -> None:
    path = "/reports/finance"

    assert_documented(client.get(path, params={"year": YEAR}, headers=FINANCE), "aids", path)
    assert_documented(client.get(path, params={"year": 2031}, headers=FINANCE), "aids", path)
    assert_documented(client.get(path, params={"year": YEAR}), "aids", path)
    assert_documented(client.get(path, params={"year": YEAR},
                                 headers={"Authorization": "Bearer tok-ops"}), "aids", path)
    assert_documented(client.get(path, params={"year": "x"}, headers=FINANCE), "aids", path)
