"""The console in headless Chromium against the real stack: sign in as finance, the finance
page's figures equal the aids report's JSON, each chart holds its table's series, other
roles and forged requests are refused. Screenshots go to var/screenshots/."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from console.formats import euros, month
from tests import tokens
from tests.console.conftest import AidYear, Console, cents_of, screenshot, sign_in, text_of

pytestmark = pytest.mark.infra

KINDS = ("laptop", "meals", "childcare")


def report(aids_url: str, year: int) -> dict[str, Any]:
    answer = httpx.get(f"{aids_url}/reports/finance", params={"year": year},
                       headers=tokens.bearer(tokens.FINANCE), timeout=10)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def test_finance_page_shows_the_report_and_charts_hold_the_tables_series(
    fresh_browser: webdriver.Chrome, console: Console, aid_year: AidYear, stack: Any
) -> None:
    browser, year = fresh_browser, aid_year.year
    sign_in(browser, console, tokens.FINANCE)
    started = time.monotonic()
    browser.get(f"{console.url}/finance?year={year}")
    assert time.monotonic() - started < 1.0
    expected = report(stack.services["aids"].url, year)

    total = sum(expected["by_kind"][kind]["amount_cents"] for kind in KINDS)
    assert total == aid_year.granted_cents  # the decisions published, summed independently
    assert text_of(browser.find_element(By.ID, "total")) == euros(total)
    for kind in KINDS:
        budget = expected["budgets"][kind]
        row = browser.find_element(By.CSS_SELECTOR, f"#budgets tr[data-kind='{kind}']")
        cells = row.find_elements(By.CSS_SELECTOR, "td")
        assert [c.get_attribute("data-cents") for c in cells[:3]] == [
            str(budget["envelope_cents"]), str(budget["committed_cents"]),
            str(budget["remaining_cents"])]
        assert cells[3].text == month(budget["runs_out_month"])
        monthly = cents_of(browser, f"#by-month td[data-kind='{kind}']")
        assert monthly == [expected["by_month"][m][kind] for m in sorted(expected["by_month"])]
        cumulative = [int(c.get_attribute("data-cumulative") or "-1") for c in
                      browser.find_elements(By.CSS_SELECTOR, f"#by-month td[data-kind='{kind}']")]
        line = browser.find_element(By.CSS_SELECTOR, f"#chart-{kind} polyline[data-series]")
        assert [int(v) for v in (line.get_attribute("data-values") or "").split(",")] == cumulative
        assert cumulative[-1] == sum(monthly)
        assert text_of(cells[1]) == euros(budget["committed_cents"])
    assert cents_of(browser, "#by-kind td[data-cents]") == [
        expected["by_kind"][kind]["amount_cents"] for kind in KINDS]
    assert cents_of(browser, "#chart-by-kind rect") == cents_of(browser, "#by-kind td")
    assert cents_of(browser, "#by-school td") == [
        sum(amounts.values()) for amounts in expected["by_school"].values()]
    assert cents_of(browser, "#chart-by-school rect") == cents_of(browser, "#by-school td")
    screenshot(browser, "finance")
    browser.set_window_size(375, 800)
    screenshot(browser, "finance-phone")


def test_sign_in_page_and_refusals_in_the_browser(
    fresh_browser: webdriver.Chrome, console: Console
) -> None:
    browser = fresh_browser
    browser.get(f"{console.url}/finance")
    assert browser.current_url.endswith("/signin")
    screenshot(browser, "signin")
    sign_in(browser, console, tokens.test_token("unknown"))  # every role opens some page
    assert "Jeton inconnu" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    assert browser.get_cookie("e2c_session") is None
    sign_in(browser, console, tokens.FINANCE)
    cookie = browser.get_cookie("e2c_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""


def test_a_forged_cross_site_form_does_not_sign_out(
    fresh_browser: webdriver.Chrome, console: Console, aid_year: AidYear
) -> None:
    """A page of another origin posts to the console: the browser keeps the Strict cookie
    away, and the CSRF token is missing anyway; the session stays open."""
    browser = fresh_browser
    sign_in(browser, console, tokens.FINANCE)
    forged = ("data:text/html,<form id=f method=post action='" + console.url + "/signout'>"
              "<input name=csrf value=guess></form><script>f.submit()</script>")
    browser.get(forged)
    WebDriverWait(browser, 10).until(lambda b: b.current_url.startswith(console.url))
    assert browser.current_url == f"{console.url}/signout"
    assert "ne vient pas de la console" in text_of(browser.find_element(By.ID, "error"))
    browser.get(f"{console.url}/finance?year={aid_year.year}")
    assert browser.find_element(By.ID, "total")
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    assert browser.current_url.endswith("/signin")
    browser.get(f"{console.url}/finance")
    assert browser.current_url.endswith("/signin")
