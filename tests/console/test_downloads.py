"""The finance page's downloads through the console, as a signed-in finance officer gets
them: the XLSX opens with openpyxl and sums to the aids report and to the decisions the
aids service published; the CSV is the same ledger. Signed out, neither is served."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook
from openpyxl.worksheet.worksheet import Worksheet

from tests import tokens
from tests.console.conftest import AidYear, Console, signin

pytestmark = pytest.mark.infra

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
KINDS = {"Ordinateur portable": "laptop", "Repas": "meals", "Garde d'enfants": "childcare"}
HEADER_ROW = 2  # a note on row 1


def records(sheet: Worksheet) -> list[dict[str, Any]]:
    headers = [cell.value for cell in sheet[HEADER_ROW]]
    return [dict(zip(headers, row, strict=True))
            for row in sheet.iter_rows(min_row=HEADER_ROW + 1, values_only=True)]


def finance_report(stack: Any, year: int) -> dict[str, Any]:
    answer = httpx.get(f"{stack.services['aids'].url}/reports/finance", params={"year": year},
                       headers=tokens.bearer(tokens.FINANCE), timeout=10)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def test_the_workbook_downloaded_from_the_console_sums_to_the_report(
    console: Console, aid_year: AidYear, stack: Any
) -> None:
    client, _ = signin(console, tokens.FINANCE)
    try:
        answer = client.get("/finance.xlsx", params={"year": aid_year.year})
    finally:
        client.close()
    assert answer.status_code == 200
    assert answer.headers["content-type"] == XLSX
    assert ".xlsx" in answer.headers["content-disposition"]
    book = load_workbook(io.BytesIO(answer.content))
    report = finance_report(stack, aid_year.year)

    assert book.sheetnames == ["Budgets", "Par école", "Par mois", "Grand livre"]
    ledger = records(book["Grand livre"])
    assert sum(row["Montant (centimes)"] for row in ledger) == aid_year.granted_cents
    budgets = {KINDS[row["Aide"]]: row for row in records(book["Budgets"])}
    for kind, row in budgets.items():
        assert row["Engagé (centimes)"] == report["budgets"][kind]["committed_cents"]
        assert row["Accordées"] == report["by_kind"][kind]["granted"]
        assert Decimal(str(row["Engagé (€)"])) * 100 == row["Engagé (centimes)"]
    *_, total = records(book["Par école"])
    assert total["Total (centimes)"] == aid_year.granted_cents


def test_the_ledger_csv_downloaded_from_the_console_is_the_years_grants(
    console: Console, aid_year: AidYear
) -> None:
    client, _ = signin(console, tokens.FINANCE)
    try:
        answer = client.get("/finance.csv", params={"year": aid_year.year})
    finally:
        client.close()
    assert answer.status_code == 200
    rows = list(csv.DictReader(io.StringIO(answer.content.decode("utf-8-sig")), delimiter=";"))
    assert rows
    # Euros with a decimal comma, as French spreadsheets read them.
    cents = sum(Decimal(row["amount_eur"].replace(",", ".")) * 100 for row in rows)
    assert cents == aid_year.granted_cents


@pytest.mark.parametrize("path", ["/finance.xlsx", "/finance.csv"])
def test_signed_out_or_another_role_gets_no_download(console: Console, path: str) -> None:
    with httpx.Client(base_url=console.url, timeout=10) as stranger:
        assert stranger.get(path, follow_redirects=False).status_code == 303  # to sign in
    client, _ = signin(console, tokens.OUTCOMES)
    try:
        assert client.get(path, params={"year": 2025}).status_code == 403
    finally:
        client.close()
