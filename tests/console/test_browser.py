"""The console in headless Chromium against the real stack: sign in as finance, the finance
page's figures equal the aids report's JSON, each chart holds its table's series, other
roles and forged requests are refused. Screenshots go to var/screenshots/."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from console.formats import euros, month
from deploy.harness import free_port
from tests import tokens
from tests.console.conftest import (
    AidYear,
    Console,
    cents_of,
    screenshot,
    sign_in,
    text_of,
    wait_for_page_after,
)

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
    sign_in(browser, console, tokens.FINANCE)  # returns on its landing page: no race below
    started = time.monotonic()
    browser.get(f"{console.url}/finance?year={year}")
    assert time.monotonic() - started < 1.0
    assert text_of(browser.find_element(By.TAG_NAME, "h1")) == f"Finances {year}"
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


@pytest.fixture
def forging_site(console: Console) -> Iterator[str]:
    """Another site: http://localhost:<port>/ (the console is at 127.0.0.1, so a different
    site for the browser, not only another origin) serving a page whose script posts a form
    to the console's /signout at once, with a guessed CSRF token."""
    page = ("<!doctype html><title>forged</title><form id=f method=post action='"
            f"{console.url}/signout'><input name=csrf value=guess></form>"
            "<script>document.getElementById('f').submit()</script>").encode()

    class Forged(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Forged)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_forged_cross_site_form_does_not_sign_out(
    fresh_browser: webdriver.Chrome, console: Console, aid_year: AidYear, forging_site: str
) -> None:
    """A page of another site posts to the console: the browser keeps the Strict cookie
    away, the Origin is not the console's, the CSRF token is a guess; the session stays open."""
    browser = fresh_browser
    sign_in(browser, console, tokens.FINANCE)
    assert browser.current_url.startswith(f"{console.url}/finance")
    signout = f"{console.url}/signout"
    browser.get(forging_site)
    WebDriverWait(browser, 15).until(lambda b: b.current_url == signout)
    WebDriverWait(browser, 15).until(
        lambda b: b.execute_script("return document.readyState") == "complete")
    assert "ne vient pas de la console" in text_of(browser.find_element(By.ID, "error"))
    browser.get(f"{console.url}/finance?year={aid_year.year}")
    assert browser.find_element(By.ID, "total")
    sign_out = browser.find_element(By.CSS_SELECTOR, "form.signout button")
    page = browser.find_element(By.TAG_NAME, "html")
    sign_out.click()
    wait_for_page_after(browser, page)
    assert browser.current_url == f"{console.url}/signin"
    browser.get(f"{console.url}/finance")
    assert browser.current_url == f"{console.url}/signin"
