"""The finance workbook (GET /reports/finance.xlsx), read back with openpyxl, on a SQLite and
a PostgreSQL store filled by the real aid handlers. Expected figures are counted here from
the ledger lines in the store, never taken from the workbook's builder."""

from __future__ import annotations

import io
from collections import Counter
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.testclient import TestClient

from services.aids.api import router
from services.aids.store import TABLES, AidStore, LedgerLine
from shared.contract import Topic
from shared.schools import load_schools
from tests.aids.test_finance_report import aid, feed
from tests.events import budget, enrollment_decided
from tests.http_app import app_for, assert_bad_year, assert_documented
from tests.plumbing import engine_fixture

YEAR = 2024
PATH = "/reports/finance.xlsx"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
TOKENS = {"tok-finance": "finance", "tok-admin": "admin", "tok-outcomes": "outcomes",
          "tok-ops": "ops", "tok-partner": "partner:ml-toulouse"}
FINANCE = {"Authorization": "Bearer tok-finance"}
LABELS = {"Ordinateur portable": "laptop", "Repas": "meals", "Garde d'enfants": "childcare"}
KINDS = tuple(LABELS.values())
SHEETS = ["Budgets", "Par école", "Par mois", "Grand livre"]
UNLISTED = "saint-gaudens"
PARIS = ZoneInfo("Europe/Paris")
FIRST = 3  # the note is row 1, the headers row 2

engine = engine_fixture(TABLES)


@pytest.fixture
def filled(engine: Engine) -> Engine:
    """Grants of each kind at three schools (one outside the registry), a refusal, a grant
    of the next year, an envelope for childcare and one for meals lowered below what was
    already committed (so that it was reached in March)."""
    feed(engine, *(
        (Topic.ENROLLMENTS_DECIDED, enrollment_decided(trainee, school_id=school, enrolled_on=on))
        for trainee, school, on in [("T1", "toulouse", "2024-01-10"),
                                    ("T2", "montpellier-1", "2024-02-01"),
                                    ("T3", UNLISTED, "2024-01-05")]
    ))
    feed(engine, (Topic.BUDGETS_SUBMITTED, budget("meals", 30000)),
         (Topic.BUDGETS_SUBMITTED, budget("childcare", 100000)))
    feed(engine,
         aid("T1", "laptop", "2024-01-15", "2024-01-15", amount_cents=45000),
         aid("T1", "meals", "2024-02-01", "2024-02-29", quantity=20),  # 140 €
         aid("T2", "meals", "2024-03-01", "2024-03-31", quantity=10),  # 70 €
         aid("T2", "childcare", "2024-03-01", "2024-03-31", amount_cents=25001),
         aid("T3", "childcare", "2024-06-01", "2024-06-30", amount_cents=12345),
         aid("T3", "laptop", "2024-06-03", "2024-06-03", amount_cents=39999),
         aid("T3", "childcare", "2024-07-01", "2024-07-31", amount_cents=30001),  # over cap
         aid("T1", "meals", "2025-01-02", "2025-01-31", quantity=3))  # next year
    feed(engine, (Topic.BUDGETS_SUBMITTED, budget("meals", 20000)))  # below the 210 € committed
    return engine


@pytest.fixture
def client(filled: Engine) -> TestClient:
    return TestClient(app_for(router, filled, TOKENS))


def ledger(engine: Engine, year: int = YEAR) -> list[LedgerLine]:
    with Session(engine) as session:
        return list(AidStore(session).ledger_lines(year))


def fetch_workbook(client: TestClient, year: int = YEAR) -> Workbook:
    answer = client.get(PATH, params={"year": year}, headers=FINANCE)
    assert answer.status_code == 200
    return load_workbook(io.BytesIO(answer.content))


def records(sheet: Worksheet) -> list[dict[str, Any]]:
    """The sheet's lines under its header row, as {header: value}."""
    headers = [cell.value for cell in sheet[FIRST - 1]]
    return [dict(zip(headers, row, strict=True))
            for row in sheet.iter_rows(min_row=FIRST, values_only=True)]


def cents(value: Any) -> int:
    """A euro cell's value as cents, refusing anything that is not a whole cent."""
    exact = Decimal(str(value)) * 100
    assert exact == exact.to_integral_value(), value
    return int(exact)


# --- The file -----------------------------------------------------------------------------


def test_the_workbook_is_served_as_an_xlsx_download(client: TestClient) -> None:
    answer = client.get(PATH, params={"year": YEAR}, headers=FINANCE)

    assert answer.status_code == 200
    assert answer.headers["content-type"] == XLSX
    assert answer.headers["content-disposition"] == 'attachment; filename="finance-2024.xlsx"'
    book = load_workbook(io.BytesIO(answer.content))
    assert book.sheetnames == SHEETS
    for sheet in book:
        assert "Europe/Paris" in sheet["A1"].value
    assert [cell.value for cell in book["Grand livre"][2]][:3] == [
        "N° de ligne", "Accordée le (heure de Paris)", "Demande"]


def test_the_ledger_sheet_is_every_line_of_the_year(filled: Engine, client: TestClient) -> None:
    rows = records(fetch_workbook(client)["Grand livre"])
    lines = ledger(filled)

    assert [row["N° de ligne"] for row in rows] == [line.id for line in lines]
    assert len(rows) == 6  # not the over-cap childcare, not next year's meals
    for row, line in zip(rows, lines, strict=True):
        assert LABELS[row["Aide"]] == line.kind
        assert (row["Stagiaire"], row["École"], row["Demande"]) == (
            line.trainee_id, line.school_id, line.request_id)
        assert cents(row["Montant (€)"]) == row["Montant (centimes)"] == line.amount_cents
        assert row["Quantité"] == line.quantity
        paris = line.granted_at.astimezone(PARIS).replace(tzinfo=None, microsecond=0)
        assert row["Accordée le (heure de Paris)"].replace(microsecond=0) == paris
        assert row["Début de période"].date() == line.period_start
        assert row["Fin de période"].date() == line.period_end
        assert row["Mois"].date() == date(line.year, line.month, 1)
    meals = next(row for row in rows if row["Aide"] == "Repas")
    assert (meals["Quantité"], cents(meals["Taux (€)"]), cents(meals["Montant (€)"])) == (
        20, 700, 14000)


def test_each_sheet_adds_up_to_the_ledger_and_to_the_json_report(
    filled: Engine, client: TestClient
) -> None:
    book = fetch_workbook(client)
    report = client.get("/reports/finance", params={"year": YEAR}, headers=FINANCE).json()
    by_kind, by_school, by_month = Counter(), Counter(), Counter()
    for line in ledger(filled):
        by_kind[line.kind] += line.amount_cents
        by_school[line.school_id, line.kind] += line.amount_cents
        by_month[date(line.year, line.month, 1), line.kind] += line.amount_cents
    assert dict(by_kind) == {"laptop": 84999, "meals": 21000, "childcare": 37346}

    budgets = {LABELS[row["Aide"]]: row for row in records(book["Budgets"])}
    for kind in KINDS:
        assert cents(budgets[kind]["Engagé (€)"]) == by_kind[kind]
        assert budgets[kind]["Engagé (centimes)"] == by_kind[kind]
        assert budgets[kind]["Accordées"] == report["by_kind"][kind]["granted"]
        assert budgets[kind]["Refusées"] == report["by_kind"][kind]["rejected"]
    assert cents(budgets["meals"]["Enveloppe (€)"]) == budgets["meals"]["Enveloppe (centimes)"]
    assert cents(budgets["meals"]["Restant (€)"]) == 20000 - 21000
    assert budgets["meals"]["Restant (centimes)"] == -1000
    # 140 € in February, 70 € in March: the 200 € were reached in March.
    assert budgets["meals"]["Épuisement prévu"] == datetime(YEAR, 3, 1)
    assert report["budgets"]["meals"]["runs_out_month"] == "2024-03"
    assert budgets["childcare"]["Épuisement prévu"] == "pas cette année"  # 2024 is over
    assert report["budgets"]["childcare"]["runs_out_month"] is None
    assert cents(budgets["childcare"]["Restant (€)"]) == 100000 - by_kind["childcare"]
    assert budgets["laptop"]["Enveloppe (€)"] is None  # no envelope
    assert budgets["laptop"]["Épuisement prévu"] is None

    school_rows = records(book["Par école"])
    assert [row["École"] for row in school_rows] == [*load_schools(), UNLISTED, "Total"]
    month_rows = records(book["Par mois"])
    assert [row["Mois"] for row in month_rows[:-1]] == [
        datetime(YEAR, month, 1) for month in range(1, 13)]
    for rows, expected, key in ((school_rows, by_school, "École"),
                                (month_rows, by_month, "Mois")):
        *lines, total = rows
        for row in lines:
            place = row[key].date() if key == "Mois" else row[key]
            for label, kind in LABELS.items():
                assert cents(row[f"{label} (€)"]) == expected[place, kind]
            assert row["Total (centimes)"] == sum(expected[place, kind] for kind in KINDS)
        assert total["École" if key == "École" else "Mois"] == "Total"
        for label, kind in LABELS.items():
            assert cents(total[f"{label} (€)"]) == by_kind[kind]
        assert cents(total["Total (€)"]) == total["Total (centimes)"] == sum(by_kind.values())


def test_money_cells_have_the_euro_format_and_dates_are_dates(client: TestClient) -> None:
    book = fetch_workbook(client)

    for sheet_name, column in (("Budgets", "F"), ("Par école", "C"), ("Par mois", "B"),
                               ("Grand livre", "I")):
        cell = book[sheet_name][f"{column}{FIRST}"]
        assert "€" in book[sheet_name][f"{column}{FIRST - 1}"].value
        assert cell.number_format == '#,##0.00\\ "€"', sheet_name
        assert isinstance(cell.value, int | float)
    ledger_sheet = book["Grand livre"]
    run_out = book["Budgets"][f"H{FIRST + 1}"]  # meals
    assert run_out.is_date and run_out.number_format == "mm/yyyy"
    for column, shown in (("B", "dd/mm/yyyy hh:mm:ss"), ("K", "dd/mm/yyyy"),
                          ("L", "dd/mm/yyyy"), ("M", "mm/yyyy")):
        cell = ledger_sheet[f"{column}{FIRST}"]
        assert cell.is_date and isinstance(cell.value, datetime), column
        assert cell.number_format == shown
    assert book["Par mois"][f"A{FIRST}"].is_date


def test_an_unknown_year_is_an_empty_but_valid_workbook(client: TestClient) -> None:
    book = fetch_workbook(client, 2031)

    assert book.sheetnames == SHEETS
    assert records(book["Grand livre"]) == []
    budgets = records(book["Budgets"])
    assert [LABELS[row["Aide"]] for row in budgets] == list(KINDS)
    assert all(row["Engagé (centimes)"] == 0 and row["Enveloppe (€)"] is None
               for row in budgets)
    *months, total = records(book["Par mois"])
    assert len(months) == 12 and total["Total (centimes)"] == 0


# --- Roles and parameters -----------------------------------------------------------------


def test_finance_and_admin_only(client: TestClient) -> None:
    params = {"year": YEAR}

    assert client.get(PATH, params=params).status_code == 401
    for token in ("tok-outcomes", "tok-ops", "tok-partner"):
        answer = client.get(PATH, params=params, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 403, token
        assert "detail" in answer.json()
        assert_documented(answer, "aids", PATH)
    answer = client.get(PATH, params=params, headers={"Authorization": "Bearer tok-admin"})
    assert (answer.status_code, answer.headers["content-type"]) == (200, XLSX)


@pytest.mark.parametrize("year", [None, "", "abc", "1999", "2101", "2024.0"])
def test_a_missing_or_bad_year_is_a_json_422_naming_year(client: TestClient,
                                                          year: str | None) -> None:
    answer = client.get(PATH, params={} if year is None else {"year": year}, headers=FINANCE)

    assert_bad_year(answer, year)
    assert_documented(answer, "aids", PATH)
